"""docs/jobs-yaml.md stays true: its complete example validates, it names every key
config.py accepts, and the README points at it rather than outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

from schedsync import config

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "jobs-yaml.md"


def test_the_complete_example_validates(project):
    text = DOC.read_text()
    example = re.search(r"## A complete example\n\n```yaml\n(.*?)```", text, re.S).group(1)
    project.config.write_text(example)
    env = {"AIRDROPS_API": "https://api.example.com", "AIRDROPS_TOKEN": "t0ken-value",
           "BACKUP_CHECK_UUID": "0000"}
    result = project.cli("validate", env=env)
    assert result.returncode == 0, result.stderr
    assert "4 jobs, 2 budgets: ok" in result.stdout


def test_every_key_config_accepts_is_documented():
    text = DOC.read_text()
    groups = [("", config.TOP_KEYS + config.JOB_KEYS), ("retries.", config.RETRY_KEYS),
              ("breaker.", config.BREAKER_KEYS), ("retention.", config.RETENTION_KEYS),
              ("http.", config.HTTP_KEYS), ("into.", config.INTO_KEYS),
              ("catchup.", config.CATCHUP_KEYS), ("retry_later.", config.RETRY_LATER_KEYS)]
    for prefix, keys in groups:
        for key in keys:
            assert f"`{prefix}{key}`" in text, f"{prefix}{key} is not in {DOC.name}"
    for key in config.NOTIFY_KEYS:
        assert f"| `{key}` |" in text, f"notify's {key}"
    from schedsync.config.validate import SMTP_KEYS

    for key in SMTP_KEYS:
        assert f"| `{key}` |" in text, f"smtp's {key}"
    for key in ("param", "field", "format", "cursor", "page", "capacity", "per"):
        assert f"{key}:" in text or f"`{key}`" in text, key


def test_the_readme_points_at_the_reference_inside_the_repository():
    readme = (ROOT / "README.md").read_text()
    assert "docs/jobs-yaml.md" in readme
    assert "../shared" not in readme and "../shared" not in DOC.read_text()


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_is_short_enough_to_read():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= 350, f"README.md has {lines} lines: move details to docs/ (at most 350)"


def test_no_document_cites_a_text_users_cannot_read():
    for doc in DOCS:
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            # "SPEC", "Spec", "the spec": not "validate(spec, …)", a parameter's name in code
            prose = re.sub(r"`[^`]*`", "", line)
            assert not re.search(r"\bSPEC\b", prose, re.I), f"{doc.name}:{number} mentions a SPEC: {line}"
            assert "../shared" not in line, f"{doc.name}:{number} points outside the repository: {line}"


def _anchors(text: str) -> set[str]:
    """GitHub's anchors for a Markdown file's headings."""
    out = set()
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def test_links_between_the_documents_resolve():
    for doc in DOCS:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            assert file.exists(), f"{doc.name} links to {target}, which does not exist"
            if anchor and file.suffix == ".md":
                assert anchor in _anchors(file.read_text()), f"{doc.name} links to {target}: no such heading"


def test_the_development_install_names_extras_that_exist():
    section = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1]
    extras = re.findall(r"^(\w+) = \[", section.split("\n[")[0], re.M)  # tomllib is 3.11+
    for doc in (ROOT / "README.md", ROOT / "docs" / "development.md"):
        named = re.findall(r"pip install -e '\.\[([\w,]+)\]'", doc.read_text())
        assert named, f"{doc.name} shows no development install"
        for group in named:
            for extra in group.split(","):
                assert extra in extras, f"{doc.name} installs the extra {extra!r}, which pyproject.toml lacks"
    assert "[test,postgres]" in (ROOT / ".ci" / "run").read_text()

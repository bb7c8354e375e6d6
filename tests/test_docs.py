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
              ("http.", config.HTTP_KEYS), ("into.", config.INTO_KEYS)]
    for prefix, keys in groups:
        for key in keys:
            assert f"`{prefix}{key}`" in text, f"{prefix}{key} is not in {DOC.name}"
    for key in config.NOTIFY_KEYS:
        assert f"| `{key}` |" in text, f"notify's {key}"
    for key in ("param", "field", "format", "cursor", "page", "capacity", "per"):
        assert f"{key}:" in text or f"`{key}`" in text, key


def test_the_readme_points_at_the_reference_inside_the_repository():
    readme = (ROOT / "README.md").read_text()
    assert "docs/jobs-yaml.md" in readme
    assert "../shared" not in readme and "../shared" not in DOC.read_text()

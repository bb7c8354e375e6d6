"""Which schedsync the tests exercise: under .ci/run (SCHEDSYNC_TEST_INSTALLED=1)
the installed package, both in pytest and in the CLI the tests start; locally
the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import schedsync

ROOT = Path(__file__).resolve().parent.parent


def _in_checkout(path: str) -> bool:
    return Path(path).resolve().is_relative_to(ROOT / "schedsync")


def test_the_cli_the_tests_start_imports_the_same_package_as_pytest(project):
    where = subprocess.run([sys.executable, "-c", "import schedsync; print(schedsync.__file__)"],
                           capture_output=True, text=True, env=project.env, cwd=project.path,
                           check=True).stdout.strip()
    installed = bool(os.environ.get("SCHEDSYNC_TEST_INSTALLED"))
    assert _in_checkout(where) is not installed, where
    assert _in_checkout(schedsync.__file__) is not installed, schedsync.__file__


def test_the_schedsync_command_is_a_plain_script_that_imports_no_re():
    """pip's stub for a ``[project.scripts]`` entry point imports ``re`` (to clean a Windows
    launcher's argv[0]): every cron tick would pay for it. The command is ``bin/schedsync``,
    installed as it is (``script-files``), pip pointing its ``#!python`` at the venv's python."""
    import ast

    script = ROOT / "bin" / "schedsync"
    text = script.read_text()
    assert text.startswith("#!python\n") and os.access(script, os.X_OK)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "\n[project.scripts]" not in pyproject and 'script-files = ["bin/schedsync"]' in pyproject
    imported = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert imported == {"sys", "schedsync.cli.main"}
    if os.environ.get("SCHEDSYNC_TEST_INSTALLED"):  # .ci/run's regular install: this very file
        installed = Path(sys.executable).with_name("schedsync").read_text()
        assert installed.startswith("#!/") and installed.partition("\n")[2] == text.partition("\n")[2]


def test_the_script_runs_schedsync(project):
    version = subprocess.run([sys.executable, str(ROOT / "bin" / "schedsync"), "--version"], capture_output=True,
                             text=True, env=project.env, cwd=project.path, timeout=60)
    assert (version.returncode, version.stdout.strip()) == (0, f"schedsync {schedsync.__version__}")

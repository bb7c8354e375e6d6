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

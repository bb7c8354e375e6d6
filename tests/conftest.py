"""Shared fixtures: an isolated home per test and the real CLI as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


class Project:
    """A folder with a jobs.yaml, and the real ``schedsync`` CLI run against it."""

    def __init__(self, path: Path, env: dict):
        self.path = path
        self.env = env
        self.config = path / "jobs.yaml"
        self.state = path / "schedsync.db"

    def write(self, text: str) -> Path:
        self.config.write_text(textwrap.dedent(text))
        return self.config

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "schedsync", "-c", str(self.config), *args]

    def cli(self, *args: str, env: dict | None = None, timeout: float = 60,
            **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, env={**self.env, **(env or {})},
                              cwd=self.path, **kwargs)

    def start(self, *args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True, cwd=self.path,
                                env={**self.env, **(env or {})}, **kwargs)

    def history(self, job: str, limit: int = 200) -> list[dict]:
        import json

        result = self.cli("history", job, "--json", "--limit", str(limit))
        if result.returncode == 1 and " yet — " in result.stderr and "no state at" in result.stderr:
            return []  # a first run has not created the state yet (tests poll while one starts)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def status(self) -> dict:
        import json

        result = self.cli("status", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


@pytest.fixture
def home(tmp_path, monkeypatch) -> dict:
    """An environment whose HOME, caches and state all live under tmp_path."""
    # No COLUMNS/LINES: pytest-xdist's workers have COLUMNS=80, a plain run has none, and a
    # pipe under cron has none either; tests set them where they mean a width.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SCHEDSYNC_") and k not in ("COLUMNS", "LINES")}
    env.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "cache"),
               XDG_STATE_HOME=str(tmp_path / "xdg-state"), PYTHONPATH=str(ROOT))
    if os.environ.get("SCHEDSYNC_TEST_INSTALLED"):  # .ci/run: the installed package, as users run it
        env.pop("PYTHONPATH")
    for key in ("HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
        monkeypatch.setenv(key, env[key])
    return env


@pytest.fixture
def project(tmp_path, home) -> Project:
    folder = tmp_path / "project"
    folder.mkdir()
    return Project(folder, {**home, "SCHEDSYNC_STATE": str(folder / "schedsync.db")})


# --- PostgreSQL (the many-hosts backend) ----------------------------------------------
# One throwaway server per test process (xdist worker), a fresh database per test.
# Without PostgreSQL or the driver these tests skip, unless SCHEDSYNC_REQUIRE_PG=1
# (.ci/run sets it): then a skip is a failure, so CI cannot pass them by skipping.

def _pg_missing() -> str | None:
    from pgserver import binaries

    if not binaries():
        return "PostgreSQL is not installed (apt-get install postgresql)"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "the postgres extra is not installed (pip install -e '.[postgres]')"
    return None


def _pg_skip(why: str):
    if os.environ.get("SCHEDSYNC_REQUIRE_PG") == "1":
        pytest.fail(f"SCHEDSYNC_REQUIRE_PG=1 but {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="session")
def pg_server():
    why = _pg_missing()
    if why:
        _pg_skip(why)
    from pgserver import PgServer

    server = PgServer()
    try:
        server.start()
    except Exception as exc:  # a server that will not start is a skip (or a CI failure)
        server.stop()
        _pg_skip(f"PostgreSQL did not start: {exc}")
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server) -> str:
    """A fresh, empty database on the test server, as a state URL."""
    return pg_server.url(pg_server.createdb())


@pytest.fixture(scope="session")
def pg_bouncer(pg_server):
    """A real PgBouncer (``pool_mode = transaction``) on loopback in front of ``pg_server``
    (``tests/pgbouncer.py``); ``pg_bouncer.url(db)`` reaches a database through it."""
    from pgbouncer import PgBouncer, binary

    if not binary():
        _pg_skip("PgBouncer is not installed (apt-get install pgbouncer)")
    bouncer = PgBouncer(pg_server)
    try:
        bouncer.start()
    except Exception as exc:
        bouncer.stop()
        _pg_skip(f"PgBouncer did not start: {exc}")
    yield bouncer
    bouncer.stop()

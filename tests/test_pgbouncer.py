"""schedsync through a real PgBouncer in ``pool_mode = transaction`` keeps no session
state: nothing it sets outlives its own transaction on the pooled server connection,
and a PgBouncer that refuses startup options is connected to without them. (The CLI
contract itself runs through PgBouncer in tests/test_postgres_cli.py.)"""

from __future__ import annotations

import psycopg2
import pytest

from pgbouncer import PgBouncer
from pgserver import PgServer

JOBS = """
jobs:
  hello:
    command: ["true"]
"""


@pytest.fixture
def one_server_connection():
    """A PgBouncer with a pool of one server connection: every client shares it."""
    server = PgServer().start()
    bouncer = None
    try:
        bouncer = PgBouncer(server, pool_size=1).start()
        yield server, bouncer
    finally:
        if bouncer:
            bouncer.stop()
        server.stop()


def _settings(url: str) -> tuple:
    conn = psycopg2.connect(url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('lock_timeout'), current_setting('search_path')")
            return cur.fetchone()
    finally:
        conn.close()


def test_nothing_schedsync_sets_leaks_to_the_next_client_of_the_pooled_connection(project,
                                                                                  one_server_connection):
    server, bouncer = one_server_connection
    url = bouncer.url(server.createdb())
    project.write(JOBS)
    project.env["SCHEDSYNC_STATE"] = url
    assert project.cli("run", "hello").returncode == 0
    before = _settings(url)
    for args in (("status",), ("history", "hello"), ("status", "--json")):  # read commands
        assert project.cli(*args).returncode == 0
    assert _settings(url) == before == ("0", '"$user", public')


def test_a_pgbouncer_that_refuses_startup_options_is_connected_to_without_them(project):
    server = PgServer().start()
    bouncer = None
    try:
        bouncer = PgBouncer(server, ignore_options=False).start()
        url = bouncer.url(server.createdb())
        with pytest.raises(psycopg2.OperationalError, match="unsupported startup parameter"):
            psycopg2.connect(url, options="-c search_path=pg_catalog")
        project.write(JOBS)
        project.env["SCHEDSYNC_STATE"] = url
        result = project.cli("run", "hello")
        assert result.returncode == 0, result.stderr
        assert project.history("hello")[0]["status"] == "success"
    finally:
        if bouncer:
            bouncer.stop()
        server.stop()

"""The PostgreSQL state against a hostile second role, and text PostgreSQL cannot hold.

A second, real role on the test server (``pg_server.create_role``) with CREATE on the
database plants code where schedsync would call it; the planted code writes the role
it runs as into a table the test reads, so "it never ran" is checked, not assumed.
"""

from __future__ import annotations

import sqlite3

import pytest

from pgserver import APP_PASSWORD
from schedsync.store import open_store
from schedsync.store.base import BreakerSpec
from schedsync.store.postgres_sql import MIGRATIONS

JOBS = """
jobs:
  hello:
    command: ["sh", "-c", "echo hi > {marker}"]
"""


def db_of(url: str) -> str:
    return url.split("/")[3].split("?")[0]


def trap(pg_server, db: str, attacker: str) -> str:
    """The attacker's own schema with a table anyone may write: the proof of execution."""
    pg_server.psql(db, f"CREATE SCHEMA {attacker}; CREATE TABLE {attacker}.ran_as (who text);"
                       f" GRANT USAGE ON SCHEMA {attacker} TO PUBLIC;"
                       f" GRANT INSERT ON {attacker}.ran_as TO PUBLIC", user=attacker)
    return f"{attacker}.ran_as"


def ran_as(pg_server, db: str, table: str) -> list[str]:
    return pg_server.psql(db, f"SELECT who FROM {table} ORDER BY who").split()


def one_line_refusal(result, owner: str) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and f"owned by role {owner}" in line
    assert f"GRANT {owner} TO" in line and "drop the schedsync schema" in line
    return line


@pytest.fixture
def attacker(pg_server, pg_url) -> str:
    """A role allowed to create schemas in the victim's database, and nothing more."""
    name = pg_server.create_role("mallory")
    pg_server.psql(db_of(pg_url), f'GRANT CREATE ON DATABASE "{db_of(pg_url)}" TO {name}')
    return name


def test_a_schedsync_schema_another_role_created_first_is_refused_and_its_code_never_runs(
        project, pg_server, pg_url, attacker):
    db = db_of(pg_url)
    log = trap(pg_server, db, attacker)
    # Before the victim's first use: the attacker builds the whole schema, with its own now().
    pg_server.psql(db, "".join(MIGRATIONS), user=attacker)
    pg_server.psql(db, "CREATE OR REPLACE FUNCTION schedsync.now() RETURNS float8 LANGUAGE sql AS"
                       f" $$ INSERT INTO {log} VALUES (current_user);"
                       " SELECT extract(epoch FROM clock_timestamp())::float8 $$", user=attacker)
    pg_server.psql(db, "SELECT schedsync.now()", user=attacker)
    assert ran_as(pg_server, db, log) == [attacker]  # the trap works
    project.write(JOBS.format(marker=project.path / "ran"))
    project.env["SCHEDSYNC_STATE"] = pg_url  # the victim: the superuser
    line = one_line_refusal(project.cli("run", "hello"), attacker)
    assert "schema schedsync is owned" in line and "not by postgres" in line
    assert not (project.path / "ran").exists()
    one_line_refusal(project.cli("status"), attacker)
    check = project.cli("status", "--check")
    assert check.returncode == 3 and check.stdout.startswith("SCHEDSYNC UNKNOWN - ")
    assert f"owned by role {attacker}" in check.stdout and len(check.stdout.splitlines()) == 1
    assert ran_as(pg_server, db, log) == [attacker]  # never as the victim


def test_a_function_another_role_owns_in_our_schema_is_refused_and_never_runs(
        project, pg_server, attacker):
    victim = pg_server.create_role("victim")
    db = pg_server.createdb(owner=victim)
    pg_server.psql(db, f'GRANT CREATE ON DATABASE "{db}" TO {attacker}')
    log = trap(pg_server, db, attacker)
    project.write(JOBS.format(marker=project.path / "ran"))
    project.env["SCHEDSYNC_STATE"] = pg_server.url(db, user=victim, password=APP_PASSWORD)
    assert project.cli("run", "hello").returncode == 0  # the victim's own state
    # The victim shares the schema; the attacker adds an overload finish() would pick.
    pg_server.psql(db, f"GRANT USAGE, CREATE ON SCHEMA schedsync TO {attacker}", user=victim)
    pg_server.psql(db, "CREATE FUNCTION schedsync.tally(p_job text, p_status text, p_requests int)"
                       f" RETURNS void LANGUAGE sql AS $$ INSERT INTO {log} VALUES (current_user) $$",
                       user=attacker)
    pg_server.psql(db, "SELECT schedsync.tally('x', 'y', 1)", user=attacker)
    assert ran_as(pg_server, db, log) == [attacker]
    (project.path / "ran").unlink()
    line = one_line_refusal(project.cli("run", "hello"), attacker)
    assert "function schedsync.tally(text,text,integer) is owned" in line and f"not by {victim}" in line
    assert not (project.path / "ran").exists()
    one_line_refusal(project.cli("status"), attacker)
    assert ran_as(pg_server, db, log) == [attacker]


def test_a_schema_named_after_our_role_cannot_shadow_a_builtin(project, pg_server, pg_url, attacker):
    # "$user" leads the default search_path: a schema named after the victim, made by the
    # attacker, would win an unqualified call over pg_catalog's polymorphic unnest(anyarray).
    victim = pg_server.create_role("victim")
    db = pg_server.createdb(owner=victim)
    pg_server.psql(db, f'GRANT CREATE ON DATABASE "{db}" TO {attacker}')
    log = trap(pg_server, db, attacker)
    pg_server.psql(db, f"CREATE SCHEMA {victim}; GRANT USAGE ON SCHEMA {victim} TO PUBLIC;"
                       f" CREATE FUNCTION {victim}.unnest(a text[]) RETURNS SETOF text LANGUAGE sql AS"
                       f" $$ INSERT INTO {log} VALUES (current_user); SELECT pg_catalog.unnest(a) $$",
                   user=attacker)
    project.write(JOBS.format(marker=project.path / "ran"))
    project.env["SCHEDSYNC_STATE"] = pg_server.url(db, user=victim, password=APP_PASSWORD)
    assert project.cli("run", "hello").returncode == 0
    assert project.status()["jobs"][0]["last_run"]["status"] == "success"
    assert ran_as(pg_server, db, log) == []


def test_a_state_owned_by_a_role_we_are_a_member_of_is_used(project, pg_server):
    owner, member = pg_server.create_role("owner"), pg_server.create_role("member")
    db = pg_server.createdb(owner=owner)
    project.write(JOBS.format(marker=project.path / "ran"))
    assert project.cli("run", "hello", env={
        "SCHEDSYNC_STATE": pg_server.url(db, user=owner, password=APP_PASSWORD)}).returncode == 0
    as_member = {"SCHEDSYNC_STATE": pg_server.url(db, user=member, password=APP_PASSWORD)}
    line = one_line_refusal(project.cli("run", "hello", env=as_member), owner)
    pg_server.psql(db, line.split("if you trust ")[1].split(": ", 1)[1].split(";")[0])  # the fix it names
    result = project.cli("run", "hello", env=as_member)
    assert result.returncode == 0, result.stderr
    assert pg_server.psql(db, "SELECT string_agg(status, ',' ORDER BY id) FROM schedsync.runs").strip() == (
        "success,success")


def test_every_function_runs_with_a_pinned_search_path(pg_server):
    db = pg_server.createdb()
    pg_server.psql(db, MIGRATIONS[0] + MIGRATIONS[1])  # a state from before the pin
    open_store(pg_server.url(db)).close()
    rows = pg_server.psql(db, "SELECT p.proname, coalesce(array_to_string(p.proconfig, ';'), '-')"
                              " FROM pg_proc p WHERE p.pronamespace = 'schedsync'::regnamespace"
                              " ORDER BY 1").splitlines()
    assert len(rows) >= 10
    assert all(row.endswith("|search_path=pg_catalog, pg_temp") for row in rows), rows
    assert pg_server.psql(db, "SELECT version FROM schedsync.meta").strip() == str(len(MIGRATIONS))


# --- NUL: PostgreSQL text cannot hold U+0000; the state stores it as U+FFFD ----------------

NUL_JOBS = r"""
jobs:
  nul:
    command: ["sh", "-c", "printf 'a\\000b\\n'"]
  nulfail:
    command: ["sh", "-c", "printf 'x\\000y\\n'; exit 3"]
"""


def test_a_nul_in_a_command_s_output_and_error_is_stored_and_the_run_keeps_its_status(project, pg_url):
    project.write(NUL_JOBS)
    project.env["SCHEDSYNC_STATE"] = pg_url
    ok, failed = project.cli("run", "nul"), project.cli("run", "nulfail")
    assert ok.returncode == 0 and "Traceback" not in ok.stderr, ok.stderr
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    [run] = project.history("nul")
    assert (run["status"], run["output"]) == ("success", "a\ufffdb\n")
    [run] = project.history("nulfail")
    assert (run["status"], run["exit_code"], run["output"]) == ("failed", 3, "x\ufffdy\n")
    assert "\0" not in run["error"] and "exit 3" in run["error"]


def test_a_nul_in_every_text_the_store_writes_is_stored_as_U_FFFD(pg_url):
    from schedsync.core.models import Notification

    spec = BreakerSpec("b\0", {"failures": 1, "reset_after": 600})
    store = open_store(pg_url)
    try:
        got = store.admit_run("a", "cron", spec, 60.0, [], {}, 0, now=1000.0)
        run = got.run
        run.status, run.error, run.output, run.finished_at = "failed", "bad\0error", "out\0put", 1001.0
        assert store.finish_run(run, spec, True, False, 60.0, {}, now=1001.0)[1] == "open"
        skip = got.run.__class__(0, "a", "skipped", "cron", 1002.0, "h\0ost", 1, reason="paused",
                                 finished_at=1002.0, duration_ms=0, error="skip\0ped")
        store.record_skip(skip, {})
        store.record_notifications([Notification("a", "failure", "http://h\0/", 1003.0, False, "HTTP\0 500")])
        store.set_adhoc("a", '{"x": "\0"}')
        assert store.reset_breaker("b\0", "by\0hand", now=1100.0) == "open"
        [skipped, failed] = store.runs("a")
        assert (failed.error, failed.output) == ("bad\ufffderror", "out\ufffdput")
        assert (skipped.host, skipped.error) == ("h\ufffdost", "skip\ufffdped")
        [note] = store.notifications("a")
        assert (note.target, note.detail) == ("http://h\ufffd/", "HTTP\ufffd 500")
        assert store.adhoc_jobs() == {"a": '{"x": "\ufffd"}'}
        assert [t[1:] for t in store.transitions("b\0")] == [
            ("open", "closed", "by\ufffdhand"), ("closed", "open", f"run {run.id} of a: failed (bad\ufffderror)")]
    finally:
        store.close()


def test_state_copy_stores_a_nul_from_the_sqlite_file_as_U_FFFD(project, pg_url):
    project.write(NUL_JOBS)
    assert project.cli("run", "nul").returncode == 0  # SQLite keeps the NUL
    with sqlite3.connect(project.state) as db:
        assert db.execute("SELECT output FROM runs").fetchone()[0] == "a\0b\n"
    result = project.cli("state", "copy", "--to", pg_url)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    [run] = project.history("nul")
    project.env["SCHEDSYNC_STATE"] = pg_url
    [copied] = project.history("nul")
    assert copied["output"] == "a\ufffdb\n" and copied == {**run, "output": "a\ufffdb\n"}


def test_the_data_sink_runs_no_overload_another_role_planted_in_public(project, pg_server, pg_url, attacker):
    # A role with CREATE on public adds hashtextextended(text, integer): a better match for
    # the sink's call with a literal 0 than the built-in (text, bigint), unless the sink names
    # pg_catalog. The planted function records whom it ran as.
    from test_http import Upstream, job_yaml, reply

    db = db_of(pg_url)
    log = trap(pg_server, db, attacker)
    pg_server.psql(db, f"GRANT CREATE ON SCHEMA public TO {attacker}")
    pg_server.psql(db, "CREATE FUNCTION public.hashtextextended(text, integer) RETURNS bigint"
                       f" LANGUAGE sql AS $$ INSERT INTO {log} VALUES (current_user); SELECT 0::bigint $$;"
                       " CREATE FUNCTION public.to_regclass(text) RETURNS regclass"
                       f" LANGUAGE sql AS $$ INSERT INTO {log} VALUES (current_user); SELECT NULL::regclass $$",
                   user=attacker)
    upstream = Upstream()
    try:
        upstream.routes["/items"] = lambda request: reply(200, {"data": [{"id": 1, "v": "a"}]})
        project.write(job_yaml(upstream, '      url: "{base}/items"\n      items: data',
                               into=f'{{table: items, pk: id, db: "{pg_url}"}}'))
        result = project.cli("run", "items")
    finally:
        upstream.close()
    assert result.returncode == 0, result.stderr
    assert pg_server.psql(db, "SELECT v FROM public.items").split() == ["a"]
    assert ran_as(pg_server, db, log) == []

"""How the read commands (``status``, ``history``, ``logs``, ``metrics``, ``serve``) open the
state: they never wait on another process's write transaction, and never create a state."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from test_serve import Served

JOBS = """
    jobs:
      fine: {schedule: "*/5 * * * *", command: ["true"]}
      bad: {retries: {attempts: 1}, command: ["sh", "-c", "exit 3"]}
      crashy: {command: ["true"]}
      fresh: {schedule: "0 0 1 1 *", command: ["true"]}
"""
PROMPT = 10.0  # seconds: generous on a loaded box, far below the 60 s these hung for

# A run whose schedsync died: its `running` row stays behind for the next read to mark crashed.
ORPHAN = """
import sys
from schedsync.store import open_store
from schedsync.store.base import BreakerSpec
store = open_store(sys.argv[1])
store.admit_run("crashy", "cron", BreakerSpec("crashy", {}), 60.0, [], {}, 0)
"""

# Another process in the middle of a write transaction, which it never commits.
SQLITE_WRITER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN " + sys.argv[2])
db.execute("UPDATE runs SET status = 'success' WHERE job = 'bad'")
print("holding", flush=True)
time.sleep(300)
"""

PG_WRITER = """
import sys, time, psycopg2
db = psycopg2.connect(sys.argv[1])
cur = db.cursor()
cur.execute("LOCK TABLE schedsync.runs IN EXCLUSIVE MODE")  # as `state copy` holds it
cur.execute("UPDATE schedsync.runs SET status = 'success' WHERE job = 'bad'")
cur.execute("UPDATE schedsync.jobs SET paused = paused")
print("holding", flush=True)
time.sleep(300)
"""


def _holding(code: str, *args: str) -> subprocess.Popen:
    writer = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True, env={"PYTHONPATH": str(ROOT)})
    assert writer.stdout.readline() == "holding\n"
    return writer


def _stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(timeout=30)


def _prepared(project, state: str) -> None:
    project.write(JOBS)
    assert project.cli("--state", state, "run", "fine").returncode == 0
    assert project.cli("--state", state, "run", "bad").returncode == 1
    orphan = subprocess.run([sys.executable, "-c", ORPHAN, state], env=project.env, timeout=60, check=False,
                            capture_output=True, text=True)
    assert orphan.returncode == 0, orphan.stderr
    if state.startswith("postgresql"):  # its lease outlives it by up to LEASE seconds, then it is crashed
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            jobs = json.loads(project.cli("--state", state, "status", "--json").stdout)["jobs"]
            if {j["name"]: (j["last_run"] or {}).get("status") for j in jobs}.get("crashy") == "crashed":
                break
            time.sleep(0.5)


def _timed(project, *args: str):
    started = time.monotonic()
    result = project.cli(*args, timeout=40)
    return result, time.monotonic() - started


def _answers(project, state: str) -> dict:
    """What every read command says, each answering promptly."""
    out = {}
    for name, args in (("check", ("status", "--check")), ("table", ("status",)),
                       ("json", ("status", "--json")), ("history", ("history", "crashy", "--json"))):
        result, took = _timed(project, "--state", state, *args)
        assert took < PROMPT, f"{args} took {took:.1f}s"
        out[name] = result
    data = json.loads(out["json"].stdout)
    out["health"] = {j["name"]: j["health"] for j in data["jobs"]}
    out["last"] = {j["name"]: (j["last_run"] or {}).get("status") for j in data["jobs"]}
    return out


def _same_answers(held: dict, free: dict) -> None:
    assert held["check"].returncode == free["check"].returncode == 1
    assert held["check"].stdout == free["check"].stdout
    assert held["check"].stdout.startswith("SCHEDSYNC CRITICAL - ") and "bad FAILING" in held["check"].stdout
    assert held["table"].returncode == 0 and "crashed" in held["table"].stdout
    assert held["health"] == free["health"]
    assert held["last"] == free["last"]
    assert held["last"]["bad"] == "failed" and held["last"]["crashy"] == "crashed"  # committed data only
    assert [r["status"] for r in json.loads(held["history"].stdout)] == ["crashed"]
    for result in held.values():
        if isinstance(result, subprocess.CompletedProcess):
            assert "Traceback" not in result.stderr and result.stderr.count("\n") <= 1, result.stderr


def _recorded(state: str) -> tuple[list, list]:
    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    try:
        crashy = [s for (s,) in db.execute("SELECT status FROM runs WHERE job = 'crashy'")]
        seen = sorted(n for (n,) in db.execute("SELECT name FROM jobs"))
        return crashy, seen
    finally:
        db.close()


# --- item 13: reads behind a write lock ---------------------------------------------------

@pytest.mark.parametrize("journal, begin", [("wal", "IMMEDIATE"), ("wal", "EXCLUSIVE"),
                                            ("delete", "IMMEDIATE")])
def test_reads_behind_a_sqlite_writer_answer_promptly_and_correctly(project, journal, begin):
    state = str(project.state)
    _prepared(project, state)
    if journal != "wal":  # a state someone switched to a rollback journal
        db = sqlite3.connect(state, isolation_level=None)
        assert db.execute(f"PRAGMA journal_mode={journal}").fetchone()[0] == journal
        db.close()
    writer = _holding(SQLITE_WRITER, state, begin)
    try:
        held = _answers(project, state)
        served = Served(project)
        try:
            started = time.monotonic()
            code, _, body = served.get("/healthz")
            assert time.monotonic() - started < PROMPT
        finally:
            served.stop()
        assert code == 503 and sorted(json.loads(body)["needs_action"]) == ["bad", "crashy"]
        # The optional writes were skipped, not waited for.
        assert _recorded(state) == (["running"], ["bad", "crashy", "fine"])
    finally:
        _stop(writer)
    free = _answers(project, state)
    _same_answers(held, free)
    # ... and a later read made them.
    assert _recorded(state) == (["crashed"], ["bad", "crashy", "fine", "fresh"])


def test_reads_of_a_rollback_journal_state_behind_an_exclusive_writer_say_unknown_at_once(project):
    # Without WAL an exclusive writer keeps readers out: they say so promptly, never hang,
    # and the next read that finds the state free switches it to WAL.
    state = str(project.state)
    _prepared(project, state)
    db = sqlite3.connect(state, isolation_level=None)
    assert db.execute("PRAGMA journal_mode=delete").fetchone()[0] == "delete"
    db.close()
    writer = _holding(SQLITE_WRITER, state, "EXCLUSIVE")
    try:
        result, took = _timed(project, "status", "--check")
        assert took < PROMPT
        assert result.returncode == 3
        assert result.stdout.startswith(f"SCHEDSYNC UNKNOWN - state file {state} is locked")
        served = Served(project)
        try:
            started = time.monotonic()
            code, _, body = served.get("/healthz")
            assert time.monotonic() - started < PROMPT
            assert code == 503 and body.startswith(f"error: state file {state} is locked"), body
        finally:
            served.stop()
    finally:
        _stop(writer)
    result = project.cli("status", "--check")
    assert result.returncode == 1 and "bad FAILING" in result.stdout
    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_reads_behind_a_postgres_writer_answer_promptly_and_correctly(project, pg_url):
    _prepared(project, pg_url)
    writer = _holding(PG_WRITER, pg_url)
    try:
        held = _answers(project, pg_url)
        served = Served(project, env={"SCHEDSYNC_STATE": pg_url})
        try:
            started = time.monotonic()
            code, _, body = served.get("/healthz")
            assert time.monotonic() - started < PROMPT
        finally:
            served.stop()
        assert code == 503 and sorted(json.loads(body)["needs_action"]) == ["bad", "crashy"]
    finally:
        _stop(writer)
    free = _answers(project, pg_url)
    _same_answers(held, free)
    import psycopg2

    db = psycopg2.connect(pg_url)
    try:
        with db.cursor() as cur:  # the skipped writes were made by a later read
            cur.execute("SELECT status FROM schedsync.runs WHERE job = 'crashy'")
            assert cur.fetchall() == [("crashed",)]
            cur.execute("SELECT name FROM schedsync.jobs ORDER BY name")
            assert [n for (n,) in cur.fetchall()] == ["bad", "crashy", "fine", "fresh"]
    finally:
        db.close()


# --- item 14: read commands never create a state ------------------------------------------

READS = [("status",), ("status", "fine"), ("status", "--json"), ("history", "fine"),
         ("logs", "fine"), ("metrics",), ("status", "--watch"), ("resume", "fine"),
         ("breaker", "reset", "fine"), ("prune",)]


@pytest.mark.parametrize("where", ["missing", "empty", "unmounted"])
def test_reads_on_a_missing_state_say_so_and_create_nothing(project, tmp_path, where):
    project.write(JOBS)
    state = {"missing": project.path / "typo.db", "empty": project.path / "empty.db",
             "unmounted": tmp_path / "volume" / "schedsync.db"}[where]
    if where == "empty":
        state.touch()
    before = sorted(p.name for p in project.path.iterdir())
    line = f"no state at {state} yet — `schedsync run JOB` creates it"
    for args in READS:
        result = project.cli("--state", str(state), *args, timeout=40)
        assert (result.returncode, result.stdout) == (1, ""), (args, result)
        assert result.stderr.startswith(f"error: {line}") and result.stderr.count("\n") == 1, result.stderr
    result = project.cli("--state", str(state), "status", "--check")
    assert result.returncode == 3
    assert result.stdout.startswith(f"SCHEDSYNC UNKNOWN - {line}") and result.stdout.count("\n") == 1
    served = Served(project, env={"SCHEDSYNC_STATE": str(state)})
    try:
        for path in ("/healthz", "/metrics", "/", "/job/fine"):
            code, _, body = served.get(path)
            assert code == 503 and body.startswith(f"error: {line}"), (path, body)
    finally:
        served.stop()
    assert sorted(p.name for p in project.path.iterdir()) == before
    assert not (tmp_path / "volume").exists()
    if where == "empty":
        assert state.read_bytes() == b""


def test_run_and_pause_still_create_the_state(project):
    project.write(JOBS)
    result = project.cli("pause", "fresh")
    assert result.returncode == 0
    assert result.stdout == (f"fresh: paused (new state {project.state}); its runs are skipped"
                             " until `schedsync resume fresh`\n")
    assert project.cli("resume", "fresh").stdout == "fresh: resumed\n"
    project.state.unlink()
    assert project.cli("run", "fine").returncode == 0  # the README's quickstart
    result = project.cli("status")
    assert result.returncode == 0 and "fine" in result.stdout


def test_reads_on_a_postgres_database_without_the_schema_say_so_and_create_nothing(project, pg_url):
    project.write(JOBS)
    url = pg_url + ("&" if "?" in pg_url else "?") + "password=hunter22-secret"
    for args in (("status",), ("history", "fine"), ("metrics",)):
        result = project.cli("--state", url, *args, timeout=40)
        assert result.returncode == 1, result
        assert result.stderr.startswith("error: no state at postgresql://") and " yet — " in result.stderr
        assert "password=***" in result.stderr and "hunter22" not in result.stderr
    result = project.cli("--state", url, "status", "--check")
    assert result.returncode == 3 and result.stdout.startswith("SCHEDSYNC UNKNOWN - no state at ")
    assert "hunter22" not in result.stdout
    import psycopg2

    db = psycopg2.connect(pg_url)
    try:
        with db.cursor() as cur:
            cur.execute("SELECT to_regnamespace('schedsync') IS NULL")
            assert cur.fetchone() == (True,)
    finally:
        db.close()


def test_a_mistyped_state_without_a_registry_says_no_state_not_unknown_job(project, tmp_path):
    # no jobs.yaml here: `exec` jobs are looked up in the state, and a wrong --state must be
    # named as such, not blamed on the job's name
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    missing = folder / "typo.db"
    for args in (("history", "backup"), ("logs", "backup"), ("status", "backup")):
        result = subprocess.run([sys.executable, "-m", "schedsync", "--state", str(missing), *args],
                                capture_output=True, text=True, cwd=folder, env=project.env,
                                stdin=subprocess.DEVNULL, timeout=60)
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.startswith(f"error: no state at {missing} yet"), result.stderr
    assert not missing.exists()

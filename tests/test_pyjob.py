"""python jobs, through the real CLI: counts, errors, timeouts, budgets, output."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import textwrap
import threading
import time

import pytest

from test_http import Upstream, reply, run_on_a_terminal


@pytest.fixture
def upstream():
    server = Upstream()
    yield server
    server.close()


def python_job(project, code: str, *, target: str = "myjobs:sync", extra: str = "",
               budgets: str = "") -> None:
    (project.path / "myjobs.py").write_text(textwrap.dedent(code))
    project.write(f"""
state: schedsync.db
{budgets}
jobs:
  sync:
    retries: {{attempts: 3, initial: 10ms, max: 50ms, jitter: 0}}
{extra}
    python: "{target}"
""")


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_it_records_the_counts_the_function_returns(project):
    python_job(project, """
        def sync(ctx):
            ctx.db["things"].upsert_all([{"id": 1}, {"id": 2}], pk="id")
            return {"processed": 2, "failed": 0}
    """)

    result = project.cli("run", "sync")

    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    [run] = project.history("sync")
    assert (run["status"], run["items_processed"], run["items_failed"]) == ("success", 2, 0)
    db = sqlite3.connect(project.path / "data.db")
    assert db.execute("SELECT COUNT(*) FROM things").fetchone()[0] == 2


def test_an_int_is_the_processed_count_and_progress_counts_when_it_returns_nothing(project):
    python_job(project, """
        def sync(ctx):
            return 7

        def counted(ctx):
            for _ in range(5):
                ctx.progress()
            ctx.progress(0, failed=1)
    """)
    assert project.cli("run", "sync").returncode == 0
    project.write(project.config.read_text().replace("myjobs:sync", "myjobs:counted"))

    result = project.cli("run", "sync")

    assert result.returncode == 0
    assert result.stderr == "sync: partial: 1 of 6 items failed\n"
    counted, returned = project.history("sync")
    assert (returned["status"], returned["items_processed"]) == ("success", 7)
    assert (counted["status"], counted["items_processed"], counted["items_failed"]) == ("partial", 5, 1)


def test_an_exception_fails_the_run_with_one_line(project):
    python_job(project, """
        def sync(ctx):
            print("starting")
            raise ValueError("row 3 has no id\\nsecond line")
    """)

    result = project.cli("run", "sync")

    assert result.returncode == 1
    [run] = project.history("sync")
    assert (run["status"], run["error"]) == ("failed", "ValueError: row 3 has no id second line")
    assert run["error"] in one_error_line(result)
    assert "starting" in result.stdout and "Traceback" in result.stdout  # held output, as chronic
    assert "Traceback" in run["output"]


def test_a_function_that_overruns_is_ended_at_the_timeout(project):
    python_job(project, """
        import time

        def sync(ctx):
            ctx.progress(3)
            while True:
                try:
                    time.sleep(10)
                except Exception:  # code that swallows errors must not outlive the timeout
                    pass
    """, extra="    timeout: 1s")

    began = time.monotonic()
    result = project.cli("run", "sync")
    took = time.monotonic() - began

    assert result.returncode == 1
    assert took < 5, took
    [run] = project.history("sync")
    assert (run["status"], run["error"], run["items_processed"]) == ("timeout", "timed out after 1.0s", 3)
    assert "timed out after 1.0s" in one_error_line(result)


def test_ctx_http_spends_the_jobs_budget_per_request(project, upstream):
    @upstream.route("/points")
    def points(request):
        return reply(200, {"wallets": [{"w": 1}]})

    python_job(project, f"""
        def sync(ctx):
            for page in (1, 2):
                response = ctx.http.get("{upstream.base}/points", params={{"page": page}})
                response.raise_for_status()
                ctx.progress(len(response.json()["wallets"]))
    """, budgets="budgets: {api: {capacity: 5, per: 1d}}", extra="    budget: api\n    cost: 0")

    result = project.cli("run", "sync")

    assert result.returncode == 0, result.stderr
    [run] = project.history("sync")
    assert (run["requests"], run["items_processed"]) == (2, 2)
    [bucket] = project.status()["budgets"]
    assert bucket["tokens"] == pytest.approx(3, abs=0.01)


def test_ctx_http_stops_when_the_budget_is_empty(project, upstream):
    @upstream.route("/points")
    def points(request):
        return reply(200, {"wallets": []})

    python_job(project, f"""
        def sync(ctx):
            while True:
                ctx.http.get("{upstream.base}/points").raise_for_status()
                ctx.progress()
    """, budgets="budgets: {api: {capacity: 3, per: 1d}}", extra="    budget: api")

    result = project.cli("run", "sync")

    assert result.returncode == 0, result.stderr  # it stored something: partial
    [run] = project.history("sync")
    assert (run["status"], run["reason"], run["requests"], run["items_processed"]) == (
        "partial", "rate_limited", 2, 2)  # cost 1 at start, then 2 requests
    # local time, labelled with its zone (the date too: 8 hours on, it may be another day)
    assert re.fullmatch(r"budget api is empty until (\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d \S+", run["error"])
    assert run["retry_at"] is not None


def test_a_python_job_killed_mid_request_is_recorded_crashed_with_its_ctx_http_requests(project, upstream):
    held = threading.Event()

    @upstream.route("/points")
    def points(request):
        if request.query.get("page") == "3":
            held.set()
            upstream.release.wait(60)
            return None  # schedsync is gone: answer nothing
        return reply(200, {"wallets": [{"w": 1}]})

    python_job(project, f"""
        def sync(ctx):
            for page in (1, 2, 3):
                ctx.http.get("{upstream.base}/points", params={{"page": page}}).raise_for_status()
    """)  # no budget: the count is stored alone
    proc = project.start("run", "sync")
    try:
        assert held.wait(60), proc.communicate(timeout=60)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)

    [run] = project.history("sync")
    assert (run["status"], run["requests"]) == ("crashed", len(upstream.hits("/points"))) == ("crashed", 3)
    assert 'schedsync_requests_total{job="sync"} 3' in project.cli("metrics").stdout.splitlines()


def test_ctx_http_retries_like_an_http_job(project, upstream):
    @upstream.route("/flaky")
    def flaky(request):
        if len(upstream.hits("/flaky")) < 3:
            return reply(503, {"error": "busy"})
        return reply(200, {"ok": True})

    python_job(project, f"""
        def sync(ctx):
            assert ctx.http.get("{upstream.base}/flaky").json() == {{"ok": True}}
            return 1
    """)

    assert project.cli("run", "sync").returncode == 0
    [run] = project.history("sync")
    assert (run["status"], run["attempts"], run["requests"]) == ("success", 3, 3)


def test_an_http_error_in_the_function_reads_like_an_http_jobs(project, upstream):
    @upstream.route("/missing")
    def missing(request):
        return reply(404, {"error": "nope"})

    python_job(project, f"""
        def sync(ctx):
            ctx.http.get("{upstream.base}/missing").raise_for_status()
    """)

    result = project.cli("run", "sync")

    assert result.returncode == 1
    [run] = project.history("sync")
    assert run["error"] == f'GET {upstream.base}/missing returned HTTP 404 Not Found: {{"error": "nope"}}'


def test_an_import_error_is_one_clear_line(project):
    python_job(project, "def sync(ctx):\n    return 0\n", target="nosuch.module:sync")

    result = project.cli("run", "sync")

    assert result.returncode == 1
    [run] = project.history("sync")
    assert run["error"] == "cannot import nosuch.module: No module named 'nosuch'"
    assert run["error"] in one_error_line(result)


def test_a_module_that_fails_to_import_or_lacks_the_function_says_which(project):
    python_job(project, "def sync(ctx):\n    return 0\n", target="myjobs:nope")
    (project.path / "broken.py").write_text("import json\nraise RuntimeError('no config')\n")

    missing = project.cli("run", "sync")
    project.write(project.config.read_text().replace("myjobs:nope", "broken:sync"))
    broken = project.cli("run", "sync")

    assert (missing.returncode, broken.returncode) == (1, 1)
    second, first = project.history("sync")
    assert first["error"] == "myjobs has no function nope"
    assert second["error"] == "cannot import broken: RuntimeError: no config"


def test_output_and_logs_are_redacted_and_held_back_under_cron(project):
    python_job(project, """
        import os

        def sync(ctx):
            ctx.log.info("using %s", os.environ["API_TOKEN"])
            print("token is", os.environ["API_TOKEN"])
            if os.environ.get("FAIL"):
                raise RuntimeError("refused " + os.environ["API_TOKEN"])
            return 1
    """, extra="    env: {API_TOKEN: \"${API_TOKEN}\"}")
    env = {"API_TOKEN": "tok-9f8e7d6c5b"}

    ok = project.cli("run", "sync", env=env)
    failed = project.cli("run", "sync", env={**env, "FAIL": "1"})

    assert ok.returncode == 0 and ok.stdout == "" and ok.stderr == ""
    assert failed.returncode == 1
    assert "using ***" in failed.stdout and "token is ***" in failed.stdout
    assert "RuntimeError: refused ***" in one_error_line(failed)
    assert "tok-9f8e7d6c5b" not in failed.stdout + failed.stderr
    for path in project.path.rglob("*"):
        if path.is_file():
            assert b"tok-9f8e7d6c5b" not in path.read_bytes(), path


def test_the_function_runs_in_the_jobs_yaml_folder_with_its_env(project):
    python_job(project, """
        import os

        def sync(ctx):
            assert os.getcwd() == os.path.dirname(os.path.abspath(__file__))
            assert os.environ["REGION"] == "eu"
            assert ctx.job == "sync" and ctx.last_success_at is None and ctx.remaining > 0
            return 0
    """, extra="    env: {REGION: eu}")

    import subprocess

    result = subprocess.run(project.argv("run", "sync"), cwd="/", env=project.env,
                            capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stdout + result.stderr


def test_a_bad_return_value_fails_the_run(project):
    python_job(project, """
        def sync(ctx):
            return "done"
    """)

    result = project.cli("run", "sync")

    assert result.returncode == 1
    [run] = project.history("sync")
    assert run["error"] == ("TypeError: myjobs:sync returned 'done'; return a count of items, "
                            "or {'processed': N, 'failed': M}")


def test_on_a_terminal_output_streams_above_the_progress_display(project):
    python_job(project, """
        import time

        def sync(ctx):
            print("fetching wallets")
            for _ in range(8):
                time.sleep(0.1)
                ctx.progress(5)
            ctx.log.info("done")
    """)

    code, shown = run_on_a_terminal(project, "run", "sync")

    assert code == 0, shown
    assert "fetching wallets" in shown and "INFO done" in shown
    assert re.search(r"sync  \d+ items", shown), shown
    assert re.search(r"sync: success in [\d.]+m?s, 40 items", shown), shown


def test_sys_exit_ends_the_job_not_schedsync(project):
    python_job(project, """
        import sys

        def sync(ctx):
            ctx.progress(2)
            sys.exit(3)
    """)

    result = project.cli("run", "sync")

    assert result.returncode == 1
    [run] = project.history("sync")
    assert (run["status"], run["error"], run["items_processed"]) == (
        "failed", "myjobs:sync called sys.exit(3)", 2)
    assert "Traceback" not in result.stderr


def test_an_async_function_is_awaited(project):
    python_job(project, """
        import asyncio

        async def sync(ctx):
            await asyncio.sleep(0.01)
            return 4
    """)

    assert project.cli("run", "sync").returncode == 0
    [run] = project.history("sync")
    assert (run["status"], run["items_processed"]) == ("success", 4)


def test_threads_that_outlive_the_run_do_not_crash_schedsync(project, upstream):
    @upstream.route("/ping")
    def ping(request):
        return reply(200, {"ok": True})

    python_job(project, f"""
        import threading, time

        def sync(ctx):
            def loop():
                while True:
                    try:
                        ctx.http.get("{upstream.base}/ping")
                    except Exception:
                        time.sleep(0.001)

            for _ in range(8):
                threading.Thread(target=loop, daemon=True).start()
            time.sleep(30)
    """, extra="    timeout: 1s\n    budget: api\n    cost: 0",
               budgets="budgets: {api: {capacity: 1000000, per: 1s}}")

    codes = [project.cli("run", "sync").returncode for _ in range(5)]

    assert codes == [1] * 5


def test_a_closed_requester_refuses_requests_without_touching_the_store():
    from schedsync.jobs.transport import Requester, RequestFailed

    class NoStore:  # any use of the run's context after it ended is the bug
        def __getattr__(self, name):
            raise AssertionError(f"ctx.{name} used after the run ended")

    requester = Requester(NoStore())
    requester.close()
    with pytest.raises(RequestFailed, match="the run has ended"):
        requester.send("GET", "http://127.0.0.1:9/")
    with pytest.raises(RequestFailed, match="the run has ended"):
        requester._spend()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_exception_holding_undecodable_text_is_a_failed_run_not_a_crash(project, request, backend):
    # A file name read from disk may not be UTF-8: os.fsdecode keeps its bytes as lone
    # surrogates, which no UTF-8 encoder (SQLite, libpq, stdout) accepts as they are.
    if backend == "postgresql":
        project.env["SCHEDSYNC_STATE"] = request.getfixturevalue("pg_url")
    python_job(project, """
        import os

        def sync(ctx):
            name = os.fsdecode(b"report-\\xff.csv")
            print("reading", name)
            ctx.log.info("opening %s", name)
            raise OSError(f"cannot parse {name}")
    """)

    result = project.cli("run", "sync")

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    [run] = project.history("sync")
    assert run["status"] == "failed"
    assert run["error"] == "OSError: cannot parse report-\\xff.csv"
    assert one_error_line(result).startswith("error: sync: failed in ")
    assert run["error"] in one_error_line(result)
    assert "reading report-" in result.stdout and "opening report-" in run["output"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_ctx_db_has_one_api_whichever_backend_holds_the_state(project, request, backend):
    # The same job code, unchanged, on a SQLite state (data.db) and a PostgreSQL state (its database).
    if backend == "postgresql":
        project.env["SCHEDSYNC_STATE"] = request.getfixturevalue("pg_url")
    python_job(project, """
        def sync(ctx):
            stored, failed = ctx.db.upsert("things", [{"id": 1, "v": "a"}, {"id": 2, "v": "b"},
                                                      {"id": None}], pk="id")
            with ctx.db.transaction():
                changed = ctx.db.execute("UPDATE things SET v = ? WHERE id = ?", ("B", 2))
                ctx.db.upsert("things", [{"id": 3, "v": "c", "extra": 1.5}], pk="id")
            rows = list(ctx.db.query("SELECT id, v, extra FROM things WHERE id >= :low ORDER BY id",
                                     {"low": 2}))
            assert changed == 1 and rows == [{"id": 2, "v": "B", "extra": None},
                                             {"id": 3, "v": "c", "extra": 1.5}], rows
            assert ctx.db.conn is not None
            return {"processed": stored + 1, "failed": failed}
    """)

    result = project.cli("run", "sync")

    assert result.returncode == 0 and result.stderr == "sync: partial: 1 of 4 items failed\n", result.stderr
    [run] = project.history("sync")
    assert (run["status"], run["items_processed"], run["items_failed"], run["error"]) == ("partial", 3, 1, None)

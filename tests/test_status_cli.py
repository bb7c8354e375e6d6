"""`schedsync status` (table, --json, --check, --watch, JOB), pause/resume and prune,
through the real CLI on real state files."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest

from schedsync.store import open_store
from stored import finished_run

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
DAY = 86400.0

RUN_KEYS = {"id", "job", "status", "reason", "trigger", "started_at", "finished_at", "duration_ms",
            "attempts", "requests", "items_processed", "items_failed", "exit_code", "error",
            "retry_at", "host", "pid", "slot", "retry_of", "retry_number",  # the last three: issue 17
            "params", "parent",  # issue 18: what started the run
            "items_inserted", "items_updated", "items_deleted"}  # issue 19: what an http job's load did
# SPEC's keys, then the ones we add (SPEC: "Add fields freely; do not rename these").
JOB_KEYS = {"name", "health", "schedule", "paused", "next_expected", "last_run", "last_success_at",
            "breaker", "budgets"} | {"why", "description", "kind", "consecutive_failures", "recent", "fresh"}


def seen_long_ago(project, *jobs: str, ago: float = 3600) -> None:
    """Record that schedsync first saw ``jobs`` ``ago`` seconds back, so missed starts count."""
    store = open_store(str(project.state))
    try:
        for job in jobs:
            store.see_jobs([job], time.time() - ago)
    finally:
        store.close()


def add_run(project, job: str, status: str, started_at: float, reason: str | None = None) -> int:
    """A finished run written through the store, as if it happened at ``started_at``."""
    store = open_store(str(project.state))
    try:
        run = finished_run(store, job, status, started_at, reason=reason,
                           exit_code=1 if status == "failed" else 0,
                           error="exit 1" if status == "failed" else None)
        return run.id
    finally:
        store.close()


JOBS = """
    state: schedsync.db
    budgets:
      api: 10/1h
    jobs:
      fine:
        description: Always works
        schedule: "*/5 * * * *"
        budget: api
        command: ["true"]
      broken:
        schedule: "0 * * * *"
        command: "echo the upstream said no >&2; exit 3"
        breaker: {failures: 2, reset_after: 10m}
      by-hand:
        command: ["true"]
"""


# --- --check ---------------------------------------------------------------------------

def test_check_exits_0_when_every_job_is_ok_or_never_ran(project):
    project.write(JOBS)
    assert project.cli("run", "--force-slot", "fine").returncode == 0
    result = project.cli("status", "--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_exits_1_when_the_last_run_failed_and_plain_status_still_exits_0(project):
    project.write(JOBS)
    assert project.cli("run", "--force-slot", "broken").returncode == 1
    check = project.cli("status", "--check")
    assert check.returncode == 1
    assert "FAILING" in check.stdout
    assert project.cli("status").returncode == 0


def test_check_exits_1_when_a_scheduled_job_missed_its_start(project):
    project.write("""
        jobs:
          every-minute:
            schedule: "* * * * *"
            grace: 0s
            command: ["true"]
    """)
    seen_long_ago(project, "every-minute")
    assert project.status()["jobs"][0]["health"] == "LATE"
    assert project.cli("status", "--check").returncode == 1


def test_check_exits_1_when_a_job_has_not_succeeded_for_two_expected_runs(project):
    project.write("""
        jobs:
          starved:
            schedule: "* * * * *"
            grace: 5m  # the skip below stays this job's on-time start for 5 minutes
            command: ["true"]
    """)
    seen_long_ago(project, "starved")
    add_run(project, "starved", "skipped", time.time(), reason="rate_limited")  # started, never succeeds
    assert project.status()["jobs"][0]["health"] == "STALLED"
    assert project.cli("status", "--check").returncode == 1


def test_check_of_one_job_judges_only_that_job(project):
    project.write(JOBS)
    project.cli("run", "--force-slot", "broken")
    project.cli("run", "--force-slot", "fine")
    assert project.cli("status", "fine", "--check").returncode == 0
    assert project.cli("status", "broken", "--check").returncode == 1


# --- --json ----------------------------------------------------------------------------

def test_json_has_the_documented_shape(project):
    project.write(JOBS)
    project.cli("run", "--force-slot", "fine")
    project.cli("run", "--force-slot", "broken")
    data = project.status()
    assert set(data) == {"generated_at", "jobs", "budgets", "clock_skew"}  # clock_skew: issue 21
    assert data["clock_skew"] == []  # SQLite: one host, no skew to name
    assert ISO.match(data["generated_at"])
    assert [j["name"] for j in data["jobs"]] == ["fine", "broken", "by-hand"]  # registry order
    for job in data["jobs"]:
        assert set(job) == JOB_KEYS
        assert set(job["breaker"]) == {"name", "state", "failures", "opens_until"}
        assert job["health"] in ("RUNNING", "OK", "LATE", "STALE", "STALLED", "FAILING", "PAUSED", "NEVER")
        assert isinstance(job["paused"], bool)
        for recent in job["recent"]:
            assert set(recent) == {"status", "duration_ms"}
    fine, broken, by_hand = data["jobs"]
    assert fine["health"] == "OK" and fine["schedule"] == "*/5 * * * *" and fine["budgets"] == ["api"]
    assert ISO.match(fine["next_expected"]) and ISO.match(fine["last_success_at"])
    assert set(fine["last_run"]) == RUN_KEYS
    assert fine["last_run"]["status"] == "success" and fine["last_run"]["trigger"] == "cron"
    assert ISO.match(fine["last_run"]["started_at"]) and ISO.match(fine["last_run"]["finished_at"])
    assert broken["health"] == "FAILING" and broken["consecutive_failures"] == 1
    assert broken["last_run"]["exit_code"] == 3 and broken["last_success_at"] is None
    assert broken["breaker"] == {"name": "broken", "state": "closed", "failures": 1, "opens_until": None}
    assert by_hand == {**by_hand, "health": "NEVER", "schedule": None, "next_expected": None,
                       "last_run": None, "recent": [], "consecutive_failures": 0}
    budget, = data["budgets"]
    assert set(budget) == {"name", "tokens", "capacity", "per_seconds"}
    assert budget["name"] == "api" and budget["capacity"] == 10 and budget["per_seconds"] == 3600
    assert 8.9 < budget["tokens"] < 9.5  # one spent, a little refilled


def test_json_of_one_job_lists_only_that_job(project):
    project.write(JOBS)
    open_store(str(project.state)).close()  # an empty state: read commands create none
    data = json.loads(project.cli("status", "broken", "--json").stdout)
    assert [j["name"] for j in data["jobs"]] == ["broken"]


def test_json_shows_an_open_breaker_with_the_time_it_half_opens(project):
    project.write(JOBS)
    project.cli("run", "--force-slot", "broken")
    project.cli("run", "--force-slot", "broken")
    broken = project.status()["jobs"][1]
    assert broken["breaker"]["state"] == "open" and broken["breaker"]["failures"] == 2
    assert ISO.match(broken["breaker"]["opens_until"])
    assert broken["consecutive_failures"] == 2


# --- the table -------------------------------------------------------------------------

@pytest.fixture
def busy(project):
    """Jobs in several states, one with a long name and twenty runs."""
    project.write(JOBS.replace("by-hand:", "a-job-with-a-rather-long-name-indeed:"))
    for _ in range(2):
        project.cli("run", "--force-slot", "broken")
    base = time.time() - 3 * 3600
    for i in range(20):
        add_run(project, "fine", "success", base + i * 300)
    return project


def test_the_table_lists_the_worst_jobs_first(busy):
    lines = busy.cli("status").stdout.splitlines()
    names = [line.split()[0] for line in lines[1:4]]
    assert names[0] == "broken"
    assert lines[0].split()[:3] == ["JOB", "HEALTH", "LAST"]


@pytest.mark.parametrize("width", [80, 120, 160])
def test_the_table_fits_the_width_it_is_given(busy, width):
    out = busy.cli("status", env={"COLUMNS": str(width)}).stdout
    assert all(len(line.rstrip()) <= width for line in out.splitlines()), out
    assert "…" not in out  # nothing cut short: narrower tables drop columns instead
    assert "FAILING" in out and "breaker open" in out  # the reason stays, in WHY or below the table
    assert "●" in out and re.search("[▁▂▃▄▅▆▇█]", out)  # the strip and its duration sparkline


def test_a_wide_terminal_shows_budget_took_and_why_columns(busy):
    out = busy.cli("status", env={"COLUMNS": "220"}).stdout
    header = out.splitlines()[0].split()
    assert header == ["JOB", "HEALTH", "LAST", "RUN", "TOOK", "NEXT", "BREAKER", "BUDGET", "RECENT", "WHY"]
    assert "●" * 20 in out  # twenty recent runs on a wide screen


def test_a_pipe_without_columns_gets_the_whole_table_without_colour(busy):
    env = {k: v for k, v in busy.env.items() if k not in ("COLUMNS", "LINES")}  # xdist sets them
    out = subprocess.run(busy.argv("status"), capture_output=True, text=True, env=env,
                         stdin=subprocess.DEVNULL, timeout=60).stdout
    assert "\x1b[" not in out
    assert "a-job-with-a-rather-long-name-indeed" in out  # not folded
    assert "WHY" in out.splitlines()[0]


def test_an_empty_state_shows_every_job_as_never_run(project):
    project.write(JOBS)
    open_store(str(project.state)).close()  # an empty state: read commands create none
    out = project.cli("status").stdout
    assert out.count("NEVER") == 3


# --- status JOB ------------------------------------------------------------------------

def test_status_of_one_job_shows_its_last_error_breaker_transitions_budget_and_runs(project):
    project.write(JOBS)
    project.cli("run", "--force-slot", "broken")
    project.cli("run", "--force-slot", "broken")
    result = project.cli("status", "broken", env={"COLUMNS": "120"})
    assert result.returncode == 0
    out = result.stdout
    assert out.splitlines()[0].startswith("broken  FAILING  last run failed")
    assert "last error" in out and "exit 3: the upstream said no" in out
    assert "closed → open" in out  # the transition, with its reason
    assert "breaker    broken: open" in out
    assert "last ok    never (2 failures in a row)" in out
    assert out.count("✗ failed") == 2


def test_status_of_one_job_shows_its_budget(project):
    project.write(JOBS)
    project.cli("run", "--force-slot", "fine")
    out = project.cli("status", "fine").stdout
    assert "Always works" in out
    assert re.search(r"budget     api: 9 of 10 tokens per 1h", out)  # whole tokens, rounded down


def spent_long_ago(project, budget: str, tokens: float, ago: float, rate=(10.0, 3600.0)) -> None:
    """``tokens`` spent from ``budget`` ``ago`` seconds ago: with 10/1h, 10 spent 3 minutes ago
    leave 0.5 tokens now (and a little more as the test goes on)."""
    store = open_store(str(project.state))
    try:
        assert store.spend([budget], {budget: rate}, tokens, now=time.time() - ago) is None
    finally:
        store.close()


def test_budget_levels_are_whole_tokens_rounded_down_in_the_table_and_the_job(project):
    project.write(JOBS)
    spent_long_ago(project, "api", 10, ago=180 + 36 * 4)  # 0.9 tokens now: "0.9" promises nothing
    table = project.cli("status").stdout
    assert "budgets: api 0/10 per 1h" in table.splitlines()
    assert re.search(r"^fine +NEVER .* 0/10 ", table, re.M), table
    assert "budget     api: 0 of 10 tokens per 1h" in project.cli("status", "fine").stdout


def test_status_of_an_unknown_job_exits_2_and_suggests_a_name(project):
    project.write(JOBS)
    result = project.cli("status", "brokn")
    assert result.returncode == 2
    assert result.stderr == f"error: {project.config}: no job named 'brokn' — did you mean 'broken'?\n"


# --- --watch ---------------------------------------------------------------------------

def test_watch_refreshes_on_a_terminal_and_ends_cleanly_on_ctrl_c(project):
    import pty

    project.write(JOBS)
    project.cli("run", "--force-slot", "fine")
    leader, follower = pty.openpty()
    os.set_blocking(leader, False)
    proc = subprocess.Popen(project.argv("status", "--watch"), stdin=follower, stdout=follower,
                            stderr=follower, cwd=project.path, env={**project.env, "COLUMNS": "120"},
                            start_new_session=True)
    os.close(follower)
    seen = b""
    try:
        deadline = time.time() + 20
        while seen.count(b"HEALTH") < 2 and time.time() < deadline:  # a first frame, then a refresh
            time.sleep(0.1)
            try:
                seen += os.read(leader, 65536)
            except BlockingIOError:
                pass
        assert seen.count(b"HEALTH") >= 2, seen.decode(errors="replace")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0  # a loaded machine may take seconds to exit
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
    assert b"Traceback" not in seen and b"fine" in seen


def test_watch_without_a_terminal_prints_a_snapshot_per_refresh(project):
    project.write(JOBS)
    open_store(str(project.state)).close()  # an empty state: read commands create none
    proc = project.start("status", "--watch")
    snapshots = 0
    while snapshots < 2:  # a first snapshot, then a refresh
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        snapshots += line.startswith("schedsync status at")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)  # a loaded machine may take seconds to exit
    assert proc.returncode == 0, err
    assert err == ""


def test_watch_ends_on_ctrl_c_even_when_its_shell_ignored_sigint(project):
    # A non-interactive shell starts background jobs with SIGINT ignored, and an ignored
    # signal is inherited: watch must still end on it (as `run` takes SIGINT whatever it got).
    project.write(JOBS)
    open_store(str(project.state)).close()
    proc = project.start("status", "--watch", preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert proc.stdout.readline().startswith("schedsync status at")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and err == "", err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_a_piped_table_has_no_trailing_padding(busy):
    out = busy.cli("status").stdout
    assert all(line == line.rstrip() for line in out.splitlines())


def test_watch_does_not_combine_with_json_or_check(project):
    project.write(JOBS)
    result = project.cli("status", "--watch", "--json")
    assert result.returncode == 2
    assert result.stderr == "error: --watch shows a live table; it does not combine with --json — drop one of them\n"
    assert project.cli("status", "--watch", "--check").returncode == 2


# --- pause / resume --------------------------------------------------------------------

def test_a_paused_job_is_skipped_with_exit_75_and_recorded_as_paused(project):
    project.write(JOBS)
    result = project.cli("pause", "fine")
    assert result.returncode == 0
    assert result.stdout == (f"fine: paused (new state {project.state}); its runs are skipped"
                             " until `schedsync resume fine`\n")
    assert project.cli("run", "--force-slot", "fine").returncode == 75
    run, = project.history("fine")
    assert (run["status"], run["reason"]) == ("skipped", "paused")
    job = project.status()["jobs"][0]
    assert job["health"] == "PAUSED" and job["paused"] is True and job["next_expected"] is None
    assert project.cli("status", "--check").returncode == 0  # paused is a decision, not a fault


def test_a_resumed_job_runs_again(project):
    project.write(JOBS)
    project.cli("pause", "fine")
    result = project.cli("resume", "fine")
    assert (result.returncode, result.stdout) == (0, "fine: resumed\n")
    assert project.cli("run", "--force-slot", "fine").returncode == 0
    assert project.status()["jobs"][0]["health"] == "OK"


def test_pausing_a_paused_job_keeps_it_paused(project):
    project.write(JOBS)
    project.cli("pause", "fine")
    assert project.cli("pause", "fine").returncode == 0
    assert project.status()["jobs"][0]["paused"] is True


@pytest.mark.parametrize("command", ["pause", "resume"])
def test_pause_and_resume_of_an_unknown_job_exit_2(project, command):
    project.write(JOBS)
    result = project.cli(command, "fin")
    assert result.returncode == 2
    assert result.stderr == f"error: {project.config}: no job named 'fin' — did you mean 'fine'?\n"


# --- prune -----------------------------------------------------------------------------

RETAINED = """
    state: schedsync.db
    defaults:
      retention: {success: 14d, failed: forever}
    jobs:
      keeper:
        command: ["true"]
      strict:
        retention: {failed: 7d}
        command: ["true"]
"""


def test_prune_deletes_successes_and_skips_past_retention_and_keeps_failures_forever(project):
    project.write(RETAINED)
    now = time.time()
    old_success = add_run(project, "keeper", "success", now - 30 * DAY)
    old_skip = add_run(project, "keeper", "skipped", now - 20 * DAY, reason="locked")
    old_failure = add_run(project, "keeper", "failed", now - 400 * DAY)
    recent_success = add_run(project, "keeper", "success", now - 1 * DAY)
    result = project.cli("prune")
    assert (result.returncode, result.stdout) == (0, "pruned 2 runs\n")
    kept = {run["id"] for run in project.history("keeper")}
    assert kept == {old_failure, recent_success}
    assert old_success not in kept and old_skip not in kept


def test_prune_deletes_failures_past_their_own_retention(project):
    project.write(RETAINED)
    now = time.time()
    old = add_run(project, "strict", "failed", now - 8 * DAY)
    young = add_run(project, "strict", "failed", now - 6 * DAY)
    assert project.cli("prune").stdout == "pruned 1 run\n"
    assert [run["id"] for run in project.history("strict")] == [young]
    assert old != young


def test_prune_keeps_the_newest_success_however_old(project):
    project.write(RETAINED)
    now = time.time()
    add_run(project, "keeper", "success", now - 40 * DAY)
    newest = add_run(project, "keeper", "success", now - 30 * DAY)
    add_run(project, "keeper", "failed", now - 2 * DAY)
    assert project.cli("prune").stdout == "pruned 1 run\n"
    job = project.status()["jobs"][0]
    assert job["last_success_at"] is not None  # "last success 30d ago", not "never"
    assert job["consecutive_failures"] == 1
    assert newest in {run["id"] for run in project.history("keeper")}


def test_a_long_failure_streak_is_counted_past_the_recent_runs(project):
    project.write(RETAINED)
    store = open_store(str(project.state))
    base = time.time() - DAY
    try:
        for i, status in enumerate(["success"] + ["failed"] * 25 + ["skipped"]):
            finished_run(store, "keeper", status, base + i * 60)
    finally:
        store.close()
    assert project.status()["jobs"][0]["consecutive_failures"] == 25


def test_prune_with_nothing_to_do_says_so(project):
    project.write(RETAINED)
    open_store(str(project.state)).close()  # an empty state: read commands create none
    assert project.cli("prune").stdout == "pruned 0 runs\n"


def test_a_run_prunes_at_most_a_hundred_old_runs(project):
    project.write(RETAINED)
    store = open_store(str(project.state))
    old = time.time() - 30 * DAY
    try:
        for i in range(150):
            finished_run(store, "keeper", "success", old + i)
    finally:
        store.close()
    assert project.cli("run", "keeper").returncode == 0
    assert len(project.history("keeper", limit=500)) == 150 - 100 + 1
    assert project.cli("run", "keeper").returncode == 0
    assert len(project.history("keeper", limit=500)) == 2  # the rest, then the two new runs


def test_prune_finds_old_runs_through_an_index(project):
    project.write(RETAINED)
    add_run(project, "keeper", "success", time.time() - 30 * DAY)
    store = open_store(str(project.state))
    statements = []
    store.db.set_trace_callback(statements.append)
    try:
        store._prune("keeper", time.time(), 14 * DAY, 7 * DAY, limit=100)  # the backend's own step
        plans = []
        for sql in statements:
            if sql.lstrip().upper().startswith(("DELETE", "SELECT")):
                plans += [row[3] for row in store.db.execute("EXPLAIN QUERY PLAN " + sql)]
    finally:
        store.close()
    assert plans and not [p for p in plans if p.startswith("SCAN")], plans


def test_prune_on_an_unusable_state_file_exits_1(project):
    project.write(RETAINED)
    project.state.write_text("this is not a database, it is a text file" * 100)
    result = project.cli("prune")
    assert result.returncode == 1
    assert result.stderr == (f"error: state file {project.state} is not a schedsync state database"
                             " — point --state at a schedsync state file, or move this file aside\n")


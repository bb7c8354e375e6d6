"""Breakers and command retries end to end: the real CLI in real processes.

The failing command reads a flag file, so a test switches a job between failing
and succeeding without touching jobs.yaml.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from zoneinfo import ZoneInfo

from schedsync.store import open_store

FLAKY = """\
    state: schedsync.db
    jobs:
      flaky:
        command: "if [ -e fail ]; then exit 3; fi"
        breaker: {failures: 3, reset_after: RESET}
"""


def flaky(reset_after: str = "2s") -> str:
    return FLAKY.replace("RESET", reset_after)


def when(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def failing(project, on: bool = True) -> None:
    flag = project.path / "fail"
    flag.touch() if on else flag.unlink(missing_ok=True)


OPENED = r"(breaker \S+ opened after \d+ failures?: runs skipped until ([\d-]+ )?[\d:]+ \S+\n)?"


def assert_failed(result, job: str, what: str) -> None:
    """A failed run's stderr: its error line (after the breaker's line, if it opened it)."""
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert re.fullmatch(rf"{OPENED}error: {job}: failed in \S+: {re.escape(what)} — see `[^`]+ history {job}`\n",
                        result.stderr), result.stderr


def test_the_run_that_opens_the_breaker_says_so_and_until_when(project):
    project.write(flaky("10m"))
    failing(project)
    quiet = [project.cli("run", "flaky").stderr for _ in range(2)]
    assert not any("opened" in err for err in quiet)
    opening = project.cli("run", "flaky", env={"TZ": "America/New_York"})
    first, second = opening.stderr.splitlines()
    # the time of day in the local zone, labelled with it (the date too on another day)
    until = datetime.fromtimestamp(when(breaker_of(project, "flaky")["opens_until"]), ZoneInfo("America/New_York"))
    assert first in [f"breaker flaky opened after 3 failures: runs skipped until {until:%H:%M:%S %Z}",
                     f"breaker flaky opened after 3 failures: runs skipped until {until:%Y-%m-%d %H:%M:%S %Z}"]
    assert until.strftime("%Z") in ("EST", "EDT")
    assert second.startswith("error: flaky: failed in ")


def assert_skipped(result) -> None:
    assert (result.returncode, result.stdout, result.stderr) == (75, "", "")


def breaker_of(project, job: str) -> dict:
    [row] = [j for j in project.status()["jobs"] if j["name"] == job]
    return row["breaker"]


def stored(project, read):
    """Read the state file directly, for what JSON rounds to the second."""
    store = open_store(str(project.state))
    try:
        return read(store)
    finally:
        store.close()


def transitions(project, name: str) -> list[tuple[str, str]]:
    return [(old, new) for _, old, new, _ in reversed(stored(project, lambda s: s.transitions(name, 50)))]


def trip(project, job: str = "flaky", times: int = 3) -> None:
    failing(project)
    for _ in range(times):
        assert_failed(project.cli("run", job), job, "exit 3")


def wait_until_half_open(project, job: str = "flaky") -> None:
    until = when(breaker_of(project, job)["opens_until"])  # whole seconds, rounded down
    time.sleep(max(0.0, until + 1.05 - time.time()))
    assert breaker_of(project, job)["state"] == "half-open"


# --- tripping ----------------------------------------------------------------------------

def test_three_failures_in_a_row_open_the_breaker_and_the_next_run_is_skipped(project):
    project.write(flaky("1h"))
    failing(project)
    for failures in (1, 2):
        assert_failed(project.cli("run", "flaky"), "flaky", "exit 3")
        assert breaker_of(project, "flaky") == {"name": "flaky", "state": "closed",
                                                "failures": failures, "opens_until": None}
    assert_failed(project.cli("run", "flaky"), "flaky", "exit 3")
    opened = breaker_of(project, "flaky")
    assert (opened["state"], opened["failures"]) == ("open", 3)

    assert_skipped(project.cli("run", "flaky"))
    skip, *earlier = project.history("flaky")
    assert (skip["status"], skip["reason"], skip["error"]) == ("skipped", "breaker_open",
                                                               "breaker flaky is open")
    assert skip["retry_at"] == opened["opens_until"]  # when it half-opens
    assert [r["status"] for r in earlier] == ["failed"] * 3
    assert when(opened["opens_until"]) - when(earlier[0]["finished_at"]) in (3600, 3601)  # whole seconds
    assert transitions(project, "flaky") == [("closed", "open")]


def test_skips_never_count_as_failures(project):
    project.write("""\
        state: schedsync.db
        budgets:
          upstream: 1/1d
        jobs:
          flaky:
            command: "exit 3"
            budget: upstream
            breaker: {failures: 2, reset_after: 1h}
    """)
    assert_failed(project.cli("run", "flaky"), "flaky", "exit 3")
    for _ in range(3):
        assert_skipped(project.cli("run", "flaky"))  # rate_limited
    assert project.cli("pause", "flaky").returncode == 0
    assert_skipped(project.cli("run", "flaky"))  # paused
    assert breaker_of(project, "flaky")["state"] == "closed"
    assert breaker_of(project, "flaky")["failures"] == 1
    assert [r["reason"] for r in project.history("flaky")] == ["paused"] + ["rate_limited"] * 3 + [None]


# --- half-open ---------------------------------------------------------------------------

def test_it_half_opens_after_reset_after_and_a_successful_trial_closes_it(project):
    project.write(flaky("2s"))
    trip(project)
    opens_until = stored(project, lambda s: s.breakers(["flaky"])["flaky"]).opens_until
    seen = breaker_of(project, "flaky")["state"]
    if time.time() < opens_until:  # a loaded machine may take the whole 2s to get here
        assert seen == "open"
    wait_until_half_open(project)

    failing(project, False)
    result = project.cli("run", "flaky")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert breaker_of(project, "flaky") == {"name": "flaky", "state": "closed", "failures": 0,
                                            "opens_until": None}
    assert transitions(project, "flaky") == [("closed", "open"), ("half-open", "closed")]
    assert project.cli("run", "flaky").returncode == 0


def test_a_failed_trial_reopens_it_for_a_fresh_reset_after(project):
    project.write(flaky("2s"))
    trip(project)
    wait_until_half_open(project)
    project.write(flaky("1h"))  # the fresh wait is the one jobs.yaml says now

    assert_failed(project.cli("run", "flaky"), "flaky", "exit 3")
    reopened = breaker_of(project, "flaky")
    trial = project.history("flaky")[0]
    assert (reopened["state"], reopened["failures"]) == ("open", 4)
    assert when(reopened["opens_until"]) - when(trial["finished_at"]) in (3600, 3601)
    assert_skipped(project.cli("run", "flaky"))
    assert project.history("flaky")[0]["retry_at"] == reopened["opens_until"]
    assert transitions(project, "flaky") == [("closed", "open"), ("half-open", "open")]


def test_half_open_lets_one_of_two_concurrent_runs_through_as_the_trial(project):
    project.write("""\
        state: schedsync.db
        jobs:
          flaky:
            # the trial holds its lease until the test says go
            command: "if [ -e fail ]; then exit 3; fi; while [ ! -e go ]; do sleep 0.05; done"
            overlap: allow
            breaker: {failures: 3, reset_after: 2s}
    """)
    trip(project)
    wait_until_half_open(project)
    failing(project, False)

    both = [project.start("run", "flaky") for _ in range(2)]
    try:
        deadline = time.time() + 60
        while all(p.poll() is None for p in both) and time.time() < deadline:
            time.sleep(0.05)
        [skipped] = [p for p in both if p.poll() is not None]
        [trial] = [p for p in both if p is not skipped]
        assert (skipped.returncode, *skipped.communicate()) == (75, "", "")
        assert trial.poll() is None  # still the trial, holding the only lease
    finally:
        (project.path / "go").touch()  # never leave a trial waiting, pass or fail
        for p in both:
            p.wait(timeout=60)
    assert (trial.returncode, *trial.communicate()) == (0, "", "")

    latest = project.history("flaky")[:2]
    assert sorted((r["status"], r["reason"]) for r in latest) == [("skipped", "breaker_open"),
                                                                  ("success", None)]
    skip = next(r for r in latest if r["status"] == "skipped")
    assert skip["error"] == "breaker flaky is open"
    assert when(skip["retry_at"]) > when(skip["started_at"])  # when the trial's lease runs out
    assert breaker_of(project, "flaky")["state"] == "closed"


# --- by hand, and shared -------------------------------------------------------------------

def test_breaker_reset_closes_it_by_hand(project):
    project.write(flaky("1h"))
    trip(project)
    result = project.cli("breaker", "reset", "flaky")
    assert (result.returncode, result.stdout, result.stderr) == (0, "breaker flaky: closed (was open)\n", "")
    assert breaker_of(project, "flaky") == {"name": "flaky", "state": "closed", "failures": 0,
                                            "opens_until": None}
    assert transitions(project, "flaky") == [("closed", "open"), ("open", "closed")]
    assert_failed(project.cli("run", "flaky"), "flaky", "exit 3")  # it ran: not skipped


def test_breaker_reset_of_a_closed_breaker_says_so(project):
    project.write(flaky())
    open_store(str(project.state)).close()  # an empty state: `breaker reset` creates none
    result = project.cli("breaker", "reset", "flaky")
    assert (result.returncode, result.stdout, result.stderr) == (0, "breaker flaky: closed (was closed)\n", "")
    assert transitions(project, "flaky") == []


def test_breaker_reset_of_an_unknown_job_is_a_usage_error(project):
    project.write(flaky())
    result = project.cli("breaker", "reset", "flakey")
    assert result.returncode == 2
    assert result.stderr == f"error: {project.config}: no job named 'flakey' — did you mean 'flaky'?\n"


def test_a_named_breaker_shared_by_two_jobs_trips_for_both(project):
    project.write("""\
        state: schedsync.db
        defaults:
          breaker: {name: upstream, failures: 2, reset_after: 1h}
        jobs:
          quests:
            command: "exit 3"
          points:
            command: "exit 3"
    """)
    assert_failed(project.cli("run", "quests"), "quests", "exit 3")
    assert_failed(project.cli("run", "points"), "points", "exit 3")
    for job in ("quests", "points"):
        assert_skipped(project.cli("run", job))
        skip = project.history(job)[0]
        assert (skip["reason"], skip["error"]) == ("breaker_open", "breaker upstream is open")
        breaker = breaker_of(project, job)
        assert (breaker["name"], breaker["state"], breaker["failures"]) == ("upstream", "open", 2)
        assert skip["retry_at"] == breaker["opens_until"]

    result = project.cli("breaker", "reset", "points")
    assert result.stdout == "breaker upstream: closed (was open)\n"
    assert breaker_of(project, "quests")["state"] == "closed"


# --- retries of command jobs -------------------------------------------------------------

COUNTING = 'n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; '


def test_a_command_is_retried_for_the_exit_codes_it_lists_until_it_succeeds(project):
    project.write(f"""\
        state: schedsync.db
        jobs:
          validate:
            command: '{COUNTING}[ $n -ge 3 ] || exit 75'
            retries: {{attempts: 3, initial: 10ms, on_exit_codes: [75]}}
    """)
    result = project.cli("run", "validate")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    [run] = project.history("validate")
    assert (run["status"], run["attempts"], run["exit_code"]) == ("success", 3, 0)
    assert (project.path / "count").read_text() == "3\n"


def test_a_command_that_keeps_failing_stops_after_its_attempts(project):
    project.write(f"""\
        state: schedsync.db
        jobs:
          validate:
            command: '{COUNTING}exit 75'
            retries: {{attempts: 3, initial: 10ms, on_exit_codes: [75]}}
    """)
    assert_failed(project.cli("run", "validate"), "validate", "exit 75")
    [run] = project.history("validate")
    assert (run["status"], run["attempts"], run["exit_code"]) == ("failed", 3, 75)
    assert (project.path / "count").read_text() == "3\n"


def test_an_exit_code_not_listed_is_not_retried(project):
    project.write(f"""\
        state: schedsync.db
        jobs:
          validate:
            command: '{COUNTING}exit 4'
            retries: {{attempts: 3, initial: 10ms, on_exit_codes: [75]}}
    """)
    assert_failed(project.cli("run", "validate"), "validate", "exit 4")
    [run] = project.history("validate")
    assert (run["status"], run["attempts"], run["exit_code"]) == ("failed", 1, 4)
    assert (project.path / "count").read_text() == "1\n"


def test_a_timeout_is_never_retried_even_when_its_exit_code_is_listed(project):
    project.write(f"""\
        state: schedsync.db
        jobs:
          slow:
            command: '{COUNTING}sleep 30'
            timeout: 500ms
            retries: {{attempts: 3, initial: 10ms, on_exit_codes: [75, -15, 143, -9, 137]}}
    """)
    started = time.time()
    result = project.cli("run", "slow")
    assert time.time() - started < 20
    assert result.returncode == 1 and result.stdout == ""
    assert re.fullmatch(r"error: slow: timeout in \S+: timed out after 500ms — see `[^`]+ history slow`\n",
                        result.stderr), result.stderr
    [run] = project.history("slow")
    assert (run["status"], run["attempts"]) == ("timeout", 1)
    assert (project.path / "count").read_text() == "1\n"

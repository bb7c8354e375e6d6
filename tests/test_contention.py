"""Many real ``schedsync run`` processes at once, as cron fires them at :00.

Each test starts every process first (Popen), then waits for all of them, so
they race for the state file, the budget and the schema for real.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

DAY = 86400.0


def start_all(project, jobs: list[str]):
    """Every process started before any is waited for; (exit code, stdout, stderr) each."""
    procs = [project.start("run", job) for job in jobs]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        results.append((proc.returncode, out, err))
    return results


def when(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def assert_clean(results):
    codes = Counter(code for code, _, _ in results)
    assert set(codes) <= {0, 75}, codes
    for code, out, err in results:
        assert "locked" not in err and "Traceback" not in err, err
        # under cron (no TTY) success and skips print nothing: cron mails nothing
        assert (out, err) == ("", ""), (code, out, err)
    return codes


def assert_rate_limited_skips(runs, budget: str):
    for run in runs:
        assert run["reason"] == "rate_limited"
        assert run["exit_code"] is None and run["attempts"] == 0
        assert run["error"] == f"budget {budget} is empty"
        # empty at 15/1d: the next token is there about 1d/15 after the burst
        wait = when(run["retry_at"]) - when(run["started_at"])
        assert DAY / 15 - 120 < wait <= DAY / 15 + 1, run


BURST = """\
    state: schedsync.db
    budgets:
      upstream: 15/1d
    jobs:
      burst:
        command: "true"
        budget: upstream
        overlap: allow
"""


def test_a_hundred_runs_at_once_spend_exactly_the_fifteen_tokens_there_are(project):
    project.write(BURST)
    results = start_all(project, ["burst"] * 100)

    codes = assert_clean(results)
    assert codes == {0: 15, 75: 85}
    runs = project.history("burst", limit=1000)
    assert len(runs) == 100
    assert Counter(r["status"] for r in runs) == {"success": 15, "skipped": 85}
    assert_rate_limited_skips([r for r in runs if r["status"] == "skipped"], "upstream")
    assert len({r["pid"] for r in runs}) == 100
    [budget] = project.status()["budgets"]
    assert budget["name"] == "upstream" and budget["tokens"] < 0.1


def test_two_jobs_sharing_one_budget_spend_fifteen_tokens_between_them(project):
    project.write("""\
        state: schedsync.db
        budgets:
          upstream: 15/1d
        jobs:
          lookup-a:
            command: "true"
            budget: upstream
            overlap: allow
          lookup-b:
            command: ["true"]
            budget: upstream
            overlap: allow
    """)
    results = start_all(project, ["lookup-a", "lookup-b"] * 50)

    codes = assert_clean(results)
    assert codes == {0: 15, 75: 85}
    runs = project.history("lookup-a", limit=1000) + project.history("lookup-b", limit=1000)
    assert len(runs) == 100
    assert Counter(r["status"] for r in runs) == {"success": 15, "skipped": 85}
    assert_rate_limited_skips([r for r in runs if r["status"] == "skipped"], "upstream")


def test_fifty_first_runs_at_once_all_create_and_share_one_new_state_file(project):
    project.write("""\
        state: fresh/schedsync.db
        jobs:
          first:
            command: "true"
            overlap: allow
    """)
    assert not (project.path / "fresh").exists()
    results = start_all(project, ["first"] * 50)

    assert assert_clean(results) == {0: 50}
    runs = project.history("first", limit=1000)
    assert len(runs) == 50
    assert {r["status"] for r in runs} == {"success"}
    assert {r["exit_code"] for r in runs} == {0}

"""What a run records when it is not the job's fault (issue: crashes and Ctrl-C are not
evidence for the breaker) and when it cannot start at all (configuration)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

FLAKY = """\
    state: schedsync.db
    jobs:
      quests:
        command: ["sleep", "30"]
        overlap: allow
        breaker: {failures: 2, reset_after: 10m}
"""


def started(project, job: str) -> subprocess.Popen:
    """A ``schedsync run`` whose run is recorded as running (its child is up)."""
    proc = project.start("run", job, start_new_session=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        running = [r for r in project.history(job) if r["status"] == "running" and r["pid"] == proc.pid]
        if running:
            return proc
        time.sleep(0.1)
    raise AssertionError("the run never started")


def breaker(project, job: str) -> dict:
    [row] = [j for j in project.status()["jobs"] if j["name"] == job]
    return row["breaker"]


def test_runs_cancelled_with_ctrl_c_do_not_open_the_breaker(project):
    project.write(FLAKY)
    for _ in range(3):
        proc = started(project, "quests")
        os.kill(proc.pid, signal.SIGINT)
        proc.communicate(timeout=30)
        assert proc.returncode == 1
    runs = project.history("quests")
    assert [(r["status"], r["reason"]) for r in runs] == [("failed", "cancelled")] * 3
    assert breaker(project, "quests")["state"] == "closed"
    assert breaker(project, "quests")["failures"] == 0


def test_crashed_runs_do_not_open_the_breaker(project):
    project.write(FLAKY)
    for _ in range(3):
        proc = started(project, "quests")
        os.killpg(proc.pid, signal.SIGKILL)  # schedsync and its child
        proc.communicate(timeout=30)
    runs = project.history("quests")  # reaps them
    assert [r["status"] for r in runs] == ["crashed"] * 3
    assert breaker(project, "quests") == {"name": "quests", "state": "closed", "failures": 0,
                                          "opens_until": None}


def test_a_run_that_cannot_start_for_its_configuration_is_recorded_as_failed_and_exits_2(project):
    project.write("""\
        state: schedsync.db
        jobs:
          quests:
            command: ["curl", "-H", "X-Token: ${QUESTS_TOKEN}", "http://127.0.0.1:9/"]
    """)
    result = project.cli("run", "quests")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and "QUESTS_TOKEN" in line
    [run] = project.history("quests")
    assert run["status"] == "failed" and run["error"] == line[len("error: "):]
    [row] = project.status()["jobs"]
    assert row["health"] == "FAILING" and row["why"].startswith("last run failed")
    assert "QUESTS_TOKEN is not set" in row["last_run"]["error"]
    # set it, and the job runs again (the failed start fed no breaker)
    assert project.cli("run", "quests", env={"QUESTS_TOKEN": "t"}).returncode == 1  # curl: refused
    assert [r["status"] for r in project.history("quests")] == ["failed", "failed"]

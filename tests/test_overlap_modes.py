"""``overlap: replace`` (the new run stops the running one, recorded failed/replaced: on one host
by a signal, across hosts through the holder's heartbeat) and ``overlap: queue`` (one run
waits and starts as soon as the holder ends; a third caller is refused). Real CLI processes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time

import pytest

from test_limits import NEED_UTS, finish_all, gone, on_host, wait_for

JOBS = """
jobs:
  swap:
    overlap: replace
    command: ["sh", "-c", "echo $$ >> pids; exec sleep 300"]
  stubborn:
    overlap: replace
    command: ["sh", "-c", "trap '' TERM; echo $$ >> pids; sleep 60"]
  pyswap:
    overlap: replace
    python: "slow:main"
  waiting:
    overlap: queue
    command: ["sh", "-c", "echo start $(date +%s.%N) >> queue.log; sleep 3; echo end $(date +%s.%N) >> queue.log"]
"""
SLOW = """\
import os, time
def main(ctx):
    with open("pids", "a") as f:
        f.write(f"{os.getpid()}\\n")
    for _ in range(600):
        time.sleep(0.1)
"""


@pytest.fixture
def jobs(project):
    project.write(JOBS)
    (project.path / "slow.py").write_text(SLOW)
    return project


def first_pid(project) -> int:
    return int(wait_for(lambda: (project.path / "pids").exists() and (project.path / "pids").read_text().split(),
                        what="the first run's job to start")[0])


def stop_all(procs) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    finish_all(procs)


@pytest.mark.parametrize("job", ["swap", "pyswap"])
def test_replace_stops_the_running_run_and_records_it_replaced(jobs, job):
    old = jobs.start("run", job, start_new_session=True)
    new = None
    try:
        old_job = first_pid(jobs)
        new = jobs.start("run", job, start_new_session=True)
        [running] = wait_for(lambda: [r for r in jobs.history(job) if r["status"] == "running"
                                      and r["pid"] == new.pid] or None, what="the new run to start")
        assert old.wait(timeout=60) == 1  # the old schedsync ended its run as failed
        assert gone(old_job)
        runs = {r["id"]: r for r in jobs.history(job)}
        [replaced] = [r for r in runs.values() if r["pid"] == old.pid]
        assert (replaced["status"], replaced["reason"]) == ("failed", "replaced")
        assert f"replaced by a newer run (pid {new.pid} on " in replaced["error"]
        assert running["id"] > replaced["id"]
    finally:
        stop_all([p for p in (old, new) if p is not None])


def test_replace_kills_a_job_that_ignores_sigterm_after_the_grace(jobs):
    from schedsync.jobs.command import KILL_GRACE

    old = jobs.start("run", "stubborn", start_new_session=True)
    new = None
    try:
        old_job = first_pid(jobs)
        began = time.monotonic()
        new = jobs.start("run", "stubborn", start_new_session=True)
        assert old.wait(timeout=60) == 1
        assert time.monotonic() - began >= KILL_GRACE  # SIGTERM was ignored: SIGKILL came after the grace
        assert gone(old_job)
        [replaced] = [r for r in jobs.history("stubborn") if r["pid"] == old.pid]
        assert (replaced["status"], replaced["reason"], replaced["exit_code"]) == ("failed", "replaced", -9)
        wait_for(lambda: [r for r in jobs.history("stubborn") if r["pid"] == new.pid and r["status"] == "running"],
                 what="the new run to start")
    finally:
        stop_all([p for p in (old, new) if p is not None])


def test_replace_never_signals_a_process_that_reused_the_holders_pid(jobs):
    from schedsync.store.liveness import process_start

    decoy = subprocess.Popen(["sleep", "300"], start_new_session=True)
    began = process_start(decoy.pid)
    wait_for(lambda: _ticks_since(began), what="a few clock ticks")
    old = jobs.start("run", "swap", start_new_session=True)  # started later: another start time
    try:
        first_pid(jobs)
        [row] = [r for r in jobs.history("swap") if r["status"] == "running"]
        # the holder's row now names a pid another process has (a reused pid, as after a crash)
        db = sqlite3.connect(jobs.state)
        with db:
            db.execute("UPDATE runs SET pid = ? WHERE id = ?", (decoy.pid, row["id"]))
        db.close()
        new = jobs.cli("run", "swap", timeout=120)
        assert new.returncode == 75, new.stderr
        assert decoy.poll() is None  # never signalled
        assert old.poll() is None, old.communicate()  # nor, unnamed, the real holder: its lock still stands
        skipped = jobs.history("swap")[0]
        assert (skipped["status"], skipped["reason"]) == ("skipped", "locked")
    finally:
        decoy.kill()
        decoy.wait()
        stop_all([old])


def _ticks_since(began: int) -> bool:
    """Has the kernel's clock (in ticks, as /proc/PID/stat's start times) moved past ``began``?"""
    with open("/proc/uptime") as f:
        now = float(f.read().split()[0]) * os.sysconf("SC_CLK_TCK")
    return now > began + 5


@NEED_UTS
def test_replace_across_hosts_the_holders_heartbeat_stops_its_own_job(project, pg_url):
    project.env["SCHEDSYNC_STATE"] = pg_url
    project.write(JOBS)
    old = on_host(project, "replace-a", "run", "swap")
    new = None
    try:
        old_job = first_pid(project)
        new = on_host(project, "replace-b", "run", "swap")
        wait_for(lambda: [r for r in project.history("swap") if r["host"] == "replace-b"
                          and r["status"] == "running"] or None, what="the new run to start", timeout=90)
        assert old.wait(timeout=60) == 1
        assert gone(old_job)
        [replaced] = [r for r in project.history("swap") if r["host"] == "replace-a"]
        assert (replaced["status"], replaced["reason"]) == ("failed", "replaced")
        assert "replaced by a newer run (pid " in replaced["error"] and "on replace-b" in replaced["error"]
    finally:
        stop_all([p for p in (old, new) if p is not None])


def test_queue_runs_the_waiting_run_right_after_the_holder_and_refuses_a_third(jobs):
    holder = jobs.start("run", "waiting", start_new_session=True)
    try:
        wait_for(lambda: (jobs.path / "queue.log").exists(), what="the holder to start")
        second = jobs.cli("run", "waiting")
        third = jobs.cli("run", "waiting")
        assert (second.returncode, third.returncode) == (75, 75), (second.stderr, third.stderr)
        skips = [r for r in jobs.history("waiting") if r["status"] == "skipped"]
        [held] = [r for r in jobs.history("waiting") if r["status"] == "running"]
        assert [s["reason"] for s in skips] == ["locked", "locked"]
        assert skips[1]["error"].startswith(f"queued behind run {held['id']} ")
        assert "a run is already waiting" in skips[0]["error"]
        assert holder.wait(timeout=60) == 0
        # no tick runs here: only the holder can have started the waiting run
        queued = wait_for(lambda: [r for r in jobs.history("waiting") if r["trigger"] == "queue"
                                   and r["status"] == "success"] or None, what="the queued run", timeout=90)
    finally:
        stop_all([holder])
    assert len(queued) == 1  # one waited, one ran
    lines = (jobs.path / "queue.log").read_text().split("\n")
    assert [line.split()[0] for line in lines if line] == ["start", "end", "start", "end"]  # one after the other
    # a caller after that finds no one running: it runs
    assert jobs.cli("run", "waiting").returncode == 0


@NEED_UTS
def test_queue_across_hosts_keeps_one_waiting_run_started_by_the_holder(project, pg_url):
    project.env["SCHEDSYNC_STATE"] = pg_url
    project.write(JOBS)
    holder = on_host(project, "queue-a", "run", "waiting")
    try:
        wait_for(lambda: (project.path / "queue.log").exists(), what="the holder to start", timeout=90)
        callers = [on_host(project, host, "run", "waiting") for host in ("queue-b", "queue-c")]
        assert finish_all(callers) == [75, 75], [p.stderr for p in callers]
        skips = [r for r in project.history("waiting") if r["status"] == "skipped"]
        assert sorted(s["error"].split(" ")[0] for s in skips) == ["queued", "the"], skips
        assert finish_all([holder]) == [0]
        [queued] = wait_for(lambda: [r for r in project.history("waiting") if r["trigger"] == "queue"
                                     and r["status"] == "success"] or None, what="the queued run", timeout=90)
    finally:
        stop_all([holder])
    assert queued["host"] == "queue-a"  # started by the holder, on its host


def test_the_stop_goes_only_to_the_process_whose_kernel_start_time_matches():
    """Liveness.stop, the signal replace sends on one host: a pid now held by another process
    (its start time differs from the one the run row recorded) is never signalled."""
    from schedsync.core.models import Run
    from schedsync.store.liveness import HOST, ProcLiveness, process_start

    decoy = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        started = process_start(decoy.pid)
        reused = Run(1, "swap", "running", "cron", 0.0, HOST, decoy.pid, pid_start=started + 1)
        assert ProcLiveness().stop(reused) is False
        elsewhere = Run(1, "swap", "running", "cron", 0.0, HOST + "-other", decoy.pid, pid_start=started)
        assert ProcLiveness().stop(elsewhere) is False  # another host's pid means nothing here
        with pytest.raises(subprocess.TimeoutExpired):
            decoy.wait(timeout=0.5)
        same = Run(1, "swap", "running", "cron", 0.0, HOST, decoy.pid, pid_start=started)
        assert ProcLiveness().stop(same) is True
        assert decoy.wait(timeout=30) == -signal.SIGTERM
    finally:
        if decoy.poll() is None:
            decoy.kill()
            decoy.wait()

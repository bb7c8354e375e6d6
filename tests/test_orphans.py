"""No job outlives schedsync or its timeout: SIGTERM and kill -9 at random moments."""

from __future__ import annotations

import fcntl
import os
import random
import signal
import sqlite3
import time

from test_run import processes_with, wait_for

JOBS = 4  # runs in flight at once, one per job (a job's own runs would only skip)
# Storm sizes in rounds of JOBS runs; raise them by hand for the big storm, e.g.
# ORPHAN_STORM_TERM=250 ORPHAN_STORM_KILL=25 (1,000 SIGTERMs, 100 kill -9s).
TERM_ROUNDS = int(os.environ.get("ORPHAN_STORM_TERM", 15))
KILL_ROUNDS = int(os.environ.get("ORPHAN_STORM_KILL", 6))


def storm_project(project, timeout: str = "20s"):
    # A unique extra number for sleep (it sums its arguments) marks our children in /proc.
    marker = f"0.{os.getpid()}{random.randrange(10 ** 6)}"
    project.write("jobs:\n" + "".join(
        f'  j{n}: {{command: ["sleep", "30", "{marker}"], timeout: {timeout}, breaker: {{failures: 100000}}}}\n'
        for n in range(JOBS)))
    return f"sleep\x0030\x00{marker}"


def lock_is_free(project, job: str) -> bool:
    path = f"{project.state}.locks/{job}.lock"
    if not os.path.exists(path):
        return True
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def time_to_spawn(project, marker: str) -> float:
    """How long a run takes here to start its job (start-up is slow on a loaded machine)."""
    took = []
    for _ in range(2):
        proc = project.start("run", "j0")
        started = time.time()
        assert wait_for(lambda: processes_with(marker), step=0.002)
        took.append(time.time() - started)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    return min(took)


def moments(spawn: float):
    """Random moments from start-up to the job running, half of them near the spawn."""
    while True:
        yield random.uniform(0, spawn + 0.2)
        yield max(0.0, random.gauss(spawn, 0.03))


def storm(project, rounds: int, sig: int, spawn: float) -> list[int]:
    """Start one run of every job, send each ``sig`` at a random moment; their exit codes."""
    codes, delays = [], moments(spawn)
    for _ in range(rounds):
        procs = [project.start("run", f"j{n}") for n in range(JOBS)]
        started = time.time()
        # Sort on the delay alone: equal delays (moments() clamps at 0.0) must not
        # fall through to comparing Popen objects.
        for at, proc in sorted(((next(delays), p) for p in procs), key=lambda pair: pair[0]):
            time.sleep(max(0.0, started + at - time.time()))
            proc.send_signal(sig)
        codes += [proc.wait(20) for proc in procs]
        for proc in procs:
            proc.stdout.close(), proc.stderr.close()
    return codes


def test_sigterm_at_any_moment_leaves_no_job_running(project):
    marker = storm_project(project)
    codes = storm(project, TERM_ROUNDS, signal.SIGTERM, time_to_spawn(project, marker))
    # Cancelled (1), or killed by the signal before the handler was installed.
    assert set(codes) <= {1, -signal.SIGTERM}, codes
    assert wait_for(lambda: not processes_with(marker), timeout=2), "orphaned job processes"
    assert all(lock_is_free(project, f"j{n}") for n in range(JOBS))


def test_kill_9_at_any_moment_takes_the_job_along_within_a_second(project):
    marker = storm_project(project)
    spawn = time_to_spawn(project, marker)
    for _ in range(KILL_ROUNDS):
        storm(project, 1, signal.SIGKILL, spawn)
        # Within about a second; the bound leaves room for a machine loaded 25 times over.
        assert wait_for(lambda: not processes_with(marker), timeout=2.5), "job outlived schedsync"
        assert wait_for(lambda: all(lock_is_free(project, f"j{n}") for n in range(JOBS)), timeout=0.5)
    # One kill -9 surely after the job started (under load a storm's kills may all land
    # before any run was admitted), so a run schedsync died in is on record.
    proc = project.start("run", "j0")
    assert wait_for(lambda: processes_with(marker)), proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close(), proc.stderr.close()
    assert wait_for(lambda: not processes_with(marker), timeout=2.5), "job outlived schedsync"
    # The next run is not locked out; the runs schedsync died in are recorded as crashed.
    proc = project.start("run", "j0")
    assert wait_for(lambda: processes_with(marker)), proc.communicate()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 1
    proc.stdout.close(), proc.stderr.close()
    with sqlite3.connect(project.state) as db:
        statuses = [s for s, in db.execute("SELECT status FROM runs WHERE job = 'j0' ORDER BY id")]
    assert statuses[-1] == "failed" and "skipped" not in statuses and "running" not in statuses
    assert set(statuses[:-1]) <= {"crashed", "failed"}, statuses  # failed: the calibration runs
    assert "crashed" in statuses


def test_a_job_past_its_timeout_dies_even_while_schedsync_is_stopped(project):
    marker = storm_project(project, timeout="1s")
    proc = project.start("run", "j0")
    assert wait_for(lambda: processes_with(marker))
    proc.send_signal(signal.SIGSTOP)  # schedsync cannot act: the keeper's backstop must
    try:
        assert wait_for(lambda: not processes_with(marker), timeout=10), "job outlived its timeout"
    finally:
        proc.send_signal(signal.SIGCONT)
    assert proc.wait(10) == 1
    proc.stdout.close(), proc.stderr.close()
    assert project.history("j0")[0]["status"] == "timeout"


def test_a_skip_never_names_a_dead_schedsync_as_still_going(project):
    # The job ignores SIGTERM, so after kill -9 it holds the lock for the kill grace.
    project.write("jobs:\n  stubborn: {command: 'trap \"\" TERM; touch started; sleep 30'}\n")
    first = project.start("run", "stubborn")
    assert wait_for(lambda: (project.path / "started").exists())
    first.send_signal(signal.SIGKILL)  # not reaped yet: a zombie, as under a busy parent
    try:
        second = project.cli("run", "stubborn")
        assert second.returncode == 75
        runs = project.history("stubborn")
        assert f"pid {first.pid}" not in runs[0]["error"], runs[0]["error"]
        assert (runs[0]["reason"], runs[1]["status"]) == ("locked", "crashed")
    finally:
        first.wait()
        first.stdout.close(), first.stderr.close()


def test_the_job_inherits_no_descriptor_of_schedsyncs_caller(project):
    project.write('jobs:\n  fds: {command: ["ls", "/proc/self/fd"]}\n')
    read, write = os.pipe()
    os.dup2(write, 213)  # inheritable, as a caller's stray descriptor would be
    try:
        result = project.cli("run", "fds", pass_fds=(213,))
    finally:
        for fd in (read, write, 213):
            os.close(fd)
    assert result.returncode == 0, result.stderr
    [run] = project.history("fds")
    listed = set(run["output"].split())
    assert "213" not in listed and {"0", "1", "2"} <= listed

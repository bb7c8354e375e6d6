"""Concurrency limits (``limits: {heavy: 2}``, ``limit: heavy``): never more than N runs at once,
checked by the jobs themselves (start and end lines: time.time() and pid), on SQLite and on
PostgreSQL across three simulated hosts; a kill -9 of a holder frees its place; max_wait, then
``limited`` (exit 75); a limited ledger item goes back to queued."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from schedsync.store import open_store

HOSTS = ("limit-a", "limit-b", "limit-c")
NEED_UTS = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                              reason="simulated hosts need root and unshare (a hostname namespace)")

# The job itself notes when it ran: "start <time.time()> <pid>", then "end …" (O_APPEND lines).
WORKER = """\
import os, sys, time
log = sys.argv[1]
def note(what):
    with open(log, "a") as f:
        f.write(f"{what} {time.time():.6f} {os.getpid()}\\n")
note("start")
if len(sys.argv) > 3:
    with open(sys.argv[3], "w") as f:
        f.write(f"{os.getpid()} {os.getpgid(0)}")
time.sleep(float(sys.argv[2]))
note("end")
"""


def jobs_yaml(project, jobs: int, most: int, seconds: float, max_wait: str = "300s",
              extra: str = "") -> None:
    (project.path / "worker.py").write_text(WORKER)
    text = f"limits: {{heavy: {most}, other: 3}}\njobs:\n"
    for i in range(jobs):
        limit = "heavy" if i % 2 else "[other, heavy]"  # one limit, or several (either order)
        text += (f"  j{i}:\n    limit: {limit}\n    max_wait: {max_wait}\n    timeout: 10m\n"
                 f"    command: [{sys.executable!r}, worker.py, ran.log, {seconds!r}]\n")
    project.config.write_text(text + extra)


def max_overlap(log) -> tuple[int, int]:
    """(most runs at once, runs that ended) from the jobs' own start and end lines."""
    events = []
    ended = 0
    for line in log.read_text().splitlines():
        what, at, _pid = line.split()
        events.append((float(at), 0 if what == "end" else 1))  # at one instant an end comes first
        ended += what == "end"
    now = most = 0
    for _, start in sorted(events):
        now += 1 if start else -1
        most = max(most, now)
    return most, ended


def wait_for(check, timeout: float = 60.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def finish_all(procs: list, timeout: float = 240) -> list[int]:
    codes = []
    try:
        for proc in procs:
            proc.communicate(timeout=timeout)
            codes.append(proc.returncode)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return codes


def gone(pid: int) -> bool:
    """The process has exited (a zombie holds no files)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def kill_holder(proc, pids_file) -> None:
    """kill -9 a holding `schedsync run` and its job's whole group (keeper and job)."""
    pid, pgid = (int(x) for x in wait_for(lambda: pids_file.exists() and pids_file.read_text().split(),
                                           what="the holder's job to start"))
    os.kill(proc.pid, signal.SIGKILL)
    os.killpg(pgid, signal.SIGKILL)
    proc.wait(timeout=30)
    wait_for(lambda: gone(pid) and gone(pgid), what="the killed job to be gone")


# --- validation --------------------------------------------------------------------------

def test_an_unknown_limit_and_a_limit_under_one_are_refused_with_file_and_line(project):
    project.write("""\
        limits: {heavy: 0, api: 2}
        jobs:
          a:
            command: ["true"]
            limit: [api, nope]
          b: {command: ["true"], limit: 3}
        """)
    result = project.cli("validate")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert any(line.startswith("error: ") and "jobs.yaml:1 limits.heavy: 0 must be a whole number of 1 or more" in line
               for line in lines), lines
    assert any("jobs.yaml:5 jobs.a.limit: no limit named 'nope'" in line and "limits:" in line
               for line in lines), lines
    assert any("jobs.yaml:6 jobs.b.limit: no limit named 3" in line for line in lines), lines
    assert all(line.startswith("error: ") for line in lines)


# --- SQLite: this host -------------------------------------------------------------------

def test_twenty_runs_started_at_once_never_run_more_than_the_limit(project):
    jobs_yaml(project, 20, 2, 0.4)
    procs = [project.start("run", f"j{i}", start_new_session=True) for i in range(20)]
    codes = finish_all(procs)
    assert codes == [0] * 20, [(c, p.stderr) for c, p in zip(codes, procs, strict=True)]
    most, ended = max_overlap(project.path / "ran.log")
    assert ended == 20
    assert most <= 2, f"{most} runs of the heavy limit ran at once"
    places = [n for n in os.listdir(str(project.state) + ".locks") if n.startswith("limit-heavy.")]
    assert sorted(places) == ["limit-heavy.0", "limit-heavy.1"]  # N flock files, never more


def test_over_the_limit_a_run_waits_up_to_max_wait_then_is_skipped_limited(project):
    command = f"    command: [{sys.executable!r}, worker.py, ran.log, '0']\n"
    jobs_yaml(project, 1, 1, 4.0, extra=(
        "  quick:\n    limit: heavy\n    max_wait: 1s\n" + command
        + "  patient:\n    limit: heavy\n    max_wait: 60s\n" + command))
    (project.path / "worker.py").write_text(WORKER)
    holder = project.start("run", "j0", start_new_session=True)
    try:
        wait_for(lambda: (project.path / "ran.log").exists(), what="the holder to start")
        quick = project.cli("run", "quick")
        assert quick.returncode == 75, quick.stderr
        [run] = project.history("quick")
        [held] = [r for r in project.history("j0") if r["status"] == "running"]
        assert (run["status"], run["reason"]) == ("skipped", "limited")
        assert "limit heavy is full (1 at once" in run["error"]
        assert f"j0 run {held['id']} on {held['host']} pid {held['pid']}" in run["error"], run["error"]
        assert "waited 1" in run["error"]
        patient = project.cli("run", "patient")
        assert patient.returncode == 0, patient.stderr
    finally:
        finish_all([holder])
    assert holder.returncode == 0
    lines = [line.split() for line in (project.path / "ran.log").read_text().splitlines()]
    holder_pid = lines[0][2]
    [holder_end] = [float(at) for what, at, pid in lines if what == "end" and pid == holder_pid]
    [patient_start] = [float(at) for what, at, pid in lines if what == "start" and pid != holder_pid]
    assert patient_start >= holder_end  # it waited for the place, it did not overlap


QUICK = f"  quick:\n    limit: heavy\n    command: [{sys.executable!r}, worker.py, ran.log, '0']\n"


def test_a_kill_9_of_the_holder_frees_its_place_at_once(project):
    jobs_yaml(project, 1, 1, 120.0, max_wait="0s", extra=QUICK)
    project.config.write_text(project.config.read_text().replace(
        "ran.log, 120.0]", "ran.log, 120.0, pids]", 1))
    holder = project.start("run", "j0", start_new_session=True)
    try:
        wait_for(lambda: (project.path / "pids").exists(), what="the holder to start")
        assert project.cli("run", "quick").returncode == 75
        kill_holder(holder, project.path / "pids")
        # no counter left high, no lease to wait out: the kernel dropped the flock with the group
        again = project.cli("run", "quick")
        assert again.returncode == 0, again.stderr
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
            holder.wait()
    assert [r["status"] for r in project.history("j0")] == ["crashed"]


def test_a_limited_ledger_item_goes_back_to_queued(project):
    jobs_yaml(project, 1, 1, 120.0, max_wait="0s", extra=(
        f"  filled:\n    limit: heavy\n    command: [{sys.executable!r}, worker.py, ran.log, '0']\n"))
    holder = project.start("run", "j0", start_new_session=True)
    try:
        wait_for(lambda: (project.path / "ran.log").exists(), what="the holder to start")
        store = open_store(str(project.state))
        try:
            [item] = store.enqueue("filled", [{"slot": 1_700_000_000.0, "kind": "backfill",
                                                "due_at": 1_700_000_000.0}])
        finally:
            store.close()
        result = project.cli("run", "filled", "--item", str(item))
        assert result.returncode == 75, result.stderr
        store = open_store(str(project.state), write=False)
        try:
            got = store.item(item)
        finally:
            store.close()
        assert (got.state, got.reason) == ("queued", "limited")
        [run] = project.history("filled")
        assert (run["status"], run["reason"], run["trigger"]) == ("skipped", "limited", "backfill")
    finally:
        os.killpg(holder.pid, signal.SIGTERM)
        finish_all([holder])


# --- PostgreSQL: every host --------------------------------------------------------------

def on_host(project, host: str, *args: str) -> subprocess.Popen:
    """`schedsync` as another host would run it: its own hostname (a UTS namespace), the
    same PostgreSQL on loopback."""
    import shlex

    argv = " ".join(shlex.quote(a) for a in project.argv(*args))
    return subprocess.Popen(["unshare", "--uts", "sh", "-c", f"hostname {host} && exec {argv}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, cwd=project.path, env=project.env, start_new_session=True)


@NEED_UTS
def test_twenty_runs_across_three_hosts_never_run_more_than_the_limit(project, pg_url):
    project.env["SCHEDSYNC_STATE"] = pg_url
    jobs_yaml(project, 20, 2, 0.4)
    procs = [on_host(project, HOSTS[i % 3], "run", f"j{i}") for i in range(20)]
    codes = finish_all(procs)
    assert codes == [0] * 20, [(c, p.stderr) for c, p in zip(codes, procs, strict=True)]
    most, ended = max_overlap(project.path / "ran.log")
    assert ended == 20
    assert most <= 2, f"{most} runs of the heavy limit ran at once across the hosts"
    hosts = {r["host"] for i in range(20) for r in project.history(f"j{i}")}
    assert hosts == set(HOSTS)


@NEED_UTS
def test_a_kill_9_of_a_holder_on_another_host_frees_its_place_within_the_lease(project, pg_url):
    from schedsync.store.postgres import LEASE

    project.env["SCHEDSYNC_STATE"] = pg_url
    jobs_yaml(project, 1, 1, 120.0, extra=QUICK.replace("limit: heavy", "limit: heavy\n    max_wait: 60s"))
    project.config.write_text(project.config.read_text().replace(
        "ran.log, 120.0]", "ran.log, 120.0, pids]", 1))
    holder = on_host(project, HOSTS[0], "run", "j0")
    try:
        wait_for(lambda: (project.path / "pids").exists(), what="the holder to start")
        kill_holder(holder, project.path / "pids")
        began = time.monotonic()
        waiter = on_host(project, HOSTS[1], "run", "quick")
        [code] = finish_all([waiter])
        assert code == 0, waiter.stderr
        # admitted once the dead holder's lease lapsed: no counter stays high
        assert time.monotonic() - began < LEASE + 40
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
            holder.wait()
    [run] = project.history("quick")
    assert (run["status"], run["host"]) == ("success", HOSTS[1])

"""Leases on the server's clock (issue 21): the real CLI against a real PostgreSQL.

A server restart during a run, a paused schedsync whose keeper fences its job, budgets
through a link with latency, hosts whose clocks are off (libfaketime), and a slot's
loser while its winner runs. The jobs' own lines (appended to a file) are the truth.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pgserver import PgServer
from schedsync.store.postgres import LEASE

FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


@pytest.fixture
def own_server(pg_server):  # pg_server: skips (or fails on CI) without PostgreSQL
    """A server of this test's own, which it may restart or stop."""
    server = PgServer().start()
    yield server
    server.stop()


def _pg_ctl(server: PgServer, *args: str) -> None:
    import pwd

    def demote():
        user = pwd.getpwnam(server.owner)
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    subprocess.run([f"{server.bin}/pg_ctl", "-D", server.data, "-l", os.path.join(server.dir, "log"),
                    *args], capture_output=True, check=True, timeout=120,
                   preexec_fn=demote if server.owner else None)


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGCONT)
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


# --- a server restart during a run -------------------------------------------------------

def test_a_server_restart_during_a_run_neither_duplicates_nor_crashes_it(project, own_server):
    log = project.path / "job.log"
    project.write(f"""
        jobs:
          steady:
            command: ["sh", "-c", "echo start >> {log}; for i in 1 2 3 4 5 6 7 8; do sleep 1; done; echo end >> {log}"]
            timeout: 2m
    """)
    project.env["SCHEDSYNC_STATE"] = own_server.url(own_server.createdb())
    first = project.start("run", "steady")
    try:
        _wait_for(lambda: "start" in _lines(log), 30, "the job to start")
        _pg_ctl(own_server, "-m", "fast", "-w", "-t", "60", "restart")
        # Every session ended; the lease did not: another run of the job is turned away.
        second = project.cli("run", "steady")
        assert second.returncode == 75, second.stderr
        out, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
    finally:
        _kill(first)
    assert _lines(log) == ["start", "end"]  # once, to its end
    runs = project.history("steady")
    assert [(r["status"], r["reason"]) for r in runs] == [("skipped", "locked"), ("success", None)]
    assert runs[1]["duration_ms"] >= 8000


# --- the keeper fences a paused schedsync's job ---------------------------------------------

def test_a_paused_schedsync_s_job_is_stopped_by_its_keeper_before_the_lease_can_lapse(project, pg_url):
    log = project.path / "ticks.log"
    project.write(f"""
        jobs:
          ticking:
            command: ["sh", "-c", "while true; do date +%s.%N >> {log}; sleep 0.2; done"]
            timeout: 5m
    """)
    project.env["SCHEDSYNC_STATE"] = pg_url
    proc = project.start("run", "ticking")
    try:
        _wait_for(lambda: len(_lines(log)) >= 5, 30, "the job's first lines")
        os.kill(proc.pid, signal.SIGSTOP)  # schedsync frozen: no renewal, no fencing of its own
        stopped = time.time()
        # The job's own lines stop: the keeper ended it (lines stay unchanged for 3 s).
        seen = [len(_lines(log)), time.monotonic()]

        def quiet():
            count = len(_lines(log))
            if count != seen[0]:
                seen[:] = [count, time.monotonic()]
            return time.monotonic() - seen[1] > 3

        _wait_for(quiet, LEASE + 30, "the job to stop")
        last = float(_lines(log)[-1])
        print(f"job's last line {last - stopped:.2f}s after the pause")
        # Renewed at most a second before the pause: the lease lapses no sooner than
        # stopped - 1 + LEASE; the keeper stops the job LEASE - MARGIN after its last
        # renewal, and SIGKILLs it a second later at the latest.
        assert last < stopped - 1 + LEASE - 1, (last - stopped)
        assert last > stopped  # it was not stopped by the pause itself
        # Once the lease has lapsed, another run takes the job.
        project.write(f"""
            jobs:
              ticking:
                command: ["sh", "-c", "echo other >> {log}"]
        """)
        deadline = time.monotonic() + LEASE + 30
        while (other := project.cli("run", "ticking")).returncode == 75 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert other.returncode == 0, other.stderr
        assert _lines(log)[-1] == "other" and float(_lines(log)[-2]) == last  # one after the other
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1
        runs = project.history("ticking")
        mine = [r for r in runs[1:] if r["status"] != "skipped"]  # skipped: tries while it held
        assert runs[0]["status"] == "success"
        assert [r["status"] for r in mine] == ["failed"] and "fenced" in mine[0]["error"]
    finally:
        _kill(proc)


# --- budgets through a slow link ----------------------------------------------------------

class DelayingProxy:
    """TCP on loopback to the server's unix socket, every chunk delayed ``delay`` seconds
    each way (order kept): a host whose round trip to the database is 2 × ``delay``."""

    def __init__(self, target: str, delay: float):
        self.target, self.delay = target, delay
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX)
            server.connect(self.target)
            self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                self._pipe(a, b)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        import queue

        chunks: queue.Queue = queue.Queue()

        def read():
            while True:
                try:
                    data = src.recv(65536)
                except OSError:
                    data = b""
                chunks.put((time.monotonic() + self.delay, data))
                if not data:
                    return

        def write():
            while True:
                at, data = chunks.get()
                time.sleep(max(0.0, at - time.monotonic()))
                if not data:
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                try:
                    dst.sendall(data)
                except OSError:
                    return

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=write, daemon=True).start()

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        for s in self.sockets:
            try:
                s.close()
            except OSError:
                pass


SPENDER = """
import json, os, time

def run(ctx):
    granted, started = [], time.time()
    while time.time() < started + float(os.environ["SPEND_FOR"]):
        if ctx._ctx.spend(1) is None:
            granted.append(time.time())
        time.sleep(0.02)
    with open(os.environ["SPEND_LOG"], "a") as f:
        f.write(json.dumps({"start": started, "end": time.time(), "granted": granted}) + "\\n")
    return len(granted)
"""


def test_a_slow_link_does_not_overspend_a_per_request_budget(project, pg_server, pg_url):
    (project.path / "spender.py").write_text(SPENDER)
    spent = project.path / "spent.jsonl"
    project.write("""
        budgets: {api: 10/1s}
        jobs:
          spend:
            python: "spender:run"
            budget: api
            cost: 0
            overlap: allow
            timeout: 2m
    """)
    db = pg_url.split("/")[3].split("?")[0]
    proxy = DelayingProxy(os.path.join(pg_server.dir, ".s.PGSQL.5432"), 0.025)  # 50 ms round trip
    slow = f"postgresql://postgres@127.0.0.1:{proxy.port}/{db}"
    env = {"SPEND_FOR": "8", "SPEND_LOG": str(spent)}
    procs = []
    try:
        assert project.cli("run", "spend", env={**env, "SPEND_FOR": "0", "SCHEDSYNC_STATE": pg_url}).returncode == 0
        for url in (slow, slow, pg_url, pg_url):
            procs.append(project.start("run", "spend", env={**env, "SCHEDSYNC_STATE": url}))
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            _kill(proc)
        proxy.close()
    rows = [json.loads(line) for line in spent.read_text().splitlines()]
    busy = [r for r in rows if r["end"] - r["start"] > 1]
    assert len(busy) == 4
    granted = sorted(t for r in busy for t in r["granted"])
    elapsed = max(r["end"] for r in busy) - min(r["start"] for r in busy)
    assert all(r["granted"] for r in busy)  # the slow hosts were granted some too
    assert len(granted) <= 10 * elapsed + 10 + 1, (len(granted), elapsed)  # rate × time + capacity


# --- clocks off by minutes (libfaketime) -----------------------------------------------------

needs_faketime = pytest.mark.skipif(not os.path.exists(FAKETIME) and not os.environ.get("SCHEDSYNC_REQUIRE_PG"),
                                    reason="libfaketime is not installed")


@needs_faketime
@pytest.mark.parametrize("offset", ["+120s", "-90s"])
def test_a_host_s_clock_off_by_minutes_times_out_no_job_early_or_late(project, pg_url, offset):
    log = project.path / "job.log"
    project.write(f"""
        jobs:
          slow:
            command: ["sh", "-c", "echo start >> {log}; sleep 1; echo one >> {log}; sleep 10; echo late >> {log}"]
            timeout: 2s
            breaker: {{failures: 1}}
          quick:
            command: ["sh", "-c", "sleep 1; echo quick >> {log}"]
            timeout: 30s
    """)
    project.env["SCHEDSYNC_STATE"] = pg_url
    skewed = {"LD_PRELOAD": FAKETIME, "FAKETIME": offset, "DONT_FAKE_MONOTONIC": "1"}
    check = subprocess.run(["date", "+%s"], env={**os.environ, **skewed}, capture_output=True, text=True)
    assert abs(int(check.stdout) - time.time() - int(offset[:-1])) < 30  # the fake clock works
    assert project.cli("run", "quick").returncode == 0  # a host with a good clock creates the state
    started = time.monotonic()
    slow = project.cli("run", "slow", env=skewed)
    took = time.monotonic() - started
    assert slow.returncode == 1, slow.stderr
    assert 1.9 < took < 9, took  # killed at its own 2 s: not at once, nor when it ends (11 s)
    assert _lines(log)[:3] == ["quick", "start", "one"] and "late" not in _lines(log)
    [run] = [r for r in project.history("slow")]
    assert run["status"] == "timeout" and 1900 <= run["duration_ms"] < 12000, run
    # A run that ends well on the skewed host is not cut short, and opens no breaker.
    quick = project.cli("run", "quick", env=skewed)
    assert quick.returncode == 0, quick.stderr
    assert project.history("quick")[0]["status"] == "success"
    # status names the host whose clock is off (the skew noted at its last admission)
    status = json.loads(project.cli("status", "--json").stdout)
    [off] = status["clock_skew"]
    assert off["host"] == os.uname().nodename and abs(off["seconds"] - int(offset[:-1])) < 10
    table = project.cli("status", env={"COLUMNS": "200"}).stdout
    assert f"host {os.uname().nodename} is" in table and ("ahead of" if offset[0] == "+" else "behind") in table


@needs_faketime
def test_a_skewed_host_s_spurious_timeouts_never_open_a_breaker_for_a_good_host(project, pg_url):
    project.write("""
        jobs:
          fine:
            command: ["true"]
            timeout: 1m
            breaker: {name: upstream, failures: 2}
    """)
    project.env["SCHEDSYNC_STATE"] = pg_url
    skewed = {"LD_PRELOAD": FAKETIME, "FAKETIME": "+120s", "DONT_FAKE_MONOTONIC": "1"}
    for _ in range(3):
        result = project.cli("run", "fine", env=skewed)
        assert result.returncode == 0, result.stderr
    good = project.cli("run", "fine")
    assert good.returncode == 0, good.stderr
    assert [r["status"] for r in project.history("fine")] == ["success"] * 4


# --- a slot's loser while its winner runs ---------------------------------------------------

def test_a_loser_while_the_winner_runs_is_already_ran_naming_the_winner(project, pg_url):
    log = project.path / "job.log"
    project.write(f"""
        jobs:
          minute:
            schedule: "* * * * *"
            command: ["sh", "-c", "echo start >> {log}; sleep 6"]
    """)
    project.env["SCHEDSYNC_STATE"] = pg_url
    while time.time() % 60 > 40:  # both runs within one minute's slot
        time.sleep(0.5)
    winner = project.start("run", "minute")
    try:
        _wait_for(lambda: "start" in _lines(log), 30, "the winner to start")
        loser = project.cli("run", "minute")
        assert loser.returncode == 75, loser.stderr
        winner.communicate(timeout=60)
    finally:
        _kill(winner)
    runs = project.history("minute")
    assert [(r["status"], r["reason"]) for r in runs] == [("skipped", "already_ran"), ("success", None)]
    assert f"on {os.uname().nodename} (run {runs[1]['id']})" in runs[0]["error"]
    assert _lines(log) == ["start"]


# --- a job stops once its lease is lost ------------------------------------------------------

@pytest.mark.parametrize("kind", ["python", "command"])
def test_a_job_stops_within_seconds_once_its_lease_is_taken(project, pg_server, pg_url, kind):
    log = project.path / "job.log"
    (project.path / "looper.py").write_text(f"""
import time

def run(ctx):
    while True:
        with open({str(log)!r}, "a") as f:
            f.write(f"{{time.time()}}\\n")
        time.sleep(0.1)
""")
    loop = f'["sh", "-c", "while true; do date +%s.%N >> {log}; sleep 0.1; done"]'
    body = 'python: "looper:run"' if kind == "python" else f"command: {loop}"
    project.write(f"""
        jobs:
          looping:
            {body}
            timeout: 5m
    """)
    project.env["SCHEDSYNC_STATE"] = pg_url
    proc = project.start("run", "looping")
    try:
        _wait_for(lambda: len(_lines(log)) >= 3, 30, "the job to start")
        db = pg_url.split("/")[3].split("?")[0]
        # as if it had lapsed and another holder took it: the next renewal finds it gone
        pg_server.psql(db, "UPDATE schedsync.leases SET token = 1 WHERE name = 'looping'")
        taken = time.time()
        out, err = proc.communicate(timeout=60)
    finally:
        _kill(proc)
    assert proc.returncode == 1, err
    assert float(_lines(log)[-1]) < taken + 5  # a renewal (1 s), then the check (0.5 s), and slack
    [run] = project.history("looping")
    assert run["status"] == "failed" and "fenced" in run["error"], run

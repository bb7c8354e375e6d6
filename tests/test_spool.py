"""Every attempt leaves a trace: a run that gets no connection to its PostgreSQL state
spools itself on its host, and the next schedsync there replays it (``store.spool``);
connect-time errors say what happened."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pgserver import APP_PASSWORD, PgServer

JOBS = """
jobs:
  hello:
    command: ["sh", "-c", "echo hi >> {marker}"]
  tick:
    schedule: "* * * * *"
    command: ["true"]
"""


@pytest.fixture
def spool(project, tmp_path):
    folder = tmp_path / "spool"
    project.env["SCHEDSYNC_SPOOL"] = str(folder)
    project.write(JOBS.format(marker=project.path / "ran"))
    return folder


def _take_every_slot(url: str) -> list:
    import psycopg2

    held = []
    while True:
        try:
            held.append(psycopg2.connect(url))
        except psycopg2.OperationalError:
            return held


def test_too_many_clients_leaves_a_trace_that_the_next_run_replays(project, spool):
    server = PgServer().start(max_connections=5)
    held = []
    try:
        url = server.url(server.createdb(owner="app"), user="app", password=APP_PASSWORD)
        project.env["SCHEDSYNC_STATE"] = url
        assert project.cli("run", "hello").returncode == 0  # the state exists, the job is known
        held = _take_every_slot(url)
        assert held
        result = project.cli("run", "tick", env={"SCHEDSYNC_CONNECT_RETRY": "1"})
        assert result.returncode == 1
        [line] = result.stderr.strip().splitlines()
        assert "too many clients" in line and "PgBouncer" in line and "max_connections" in line
        [entry] = [json.loads(p.read_text()) for p in spool.glob("*.json")]
        assert entry["job"] == "tick" and entry["why"] == "too many clients" and entry["trigger"] == "cron"
        assert entry["slot"] is not None and entry["slot"] % 60 == 0
        assert APP_PASSWORD not in json.dumps(entry) and entry["host"] == os.uname().nodename
        assert oct(spool.stat().st_mode & 0o777) == "0o700"
        for conn in held:
            conn.close()
        held = []

        assert project.cli("run", "hello").returncode == 0  # replays the spool, then runs
        assert not list(spool.glob("*.json"))
        [run] = project.history("tick")
        assert (run["status"], run["reason"], run["host"]) == ("failed", "not_started", os.uname().nodename)
        assert run["error"].startswith("not started: too many clients")
        shown = project.cli("history", "tick")
        assert "not started: too many clients" in shown.stdout and APP_PASSWORD not in shown.stdout
        status = {j["name"]: j for j in project.status()["jobs"]}
        assert status["tick"]["health"] == "FAILING"  # a run that never started is a failure to run
        metrics = project.cli("metrics").stdout
        assert 'job="tick",status="failed"} 1' in metrics
    finally:
        for conn in held:
            conn.close()
        server.stop()


def test_a_server_that_is_down_spools_the_run_and_says_unreachable(project, spool, tmp_path):
    url = f"postgresql://u:pw@/db?host={tmp_path}"
    result = project.cli("run", "hello", env={"SCHEDSYNC_STATE": url})
    assert result.returncode == 1 and "unreachable" in result.stderr and "pw@" not in result.stderr
    [entry] = [json.loads(p.read_text()) for p in spool.glob("*.json")]
    assert entry["why"] == "server down" and entry["state"] == "postgresql://u:***@/db?host=" + str(tmp_path)
    assert entry["trigger"] == "cron" and entry["slot"] is None  # hello has no schedule
    assert "pw" not in json.dumps(entry).replace("pw@", "").split("u:")[0]
    assert not list(spool.glob(".*"))  # no temporary file left


@pytest.fixture
def silent_server():
    """A loopback port whose listener accepts connections and never answers: a connect
    timeout. Counts the attempts."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    accepted: list = []
    stop = threading.Event()

    def accept():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(sock.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield sock.getsockname()[1], accepted
    stop.set()
    thread.join(5)
    for conn in accepted:
        conn.close()
    sock.close()


def test_a_connect_timeout_says_so_is_retried_and_spooled(project, spool, silent_server):
    port, accepted = silent_server
    url = f"postgresql://u@127.0.0.1:{port}/db?connect_timeout=1"
    started = time.monotonic()
    result = project.cli("run", "hello", env={"SCHEDSYNC_STATE": url, "SCHEDSYNC_CONNECT_RETRY": "2"})
    assert result.returncode == 1 and not (project.path / "ran").exists()
    [line] = result.stderr.strip().splitlines()
    assert f"timed out connecting to 127.0.0.1:{port} after 1s" in line, line
    assert "unreachable" not in line and "start PostgreSQL" not in line
    assert len(accepted) >= 2 and time.monotonic() - started >= 2  # retried, within its bound
    [entry] = [json.loads(p.read_text()) for p in spool.glob("*.json")]
    assert entry["why"] == "connect timeout"


def test_two_replays_at_once_insert_an_entry_once(project, spool, pg_url, monkeypatch):
    from schedsync.store import spool as spool_module
    from schedsync.store.postgres import PostgresStore

    monkeypatch.setenv("SCHEDSYNC_SPOOL", str(spool))
    first = PostgresStore(pg_url)
    stores = [PostgresStore(pg_url) for _ in range(4)]  # opened before the entry exists
    path = spool_module.write(first.label, "tick", "cron", "too many clients", "no slot", host="h3", at=1e9)
    assert path
    # Each replays its own copy of the file at the same instant: one insert in all.
    copies = []
    for i in range(len(stores)):
        copy = spool / f"copy{i}"
        copy.mkdir(mode=0o700)
        (copy / os.path.basename(path)).write_bytes(Path(path).read_bytes())
        copies.append(copy)
    barrier = threading.Barrier(len(stores))
    counts = []

    def replay(store, folder):
        barrier.wait()
        counts.append(spool_module.replay(store, [os.path.basename(path)], str(folder)))

    threads = [threading.Thread(target=replay, args=(s, c)) for s, c in zip(stores, copies, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(counts) == [0, 0, 0, 1]
    assert all(not list(c.iterdir()) for c in copies)
    assert spool_module.replay(first, [os.path.basename(path)], str(spool)) == 0  # and the original
    [run] = first.runs("tick")
    assert (run.status, run.reason, run.host, run.started_at) == ("failed", "not_started", "h3", 1e9)
    assert first.counters()["tick"]["failed"] == (1, 0)
    for store in [first, *stores]:
        store.close()


def test_the_spool_is_bounded_and_private(tmp_path, monkeypatch):
    from schedsync.store import spool as spool_module

    folder = tmp_path / "spool"
    monkeypatch.setattr(spool_module, "MAX_ENTRIES", 3)
    paths = [spool_module.write("postgresql://x/db", "j", "cron", "server down", "e" * 10_000, host="h",
                                folder=str(folder)) for _ in range(5)]
    assert sum(p is not None for p in paths) == 3 and len(list(folder.iterdir())) == 3
    assert all(os.path.getsize(p) <= spool_module.SMALL for p in paths if p)
    assert spool_module.write("postgresql://x/db", "j" * 5000, "cron", "x", "y", host="h",
                              folder=str(tmp_path / "other")) is None  # too big: no trace, never a huge one
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert spool_module.write("postgresql://x/db", "j", "cron", "x", "y", host="h", folder=str(shared)) is None


def test_a_run_with_an_empty_spool_imports_no_spool_code(project, spool, pg_url):
    probe = ("import sys, runpy; sys.argv = ['schedsync', '-c', sys.argv[1], 'run', 'hello'];"
             "import atexit; atexit.register(lambda: print('SPOOL' if 'schedsync.store.spool' in sys.modules"
             " else 'NONE', file=sys.stderr)); runpy.run_module('schedsync', run_name='__main__')")
    env = {**project.env, "SCHEDSYNC_STATE": pg_url}
    result = subprocess.run([sys.executable, "-c", probe, str(project.config)], capture_output=True,
                            text=True, env=env, cwd=project.path, stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and result.stderr.strip().endswith("NONE"), result.stderr


# --- a run whose job finished while the database was away ----------------------------------

WAITER = '''
import os, time

def wait(ctx):
    deadline = time.monotonic() + 60
    while not os.path.exists({go!r}) and time.monotonic() < deadline:
        time.sleep(0.05)
    return 3
'''


@pytest.fixture
def away(project, spool):
    """A python job that ends once the test says ``go``, on a state whose server the test
    stops and starts again."""
    server = PgServer().start()
    go = project.path / "go"
    (project.path / "waiter.py").write_text(WAITER.format(go=str(go)))
    project.write('jobs:\n  waiter:\n    python: "waiter:wait"\n    timeout: 5m\n')
    project.env["SCHEDSYNC_STATE"] = server.url(server.createdb())
    yield server, go
    server.stop()


def _wait_running(project, job: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        runs = project.history(job)
        if runs and runs[0]["status"] == "running":
            return
        time.sleep(0.1)
    raise AssertionError(f"{job} never ran")


def test_a_run_that_ends_while_the_database_restarts_records_its_real_end(project, away):
    server, go = away
    proc = project.start("run", "waiter")
    try:
        _wait_running(project, "waiter")
        server.halt()  # every session ends, this run's connection with it
        go.touch()  # the job finishes while the database is away
        time.sleep(1.5)
        server.resume()
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    [run] = project.history("waiter")
    assert (run["status"], run["items_processed"]) == ("success", 3)
    assert not list((project.path.parent / "spool").glob("*.json"))


def test_a_run_whose_database_stays_away_spools_its_end_over_a_crashed_mark(project, away, tmp_path):
    server, go = away
    proc = project.start("run", "waiter", env={"SCHEDSYNC_FINISH_RETRY": "1"})
    try:
        _wait_running(project, "waiter")
        server.halt()
        go.touch()
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1
    [line] = err.strip().splitlines()
    assert "was lost at the end of run" in line and "(success) is kept in" in line
    [entry] = [json.loads(p.read_text()) for p in (tmp_path / "spool").glob("*.json")]
    assert entry["kind"] == "finish" and entry["run"]["status"] == "success"
    server.resume()
    # Another host (its own spool, empty) finds the run's owner gone and marks it crashed.
    elsewhere = {"SCHEDSYNC_SPOOL": str(tmp_path / "elsewhere")}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # once the run's lease (renewed no more) has expired
        project.cli("status", env=elsewhere)
        crashed = json.loads(project.cli("history", "waiter", "--json", env=elsewhere).stdout)
        if crashed[0]["status"] != "running":
            break
        time.sleep(0.5)
    assert [r["status"] for r in crashed] == ["crashed"]
    assert 'job="waiter",status="crashed"} 1' in project.cli("metrics", env=elsewhere).stdout
    # The next schedsync on this host replays the spool: the real end, never crashed.
    [run] = project.history("waiter")
    assert (run["status"], run["items_processed"], run["id"]) == ("success", 3, crashed[0]["id"])
    assert run["finished_at"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry["at"]))
    metrics = project.cli("metrics").stdout
    assert 'job="waiter",status="success"} 1' in metrics
    assert 'job="waiter",status="crashed"} 1' not in metrics
    assert not list((tmp_path / "spool").glob("*.json"))
    [again] = project.history("waiter")  # a second replay (none left) changes nothing
    assert again == run


FAILER = '''
import os, time

def fail(ctx):
    deadline = time.monotonic() + 60
    while not os.path.exists({go!r}) and time.monotonic() < deadline:
        time.sleep(0.05)
    raise RuntimeError("upstream not ready")
'''


def test_a_spooled_end_keeps_the_retry_later_it_calls_for(project, away, tmp_path):
    from schedsync.store import open_store

    server, go = away
    (project.path / "failer.py").write_text(FAILER.format(go=str(go)))
    project.write('jobs:\n  failer:\n    python: "failer:fail"\n    timeout: 5m\n'
                  '    retry_later: {after: 30m, max: 3}\n')
    proc = project.start("run", "failer", env={"SCHEDSYNC_FINISH_RETRY": "1"})
    try:
        _wait_running(project, "failer")
        server.halt()
        go.touch()
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1 and "(failed) is kept in" in err, err
    [entry] = [json.loads(p.read_text()) for p in (tmp_path / "spool").glob("*.json")]
    assert entry["later"]["kind"] == "retry" and entry["later"]["retry_number"] == 1
    server.resume()
    [run] = project.history("failer")  # replayed: the end and, with it, the retry
    assert run["status"] == "failed"
    store = open_store(project.env["SCHEDSYNC_STATE"])
    try:
        [retry] = [s for s in store.slots("failer") if s.kind == "retry"]
        assert (retry.state, retry.retry_of, retry.retry_number) == ("queued", run["id"], 1)
    finally:
        store.close()


def test_a_spooled_end_keeps_the_chain_it_calls_for(project, away, tmp_path):
    from schedsync.store import open_store

    server, go = away
    (project.path / "failer.py").write_text(FAILER.format(go=str(go)))
    project.write('jobs:\n  failer:\n    python: "failer:fail"\n    timeout: 5m\n'
                  '  page:\n    command: ["true"]\n    after: [{job: failer, on: failure}]\n')
    proc = project.start("run", "failer", env={"SCHEDSYNC_FINISH_RETRY": "1"})
    try:
        _wait_running(project, "failer")
        server.halt()
        go.touch()
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1 and "(failed) is kept in" in err, err
    [entry] = [json.loads(p.read_text()) for p in (tmp_path / "spool").glob("*.json")]
    assert entry["after"] == ["page"]
    server.resume()
    [run] = project.history("failer")  # replayed: the end and, with it, the chain's item
    assert run["status"] == "failed"
    store = open_store(project.env["SCHEDSYNC_STATE"])
    try:
        [item] = store.slots("page")
        assert (item.kind, item.state, item.parent) == ("after", "queued", run["id"])
    finally:
        store.close()

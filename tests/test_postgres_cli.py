"""The real CLI against a real PostgreSQL state: selection, errors, passwords, hosts."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pgserver import APP_PASSWORD, PgServer
from schedsync.store.postgres import LEASE, RECONNECT_FOR

ROOT = Path(__file__).resolve().parent.parent

JOBS = """
jobs:
  hello:
    command: ["sh", "-c", "echo hi > {marker}"]
  tick:
    schedule: "* * * * *"
    command: ["true"]
  long:
    command: ["sleep", "60"]
    timeout: 5m
"""


@pytest.fixture(params=["direct", "pgbouncer"])
def pg(request, project, pg_url):
    """The CLI on a fresh PostgreSQL state: connecting directly, and through a real
    PgBouncer in ``pool_mode = transaction`` (every test using this fixture runs on both)."""
    project.write(JOBS.format(marker=project.path / "ran"))
    project.env["SCHEDSYNC_STATE"] = pg_url
    if request.param == "pgbouncer":
        bouncer = request.getfixturevalue("pg_bouncer")
        project.env["SCHEDSYNC_STATE"] = bouncer.url(pg_url.split("/")[3].split("?")[0])
    return project


def test_a_postgresql_url_selects_the_backend_and_status_reads_it(pg, pg_server, pg_url):
    result = pg.cli("run", "hello")
    assert result.returncode == 0, result.stderr
    assert (pg.path / "ran").exists() and not (pg.path / "schedsync.db").exists()
    [run] = pg.history("hello")
    assert (run["status"], run["host"]) == ("success", os.uname().nodename)
    status = pg.status()
    assert [j["last_run"]["status"] for j in status["jobs"] if j["name"] == "hello"] == ["success"]
    db = pg_url.split("/")[3].split("?")[0]
    assert pg_server.psql(db, "SELECT count(*) FROM schedsync.runs").strip() == "1"


def test_state_in_jobs_yaml_and_postgres_scheme_pass_through_untouched(pg):
    url = pg.env["SCHEDSYNC_STATE"]
    pg.write(f"state: {url.replace('postgresql://', 'postgres://')}\n" + JOBS.format(marker=pg.path / "ran"))
    del pg.env["SCHEDSYNC_STATE"]
    assert pg.cli("run", "hello").returncode == 0
    assert pg.history("hello")[0]["status"] == "success"


def test_a_password_in_the_url_is_never_printed(project, pg_server):
    db = pg_server.createdb(owner="app")
    url = pg_server.url(db, user="app", password=APP_PASSWORD)
    project.write(JOBS.format(marker=project.path / "ran") + "  broken:\n    command: ['false']\n")
    env = {"SCHEDSYNC_STATE": url}
    outputs = [project.cli("run", "hello", env=env), project.cli("run", "broken", env=env),
               project.cli("status", env=env), project.cli("status", "--json", env=env),
               project.cli("history", "broken", "--json", env=env), project.cli("crontab", env=env)]
    assert outputs[0].returncode == 0, outputs[0].stderr
    for result in outputs:
        assert APP_PASSWORD not in result.stdout + result.stderr
    crontab = outputs[-1].stdout
    assert f"--state 'postgresql://app@/{db}?host=" in crontab and "~/.pgpass" in crontab
    wrong = pg_server.url(db, user="app", password="not-" + APP_PASSWORD)
    bad = project.cli("run", "hello", env={"SCHEDSYNC_STATE": wrong})
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
    assert "password authentication failed" in bad.stderr and "not-" + APP_PASSWORD not in bad.stderr
    assert "app:***@" in bad.stderr


def test_the_password_comes_from_pgpass_as_libpq_reads_it(project, pg_server, home):
    db = pg_server.createdb(owner="app")
    pgpass = Path(home["HOME"]) / ".pgpass"
    pgpass.parent.mkdir(parents=True, exist_ok=True)
    pgpass.write_text(f"*:*:*:app:{APP_PASSWORD}\n")
    pgpass.chmod(0o600)
    project.write(JOBS.format(marker=project.path / "ran"))
    result = project.cli("run", "hello", env={"SCHEDSYNC_STATE": pg_server.url(db, user="app")})
    assert result.returncode == 0, result.stderr


def test_a_server_that_is_down_is_one_line_and_nothing_runs(project, tmp_path):
    project.write(JOBS.format(marker=project.path / "ran"))
    result = project.cli("run", "hello", env={"SCHEDSYNC_STATE": f"postgresql://u:pw@/db?host={tmp_path}"})
    assert result.returncode == 1 and not (project.path / "ran").exists()
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: state database postgresql://u:***@/db") and "unreachable" in line
    assert "pw@" not in line


def test_a_missing_database_names_the_fix(project, pg_server):
    project.write(JOBS.format(marker=project.path / "ran"))
    result = project.cli("run", "hello", env={"SCHEDSYNC_STATE": pg_server.url("nope")})
    [line] = result.stderr.strip().splitlines()
    assert result.returncode == 1 and "does not exist" in line and "createdb" in line


def test_without_the_extra_a_url_names_it_and_exits_2(project, tmp_path, pg_url):
    # A psycopg2 that cannot be imported, first on the path: as if the extra were not installed.
    fake = tmp_path / "noextra" / "psycopg2"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named psycopg2')\n")
    project.write(JOBS.format(marker=project.path / "ran"))
    env = {"SCHEDSYNC_STATE": pg_url, "PYTHONPATH": f"{fake.parent}:{ROOT}"}
    result = project.cli("run", "hello", env=env)
    assert result.returncode == 2 and not (project.path / "ran").exists()
    [line] = result.stderr.strip().splitlines()
    assert "pip install 'schedsync[postgres]'" in line


def test_sqlite_runs_never_import_the_driver(project):
    project.write(JOBS.format(marker=project.path / "ran"))
    probe = ("import sys, runpy; sys.argv = ['schedsync', '-c', sys.argv[1], 'run', 'hello'];"
             "import atexit; atexit.register(lambda: print('DRIVER' if 'psycopg2' in sys.modules else 'NONE',"
             " file=sys.stderr)); runpy.run_module('schedsync', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", probe, str(project.config)], capture_output=True,
                            text=True, env=project.env, cwd=project.path, stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and result.stderr.strip().endswith("NONE"), result.stderr


def test_too_many_clients_is_retried_then_succeeds(project):
    server = PgServer().start(max_connections=5)
    try:
        db = server.createdb(owner="app")
        url = server.url(db, user="app", password=APP_PASSWORD)
        import psycopg2

        held = []
        while True:  # take every slot a non-superuser can have
            try:
                held.append(psycopg2.connect(url))
            except psycopg2.OperationalError:
                break
        assert held
        project.write(JOBS.format(marker=project.path / "ran"))
        started = time.monotonic()
        proc = project.start("run", "hello", env={"SCHEDSYNC_STATE": url})
        time.sleep(1.5)
        held.pop().close()  # a slot frees up while schedsync retries
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert time.monotonic() - started >= 1.5 and (project.path / "ran").exists()
        for conn in held:
            conn.close()
    finally:
        server.stop()


def test_too_many_clients_for_too_long_is_one_line(project, monkeypatch):
    from schedsync.core.errors import StateError
    from schedsync.store import open_store, postgres

    server = PgServer().start(max_connections=5)
    held = []
    try:
        db = server.createdb(owner="app")
        url = server.url(db, user="app", password=APP_PASSWORD)
        import psycopg2

        while True:
            try:
                held.append(psycopg2.connect(url))
            except psycopg2.OperationalError:
                break
        monkeypatch.setattr(postgres, "CROWDED_FOR", 1.0)  # the bound, shortened for the test
        started = time.monotonic()
        with pytest.raises(StateError) as error:
            open_store(url)
        assert time.monotonic() - started >= 1.0
        assert "too many clients" in str(error.value) and "max_connections" in str(error.value)
        assert APP_PASSWORD not in str(error.value) and "\n" not in str(error.value)
    finally:
        for conn in held:
            conn.close()
        server.stop()


def test_fencing_stops_the_job_when_the_database_goes_away(project):
    server = PgServer().start()
    try:
        url = server.url(server.createdb())
        project.write(JOBS.format(marker=project.path / "ran"))
        proc = project.start("run", "long", env={"SCHEDSYNC_STATE": url})
        deadline = time.time() + 20
        while time.time() < deadline and "sleep 60" not in _children_cmdlines(proc.pid):
            time.sleep(0.1)
        assert "sleep 60" in _children_cmdlines(proc.pid)
        server.psql("postgres", "SELECT 1")
        cut = time.monotonic()
        subprocess.run([f"{server.bin}/pg_ctl", "-D", server.data, "-m", "immediate", "stop"],
                       capture_output=True, check=False,
                       preexec_fn=_demote(server.owner) if server.owner else None)
        # Changed on purpose (leases): the job is stopped once no renewal was confirmed for
        # LEASE - MARGIN seconds, before its lease (LEASE from the last renewal) can lapse.
        while "sleep 60" in _children_cmdlines(proc.pid) and time.monotonic() - cut < 30:
            time.sleep(0.1)
        took = time.monotonic() - cut
        assert took < LEASE - 1, took  # the last renewal was at most a second before the cut
        out, err = proc.communicate(timeout=RECONNECT_FOR + 30)  # it tries to record the end
        assert "stopping the job so that no other host runs it" in err
        assert proc.returncode == 1
    finally:
        server.stop()


def _demote(owner):
    import pwd

    user = pwd.getpwnam(owner)

    def demote():
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    return demote


def _children_cmdlines(pid: int) -> str:
    """The command lines of ``pid``'s descendants (the job runs under a keeper process)."""
    lines, parents = [], [pid]
    while parents:
        out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", ",".join(map(str, parents))],
                             capture_output=True, text=True).stdout
        parents = []
        for line in out.splitlines():
            child, _, args = line.strip().partition(" ")
            parents.append(int(child))
            lines.append(args)
    return "\n".join(lines)


# --- hosts: own host name and pid space each ----------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                reason="simulated hosts need root and unshare")


def on_host(name: str, project, *args: str, env: dict | None = None) -> subprocess.Popen:
    argv = " ".join(f"'{a}'" for a in project.argv(*args))
    return subprocess.Popen(["unshare", "--uts", "--pid", "--fork", "--mount-proc", "sh", "-c",
                             f"hostname {name} && exec {argv}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, cwd=project.path, env={**project.env, **(env or {})},
                            start_new_session=True)


@needs_root
def test_one_slot_on_three_hosts_runs_once_and_a_person_can_force_it(pg):
    results = []
    for i in range(3):  # cron on each host; the first finishes before the others start
        proc = on_host(f"cron{i}", pg, "run", "tick")
        out, err = proc.communicate(timeout=60)
        results.append((proc.returncode, err))
    if time.localtime().tm_sec >= 58:  # a minute boundary passed mid-test: a new slot
        pytest.skip("crossed a minute boundary")
    assert [code for code, _ in results] == [0, 75, 75]
    runs = pg.history("tick")
    assert [r["status"] for r in runs] == ["skipped", "skipped", "success"]
    assert all(r["reason"] == "already_ran" and "already ran on cron0" in r["error"] for r in runs[:2])
    assert "--force-slot" in runs[0]["error"]
    forced = on_host("cron1", pg, "run", "--force-slot", "tick")
    forced.communicate(timeout=60)
    assert forced.returncode == 0
    viewer = on_host("viewer", pg, "status")
    out, _ = viewer.communicate(timeout=60)
    assert "on cron1" in out  # status names the host that ran each last run


@needs_root
def test_kill_9_of_a_host_shows_crashed_elsewhere_and_another_host_runs_the_job(pg):
    victim = on_host("victim", pg, "run", "long")
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            runs = pg.history("long")  # [] until the victim's run has created the state
            if runs and runs[0]["status"] == "running":
                break
            time.sleep(0.2)
        seen = on_host("other", pg, "status", "--json")
        out, _ = seen.communicate(timeout=60)
        last = {j["name"]: j for j in json.loads(out)["jobs"]}["long"]["last_run"]
        assert (last["status"], last["host"]) == ("running", "victim")  # alive: never crashed
        busy = on_host("other", pg, "run", "long")
        busy.communicate(timeout=60)
        assert busy.returncode == 75  # the cluster-wide lock
        os.killpg(victim.pid, signal.SIGKILL)  # the host's whole process tree
        victim.wait(timeout=10)
        killed = time.monotonic()
        while True:  # changed on purpose (leases): crashed once the victim's lease lapsed
            seen = on_host("other", pg, "history", "long", "--json")
            out, _ = seen.communicate(timeout=60)
            history = [(r["status"], r["host"]) for r in json.loads(out)]
            if history[1][0] != "running" or time.monotonic() - killed > LEASE + 20:
                break
            time.sleep(0.5)
        assert history == [("skipped", "other"), ("crashed", "victim")]
        assert time.monotonic() - killed < LEASE + 20
        pg.write(JOBS.replace('["sleep", "60"]', '["true"]').format(marker=pg.path / "ran"))
        rescue = on_host("other", pg, "run", "long")
        rescue.communicate(timeout=60)
        assert rescue.returncode == 0
        assert [(r["status"], r["host"]) for r in pg.history("long")] == [
            ("success", "other"), ("skipped", "other"), ("crashed", "victim")]
    finally:
        if victim.poll() is None:
            os.killpg(victim.pid, signal.SIGKILL)


def test_state_copy_moves_a_sqlite_state_into_postgresql(project, pg_url):
    project.write(JOBS.format(marker=project.path / "ran") + """
  flaky:
    command: ["false"]
    breaker: {failures: 2}
    budget: quota
budgets:
  quota: 10/1h
""")
    for args in (("run", "hello"), ("run", "flaky"), ("run", "flaky"), ("run", "flaky"), ("pause", "tick")):
        project.cli(*args)
    before_status, before_history = project.status(), project.history("flaky")
    from schedsync.store import open_store

    def ledger(target):  # the slot ledger and its queue come along too (issue 17)
        store = open_store(target)
        try:
            return [(s.job, s.slot, s.kind, s.state, s.run_id) for j in ("hello", "flaky") for s in store.slots(j)]
        finally:
            store.close()

    from schedsync.core.models import AuditEntry

    store = open_store(str(project.state))
    store.enqueue("hello", [{"slot": 1_790_000_000.0, "kind": "backfill", "due_at": 1_790_000_000.0}])
    store.record_audit(AuditEntry(1_790_000_000.0, "pause", "hello", "token", "127.0.0.1", reason="copy me"))
    store.save_resume("hello", None, '{"page": 4}', 1_790_000_000.0)
    store.note_watermark("hello", 1_790_000_123.0)
    store.close()
    before_ledger = ledger(str(project.state))
    result = project.cli("state", "copy", "--to", pg_url)
    assert result.returncode == 0, result.stderr
    assert "copied 4 runs" in result.stdout
    after = dict(project.env, SCHEDSYNC_STATE=pg_url)
    copied = subprocess.run(project.argv("history", "flaky", "--json"), capture_output=True,
                            text=True, env=after, cwd=project.path)
    assert json.loads(copied.stdout) == before_history
    status = json.loads(subprocess.run(project.argv("status", "--json"), capture_output=True,
                                       text=True, env=after, cwd=project.path).stdout)
    def strip(s):
        return [{k: v for k, v in j.items() if k not in ("next_expected", "why")} for j in s["jobs"]]

    assert strip(status) == strip(before_status)
    assert [b["tokens"] for b in status["budgets"]] == pytest.approx(
        [b["tokens"] for b in before_status["budgets"]], abs=0.1)
    def counters(env):
        out = subprocess.run(project.argv("metrics"), capture_output=True, text=True, env=env,
                             cwd=project.path).stdout
        return sorted(line for line in out.splitlines()
                      if line.startswith(("schedsync_runs_total", "schedsync_requests_total",
                                          "schedsync_run_duration_seconds", "schedsync_items_total",
                                          "schedsync_retries_total")))

    assert counters(after) == counters(project.env)  # the run counters came along
    assert ledger(pg_url) == before_ledger and ("hello", 1_790_000_000.0, "backfill", "queued", None) in before_ledger
    assert 'schedsync_run_duration_seconds_count{job="flaky"} 2' in counters(after)  # the third: skipped
    store = open_store(pg_url)  # serve's audit log, resume points and watermarks come along (issues 18, 19)
    try:
        assert [(a.action, a.reason) for a in store.audit("hello")] == [("pause", "copy me")]
        assert store.resume_point("hello").point == '{"page": 4}'
        assert store.watermarks(["hello"]) == {"hello": 1_790_000_123.0}
    finally:
        store.close()
    again = project.cli("state", "copy", "--to", pg_url)
    assert again.returncode == 1 and "already holds runs" in again.stderr


def test_an_http_job_on_a_url_state_upserts_into_a_postgresql_table(project, pg_url):
    # With a PostgreSQL state and no into.db, synced items go to a table in that database.
    import http.server
    import threading

    body = json.dumps({"data": [{"id": 1, "name": "a", "tags": ["x"]}, {"id": 2, "name": "b"}]}).encode()

    class Items(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Items)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/items"
    try:
        project.write(f"""
            jobs:
              items:
                http: {{url: "{url}", items: data}}
                into: {{table: items, pk: id}}
        """)
        result = project.cli("run", "items", env={"SCHEDSYNC_STATE": pg_url})
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr
    import psycopg2

    with psycopg2.connect(pg_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, name, tags FROM items ORDER BY id")
        rows = cur.fetchall()
    assert [(int(r[0]), r[1]) for r in rows] == [(1, "a"), (2, "b")]
    assert "x" in str(rows[0][2])
    assert not (project.path / "data.db").exists()


@pytest.mark.parametrize("password", ["Zqk7/Xv9@Yw3:Wp2%zz", "Zqk7@Xv9Yw3", "Zqk7/Xv9Yw3", "Zqk7Xv9%zzYw3",
                                      "Zqk7:Xv9:Yw3"])
def test_a_password_with_raw_url_characters_is_never_printed(project, tmp_path, password):
    # A password pasted into the URL without percent-encoding: libpq then reads part of it
    # as the host, port or database, and quotes that part in its errors. Port 1 on loopback
    # refuses at once, so the connect fails: what it prints must still hold no piece of it.
    project.write(JOBS.format(marker=project.path / "ran"))
    (project.path / "old.db").touch()
    env = {"SCHEDSYNC_STATE": f"postgresql://app:{password}@127.0.0.1:1/db"}
    results = [project.cli(*args, env=env) for args in (
        ("run", "hello"), ("status",), ("status", "--json"), ("status", "--check"), ("history", "hello"),
        ("logs", "hello"), ("crontab",), ("validate",))]
    results.append(project.cli("--state", str(project.path / "old.db"), "state", "copy", "--to",
                               env["SCHEDSYNC_STATE"]))
    assert results[0].returncode in (1, 2) and not (project.path / "ran").exists()
    pieces = [p for p in re.split(r"[/@:]|%zz", password) if len(p) >= 3]
    for result in results:
        shown = result.stdout + result.stderr
        assert "Traceback" not in shown, shown
        for piece in pieces:
            assert piece not in shown, (result.args, shown)
    typo = project.cli("--state", str(project.path / "old.db"), "state", "copy", "--to",
                       f"postgresq://app:{password}@127.0.0.1:1/db")
    assert typo.returncode == 2 and "app:***@" in typo.stderr
    assert not any(piece in typo.stdout + typo.stderr for piece in pieces), typo.stderr
    assert "app:***@127.0.0.1:1/db" in results[0].stderr
    assert "--state postgresql://app@127.0.0.1:1/db run" in results[6].stdout


@pytest.mark.parametrize("password", ["Zqk7/Xv9@Yw3:Wp2%zz", "Zqk7Xv9Yw3"])
def test_a_data_url_password_is_never_printed_when_storing_fails(project, password):
    # into.db given as a literal URL (not a ${VAR}, so not a known secret): a store error
    # names the database, and must not name its password.
    project.write(f"""
        jobs:
          sync:
            retries: {{attempts: 1}}
            http: {{url: "http://127.0.0.1:1/items", items: data}}
            into: {{table: t, pk: id, db: "postgresql://app:{password}@127.0.0.1:1/db"}}
    """)
    result = project.cli("run", "sync")
    history = project.cli("history", "sync", "--json")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    for shown in (result.stdout + result.stderr, history.stdout + history.stderr):
        assert "postgresql://app:***@127.0.0.1:1/db" in shown
        for piece in (p for p in re.split(r"[/@:]|%zz", password) if len(p) >= 3):
            assert piece not in shown, shown


@pytest.mark.parametrize("how", ["constraint", "terminate"])
def test_a_database_error_during_a_budget_spend_is_one_line_not_an_internal_error(project, pg_server, how):
    # The first page's request is served, then the state database fails the next spend:
    # a server-side error (a constraint the bucket's update breaks), or the run's own
    # session killed (pg_terminate_backend). Either is a state error, said in one line.
    import http.server
    import threading

    db = pg_server.createdb()
    url = pg_server.url(db)
    sabotage = {"constraint": "ALTER TABLE schedsync.buckets ADD CONSTRAINT full_only CHECK (tokens > 1e9)"
                              " NOT VALID",
                "terminate": "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                             f" WHERE datname = '{db}' AND pid <> pg_backend_pid()"}[how]

    class Pages(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if "page=2" not in self.path:
                pg_server.psql(db, sabotage)
            more = "" if "page=2" in self.path else f"http://127.0.0.1:{self.server.server_address[1]}/?page=2"
            body = json.dumps({"data": [{"id": 1}], "next": more or None}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        project.write(f"""
            budgets: {{api: 100/1m}}
            jobs:
              items:
                http: {{url: "http://127.0.0.1:{server.server_address[1]}/", items: data, next: next}}
                into: {{table: items, pk: id}}
                budget: api
        """)
        result = project.cli("run", "items", env={"SCHEDSYNC_STATE": url})
    finally:
        server.shutdown()
        server.server_close()
    text = result.stdout + result.stderr
    assert result.returncode == 1, text
    assert "internal error" not in text and "Traceback" not in text and "psycopg2" not in text, text
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    if how == "constraint":  # the request fails, the run is recorded failed, saying why
        assert "cannot spend a budget token: state database" in result.stderr, result.stderr
    else:  # changed on purpose (leases): the state's session is opened again and the run
        # recorded; the sink's own session, killed too, is what failed it
        assert "cannot store items into items" in result.stderr, result.stderr
        project.env["SCHEDSYNC_STATE"] = url
        assert project.history("items")[0]["status"] == "failed"


def test_state_copy_of_a_file_older_than_run_totals_seeds_them_from_its_runs(tmp_path, pg_url):
    import sqlite3

    from schedsync.store import open_store
    from schedsync.store.copy import copy_state
    from schedsync.store.sqlite import MIGRATIONS

    path = tmp_path / "v4.db"
    db = sqlite3.connect(path, isolation_level=None)
    for migration in MIGRATIONS[:4]:  # before run_totals
        migration(db)
    db.execute("PRAGMA user_version = 4")
    db.executemany("INSERT INTO runs (job, status, trigger, started_at, host, pid, duration_ms, attempts,"
                   " items_processed) VALUES (?, ?, 'cron', 0, 'h', 1, ?, ?, ?)",
                   [("a", "success", 300, 2, 5), ("a", "skipped", 0, 0, 0)])
    db.close()
    assert copy_state(str(path), pg_url)["run_totals"] == 0
    store = open_store(pg_url)
    try:
        assert store.run_totals() == {"a": {"runs": 1, "seconds": 0.3, "processed": 5, "failed": 0,
                                            "deleted": 0, "retries": 1, "buckets": {0.5: 1}}}
    finally:
        store.close()

"""Features that meet: params and the audit log, replace and freshness, select and deletes,
nested tables and deletes, triggers and requires, params and resume, the spool across an
upgrade, select and since/fresh, retries of a run with secret params. Each test failed when
these features were first put together."""

from __future__ import annotations

import json
import os
import signal

from conftest import Project
from test_serve import Served
from test_serve_writes import TOKEN, bearer, post, wait_for_run

SECRET = "zz-param-secret-0123456789"


def test_a_secret_param_given_to_serve_is_not_shown_by_the_audit_log(project: Project):
    """t1's params are secrets by name (SCHEDSYNC_PARAM_API_TOKEN: the run's record shows
    ***), but t2's audit entry of the same trigger kept them raw, and `status JOB` (and
    /job/NAME) print the audit entries."""
    project.write("""
        state: schedsync.db
        jobs:
          pull:
            params: {api_token: {}}
            command: ["sh", "-c", "true"]
    """)
    assert project.cli("status", "--init").returncode in (0, 1)  # a state for serve to write in
    server = Served(project, env={"SCHEDSYNC_SERVE_TOKEN": TOKEN})
    try:
        code, _, body = post(server, "/api/jobs/pull/trigger", {"params": {"api_token": SECRET}}, bearer())
        assert code == 202, body
        (run,) = wait_for_run(project, "pull")
        assert SECRET not in json.dumps(run)  # the run's own record redacts it
        shown = project.cli("status", "pull", "--json").stdout + project.cli("status", "pull").stdout
        status, _, page = server.get("/job/pull")
        assert SECRET not in shown, shown
        assert SECRET not in page
    finally:
        server.stop()


# --- d1's into.mode: replace meets d3's fresh: -----------------------------------------------------

def test_a_replace_that_failed_does_not_make_its_unswapped_rows_the_jobs_freshness(project: Project):
    """A replace run that fails keeps the old table (d1), but d3's note_watermark (in a
    ``finally``) noted the newest fresh.field of the pages it loaded into the staging table,
    which nobody can read: the state's watermark is a max over runs, so every later run that
    loads the same old data shows OK instead of STALE."""
    from test_freshness import iso_ago
    from test_http import Upstream, reply

    upstream = Upstream()
    pages = {"first": [{"id": 1, "updated_at": iso_ago(5 * 3600)}], "fail": False}

    @upstream.route("/items")
    def route(request):
        if request.query.get("page") == "2":
            return reply(500, {"error": "down"}) if pages["fail"] else reply(200, {"data": [], "next": None})
        return reply(200, {"data": pages["first"], "next": 2})

    try:
        project.write(f"""
            jobs:
              drops:
                retries: {{attempts: 1}}
                fresh: {{within: 2h, field: updated_at}}
                http:
                  url: "{upstream.base}/items"
                  items: data
                  next: {{page: page}}
                into: {{table: drops, pk: id, db: data.db, mode: replace}}
        """)
        assert project.cli("run", "drops").returncode == 0
        assert project.status()["jobs"][0]["health"] == "STALE"  # 5h old data

        pages["first"], pages["fail"] = [{"id": 2, "updated_at": iso_ago(60)}], True
        assert project.cli("run", "drops").returncode == 1  # page 2 fails: drops is not replaced

        pages["first"], pages["fail"] = [{"id": 1, "updated_at": iso_ago(5 * 3600)}], False
        assert project.cli("run", "drops").returncode == 0  # the same 5h old data again
        job = project.status()["jobs"][0]
        assert job["health"] == "STALE", job
    finally:
        upstream.close()


# --- d1's into.delete meets d2's into.select ---------------------------------------------------------

def test_select_keeps_the_delete_field_so_a_deleted_item_is_deleted(project: Project):
    """``select`` keeps the listed keys and the pk (d2) and nothing else, so the field
    ``into.delete`` reads (d1) was gone before the sink looked: a deleted item was upserted
    as a live row, and nothing was ever deleted."""
    import sqlite3

    from test_http import Upstream, reply

    upstream = Upstream()
    items = [{"id": 1, "name": "a", "is_deleted": False}, {"id": 2, "name": "b", "is_deleted": False}]

    @upstream.route("/items")
    def route(request):
        return reply(200, list(items))

    try:
        project.write(f"""
            jobs:
              drops:
                retries: {{attempts: 1}}
                http: {{url: "{upstream.base}/items"}}
                into:
                  table: drops
                  pk: id
                  db: data.db
                  select: [id, name]
                  delete: {{field: is_deleted, equals: true}}
        """)
        assert project.cli("run", "drops").returncode == 0
        items[1] = {"id": 2, "name": "b", "is_deleted": True}
        assert project.cli("run", "drops").returncode == 0
        db = sqlite3.connect(str(project.path / "data.db"))
        try:
            assert [row[0] for row in db.execute("SELECT id FROM drops ORDER BY id")] == [1]
        finally:
            db.close()
        assert project.history("drops")[0]["items_deleted"] == 1
    finally:
        upstream.close()


# --- d1's into.delete meets d2's nested: tables ------------------------------------------------------

def test_a_deleted_parent_takes_its_child_rows_with_it(project: Project):
    """nested: tables replaces a parent's child rows with its upsert (d2); a parent that
    into.delete removes (d1) had its lists written again as children of a row that is gone."""
    import sqlite3

    from test_http import Upstream, reply

    upstream = Upstream()
    items = [{"id": 1, "tags": [{"t": "x"}, {"t": "y"}], "is_deleted": False},
             {"id": 2, "tags": [{"t": "z"}], "is_deleted": False}]

    @upstream.route("/items")
    def route(request):
        return reply(200, list(items))

    try:
        project.write(f"""
            jobs:
              drops:
                retries: {{attempts: 1}}
                http: {{url: "{upstream.base}/items"}}
                into:
                  table: drops
                  pk: id
                  db: data.db
                  nested: tables
                  delete: {{field: is_deleted, equals: true}}
        """)
        assert project.cli("run", "drops").returncode == 0
        items[0] = {"id": 1, "tags": [{"t": "x"}, {"t": "y"}], "is_deleted": True}
        assert project.cli("run", "drops").returncode == 0
        db = sqlite3.connect(str(project.path / "data.db"))
        try:
            assert [row[0] for row in db.execute("SELECT id FROM drops ORDER BY id")] == [2]
            tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            child = next(name for name in tables if name.lower().startswith("drops__"))
            columns = [row[1] for row in db.execute(f'PRAGMA table_info("{child}")')]
            rows = db.execute(f'SELECT * FROM "{child}"').fetchall()
            assert all(row[columns.index(next(c for c in columns if "id" in c.lower()))] == 2 for row in rows), \
                (columns, rows)
        finally:
            db.close()
    finally:
        upstream.close()


# --- t1's triggered items meet t3's requires: ---------------------------------------------------------

def test_a_triggered_run_skipped_upstream_not_ready_is_not_retried_every_tick(project: Project):
    """A trigger (t1) of a job whose ``requires:`` (t3) upstream has not succeeded is skipped
    ``upstream_not_ready``; the skip put its api item back to ``queued`` (as for a budget or
    lock skip, which a later tick may clear), so every tick started it again and recorded one
    more skipped run, for as long as the upstream did not succeed, and ``trigger --wait``
    waited that long."""
    import time as clock

    from test_trigger import api_items, finished, trigger

    project.write("""
        jobs:
          up:
            command: ["sh", "-c", "exit 3"]
          down:
            requires: {job: up, within: 1h}
            command: ["sh", "-c", "true"]
    """)
    assert trigger(project, "down").returncode == 0
    assert project.cli("tick").returncode == 0
    (run,) = finished(project, "down", 1)
    assert (run["status"], run["reason"]) == ("skipped", "upstream_not_ready")
    for minute in (1, 2):
        at = clock.strftime("%Y-%m-%dT%H:%M:%SZ", clock.gmtime(clock.time() + 60 * minute + 5))
        assert project.cli("tick", "--now", at).returncode == 0
    clock.sleep(1.5)
    runs = [r for r in project.history("down") if r["status"] != "running"]
    assert len(runs) == 1, runs
    (item,) = api_items(str(project.state), "down")
    assert item.state == "skipped", item


# --- t1's params meet d3's http.resume ---------------------------------------------------------------

def test_a_resume_point_saved_for_other_params_is_not_resumed(project: Project):
    """A trigger's params reach http values (t1: ``${SCHEDSYNC_PARAM_REGION}`` in http.params);
    a resume point (d3) is keyed on the url, method, items, next and since only, so a run for
    region us went on from the page an interrupted run for region eu had reached, never
    fetching us's first pages."""
    from test_http import Upstream, reply
    from test_trigger import trigger

    upstream = Upstream()
    broken = {"eu": True}

    @upstream.route("/items")
    def route(request):
        region, page = request.query.get("region"), int(request.query.get("page", "1"))
        if page == 3 and region == "eu" and broken["eu"]:
            return reply(500, {"error": "down"})
        return reply(200, [{"id": f"{region}-{page}"}] if page <= 3 else [])

    try:
        project.write(f"""
            jobs:
              drops:
                retries: {{attempts: 1}}
                params: {{region: {{default: eu}}}}
                http:
                  url: "{upstream.base}/items"
                  params: {{region: "${{SCHEDSYNC_PARAM_REGION}}"}}
                  next: {{page: page}}
                  resume: {{within: 1h}}
                into: {{table: drops, pk: id, db: data.db}}
        """)
        assert project.cli("run", "drops").returncode == 1  # eu: page 3 fails, the point says page 3
        assert trigger(project, "drops", "--param", "region=us", "--wait").returncode == 0
        us = [int(r.query.get("page", "1")) for r in upstream.hits("/items") if r.query.get("region") == "us"]
        assert 1 in us and 2 in us, us
    finally:
        upstream.close()


# --- d1's load counts meet the spool's format ---------------------------------------------------------

def test_a_run_end_spooled_by_the_previous_version_is_still_replayed(tmp_path):
    """d1 added items_inserted/updated/deleted to spool.RUN_KEYS without a new VERSION, and
    _read removes an entry whose run keys differ: a run's end spooled before the upgrade
    (the database away) was deleted unread by the upgraded schedsync, and the run then
    reaped as crashed."""
    import os

    from schedsync.core.models import Run
    from schedsync.store import spool
    from schedsync.store.base import BreakerSpec

    folder = str(tmp_path / "spool")
    run = Run(7, "job", "success", "cron", 1000.0, "h", 1, finished_at=1001.0, duration_ms=1000)
    path = spool.write_finish("postgresql://x/y", run, BreakerSpec("job", {"failures": 5, "reset_after": 600}),
                              True, False, 60.0, {}, host="h", at=1001.0, folder=folder)
    import json

    with open(path) as f:
        entry = json.load(f)
    for key in ("items_inserted", "items_updated", "items_deleted"):  # as 91f6ace wrote them
        del entry["run"][key]
    del entry["after"]
    with open(path, "w") as f:
        json.dump(entry, f)
    assert spool._read(path) is not None
    assert os.path.exists(path)


# --- d3's fresh: meets d2's into.select ---------------------------------------------------------------

def test_select_keeps_the_fresh_field_so_old_data_is_stale(project: Project):
    """``select`` (d2) dropped ``fresh.field`` (d3) before the watermark was read, and the
    table never had the column: no watermark, so the job was OK however old its data."""
    from test_freshness import iso_ago
    from test_http import Upstream, reply

    upstream = Upstream()

    @upstream.route("/items")
    def route(request):
        return reply(200, [{"id": 1, "name": "a", "updated_at": iso_ago(5 * 3600)}])

    try:
        project.write(f"""
            jobs:
              drops:
                retries: {{attempts: 1}}
                fresh: {{within: 2h, field: updated_at}}
                http: {{url: "{upstream.base}/items"}}
                into: {{table: drops, pk: id, db: data.db, select: [id, name]}}
        """)
        assert project.cli("run", "drops").returncode == 0
        assert project.status()["jobs"][0]["health"] == "STALE"
    finally:
        upstream.close()


# --- t2's retry meets t1's redacted params ------------------------------------------------------------

def test_a_retry_runs_with_the_secret_param_not_its_redaction(project: Project):
    """serve's retry (t2) queued the run's params as the run's record keeps them, redacted
    (t1): the retried run got SCHEDSYNC_PARAM_API_TOKEN=*** instead of the token."""
    project.write("""
        state: schedsync.db
        jobs:
          pull:
            params: {api_token: {}}
            command: ["sh", "-c", "printf '%s\\\\n' \\"$SCHEDSYNC_PARAM_API_TOKEN\\" >> seen.txt; exit 1"]
    """)
    assert project.cli("status", "--init").returncode in (0, 1)
    server = Served(project, env={"SCHEDSYNC_SERVE_TOKEN": TOKEN})
    try:
        code, _, body = post(server, "/api/jobs/pull/trigger", {"params": {"api_token": SECRET}}, bearer())
        assert code == 202, body
        (first,) = wait_for_run(project, "pull")
        code, _, body = post(server, f"/api/runs/{first['id']}/retry", {}, bearer())
        assert code == 202, body
        wait_for_run(project, "pull", 2)
        assert (project.path / "seen.txt").read_text().splitlines() == [SECRET, SECRET]
    finally:
        server.stop()


# --- t4's overlap: replace meets t3's chains --------------------------------------------------------

def test_a_replaced_run_starts_no_chain_its_successor_ends_for_it(project: Project):
    """A run stopped by ``overlap: replace`` is recorded failed/replaced, but the job did not
    fail: the newer run goes on, and its own end is what ``after:`` follows. The replaced run
    queued ``on: failure`` jobs all the same (a cleanup ran while the job was running)."""
    import time

    from test_limits import wait_for

    project.write("""
        jobs:
          swap:
            overlap: replace
            command: ["sh", "-c", "echo $$ >> pids; exec sleep 300"]
          cleanup:
            after: [{job: swap, on: failure}]
            command: ["touch", "cleaned"]
    """)
    old = project.start("run", "swap", start_new_session=True)
    new = None
    try:
        wait_for(lambda: (project.path / "pids").exists() and (project.path / "pids").read_text().split(),
                 what="the first run's job to start")
        new = project.start("run", "swap", start_new_session=True)
        assert old.wait(timeout=60) == 1
        [replaced] = [r for r in project.history("swap") if r["pid"] == old.pid]
        assert replaced["reason"] == "replaced"
        time.sleep(3)  # a chain starts at once when its upstream's end queues it
        assert project.history("cleanup") == [] and not (project.path / "cleaned").exists()
    finally:
        for proc in (old, new):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=60)

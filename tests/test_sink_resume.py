"""``http.resume``: a sync stopped early (``kill -9``, a timeout, a failed page) goes on from
the next page of its last stored one, on both sinks and states (SQLite, PostgreSQL), through
the real CLI against a real upstream on loopback that counts its requests per page."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time

import pytest

from test_http import Upstream, reply

PAGES = 10
PER_PAGE = 3


@pytest.fixture
def upstream():
    server = Upstream()
    yield server
    server.close()


class Backend:
    """Where the state and the data live: one SQLite file each, or one PostgreSQL database."""

    def __init__(self, name: str, project, pg_url: str | None):
        self.name, self.project, self.pg_url = name, project, pg_url
        if pg_url:
            project.env["SCHEDSYNC_STATE"] = pg_url
        self.into_db = pg_url or "data.db"

    def query(self, sql: str, state: bool = False) -> list[tuple]:
        if self.pg_url:
            import psycopg2

            db = psycopg2.connect(self.pg_url)
            try:
                with db, db.cursor() as cur:
                    cur.execute(sql.replace("resume_points", "schedsync.resume_points"))
                    return cur.fetchall() if cur.description else []
            finally:
                db.close()
        path = self.project.path / ("schedsync.db" if state else "data.db")
        db = sqlite3.connect(path)
        try:
            with db:
                return db.execute(sql).fetchall()
        finally:
            db.close()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, project):
    pg_url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    return Backend(request.param, project, pg_url)


def serve_pages(upstream, hold: int | None = None, fail: int | None = None):
    """Ten pages of three items; ``cursor=cN`` asks for page N; page ``hold`` waits for
    ``upstream.release`` the first time it is asked for, page ``fail`` answers 400 once."""
    first_time = {"hold": True, "fail": True}

    @upstream.route("/items")
    def items(request):
        page = int(request.query.get("cursor", "c1")[1:])
        if page == hold and first_time["hold"]:
            first_time["hold"] = False
            upstream.release.wait(120)
        if page == fail and first_time["fail"]:
            first_time["fail"] = False
            return reply(400, {"error": "not now"})
        data = [{"id": page * 100 + i, "page": page} for i in range(PER_PAGE)]
        return reply(200, {"data": data, "next": f"c{page + 1}" if page < PAGES else None})


def pages_asked(upstream, since: int = 0) -> list[int]:
    return [int(r.query.get("cursor", "c1")[1:]) for r in upstream.requests[since:] if r.path == "/items"]


def write_job(backend, upstream, within: str = "1h", extra: str = "") -> None:
    backend.project.write(f"""
        jobs:
          items:
            retries: {{attempts: 1}}
            overlap: wait 60s
            {extra}
            http:
              url: "{upstream.base}/items"
              items: data
              next: {{cursor: next, param: cursor}}
              resume: {{within: {within}}}
            into: {{table: items, pk: id, db: "{backend.into_db}"}}
    """)


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def stored(backend) -> list[int]:
    return [row[0] for row in backend.query("SELECT id FROM items ORDER BY id")]


ALL_IDS = [page * 100 + i for page in range(1, PAGES + 1) for i in range(PER_PAGE)]


def test_a_run_killed_after_page_3_is_resumed_at_page_4_and_every_item_is_stored_once(
        backend, upstream):
    serve_pages(upstream, hold=4)
    write_job(backend, upstream)
    project = backend.project
    proc = project.start("run", "items", start_new_session=True)
    try:
        wait_for(lambda: 4 in pages_asked(upstream), what="page 4 to be asked for")
        [running] = [run for run in project.history("items") if run["status"] == "running"]
        group = os.getpgid(running["pid"])
        assert group == proc.pid  # the run leads its own group (start_new_session)
        os.killpg(group, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        upstream.release.set()
    assert pages_asked(upstream) == [1, 2, 3, 4]
    assert stored(backend) == ALL_IDS[:9]  # pages 1-3

    before = len(upstream.requests)
    result = project.cli("run", "items", timeout=120)
    assert result.returncode == 0, result.stderr
    assert pages_asked(upstream, before) == [4, 5, 6, 7, 8, 9, 10]  # pages 4-10 only
    assert stored(backend) == ALL_IDS  # every page's items, once
    resumed, killed = project.history("items")[:2]
    assert killed["status"] == "crashed"
    assert resumed["status"] == "success" and resumed["items_processed"] == 21
    log = project.cli("logs", "items").stdout
    assert f"resumed from page 4 of run {killed['id']}" in log

    # The completed sync cleared its resume point: the next run starts from page 1.
    assert backend.query("SELECT point FROM resume_points", state=True) in ([], [(None,)])
    before = len(upstream.requests)
    assert project.cli("run", "items", timeout=120).returncode == 0
    assert pages_asked(upstream, before) == list(range(1, PAGES + 1))


def test_a_resume_point_older_than_within_is_ignored(backend, upstream):
    serve_pages(upstream, fail=6)
    write_job(backend, upstream)
    project = backend.project
    result = project.cli("run", "items", timeout=120)
    assert result.returncode == 1, result.stderr  # page 6 failed (400): pages 1-5 stored
    assert pages_asked(upstream) == [1, 2, 3, 4, 5, 6]
    [(point,)] = backend.query("SELECT point FROM resume_points", state=True)
    assert json.loads(point)["page"] == 6 and "c6" in point
    backend.query("UPDATE resume_points SET saved_at = saved_at - 7200", state=True)  # saved 2h ago

    before = len(upstream.requests)
    result = project.cli("run", "items", timeout=120)
    assert result.returncode == 0, result.stderr
    assert pages_asked(upstream, before) == list(range(1, PAGES + 1))  # from page 1
    assert "older than http.resume.within (1h); starting from page 1" in project.cli("logs", "items").stdout
    assert stored(backend) == ALL_IDS


def test_a_failed_page_is_resumed_and_a_timeout_too(backend, upstream):
    serve_pages(upstream, fail=6, hold=8)
    write_job(backend, upstream)
    project = backend.project
    result = project.cli("run", "items", timeout=120)
    assert result.returncode == 1, result.stderr
    write_job(backend, upstream, extra="timeout: 6s")  # a timeout is no setting a point depends on
    before = len(upstream.requests)
    result = project.cli("run", "items", timeout=120)  # goes on at page 6, then page 8 hangs
    assert result.returncode != 0
    assert project.history("items")[0]["status"] == "timeout"
    assert pages_asked(upstream, before) == [6, 7, 8]
    upstream.release.set()
    before = len(upstream.requests)
    result = project.cli("run", "items", timeout=120)
    assert result.returncode == 0, result.stderr
    assert pages_asked(upstream, before) == [8, 9, 10]
    assert stored(backend) == ALL_IDS


def test_a_full_refresh_starts_from_page_1_and_clears_the_resume_point(backend, upstream):
    serve_pages(upstream, fail=6)
    write_job(backend, upstream)
    project = backend.project
    assert project.cli("run", "items", timeout=120).returncode == 1  # a point saved after page 5
    assert backend.query("SELECT count(*) FROM resume_points WHERE point IS NOT NULL", state=True) == [(1,)]
    before = len(upstream.requests)
    result = project.cli("run", "items", "--full-refresh", timeout=120)
    assert result.returncode == 0, result.stderr
    assert pages_asked(upstream, before) == list(range(1, PAGES + 1))
    assert backend.query("SELECT count(*) FROM resume_points WHERE point IS NOT NULL", state=True) == [(0,)]
    assert stored(backend) == ALL_IDS


def test_a_job_without_resume_starts_from_page_1_as_before(backend, upstream):
    serve_pages(upstream, fail=6)
    backend.project.write(f"""
        jobs:
          items:
            retries: {{attempts: 1}}
            http:
              url: "{upstream.base}/items"
              items: data
              next: {{cursor: next, param: cursor}}
            into: {{table: items, pk: id, db: "{backend.into_db}"}}
    """)
    assert backend.project.cli("run", "items", timeout=120).returncode == 1
    before = len(upstream.requests)
    assert backend.project.cli("run", "items", timeout=120).returncode == 0
    assert pages_asked(upstream, before) == list(range(1, PAGES + 1))
    assert backend.query("SELECT count(*) FROM resume_points", state=True) == [(0,)]


def test_next_links_resume_without_saving_the_key_and_since_counts_from_the_first_page(
        backend, upstream):
    """A next link (here echoing the API key) is saved without the configured params and the
    key is added back from jobs.yaml; ``since`` after a resumed sync counts from when that
    sync's page 1 was asked for (run B), not from the start of the run that finished it (C)."""
    key = "k3y-s3cr3t-value"
    control = {"fail": None}

    @upstream.route("/items")
    def items(request):
        assert request.query.get("key") == key  # every request, resumed ones too
        page = int(request.query.get("page", "1"))
        if page == control["fail"]:
            control["fail"] = None
            return reply(400, {"error": "not now"})
        data = [{"id": page * 100 + i} for i in range(PER_PAGE)]
        nxt = f"/items?page={page + 1}&key={key}" if page < 5 else None
        return reply(200, {"data": data, "links": {"next": nxt}})

    project = backend.project
    project.write(f"""
        jobs:
          items:
            retries: {{attempts: 1}}
            overlap: wait 60s
            http:
              url: "{upstream.base}/items"
              params: {{key: "${{API_KEY}}"}}
              items: data
              next: links.next
              since: {{param: since}}
              resume: {{within: 1h}}
            into: {{table: items, pk: id, db: "{backend.into_db}"}}
    """)
    env = {"API_KEY": key}

    def since_sent(start: int) -> list:
        return [r.query.get("since") for r in upstream.requests[start:]]

    assert project.cli("run", "items", env=env, timeout=120).returncode == 0  # run A
    control["fail"] = 3
    before = len(upstream.requests)
    assert project.cli("run", "items", env=env, timeout=120).returncode == 1  # run B: page 3 fails
    run_a_start = project.history("items")[1]["started_at"]
    assert since_sent(before) == [run_a_start] * 3
    [(point,)] = backend.query("SELECT point FROM resume_points", state=True)
    assert key not in point and "page=3" in point
    b_start = project.history("items")[0]["started_at"]
    b_second = time.time()
    wait_for(lambda: time.time() >= int(b_second) + 1.05, what="the next second")  # C starts later

    before = len(upstream.requests)
    assert project.cli("run", "items", env=env, timeout=120).returncode == 0  # run C: pages 3-5
    assert [r.query.get("page") for r in upstream.requests[before:]] == ["3", "4", "5"]
    assert since_sent(before) == [run_a_start] * 3  # what B sent: the same sync goes on
    c_start = project.history("items")[0]["started_at"]
    assert c_start > b_start

    before = len(upstream.requests)
    assert project.cli("run", "items", env=env, timeout=120).returncode == 0  # run D
    [sent] = set(since_sent(before))
    assert b_start <= sent < c_start  # from B's page 1, so nothing changed during B-C is skipped
    assert stored(backend) == [page * 100 + i for page in range(1, 6) for i in range(PER_PAGE)]

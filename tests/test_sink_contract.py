"""How http jobs write their items (issue 19: ``into.mode``, ``into.delete``, ``into.lineage``,
``run --full-refresh``), through the real CLI against a real server on loopback, on both
sinks: a SQLite data file and a real PostgreSQL database (``pg_url``, which then holds the
state as well)."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from test_http import Upstream, reply
from test_serve import Served

NO_PROXY = {"NO_PROXY": "*", "no_proxy": "*", "HTTP_PROXY": "", "HTTPS_PROXY": "",
            "http_proxy": "", "https_proxy": "", "ALL_PROXY": "", "all_proxy": ""}


class Target:
    """Where a job's items go (``into.db``) and a way to read them back."""

    def __init__(self, backend: str, project, url: str | None = None):
        self.backend, self.project, self.url = backend, project, url

    @property
    def into_db(self) -> str:
        return f', db: "{self.url}"' if self.url else ""

    def connect(self):
        if self.url:
            import psycopg2

            conn = psycopg2.connect(self.url)
            conn.autocommit = True
            return conn
        return sqlite3.connect(self.project.path / "data.db", timeout=30)

    def query(self, sql: str) -> list[tuple]:
        conn = self.connect()
        try:
            cur = conn.cursor()
            cur.execute(sql)
            return [tuple(row) for row in cur.fetchall()]
        finally:
            conn.close()

    def execute(self, sql: str) -> None:
        conn = self.connect()
        try:
            conn.cursor().execute(sql)
            if not self.url:
                conn.commit()
        finally:
            conn.close()

    def tables(self) -> set[str]:
        if self.url:
            sql = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        else:
            sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
        return {name for (name,) in self.query(sql)}


@pytest.fixture(params=["sqlite", "postgres"])
def target(request, project):
    if request.param == "postgres":  # the state too: run records go through PostgreSQL's finish
        url = request.getfixturevalue("pg_url")
        project.env["SCHEDSYNC_STATE"] = url
        return Target("postgres", project, url)
    return Target("sqlite", project)


@pytest.fixture
def upstream():
    server = Upstream()
    yield server
    server.close()


def serve(upstream, chunks: list, *, fail_on: int | None = None, delay: float = 0.0):
    """``/items?page=N`` answers chunk N with a next link; page ``fail_on`` answers 500."""
    state = {"chunks": chunks, "fail_on": fail_on, "delay": delay}

    @upstream.route("/items")
    def items(request):
        page = int(request.query.get("page", 1))
        if state["delay"]:
            time.sleep(state["delay"])
        if page == state["fail_on"]:
            return reply(500, {"error": "upstream broke"})
        chunks = state["chunks"]
        nxt = f"/items?page={page + 1}" if page < len(chunks) else None
        return reply(200, {"data": chunks[page - 1], "links": {"next": nxt}})

    return state


def write_job(project, upstream, target, into: str, http_extra: str = "") -> None:
    project.write(f"""
        state: schedsync.db
        jobs:
          items:
            retries: {{attempts: 1}}
            http:
              url: "{upstream.base}/items"
              items: data
              next: links.next
        {http_extra}
            into: {{table: items{target.into_db}, {into}}}
    """)


def run(project, *args: str, ok: bool = True):
    result = project.cli("run", "items", *args, env=NO_PROXY)
    if ok:
        assert result.returncode == 0, result.stderr
    return result


def last_run(project) -> dict:
    return project.history("items")[0]


def loads(run: dict) -> tuple:
    return run["items_inserted"], run["items_updated"], run["items_deleted"]


# --- merge (the default) and lineage -------------------------------------------------------

def test_merge_upserts_counts_inserted_and_updated_and_stamps_lineage(project, upstream, target):
    state = serve(upstream, [[{"id": i, "v": f"a{i}"} for i in range(1, 4)],
                             [{"id": i, "v": f"a{i}"} for i in range(4, 7)]])
    write_job(project, upstream, target, "pk: id, lineage: true")

    run(project)
    first = last_run(project)
    assert (first["status"], first["items_processed"], loads(first)) == ("success", 6, (6, 0, 0))

    state["chunks"] = [[{"id": i, "v": f"b{i}"} for i in range(4, 10)]]  # 4-6 again, 7-9 new
    run(project)
    second = last_run(project)
    assert loads(second) == (3, 3, 0)

    got = target.query('SELECT id, v, "_schedsync_run", "_schedsync_synced_at" FROM items ORDER BY id')
    assert [(i, v, r) for i, v, r, _ in got] == [
        (1, "a1", first["id"]), (2, "a2", first["id"]), (3, "a3", first["id"]),
        *[(i, f"b{i}", second["id"]) for i in range(4, 10)]]
    synced = [str(at) for *_, at in got]
    assert all(at[:4].isdigit() and ("T" in at or " " in at) for at in synced)  # ISO text / timestamptz

    shown = project.cli("history", "items", env={"COLUMNS": "250"})
    assert shown.returncode == 0 and "+3 new ~3 updated" in shown.stdout, shown.stdout


def test_the_job_page_shows_each_run_s_inserted_updated_and_deleted(project, upstream, target):
    serve(upstream, [[{"id": 1, "gone": False}, {"id": 2, "gone": True}]])
    write_job(project, upstream, target, "pk: id, delete: {field: gone, equals: true}")
    run(project)

    served = Served(project, env=NO_PROXY)
    try:
        status, _, body = served.get("/job/items")
    finally:
        code, _ = served.stop()
    assert status == 200 and code == 0
    assert "+1 new ~0 updated -0 deleted" in body, body


# --- append ------------------------------------------------------------------------------------

def test_append_inserts_every_item_and_needs_no_pk(project, upstream, target):
    serve(upstream, [[{"id": 1, "v": "a"}, {"v": "no id"}], [{"id": 1, "v": "a"}]])
    write_job(project, upstream, target, "mode: append")

    run(project)
    run(project)

    assert sorted(target.query("SELECT id, v FROM items"), key=str) == sorted(
        [(1, "a"), (None, "no id"), (1, "a")] * 2, key=str)
    assert loads(last_run(project)) == (3, 0, 0)


# --- replace ------------------------------------------------------------------------------------

def test_replace_swaps_the_new_rows_in_keeping_the_key_and_indexes(project, upstream, target):
    state = serve(upstream, [[{"id": i, "v": i} for i in range(1, 4)], [{"id": i, "v": i} for i in range(4, 7)]])
    write_job(project, upstream, target, "pk: id, mode: replace")
    run(project)
    target.execute("CREATE INDEX items_by_v ON items (v)")

    state["chunks"] = [[{"id": 10, "v": 10}, {"id": 11, "v": 11}], [{"id": 11, "v": 12, "new": "x"}]]
    run(project)

    assert target.query("SELECT id, v, new FROM items ORDER BY id") == [(10, 10, None), (11, 12, "x")]
    assert target.tables() == {"items"}  # no staging table left
    if target.url:
        indexes = target.query("SELECT indexname FROM pg_indexes WHERE tablename = 'items'")
        assert {name for (name,) in indexes} == {"items_pkey", "items_by_v"}
    else:
        indexes = target.query("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'items'")
        assert "items_by_v" in {name for (name,) in indexes}
    with pytest.raises(Exception, match="(?i)unique|duplicate"):  # the key is still a key
        target.execute("INSERT INTO items (id, v) VALUES (10, 0)")
    run(project)  # a third replace: the staging table's names are free again
    assert target.query("SELECT id FROM items ORDER BY id") == [(10,), (11,)]


def test_a_replace_that_fails_on_page_5_leaves_the_old_table_as_it_was(project, upstream, target):
    state = serve(upstream, [[{"id": i, "v": "old"}] for i in range(1, 4)])
    write_job(project, upstream, target, "pk: id, mode: replace")
    run(project)
    before = target.query("SELECT id, v FROM items ORDER BY id")

    state["chunks"] = [[{"id": 100 + i, "v": "new"}] for i in range(10)]
    state["fail_on"] = 5
    failed = run(project, ok=False)

    assert failed.returncode != 0 and last_run(project)["status"] == "failed"
    assert "500" in failed.stderr and "Traceback" not in failed.stderr
    assert target.query("SELECT id, v FROM items ORDER BY id") == before

    state["fail_on"] = None  # the next run drops the stale staging table and starts afresh
    run(project)
    assert target.query("SELECT id FROM items ORDER BY id") == [(100 + i,) for i in range(10)]


def test_a_staging_table_a_killed_run_left_is_dropped_at_the_next_start(project, upstream, target):
    serve(upstream, [[{"id": 1, "v": "new"}]])
    write_job(project, upstream, target, "pk: id, mode: replace")
    target.execute('CREATE TABLE "items__schedsync_staging" (id integer PRIMARY KEY, v text, junk text)')
    target.execute("INSERT INTO \"items__schedsync_staging\" VALUES (99, 'left over', 'x')")

    run(project)

    assert target.query("SELECT * FROM items") == [(1, "new")]
    assert target.tables() == {"items"}


def test_a_reader_during_a_replace_never_sees_a_missing_or_half_table(project, upstream, target):
    old, new = 300, 200
    state = serve(upstream, [[{"id": i, "v": "old"} for i in range(j, j + 100)] for j in range(0, old, 100)])
    write_job(project, upstream, target, "pk: id, mode: replace")
    run(project)

    state["chunks"] = [[{"id": i, "v": "new"} for i in range(j, j + 50)] for j in range(0, new, 50)]
    state["delay"] = 0.3  # pages arrive slowly: the reader polls while staging fills and swaps
    seen: list[int] = []
    errors: list[str] = []
    stop = threading.Event()

    def reader():
        conn = target.connect()
        try:
            cur = conn.cursor()
            while not stop.is_set():
                try:
                    cur.execute("SELECT count(*) FROM items")
                    seen.append(cur.fetchone()[0])
                except Exception as exc:  # a missing table would land here
                    errors.append(str(exc))
                time.sleep(0.005)
        finally:
            conn.close()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        run(project)
        deadline = time.monotonic() + 10
        while (not seen or seen[-1] != new) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=30)

    assert errors == []
    assert seen and min(seen) >= min(old, new), sorted(set(seen))
    assert set(seen) <= {old, new}
    assert seen[0] == old and seen[-1] == new


# --- deletes -------------------------------------------------------------------------------------

def test_hard_delete_removes_the_flagged_rows_and_counts_them(project, upstream, target):
    state = serve(upstream, [[{"id": i, "is_deleted": False} for i in range(1, 5)]])
    write_job(project, upstream, target, "pk: id, delete: {field: is_deleted, equals: true}")
    run(project)

    state["chunks"] = [[{"id": 2, "is_deleted": True}, {"id": 3, "is_deleted": True}],
                       [{"id": 99, "is_deleted": True}, {"id": 4, "is_deleted": False}]]  # 99: never stored
    run(project)

    assert target.query("SELECT id FROM items ORDER BY id") == [(1,), (4,)]
    assert loads(last_run(project)) == (0, 1, 2)
    metrics = project.cli("metrics")
    assert 'schedsync_items_total{job="items",result="deleted"} 2' in metrics.stdout, metrics.stdout


def test_soft_delete_keeps_the_row_with_deleted_at_and_a_later_item_undeletes_it(project, upstream, target):
    state = serve(upstream, [[{"id": 1, "v": "a", "state": "live"}, {"id": 2, "v": "b", "state": "live"}]])
    write_job(project, upstream, target, "pk: id, delete: {field: state, equals: gone, soft: true}")
    run(project)

    state["chunks"] = [[{"id": 2, "v": "b2", "state": "gone"}]]
    run(project)
    [(deleted_at,)] = target.query('SELECT "_deleted_at" FROM items WHERE id = 2')
    assert deleted_at is not None and str(deleted_at)[:4].isdigit()
    assert target.query('SELECT id FROM items WHERE "_deleted_at" IS NULL') == [(1,)]
    assert loads(last_run(project)) == (0, 0, 1)

    run(project)  # deleted again: the first deletion's time is kept
    assert target.query('SELECT "_deleted_at" FROM items WHERE id = 2') == [(deleted_at,)]

    state["chunks"] = [[{"id": 2, "v": "back", "state": "live"}]]
    run(project)
    assert target.query('SELECT id, v, "_deleted_at" FROM items ORDER BY id') == [
        (1, "a", None), (2, "back", None)]
    assert loads(last_run(project)) == (0, 1, 0)


# --- full refresh -------------------------------------------------------------------------------

def test_full_refresh_ignores_since_for_that_run_only(project, upstream, target):
    serve(upstream, [[{"id": 1, "v": "a"}]])
    write_job(project, upstream, target, "pk: id", http_extra="      since: {param: updated_since}")
    run(project)
    run(project)
    run(project, "--full-refresh")
    run(project)

    sent = [r.query.get("updated_since") for r in upstream.hits("/items")]
    assert sent[0] is None and sent[1] is not None and sent[2] is None and sent[3] is not None


# --- validation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("into, what", [
    ("{table: t, pk: id, mode: upsert}", "into.mode"),
    ("{table: t, mode: merge}", "into.pk"),
    ("{table: t, mode: append, delete: {field: d, equals: true}}", "into.delete"),
    ("{table: t, pk: id, delete: {field: d}}", "into.delete"),
    ("{table: t, pk: id, delete: {field: d, equals: true, soft: maybe}}", "into.delete.soft"),
    ("{table: t, pk: id, lineage: yes please}", "into.lineage"),
    ("{table: t, pk: id, mode: append, nested: tables}", "into.nested"),  # children follow a merge only
])
def test_a_bad_new_into_key_is_one_line_with_file_and_line(project, into, what):
    project.write(f"""
        state: schedsync.db
        jobs:
          items:
            http: {{url: "http://127.0.0.1:9/items"}}
            into: {into}
    """)
    result = project.cli("validate")
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "jobs.yaml:6" in line and what in line, line


def test_since_with_replace_is_refused_since_each_run_would_keep_only_what_changed(project):
    project.write("""
        state: schedsync.db
        jobs:
          items:
            http:
              url: "http://127.0.0.1:9/items"
              since: {param: updated_since}
            into: {table: t, pk: id, mode: replace}
    """)
    result = project.cli("validate")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "jobs.yaml:7 jobs.items.http.since:" in line and "replace" in line, line


def test_resume_with_replace_is_refused_since_its_table_is_rebuilt_from_page_1(project):
    project.write("""
        state: schedsync.db
        jobs:
          items:
            http:
              url: "http://127.0.0.1:9/items"
              next: {cursor: next, param: after}
              resume: {within: 1h}
            into: {table: t, pk: id, mode: replace}
    """)
    result = project.cli("validate")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "jobs.items.http.resume:" in line and "replace" in line, line

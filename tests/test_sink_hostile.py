"""The data sinks (store/sink_sqlite.py, store/sink_postgres.py) against hostile pages
(issue 15, items 5 and 6): each test runs a real http job (`schedsync run`) against a
loopback server, once into SQLite and once into PostgreSQL, and reads back what was stored."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import pytest

from test_http import Upstream, job_yaml, reply


@pytest.fixture
def upstream():
    server = Upstream()
    yield server
    server.close()


class SQLiteTarget:
    def __init__(self, project):
        self.path = project.path / "data.db"

    def into(self, table: str, pk) -> str:
        return json.dumps({"table": table, "pk": pk})

    def columns(self, table: str) -> list[str]:
        with sqlite3.connect(self.path) as db:
            return [r[1] for r in db.execute("SELECT * FROM pragma_table_info(?)", (table,))]

    def rows(self, table: str, columns: list[str]) -> list[tuple]:
        names = ", ".join('"' + c.replace('"', '""') + '"' for c in columns)
        db = sqlite3.connect(self.path)
        try:
            return db.execute(f'SELECT {names} FROM "{table}" ORDER BY 1').fetchall()
        finally:
            db.close()


class PostgresTarget:
    def __init__(self, url: str):
        self.url = url

    def into(self, table: str, pk) -> str:
        return json.dumps({"table": table, "pk": pk, "db": self.url})

    def _query(self, sql: str, args=None) -> list[tuple]:
        import psycopg2

        conn = psycopg2.connect(self.url)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchall()
        finally:
            conn.close()

    def columns(self, table: str) -> list[str]:
        return [r[0] for r in self._query(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0"
            " AND NOT attisdropped ORDER BY attnum", ('"' + table + '"',))]

    def rows(self, table: str, columns: list[str]) -> list[tuple]:
        names = ", ".join('"' + c.replace('"', '""') + '"' for c in columns)
        return self._query(f'SELECT {names} FROM "{table}" ORDER BY 1')


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request, project):
    if request.param == "sqlite":
        return SQLiteTarget(project)
    return PostgresTarget(request.getfixturevalue("pg_url"))


def sync(project, upstream, target, page: list, *, table: str = "items", pk="id"):
    """Serve ``page`` (json.dumps: NaN stays NaN) and run the job; (result, its run record)."""
    upstream.routes["/items"] = lambda request: reply(200, {"data": page})
    project.write(job_yaml(upstream, '      url: "{base}/items"\n      items: data',
                           into=target.into(table, pk)))
    result = project.cli("run", "items")
    assert "Traceback" not in result.stderr, result.stderr
    return result, project.history("items")[0]


def counts(run) -> tuple:
    return run["status"], run["items_processed"], run["items_failed"]


def test_a_nan_key_is_counted_failed_not_stored_again_on_every_run(project, upstream, target):
    page = [{"id": 1, "v": "a"}, {"id": float("nan"), "v": "nan"}, {"id": 2, "v": "b"}]

    for _ in range(2):
        result, run = sync(project, upstream, target, page)
        assert result.returncode == 0, result.stderr
        assert counts(run) == ("partial", 2, 1)
        assert result.stderr == "items: partial: 1 of 3 items failed (1 item had NaN in `id`)\n"

    assert target.rows("items", ["id", "v"]) == [(1, "a"), (2, "b")]


def test_keys_that_differ_only_in_case_share_the_first_spelling_s_column(project, upstream, target):
    page = [{"id": 1, "Name": "a"}, {"id": 2, "name": "b"},
            {"id": 3, "Name": "c", "name": "d"}]  # two values for one column: failed

    result, run = sync(project, upstream, target, page)

    assert result.returncode == 0, result.stderr
    assert counts(run) == ("partial", 2, 1)
    assert result.stderr == ("items: partial: 1 of 3 items failed "
                             "(1 item had two keys for one column (`Name`, `name`))\n")
    assert target.columns("items") == ["id", "Name"]
    assert target.rows("items", ["id", "Name"]) == [(1, "a"), (2, "b")]

    # A later run whose items spell it another way still finds the column.
    result, run = sync(project, upstream, target, [{"id": 1, "NAME": "A"}])
    assert result.returncode == 0, result.stderr
    assert counts(run) == ("success", 1, 0)
    assert target.columns("items") == ["id", "Name"]
    assert target.rows("items", ["id", "Name"]) == [(1, "A"), (2, "b")]


def test_long_keys_with_one_prefix_get_a_column_each_cut_with_a_hash(project, upstream, target):
    prefix = "très_long_" + "k" * 60  # over 63 bytes, and a 2-byte letter near the start
    keys = [prefix + "_alpha", prefix + "_beta"]
    page = [{"id": 1, keys[0]: "a", keys[1]: "b"}, {"id": 2, keys[0]: "c"}]

    result, run = sync(project, upstream, target, page)

    assert result.returncode == 0, result.stderr
    assert counts(run) == ("success", 2, 0)
    head = prefix.encode()[:54].decode()
    expected = [f"{head}_{hashlib.sha256(key.encode()).hexdigest()[:8]}" for key in keys]
    assert all(len(name.encode()) == 63 for name in expected) and expected[0] != expected[1]
    assert target.columns("items") == ["id", *expected]
    assert target.rows("items", ["id", *expected]) == [(1, "a", "b"), (2, "c", None)]


def test_a_percent_sign_in_a_key_or_the_table_name_is_stored_as_is(project, upstream, target):
    page = [{"id": 1, "100%": 5, "rate %d": 7, "x%s": "y", "%%": "z"}]

    result, run = sync(project, upstream, target, page, table="share%s_%d")

    assert result.returncode == 0, result.stderr
    assert counts(run) == ("success", 1, 0)
    assert target.columns("share%s_%d") == ["id", "100%", "rate %d", "x%s", "%%"]
    assert target.rows("share%s_%d", ["id", "100%", "rate %d", "x%s", "%%"]) == [(1, 5, 7, "y", "z")]


def test_a_key_repeated_within_one_page_keeps_the_last_item(project, upstream, target):
    page = [{"id": 1, "v": "first", "w": 1}, {"id": 2, "v": "other"}, {"id": 1, "v": "last"}]

    result, run = sync(project, upstream, target, page)

    assert result.returncode == 0, result.stderr
    assert counts(run) == ("success", 3, 0)  # every item was stored; the last one is what stays
    assert target.rows("items", ["id", "v", "w"]) == [(1, "last", None), (2, "other", None)]


def test_a_nul_in_a_value_is_stored(project, upstream, target):
    page = [{"id": 1, "v": "a\0b", "meta": {"x\0": ["y\0"]}}]

    result, run = sync(project, upstream, target, page)

    assert result.returncode == 0, result.stderr
    assert counts(run) == ("success", 1, 0)
    [(pk, text, meta)] = target.rows("items", ["id", "v", "meta"])
    if isinstance(target, SQLiteTarget):  # SQLite keeps a NUL in text as it is
        assert (pk, text, json.loads(meta)) == (1, "a\0b", {"x\0": ["y\0"]})
    else:  # PostgreSQL text cannot hold one: U+FFFD instead
        assert (pk, text, meta) == (1, "a\ufffdb", {"x\ufffd": ["y\ufffd"]})

    # A NUL only inside a list or an object (PostgreSQL's jsonb refuses \u0000 on its own).
    result, run = sync(project, upstream, target, [{"id": 2, "meta": {"k": "z\0"}}])
    assert result.returncode == 0, result.stderr
    [meta] = [row[1] for row in target.rows("items", ["id", "meta"]) if row[0] == 2]
    assert (json.loads(meta) if isinstance(target, SQLiteTarget) else meta) == {
        "k": "z\0" if isinstance(target, SQLiteTarget) else "z\ufffd"}


def test_a_nul_in_a_key_names_its_column_with_u_fffd(project, upstream, target):
    result, run = sync(project, upstream, target, [{"id": 1, "k\0ey": 2}])

    assert result.returncode == 0, result.stderr
    assert counts(run) == ("success", 1, 0)
    assert target.columns("items") == ["id", "k\ufffdey"]
    assert target.rows("items", ["id", "k\ufffdey"]) == [(1, 2)]

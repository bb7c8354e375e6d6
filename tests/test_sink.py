"""The data-sink contract: what every sink backend must do, through the port alone
(``store.sink.open_sink`` to write, ``store.data_db.DataDB`` — python jobs' ``ctx.db`` —
to read back and for its own API), on real files and a real PostgreSQL.

A backend plugs in by adding one param to ``BACKENDS``: a function of pytest's
``request`` and ``tmp_path`` that returns a fresh, empty target (a path, a URL) that
``open_sink`` opens. It must then pass this file unchanged.
"""

from __future__ import annotations

import hashlib

import pytest

from schedsync.store.data_db import DataDB
from schedsync.store.sink import SinkError, open_sink


def sqlite_target(request, tmp_path) -> str:
    return str(tmp_path / "data.db")


def postgres_target(request, tmp_path) -> str:
    """A fresh database on the test process's throwaway PostgreSQL (conftest's pg_url)."""
    return request.getfixturevalue("pg_url")


BACKENDS = [sqlite_target, postgres_target]


@pytest.fixture(params=BACKENDS, ids=lambda make: make.__name__.replace("_target", ""))
def target(request, tmp_path) -> str:
    return request.param(request, tmp_path)


@pytest.fixture
def sink(target):
    opened = open_sink(target)
    yield opened
    opened.close()


@pytest.fixture
def db(target):
    opened = DataDB(target)
    yield opened
    opened.close()


def rows(db, table: str, columns: str = "*") -> list[dict]:
    return list(db.query(f'SELECT {columns} FROM "{table}" ORDER BY 1'))


# --- the sink: upsert and max_value -----------------------------------------------------

def test_upsert_inserts_updates_and_keeps_the_columns_a_page_does_not_mention(sink, db):
    assert sink.upsert("items", "id", [{"id": 1, "name": "a", "n": 10}, {"id": 2, "name": "b", "n": 20}]) == (2, 0)
    assert sink.upsert("items", "id", [{"id": 1, "name": "A"}, {"id": 3, "name": "c"}]) == (2, 0)

    assert rows(db, "items") == [{"id": 1, "name": "A", "n": 10}, {"id": 2, "name": "b", "n": 20},
                                 {"id": 3, "name": "c", "n": None}]


def test_of_items_sharing_a_key_in_one_page_the_last_wins(sink, db):
    assert sink.upsert("items", "id", [{"id": 1, "v": "first"}, {"id": 2, "v": "x"},
                                       {"id": 1, "v": "last"}]) == (3, 0)

    assert rows(db, "items") == [{"id": 1, "v": "last"}, {"id": 2, "v": "x"}]


def test_a_column_is_added_for_each_new_key_and_a_missing_key_is_null(sink, db):
    sink.upsert("items", "id", [{"id": 1, "a": 1}])
    assert sink.upsert("items", "id", [{"id": 2, "b": "x"}, {"id": 3, "a": 3, "c": [1, {"k": 2}]}]) == (2, 0)

    got = rows(db, "items", 'id, a, b, c')
    assert [(r["id"], r["a"], r["b"]) for r in got] == [(1, 1, None), (2, None, "x"), (3, 3, None)]
    stored = got[2]["c"]  # JSON text on SQLite, decoded jsonb on PostgreSQL
    assert stored == [1, {"k": 2}] or stored.replace(" ", "") == '[1,{"k":2}]'


def test_keys_differing_in_case_share_the_first_spelling_and_a_row_with_both_fails(sink, db):
    assert sink.upsert("items", "id", [{"id": 1, "Name": "a"}]) == (1, 0)
    assert sink.upsert("items", "ID", [{"ID": 1, "NAME": "b"}, {"ID": 2, "name": "c", "Name": "d"}]) == (1, 1)

    assert rows(db, "items") == [{"id": 1, "Name": "b"}]


def test_a_long_key_is_cut_with_a_hash_and_a_nul_in_a_key_becomes_u_fffd(sink, db):
    long_a, long_b = "k" * 70 + "a", "k" * 70 + "b"
    assert sink.upsert("items", "id", [{"id": 1, long_a: 1, long_b: 2, "x\0y": 3}]) == (1, 0)

    def cut(key: str) -> str:
        return key[:54] + "_" + hashlib.sha256(key.encode()).hexdigest()[:8]

    [row] = rows(db, "items")
    assert row == {"id": 1, cut(long_a): 1, cut(long_b): 2, "x\ufffdy": 3}
    assert sink.max_value("items", long_b) == "2"


def test_rows_without_a_whole_key_are_counted_failed_not_stored(sink, db):
    page = [{"id": None}, {"v": 1}, {"id": float("nan")}, ["not", "an", "object"], "text", 5,
            {"id": 7, "v": 1}]
    assert sink.upsert("items", "id", page) == (1, 6)
    assert sink.upsert("items", "id", page) == (1, 6)  # a NaN key is not a new row each run
    assert sink.upsert("pairs", ["a", "b"], [{"a": 1}, {"a": 1, "b": None}, {"a": 1, "b": 2}]) == (1, 2)
    assert sink.upsert("none", "id", [{"id": None}]) == (0, 1)

    assert rows(db, "items") == [{"id": 7, "v": 1}]
    assert sink.max_value("none", "id") is None  # a page with no good row creates nothing


def test_write_counts_new_keys_as_inserted_and_the_rest_as_updated(sink, db):
    from schedsync.store.sink_base import Load

    merge = Load()
    page = [{"chain": "eth", "id": 1, "v": 1}, {"chain": "sol", "id": 1, "v": 2}]
    counts = sink.write("pairs", ["chain", "id"], page, merge)
    assert (counts.stored, counts.failed, counts.inserted, counts.updated) == (2, 0, 2, 0)
    page = [{"chain": "eth", "id": 1, "v": 3}, {"chain": "eth", "id": 2, "v": 4},
            {"chain": "eth", "id": 2, "v": 5}, {"chain": "x"}]  # a repeated key: one insert, one update
    counts = sink.write("pairs", ["chain", "id"], page, merge)
    assert (counts.stored, counts.failed, counts.inserted, counts.updated) == (3, 1, 1, 2)
    counts = sink.write("one", "id", [{"id": "a"}, {"id": "b"}], merge)
    assert (counts.inserted, counts.updated) == (2, 0)
    counts = sink.write("one", "id", [{"id": "a"}, {"id": "c"}], merge)
    assert (counts.inserted, counts.updated) == (1, 1)
    assert [r["v"] for r in rows(db, "pairs", "chain, id, v")] == [3, 5, 2]


def test_a_delete_rule_matches_a_boolean_only_with_a_boolean(sink, db):
    from schedsync.store.sink_base import Load

    load = Load("merge", {"field": "gone", "equals": True, "soft": False})
    sink.write("t", "id", [{"id": 1, "gone": 0}, {"id": 2, "gone": 0}], load)
    counts = sink.write("t", "id", [{"id": 1, "gone": 1}, {"id": 2, "gone": True}], load)
    assert (counts.stored, counts.updated, counts.deleted) == (2, 1, 1)
    assert rows(db, "t", "id, gone") == [{"id": 1, "gone": 1}]


def test_max_value_is_what_since_sends(sink):
    assert sink.max_value("items", "updated") is None  # no table yet
    sink.upsert("items", "id", [{"id": 1, "updated": 1_700_000_000.0, "n": 5, "s": "2024-01-02"},
                                {"id": 2, "updated": 1_600_000_000.0, "n": 40, "s": "2023-12-31"}])
    assert sink.max_value("items", "updated") == "1700000000"  # a whole float as an integer
    assert sink.max_value("items", "n") == "40"
    assert sink.max_value("items", "s") == "2024-01-02"
    assert sink.max_value("items", "UPDATED") == "1700000000"  # by the column rule
    assert sink.max_value("items", "nope") is None
    sink.upsert("empty", "id", [{"id": 1}])
    sink.upsert("empty", "id", [{"id": 2, "later": None}])
    assert sink.max_value("empty", "later") is None


@pytest.mark.parametrize("pk, page", [
    ("id", [{"id": 2**40, "v": 1}, {"id": -3, "v": 2}]),
    ("id", [{"id": "abc", "v": 1}, {"id": "ABC", "v": 2}]),
    ("id", [{"id": 1.5, "v": 1}, {"id": 2.5, "v": 2}]),
    (["chain", "id"], [{"chain": "eth", "id": 1, "v": 1}, {"chain": "sol", "id": 1, "v": 2}]),
], ids=["integer", "text", "float", "compound"])
def test_a_key_of_each_type_updates_its_row_in_place(sink, db, pk, page):
    assert sink.upsert("items", pk, page) == (2, 0)
    assert sink.upsert("items", pk, [{**row, "v": row["v"] + 10} for row in page]) == (2, 0)

    assert sorted(r["v"] for r in rows(db, "items")) == [11, 12]


def test_a_table_name_with_odd_characters_is_stored_as_is(sink, db):
    table = 'we"ird %s ta-ble?'
    assert sink.upsert(table, "id", [{"id": 1, "v": "a"}]) == (1, 0)
    assert sink.upsert(table, "id", [{"id": 1, "v": "b", "new": 1}]) == (1, 0)

    assert list(db.query('SELECT v, new FROM "we""ird %s ta-ble?"')) == [{"v": "b", "new": 1}]
    assert sink.max_value(table, "new") == "1"


def test_an_error_is_a_one_line_sink_error_and_the_page_is_stored_not_at_all(sink, db):
    sink.upsert("items", "id", [{"id": 1, "name": "a"}])

    with pytest.raises(SinkError) as caught:  # no key the table's primary key matches
        sink.upsert("items", "name", [{"id": 2, "name": "b"}, {"id": 3, "name": "c"}])

    message = str(caught.value)
    assert message and "\n" not in message and len(message) <= 200 and "Traceback" not in message
    assert rows(db, "items") == [{"id": 1, "name": "a"}]
    assert sink.upsert("items", "id", [{"id": 4, "name": "d"}]) == (1, 0)  # usable afterwards


# --- ctx.db: query, execute, transaction, upsert ----------------------------------------

def test_query_and_execute_take_qmark_and_named_placeholders_on_every_backend(db):
    assert db.upsert("t", ({"id": i, "v": f"v{i}"} for i in range(1, 4)), pk="id") == (3, 0)

    assert db.execute("UPDATE t SET v = ? WHERE id >= ?", ("new", 2)) == 2
    assert list(db.query("SELECT id, v FROM t WHERE id = :id", {"id": 3})) == [{"id": 3, "v": "new"}]
    # A % and a ? in quoted text, a cast-like :: and comments are not placeholders.
    got = list(db.query("SELECT id % 2 AS odd, '?:x%' AS lit /* ? */ FROM t WHERE id = ? -- :no\n", (1,)))
    assert got == [{"odd": 1, "lit": "?:x%"}]
    assert list(db.query("SELECT count(*) AS n FROM t")) == [{"n": 3}]


def test_outside_a_transaction_each_statement_commits_on_its_own(db, target):
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    db.execute("INSERT INTO t VALUES (?, ?)", (1, "a"))

    other = DataDB(target)
    try:
        assert list(other.query("SELECT v FROM t")) == [{"v": "a"}]
    finally:
        other.close()


def test_a_transaction_commits_together_or_not_at_all(db, target):
    db.upsert("t", [{"id": 1, "v": "a"}], pk="id")

    with pytest.raises(KeyError), db.transaction():
        db.execute("UPDATE t SET v = 'changed'")
        db.upsert("t", [{"id": 2, "v": "b"}], pk="id")
        raise KeyError("job code fails")
    assert rows(db, "t") == [{"id": 1, "v": "a"}]

    with db.transaction():
        db.upsert("t", [{"id": 2, "v": "b"}], pk="id")
        with pytest.raises(SinkError):  # a failed upsert undoes only its own rows
            db.upsert("t", [{"id": 3, "v": "c"}], pk="v")
        db.upsert("t", [{"id": 4, "v": "d"}], pk="id")
    assert [r["id"] for r in rows(db, "t")] == [1, 2, 4]


def test_a_database_error_is_a_one_line_sink_error(db):
    with pytest.raises(db.Error) as caught:
        db.execute("SELECT * FROM no_such_table")
    assert "no_such_table" in str(caught.value) and "\n" not in str(caught.value)
    assert db.execute("CREATE TABLE fine (id INTEGER)") in (-1, 0)  # usable afterwards


def test_the_raw_connection_is_there_and_sqlite_utils_only_on_sqlite(db):
    assert db.conn is not None and db.backend in ("sqlite", "postgresql")
    if db.backend == "sqlite":
        db["t"].insert_all([{"id": 1}])
        assert db.table_names() == ["t"]
    else:
        with pytest.raises(AttributeError, match="SQLite-only"):
            db.table_names()
        with pytest.raises(AttributeError, match="SQLite-only"):
            db["t"]



def test_an_exception_of_the_job_s_own_passes_through_a_transaction_unchanged(db):
    with pytest.raises(ValueError, match="job's own"), db.transaction():
        db.upsert("t", [{"id": 1}], pk="id")
        raise ValueError("job's own")  # a type the drivers also raise: still not a SinkError

    with pytest.raises(db.Error):  # rolled back, the table's creation too
        list(db.query("SELECT * FROM t"))

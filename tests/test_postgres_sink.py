"""The PostgreSQL data sink (store/sink_postgres.py) on a real server, against the
data-sink port's promises (store/sink_base.py)."""

from __future__ import annotations

import threading

import pytest

from schedsync.store.sink_base import SinkError
from schedsync.store.sink_postgres import PostgresSink


@pytest.fixture
def sink(pg_url):
    opened = PostgresSink(pg_url)
    yield opened
    opened.close()


def rows_of(pg_server, url, sql):
    db = url.split("/")[3].split("?")[0]
    return [line.split("|") for line in pg_server.psql(db, sql).strip().splitlines()]


def test_upsert_creates_adds_columns_updates_and_counts_bad_rows(sink, pg_server, pg_url):
    assert sink.max_value("items", "updated") is None
    assert sink.upsert("items", "id", [{"id": 1, "name": "a", "updated": 10},
                                       {"id": 2, "name": "b", "updated": 20},
                                       {"name": "no id"}, "not an object", {"id": None}]) == (2, 3)
    assert sink.upsert("items", "id", [{"id": 2, "name": "B", "tags": ["x"], "meta": {"k": 1}}]) == (1, 0)
    assert rows_of(pg_server, pg_url, "SELECT id, name, updated, tags, meta FROM items ORDER BY id") == [
        ["1", "a", "10", "", ""], ["2", "B", "20", '["x"]', '{"k": 1}']]  # updated kept
    assert sink.max_value("items", "updated") == "20"
    assert sink.max_value("items", "nope") is None


def test_a_compound_key_and_a_big_page_in_batches(sink, pg_server, pg_url):
    page = [{"region": r, "day": d, "v": float(d)} for r in ("eu", "us") for d in range(1500)]
    assert sink.upsert("stats", ["region", "day"], page) == (3000, 0)
    assert sink.upsert("stats", ["region", "day"], page[:10]) == (10, 0)
    assert rows_of(pg_server, pg_url, "SELECT count(*) FROM stats") == [["3000"]]
    assert sink.max_value("stats", "v") == "1499"


def test_a_failed_page_is_stored_not_at_all_and_says_why_in_one_line(sink, pg_server, pg_url):
    sink.upsert("t", "id", [{"id": 1, "n": 5}])
    with pytest.raises(SinkError) as error:
        sink.upsert("t", "id", [{"id": 2, "n": 6}, {"id": 3, "n": "not a number"}])
    assert "\n" not in str(error.value)
    assert rows_of(pg_server, pg_url, "SELECT id FROM t ORDER BY id") == [["1"]]
    assert sink.upsert("t", "id", [{"id": 4, "n": 7}]) == (1, 0)  # usable afterwards


def test_writers_on_several_connections_add_the_same_new_columns(pg_url, pg_server):
    errors = []

    def write(i):
        s = PostgresSink(pg_url)
        try:
            for j in range(5):
                s.upsert("shared", "id", [{"id": i * 100 + j, f"c{j}": j, "common": i}])
        except Exception as exc:
            errors.append(exc)
        finally:
            s.close()

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert rows_of(pg_server, pg_url, "SELECT count(*) FROM shared") == [["20"]]

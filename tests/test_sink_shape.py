"""Shaping items before they are stored (``into.columns``, ``select``, ``types``, ``nested``,
``transform``) and bad input (keys, too many columns, long or clashing keys): the pure rules of
``store/shape.py`` first, then the sink and real http jobs through the real CLI against a
loopback server, each on SQLite and on a real PostgreSQL (``pg_url``)."""

from __future__ import annotations

import json
import math
import re
import textwrap

import pytest

from schedsync.store.data_db import DataDB
from schedsync.store.shape import Bad, ShapeError, Shaper, child_table, coerce, select_column
from schedsync.store.sink import SinkError, open_sink
from test_http import FAST, Upstream, reply

# --- the pure rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "value", "stored"), [
    ("integer", 5, 5), ("integer", 5.0, 5), ("integer", " -12 ", -12), ("integer", None, None),
    ("real", 2, 2.0), ("real", "2.5", 2.5), ("text", "x", "x"), ("text", 7, "7"),
    ("text", True, "true"), ("text", {"b": 1, "a": 2}, '{"a": 2, "b": 1}'),
    ("json", {"a": 1}, {"a": 1}), ("json", [1], [1]), ("json", "x", '"x"'), ("json", 3, "3"),
    ("timestamp", "2024-05-01T12:00:00Z", "2024-05-01T12:00:00+00:00"),
    ("timestamp", "2024-05-01T14:00:00+02:00", "2024-05-01T12:00:00+00:00"),
    ("timestamp", "2024-05-01 12:00:00", "2024-05-01T12:00:00+00:00"),  # no offset: UTC
    ("timestamp", 1714564800, "2024-05-01T12:00:00+00:00"),
])
def test_a_pinned_type_converts_what_fits(kind, value, stored):
    assert coerce(kind, value) == stored


@pytest.mark.parametrize(("kind", "value", "why"), [
    ("integer", "abc", "a string, not an integer"), ("integer", 1.5, "a number, not an integer"),
    ("integer", True, "a boolean, not an integer"), ("integer", 1 << 63, "an integer beyond 64 bits"),
    ("integer", [1], "a list, not an integer"), ("real", "x", "a string, not a number"),
    ("real", math.inf, "not a finite number"), ("real", {"a": 1}, "an object, not a number"),
    ("timestamp", "yesterday", "a string, not an ISO 8601 timestamp or epoch seconds"),
    ("timestamp", 1e30, "a number, not an ISO 8601 timestamp or epoch seconds"),
    ("timestamp", [], "a list, not a timestamp"),
])
def test_a_value_that_does_not_fit_its_pinned_type_says_why_without_the_value(kind, value, why):
    with pytest.raises(Bad) as bad:
        coerce(kind, value)
    assert str(bad.value) == why


def test_select_keeps_the_listed_paths_as_columns_joined_by_two_underscores_and_the_key_always():
    shaper = Shaper("t", ("id",), {"select": ["name", "owner.login", "a.b.c"]})
    page = shaper.shape([{"id": 1, "name": "x", "owner": {"login": "ann", "x": 1}, "a": {"b": {"c": 3}},
                          "other": 9},
                         {"id": 2, "owner": "not an object"}, "not an object"])
    assert page.rows == [{"name": "x", "owner__login": "ann", "a__b__c": 3, "id": 1},
                         {"name": None, "owner__login": None, "a__b__c": None, "id": 2}, "not an object"]
    assert select_column("a.b.c") == "a__b__c"


def test_nested_tables_take_lists_out_into_child_rows_with_the_parent_key_and_position():
    shaper = Shaper("orders", ("id",), {"nested": "tables"})
    page = shaper.shape([{"id": 1, "lines": [{"sku": "a", "id": 10}, {"sku": "b"}], "tags": ["x", "y"],
                          "meta": {"deep": [1, 2]}},
                         {"id": 2, "lines": []},
                         {"lines": [{"sku": "orphan"}]}])  # no key: stored as today (counted failed)
    assert page.rows == [{"id": 1, "meta": {"deep": [1, 2]}}, {"id": 2}, {"lines": [{"sku": "orphan"}]}]
    assert page.children == {
        "orders__lines": ([(1,), (2,)], [{"_parent_id": 1, "_idx": 0, "sku": "a", "id": 10},
                                         {"_parent_id": 1, "_idx": 1, "sku": "b"}]),
        "orders__tags": ([(1,)], [{"_parent_id": 1, "_idx": 0, "value": "x"},
                                  {"_parent_id": 1, "_idx": 1, "value": "y"}])}


def test_of_parents_sharing_a_key_the_last_and_its_children_win():
    page = Shaper("o", ("id",), {"nested": "tables"}).shape(
        [{"id": 1, "v": "first", "l": [1, 2, 3]}, {"id": 1, "v": "last", "l": [9]}])
    assert page.rows == [{"id": 1, "v": "last"}]
    assert page.children == {"o__l": ([(1,)], [{"_parent_id": 1, "_idx": 0, "value": 9}])}


def test_an_element_with_a_reserved_key_or_two_keys_for_one_column_fails_its_item_never_merged():
    page = Shaper("o", ("id",), {"nested": "tables"}).shape(
        [{"id": 1, "l": [{"_IDX": 5}]}, {"id": 2, "l": [{"_parent_id": 1}]}, {"id": 3, "l": [{"a": 1}]},
         {"id": 4, "l": [{"a": 1}, {"a": 2, "A": 3}]}, {"id": 5, "l": [{"a": 1}, {"A": 2}]}])
    assert page.rows == [{"id": 3}, {"id": 5}]  # `a` in one element and `A` in another share a column
    assert page.failed == [
        "an element of `l` has key `_IDX`, which child tables use for the parent's key and position",
        "an element of `l` has key `_parent_id`, which child tables use for the parent's key and position",
        "an element of `l` has two keys for one column (`a`, `A`)"]


def test_lists_whose_keys_differ_in_case_share_a_child_table_and_never_meet_in_one_item():
    shaper = Shaper("o", ("id",), {"nested": "tables"})
    page = shaper.shape([{"id": 1, "Lines": [1]}, {"id": 2, "lines": [2]}, {"id": 3, "lines": [3], "LINES": [4]}])
    assert page.rows == [{"id": 1}, {"id": 2}]
    assert page.failed == ["had two lists for one child table (`lines`, `LINES`)"]
    assert list(page.children) == ["o__Lines"]
    assert page.children["o__Lines"][0] == [(1,), (2,)]


def test_a_long_child_table_name_gets_the_hash_suffix():
    name = child_table("t" * 40, "k" * 40)
    assert len(name.encode()) == 63 and name.startswith("t" * 40 + "__")
    assert name != child_table("t" * 40, "k" * 39 + "j")


def test_the_contracts_on_a_known_table():
    known = {"id", "name"}
    page = Shaper("t", ("id",), {"columns": "discard"}).shape([{"id": 1, "Name": "a", "x": 1},
                                                                 {"id": 2, "y": 2, "x": 3}])
    Shaper("t", ("id",), {"columns": "discard"}).apply_contract(page, lambda table: known)
    assert page.rows == [{"id": 1, "Name": "a"}, {"id": 2}]
    assert page.discarded == {"x": 2, "y": 1}

    frozen = Shaper("t", ("id",), {"columns": "freeze"})
    page = frozen.shape([{"id": 1, "name": "a"}, {"id": 2, "new": 1}])
    with pytest.raises(ShapeError) as error:
        frozen.apply_contract(page, lambda table: known)
    assert str(error.value) == ("into.columns is freeze and key `new` is not a column of t"
                                " — add the column, or use columns: evolve or discard")
    frozen.apply_contract(page, lambda table: set())  # no table yet: the first page defines it


def test_child_tables_follow_the_contract_too():
    known = {"t": {"id"}, "t__l": {"_parent_id", "_idx", "a"}}
    frozen = Shaper("t", ("id",), {"columns": "freeze", "nested": "tables"})
    page = frozen.shape([{"id": 1, "l": [{"a": 1}, {"a": 2, "b": 3}]}])
    with pytest.raises(ShapeError) as error:
        frozen.apply_contract(page, known.get)
    assert str(error.value).startswith("into.columns is freeze and key `b` is not a column of t__l — ")

    page = frozen.shape([{"id": 1, "l": [{"a": 1}], "m": [1]}])
    with pytest.raises(ShapeError) as error:  # a new list key of a table that exists
        frozen.apply_contract(page, lambda table: known.get(table, set()))
    assert str(error.value).startswith("into.columns is freeze and key `m` is a list with no child table t__m — ")
    frozen.apply_contract(page, lambda table: set())  # no table yet: the first page makes its child tables

    dropping = Shaper("t", ("id",), {"columns": "discard", "nested": "tables"})
    page = dropping.shape([{"id": 1, "l": [{"a": 1}, {"a": 2, "b": 3}], "m": [1]}])
    dropping.apply_contract(page, lambda table: known.get(table, set()))
    assert page.children == {"t__l": ([(1,)], [{"_parent_id": 1, "_idx": 0, "a": 1},
                                               {"_parent_id": 1, "_idx": 1, "a": 2}])}
    assert page.discarded == {"m": 1, "b": 1}


# --- the sink, on both backends ------------------------------------------------------------------

def sqlite_target(request, tmp_path) -> str:
    return str(tmp_path / "data.db")


def postgres_target(request, tmp_path) -> str:
    return request.getfixturevalue("pg_url")


@pytest.fixture(params=[sqlite_target, postgres_target], ids=["sqlite", "postgres"])
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


def rows(db, table: str, columns: str = "*", order: str = "1") -> list[dict]:
    return list(db.query(f'SELECT {columns} FROM "{table}" ORDER BY {order}'))


def column_types(db, table: str) -> dict[str, str]:
    if db.backend == "sqlite":
        return {r["name"]: r["type"] for r in db.query(f'SELECT name, type FROM pragma_table_info(\'{table}\')')}
    return {r["column_name"]: r["data_type"] for r in db.query(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ?", (table,))}


def test_pinned_columns_are_created_with_their_type(sink, db):
    sink.pin("t", {"n": "integer", "r": "real", "s": "text", "j": "json", "at": "timestamp"})
    shaper = Shaper("t", ("id",), {"types": {"n": "integer", "r": "real", "s": "text", "j": "json",
                                             "at": "timestamp"}})
    page = shaper.shape([{"id": 1, "n": "7", "r": 1, "s": 5, "j": "x", "at": "2024-05-01T12:00:00Z"}])
    assert sink.upsert("t", "id", page.rows) == (1, 0)

    types = column_types(db, "t")
    if db.backend == "sqlite":
        assert types == {"id": "INTEGER", "n": "INTEGER", "r": "REAL", "s": "TEXT", "j": "TEXT", "at": "TEXT"}
        assert rows(db, "t") == [{"id": 1, "n": 7, "r": 1.0, "s": "5", "j": '"x"',
                                  "at": "2024-05-01T12:00:00+00:00"}]
    else:
        assert types == {"id": "bigint", "n": "bigint", "r": "double precision", "s": "text", "j": "jsonb",
                         "at": "timestamp with time zone"}
        [row] = rows(db, "t", "id, n, r, s, j, at::text AS at")
        assert row == {"id": 1, "n": 7, "r": 1.0, "s": "5", "j": "x", "at": "2024-05-01 12:00:00+00"}
    assert sink.max_value("t", "at") == "2024-05-01T12:00:00+00:00"  # what since.field sends, on both


def test_a_value_its_column_refuses_fails_that_item_and_the_rest_of_the_page_is_stored(sink, db):
    assert sink.upsert("t", "id", [{"id": 1, "n": 5}]) == (1, 0)  # n: an integer column
    counts = sink.store_page("t", "id", [{"id": 2, "n": 6}, {"id": 3, "n": "abc"}, {"id": 4, "n": 8}])
    stored, failed = counts.stored, counts.failed
    got = {r["id"]: r["n"] for r in rows(db, "t")}
    if db.backend == "postgresql":  # bigint refuses "abc": that row alone is left out
        assert (stored, failed) == (2, 1)
        assert got == {1: 5, 2: 6, 4: 8}
        assert sink.rejected == ['invalid input syntax for type bigint: "abc"']
    else:  # SQLite's dynamic typing keeps the text as it is (pin the type to check it)
        assert (stored, failed) == (3, 0)
        assert got == {1: 5, 2: 6, 3: "abc", 4: 8}


def test_child_rows_are_replaced_when_their_parent_is_upserted(sink, db):
    shaper = Shaper("orders", ("id",), {"nested": "tables"})

    def store(items):
        page = shaper.shape(items)
        counts = sink.store_page("orders", "id", page.rows, page.children)
        return counts.stored, counts.failed

    assert store([{"id": 1, "lines": [{"sku": "a"}, {"sku": "b"}, {"sku": "c"}]},
                  {"id": 2, "lines": [{"sku": "z", "n": 1}], "tags": ["x"]}]) == (2, 0)
    assert store([{"id": 1, "lines": [{"sku": "A"}]}, {"id": 2, "tags": []}]) == (2, 0)

    assert rows(db, "orders__lines", '"_parent_id", "_idx", sku', '1, 2') == [
        {"_parent_id": 1, "_idx": 0, "sku": "A"},  # 1's three lines became one
        {"_parent_id": 2, "_idx": 0, "sku": "z"}]  # 2 sent no lines: kept
    assert rows(db, "orders__tags") == []          # 2 sent an empty list: none left
    assert sorted(column_types(db, "orders")) == ["id"]


def test_a_child_value_its_column_refuses_fails_the_item_with_its_children(sink, db):
    shaper = Shaper("p", ("id",), {"nested": "tables"})

    def store(items):
        page = shaper.shape(items)
        counts = sink.store_page("p", "id", page.rows, page.children)
        return counts.stored, counts.failed

    assert store([{"id": 1, "l": [{"q": 1}]}, {"id": 2, "l": [{"q": 2}]}]) == (2, 0)  # q: an integer column
    result = store([{"id": 2, "v": "x", "l": [{"q": "abc"}]}, {"id": 3, "v": "y", "l": [{"q": 3}, {"q": 4}]}])

    kids = [(r["_parent_id"], r["q"]) for r in rows(db, "p__l", '"_parent_id", q', "1, 2")]
    if db.backend == "postgresql":
        assert result == (1, 1)
        assert rows(db, "p") == [{"id": 1, "v": None}, {"id": 2, "v": None}, {"id": 3, "v": "y"}]
        assert kids == [(1, 1), (2, 2), (3, 3), (3, 4)]  # 2 and its children as they were
    else:
        assert result == (2, 0)
        assert kids == [(1, 1), (2, "abc"), (3, 3), (3, 4)]


def test_a_page_whose_children_cannot_be_stored_stores_its_parents_not_at_all(sink, db):
    shaper = Shaper("p", ("id",), {"nested": "tables"})
    page = shaper.shape([{"id": 1, "v": "old", "l": [{"a": 1}]}])
    sink.store_page("p", "id", page.rows, page.children)
    page = shaper.shape([{"id": 1, "v": "new", "l": [{f"k{i}": i for i in range(1001)}]}])
    with pytest.raises(SinkError):
        sink.store_page("p", "id", page.rows, page.children)
    assert rows(db, "p") == [{"id": 1, "v": "old"}]
    assert rows(db, "p__l", '"_parent_id", a') == [{"_parent_id": 1, "a": 1}]


def test_items_whose_key_is_missing_null_nan_a_list_or_an_object_are_failed_alike(sink, db):
    page = [{"id": 1}, {"x": 1}, {"id": None}, {"id": math.nan}, {"id": [1]}, {"id": {"a": 1}}, "text", {"id": 2}]
    assert sink.upsert("t", "id", page) == (2, 6)
    assert [r["id"] for r in rows(db, "t")] == [1, 2]


def test_more_than_a_thousand_columns_fails_the_page_in_one_line_storing_nothing(sink, db):
    sink.upsert("wide", "id", [{"id": 0, **{f"c{i}": i for i in range(998)}}])  # 999 columns
    assert sink.upsert("wide", "id", [{"id": 1, "c1000": 1}]) == (1, 0)      # 1,000: fine
    with pytest.raises(SinkError) as error:
        sink.upsert("wide", "id", [{"id": 2, "c1001": 1, "c1002": 2}])
    assert str(error.value) == ("wide would have 1,002 columns, more than 1,000 — keep fewer keys "
                                "with into.select or into.columns: discard")
    assert [r["id"] for r in rows(db, "wide", "id")] == [0, 1]


def test_keys_are_never_merged_silently_into_one_column(sink, db):
    long_a, long_b = "k" * 70 + "a", "k" * 70 + "b"
    assert sink.upsert("t", "id", [{"id": 1, long_a: "a", long_b: "b"}, {"id": 2, "Name": "x", "name": "y"}]) == (1, 1)
    [row] = rows(db, "t")
    assert sorted(v for k, v in row.items() if k != "id" and v is not None) == ["a", "b"]  # two columns
    assert all(len(k.encode()) <= 63 for k in row)


# --- real http jobs through the CLI --------------------------------------------------------------

@pytest.fixture
def upstream():
    server = Upstream()
    yield server
    server.close()


def serve(upstream, pages: list[list]) -> None:
    """``/items?page=N`` answers pages[N-1], with a link to the next page while there is one."""
    @upstream.route("/items")
    def items_route(request):
        n = int(request.query.get("page", 1))
        nxt = f"/items?page={n + 1}" if n < len(pages) else None
        return reply(200, {"data": pages[n - 1], "next": nxt})


TOKEN = "tok-s3cr3t-Qv7"


def write(project, upstream, target: str, into: str = "") -> None:
    project.write(f"""
        state: schedsync.db
        jobs:
          items:
            {FAST}
            http:
              url: "{upstream.base}/items"
              headers: {{Authorization: "Bearer ${{SHAPE_TOKEN}}"}}
              items: data
              next: next
            into: {{db: "{target}", table: items, pk: id{into}}}
        """)


def run(project):
    return project.cli("run", "items", env={"NO_PROXY": "*", "HTTP_PROXY": "", "HTTPS_PROXY": "",
                                            "SHAPE_TOKEN": TOKEN})


def failure(result) -> str:
    """The reason in a failed run's one line on stderr."""
    assert result.returncode == 1, result.stderr
    match = re.fullmatch(r"error: items: failed in [^,]+, \d+ items?: (.*) — see `[^`]*history items`\n",
                         result.stderr)
    assert match, result.stderr
    return match.group(1)


def stored(target, table="items", columns="*", order="1") -> list[dict]:
    db = DataDB(target)
    try:
        return rows(db, table, columns, order)
    finally:
        db.close()


def test_freeze_fails_the_run_naming_the_new_key_and_stores_nothing_of_that_page(project, upstream, target):
    serve(upstream, [[{"id": 1, "name": "a"}]])
    write(project, upstream, target, ", columns: freeze")
    assert run(project).returncode == 0  # no table yet: the first page defines it

    serve(upstream, [[{"id": 2, "name": "b"}], [{"id": 3, "name": "c", "secret_field": 1}], [{"id": 4}]])
    result = run(project)

    assert failure(result) == ("cannot store items into items: into.columns is freeze and key "
                               "`secret_field` is not a column of items — add the column, or use columns: "
                               "evolve or discard")
    assert [r["id"] for r in stored(target)] == [1, 2]  # page 1 stays, page 2 is not written
    assert len(upstream.hits("/items")) == 3            # and the run stopped there


def test_discard_drops_unknown_keys_and_the_run_log_counts_them(project, upstream, target):
    serve(upstream, [[{"id": 1, "name": "a"}]])
    write(project, upstream, target, ", columns: discard")
    assert run(project).returncode == 0
    serve(upstream, [[{"id": 2, "name": "b", "extra": 1, "more": 2}, {"id": 3, "extra": 5}]])

    result = run(project)

    assert (result.returncode, result.stderr) == (0, "")
    assert stored(target) == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": None}]
    [latest, _] = project.history("items")
    assert "into.columns is discard: dropped 3 values of 2 unknown keys (`extra`, `more`)" in latest["output"]


def test_evolve_is_the_default_and_adds_a_column(project, upstream, target):
    serve(upstream, [[{"id": 1}], [{"id": 2, "new": "x"}]])
    write(project, upstream, target)
    assert run(project).returncode == 0
    assert stored(target) == [{"id": 1, "new": None}, {"id": 2, "new": "x"}]


def test_select_and_types_through_a_run_a_conflict_fails_its_item_only(project, upstream, target):
    serve(upstream, [[{"id": 1, "owner": {"login": "ann", "token": "x"}, "amount": "12", "junk": 1},
                      {"id": 2, "owner": None, "amount": "twelve"},
                      {"id": 3, "amount": 3.0}]])
    write(project, upstream, target, ", select: [owner.login, amount], types: {amount: integer}")

    result = run(project)

    assert result.returncode == 0
    assert result.stderr == ("items: partial: 1 of 3 items failed "
                             "(1 item not stored: `amount` held a string, not an integer)\n")
    assert stored(target, order="id") == [{"owner__login": "ann", "amount": 12, "id": 1},
                              {"owner__login": None, "amount": 3, "id": 3}]
    [latest] = project.history("items")
    assert (latest["items_processed"], latest["items_failed"]) == (2, 1)
    assert "1 item not stored: `amount` held a string, not an integer" in latest["output"]


def test_an_unpinned_column_refusing_a_value_fails_the_item_not_the_run(project, upstream, target):
    serve(upstream, [[{"id": 1, "n": 1}], [{"id": 2, "n": "abc"}, {"id": 3, "n": 3}]])
    write(project, upstream, target)

    result = run(project)

    assert result.returncode == 0
    ids = [r["id"] for r in stored(target)]
    if target.startswith("postgresql"):
        assert result.stderr == ("items: partial: 1 of 3 items failed "
                                 "(1 item not stored: a value its column's type refused)\n")
        assert ids == [1, 3]
        assert 'invalid input syntax for type bigint: "abc"' in project.history("items")[0]["output"]
    else:
        assert (result.stderr, ids) == ("", [1, 2, 3])


def test_nested_tables_through_runs_replace_a_parents_children(project, upstream, target):
    serve(upstream, [[{"id": 1, "lines": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}], "tags": ["x"]}],
                     [{"id": 2, "lines": [{"sku": "c", "qty": 3, "parts": [1, 2]}]}]])
    write(project, upstream, target, ", nested: tables")
    assert run(project).returncode == 0
    serve(upstream, [[{"id": 1, "lines": [{"sku": "B", "qty": 9}], "tags": ["x", "y"]}]])

    result = run(project)

    assert (result.returncode, result.stderr) == (0, "")
    assert stored(target) == [{"id": 1}, {"id": 2}]
    lines = stored(target, "items__lines", '"_parent_id", "_idx", sku, qty, parts', "1, 2")
    assert [(r["_parent_id"], r["_idx"], r["sku"], r["qty"]) for r in lines] == [(1, 0, "B", 9), (2, 0, "c", 3)]
    parts = lines[1]["parts"]  # a list inside a child stays JSON
    assert (json.loads(parts) if isinstance(parts, str) else parts) == [1, 2]
    assert stored(target, "items__tags", '"_parent_id", "_idx", value', "2") == [
        {"_parent_id": 1, "_idx": 0, "value": "x"}, {"_parent_id": 1, "_idx": 1, "value": "y"}]


def test_a_transform_filters_and_renames(project, upstream, target):
    (project.path / "shaping.py").write_text(textwrap.dedent("""\
        import sys

        def clean(items):
            kept = [{"id": i["uid"], "name": i["title"].upper()} for i in items if not i.get("hidden")]
            print("kept", len(kept), end=" ")
            print("of", len(items), file=sys.stderr)
            return kept
        """))
    serve(upstream, [[{"uid": 1, "title": "a"}, {"uid": 2, "title": "b", "hidden": True}], [{"uid": 3, "title": "c"}]])
    write(project, upstream, target, ', transform: "shaping:clean"')

    result = run(project)

    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")  # cron mails nothing
    assert stored(target) == [{"id": 1, "name": "A"}, {"id": 3, "name": "C"}]
    log = project.history("items")[0]["output"]
    assert "transform: kept 1 of 2" in log and "transform: kept 1 of 1" in log  # what it printed


@pytest.mark.parametrize(("body", "line"), [
    (f"def clean(items):\n    if items[0]['id'] == 3:\n        raise ValueError('bad item {TOKEN}\\nline 2')\n"
     "    return items\n",
     "transform shaping:clean raised ValueError: bad item *** line 2"),
    ("def clean(items):\n    return items if items[0]['id'] != 3 else {'items': items}\n",
     "transform shaping:clean returned a dict, not a list of items"),
    ("def clean(items):\n    return items if items[0]['id'] != 3 else [{'id': 3, 7: 'x'}]\n",
     "transform shaping:clean returned an item with key 7; keys must be strings"),
    ("def clean(items):\n    return items if items[0]['id'] != 3 else [{'id': 3, 'v': {(1, 2): 'x'}}]\n",
     "cannot store items into items: transform shaping:clean returned a value that is not JSON "
     "(keys must be str, int, float, bool or None, not tuple)"),
], ids=["raises", "returns_a_dict", "int_key", "not_json"])
def test_a_transform_that_raises_or_returns_no_list_fails_the_run_in_one_line_before_that_page(
        project, upstream, target, body, line):
    (project.path / "shaping.py").write_text(body)
    serve(upstream, [[{"id": 1}], [{"id": 2}], [{"id": 3}], [{"id": 4}]])
    write(project, upstream, target, ', transform: "shaping:clean"')

    result = run(project)

    assert failure(result) == line
    assert [r["id"] for r in stored(target)] == [1, 2]  # pages before it stay
    assert TOKEN not in project.cli("history", "items", "--json").stdout


def test_bad_keys_are_counted_failed_with_their_reasons(project, upstream, target):
    serve(upstream, [[{"id": 1}, {"x": 1}, {"id": None}, {"id": [1]}, {"id": {"a": 1}}, {"id": 2, "A": 1, "a": 2},
                      {"id": math.nan}, "text"]])  # the upstream sends NaN, which Python's JSON reads
    write(project, upstream, target)

    result = run(project)

    assert result.returncode == 0
    reasons = ("2 items had no `id` and 1 item had NaN in `id` and 1 item had two keys for one column (`A`, `a`) "
               "and 2 items had a list or an object in `id` and 1 item was not a JSON object")
    assert result.stderr == f"items: partial: 7 of 8 items failed ({reasons})\n"
    assert [r["id"] for r in stored(target, columns="id")] == [1]
    assert f"7 items not stored: {reasons}" in project.history("items")[0]["output"]


def test_too_many_columns_fails_the_run_in_one_line(project, upstream, target):
    serve(upstream, [[{"id": 1, **{f"c{i}": i for i in range(1000)}}]])
    write(project, upstream, target)

    result = run(project)

    assert failure(result) == (f"cannot store items into items in {target}: items would have 1,001 "
                               "columns, more than 1,000 — keep fewer keys with into.select or into.columns: discard")


# --- jobs.yaml: every new key checked, with file:line ---------------------------------------------

def config_error(into: str) -> str:
    from schedsync.config import parse
    from schedsync.core.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        parse(textwrap.dedent(f"""\
            jobs:
              a:
                http: {{url: "https://example.test/x"}}
                into:
                  table: t
                  pk: id
                  {into}
            """), "jobs.yaml", "/srv/sync")
    assert caught.value.exit_code == 2
    return str(caught.value)


@pytest.mark.parametrize(("into", "message"), [
    ("columns: strict", "jobs.yaml:7 jobs.a.into.columns: 'strict' is not one of evolve, freeze, discard"),
    ("nested: flat", "jobs.yaml:7 jobs.a.into.nested: 'flat' is not one of json, tables"),
    ("select: name",
     "jobs.yaml:7 jobs.a.into.select: 'name' is not a list of keys — e.g. select: [id, name, owner.login]"),
    ("select: []", "jobs.yaml:7 jobs.a.into.select: [] is not a list of keys — e.g. select: [id, name, owner.login]"),
    ("select: [a, owner..login]", "jobs.yaml:7 jobs.a.into.select[1]: 'owner..login' is not a key or dotted path — "
                                  "write e.g. owner.login (parts separated by single dots)"),
    ("select: [a.b, a__b]", "jobs.yaml:7 jobs.a.into.select[1]: 'a__b' is stored in column a__b, as 'a.b' is — "
                            "list each key once"),
    ("types: {n: int}", "jobs.yaml:7 jobs.a.into.types.n: 'int' is not a type — "
                        "use one of integer, real, text, json, timestamp"),
    ("types: [n]", "jobs.yaml:7 jobs.a.into.types: ['n'] is not a mapping of column: type — "
                   "e.g. types: {amount: real}; types are integer, real, text, json, timestamp"),
    ("select: [a.b]\n                  types: {a.b: real}",
     "jobs.yaml:8 jobs.a.into.types.a.b: is not a column into.select keeps — "
     "name a selected column (a dotted path a.b is column a__b)"),
    ("transform: clean", "jobs.yaml:7 jobs.a.into.transform: 'clean' is not module:function — "
                         'write e.g. transform: "shaping:clean"'),
    ("colums: freeze", "jobs.yaml:7 jobs.a.into.colums: unknown key — did you mean 'columns'?"),
])
def test_each_new_into_key_is_checked_with_its_line(into, message):
    assert config_error(into) == message


def test_good_shaping_keys_are_kept():
    from schedsync.config import parse

    config = parse(textwrap.dedent("""\
        jobs:
          a:
            http: {url: "https://example.test/x"}
            into: {table: t, pk: id, columns: freeze, select: [a.b], types: {a__b: real},
                   nested: tables, transform: "shaping:clean"}
        """), "jobs.yaml", "/srv/sync")
    assert config.job("a").into == {"table": "t", "pk": "id", "db": None, "mode": "merge", "delete": None,
                                    "lineage": False, "columns": "freeze",
                                    "select": ["a.b"], "types": {"a__b": "real"}, "nested": "tables",
                                    "transform": "shaping:clean"}

"""How an http job's items are shaped before the sink writes them (``into.select``,
``into.types``, ``into.columns``, ``into.nested``): pure functions of a page, no I/O.

The order, per page (after ``into.transform``): ``select`` keeps the listed keys (a dotted path
``a.b`` becomes column ``a__b``; a missing path is null), ``types`` checks and converts each
pinned column's value (an item with a value that does not fit is not stored and counted failed
with a reason), ``nested: tables`` moves each list under a key into child rows, and the
``columns`` contract compares the page's keys with the table's columns (``contract``).

Everything here costs nothing when its option is not set: ``Shaper.active`` is False for the
defaults and the page goes to the sink untouched.
"""

from __future__ import annotations

import json
import math
import re

from schedsync.core.redact import clip
from schedsync.store.sink_base import INDEX, PARENT, column_name, fold, good_rows

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CONTRACTS = ("evolve", "freeze", "discard")
TYPES = ("integer", "real", "text", "json", "timestamp")
NESTED = ("json", "tables")
INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1  # bigint on PostgreSQL, INTEGER on SQLite
_INT = re.compile(r"\s*[+-]?\d{1,19}\s*")
_to_json = json.JSONEncoder(default=repr, ensure_ascii=False, sort_keys=True).encode
VALUE = "value"      # a scalar element's column


class ShapeError(Exception):
    """The page cannot be stored as configured (a frozen table met a new key): one line."""


class Bad(Exception):
    """A value that does not fit its pinned type; str() says why (never the value)."""


def select_column(path: str) -> str:
    """The column a ``select`` path is stored in: its parts joined by ``__``."""
    return "__".join(path.split("."))


def child_table(table: str, key: str) -> str:
    """The child table of ``table`` for the lists under ``key`` (long names: ``column_name``'s rule)."""
    return column_name(f"{table}__{key}")


def _kind(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def coerce(kind: str, value):
    """``value`` as a column pinned to ``kind`` stores it, or ``Bad``. None is always NULL.

    integer: whole numbers (JSON numbers, 5.0, or text of digits) within 64 bits;
    real: finite numbers, or text of one; text: strings, other scalars as their JSON text;
    json: anything, stored as JSON; timestamp: ISO 8601 text (no offset: UTC) or epoch seconds,
    stored as ISO 8601 in UTC.
    """
    if value is None:
        return None
    t = type(value)
    if kind == "integer":
        if t is int:
            number = value
        elif t is float and value.is_integer() or t is str and _INT.fullmatch(value):
            number = int(value)
        else:
            raise Bad(f"{_kind(value)}, not an integer")
        if not INT_MIN <= number <= INT_MAX:
            raise Bad("an integer beyond 64 bits")
        return number
    if kind == "real":
        if t in (int, float):
            number = float(value)
        elif t is str:
            try:
                number = float(value)
            except ValueError:
                raise Bad("a string, not a number") from None
        else:
            raise Bad(f"{_kind(value)}, not a number")
        if not math.isfinite(number):
            raise Bad("not a finite number")
        return number
    if kind == "text":
        if t is str:
            return value
        return _to_json(value)
    if kind == "json":
        return value if t in (dict, list) else _to_json(value)
    if kind == "timestamp":
        return _timestamp(value)
    raise ValueError(kind)


def _timestamp(value) -> str:
    from datetime import datetime, timezone

    t = type(value)
    try:
        if t in (int, float):
            moment = datetime.fromtimestamp(value, timezone.utc)
        elif t is str:
            moment = datetime.fromisoformat(value.strip())
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
        else:
            raise Bad(f"{_kind(value)}, not a timestamp")
        return moment.astimezone(timezone.utc).isoformat()
    except (ValueError, OverflowError, OSError):
        raise Bad(f"{_kind(value)}, not an ISO 8601 timestamp or epoch seconds") from None


def dig_path(item: dict, parts: tuple):
    """The value at ``parts`` in ``item``, or None where the path is missing."""
    value: Any = item
    for part in parts:
        if type(value) is not dict:
            return None
        value = value.get(part)
        if value is None:
            return None
    return value


class Page:
    """One shaped page: ``rows`` for the table, ``children`` {child table: (parent keys whose
    children are replaced, child rows)}, and ``failed``: one reason per item not stored."""

    __slots__ = ("rows", "children", "failed", "discarded", "lists")

    def __init__(self, rows: list):
        self.rows = rows
        self.children: dict[str, tuple[list, list]] = {}
        self.failed: list[str] = []
        self.discarded: dict[str, int] = {}  # key -> values dropped (into.columns: discard)
        self.lists: dict[str, str] = {}  # child table -> the key whose lists it holds


class Shaper:
    """The shaping rules of one job's ``into`` (see the module's docstring)."""

    def __init__(self, table: str, keys: tuple, into: dict, keep: tuple = ()):
        self.table = table
        self.keys = keys
        select = into.get("select")
        self.select = None if not select else [(select_column(p), tuple(p.split("."))) for p in select]
        if self.select is not None:
            # always kept: the key, into.delete's field (the sink reads it) and ``keep`` (the
            # fields fresh: and since: read from the stored rows)
            chosen = {fold(c) for c, _ in self.select}
            deleted = (into.get("delete") or {}).get("field")
            self.select += [(k, (k,)) for k in dict.fromkeys([*keys, *([deleted] if deleted else []), *keep])
                            if fold(k) not in chosen]
        self.types = {fold(column_name(c)): (c, kind) for c, kind in (into.get("types") or {}).items()}
        self._pin_of: dict = {}  # key -> (column, type) or None, as _typed met them
        self._plain: set = set()  # child element keys that are their own column, not reserved
        self._children: dict = {}  # key -> its child table's name
        self._child_spelling: dict = {}  # fold(child table) -> its first spelling
        self.contract = into.get("columns") or "evolve"
        self.tables = into.get("nested") == "tables"
        self.active = bool(self.select or self.types or self.contract != "evolve" or self.tables)

    def pinned(self) -> dict:
        """{column: type} for the sink, which creates pinned columns with their type."""
        return {column_name(c): kind for c, kind in self.types.values()}

    def shape(self, items: list) -> Page:
        """Select, check types, take nested lists out; the columns contract is ``contract``."""
        rows = items
        if self.select is not None:
            chosen = self.select
            rows = [{c: dig_path(item, parts) for c, parts in chosen} if type(item) is dict else item
                    for item in rows]
        page = Page(rows)
        if self.types:
            page.rows = self._typed(rows, page.failed)
        if self.tables:
            self._nest(page)
        return page

    def _typed(self, rows: list, failed: list) -> list:
        types, memo = self.types, self._pin_of
        out = []
        for row in rows:
            if type(row) is dict:
                try:
                    for key, value in row.items():
                        pinned = memo.get(key, memo)
                        if pinned is memo:
                            pinned = types.get(fold(column_name(key)))
                            if len(memo) < 10_000:  # bounded: keys are the upstream's
                                memo[key] = pinned
                        if pinned is not None and value is not None:
                            row[key] = coerce(pinned[1], value)
                except Bad as exc:
                    failed.append(f"`{clip(key, 60)}` held {exc}")
                    continue
            out.append(row)
        return out

    def _nest(self, page: Page) -> None:
        keys = self.keys
        parents = good_rows(keys, page.rows)
        if not parents:
            return
        last: dict = {}  # of parents sharing a key, the last wins (and so do its children)
        for row in parents:
            last[tuple(row[k] for k in keys)] = row
        if len(last) != len(parents):
            kept = {id(row) for row in last.values()}
            of_parents = {id(row) for row in parents}
            page.rows = [row for row in page.rows if id(row) in kept or id(row) not in of_parents]
        parent_columns = [PARENT + k for k in keys]
        reserved = {fold(c) for c in parent_columns} | {fold(INDEX)}
        seen = self._plain  # element keys already known not to clash
        children = page.children
        dropped = set()
        for key_values, row in last.items():
            lists = [(k, v) for k, v in row.items() if type(v) is list]
            if not lists:
                continue
            made = []
            head = dict(zip(parent_columns, key_values, strict=True))
            try:
                if len(lists) > 1:
                    self._one_table_each(lists)
                for key, values in lists:
                    child = []
                    for idx, element in enumerate(values):
                        if type(element) is dict:
                            why = None if seen.issuperset(element) else self._bad_element(element, reserved)
                            if why is not None:
                                raise Bad(f"an element of `{clip(key, 60)}` {why}")
                            child.append({**head, INDEX: idx, **element})
                        else:
                            child.append({**head, INDEX: idx, VALUE: element})
                    made.append((self._child_name(key), key, child))
            except Bad as exc:
                page.failed.append(str(exc))
                dropped.add(id(row))
                continue
            for key, _ in lists:
                del row[key]
            for name, key, child in made:
                replaced, child_rows = children.setdefault(name, ([], []))
                replaced.append(key_values)
                child_rows.extend(child)
                page.lists.setdefault(name, key)
        if dropped:
            page.rows = [row for row in page.rows if id(row) not in dropped]

    def _child_name(self, key: str) -> str:
        """``key``'s child table: ``child_table``, spelled as the first key that folds to it
        (as columns are), so SQLite and PostgreSQL hold the same tables."""
        name = self._children.get(key)
        if name is None:
            name = child_table(self.table, key)
            name = self._child_spelling.get(fold(name), name)
            if len(self._children) < 10_000:  # bounded: keys are the upstream's
                self._children[key] = name
                self._child_spelling.setdefault(fold(name), name)
        return name

    def _one_table_each(self, lists: list) -> None:
        """Bad when two of an item's lists would go to one child table (``Lines``, ``lines``)."""
        seen: dict = {}
        for key, _ in lists:
            other = seen.setdefault(fold(self._child_name(key)), key)
            if other is not key:
                raise Bad(f"had two lists for one child table (`{clip(other, 40)}`, `{clip(key, 40)}`)")

    def _bad_element(self, element: dict, reserved: set) -> str | None:
        """Why ``element`` cannot be a child row (a key child tables reserve, or two keys for one
        column), else None; keys that are their own column are remembered (up to a bound) so
        elements made of them only are not looked at again."""
        names: dict = {}
        for key in element:
            name = fold(column_name(key))
            if name in reserved:
                return f"has key `{clip(key, 60)}`, which child tables use for the parent's key and position"
            other = names.setdefault(name, key)
            if other is not key:
                return f"has two keys for one column (`{clip(other, 40)}`, `{clip(key, 40)}`)"
        if len(self._plain) < 10_000:  # bounded: keys are the upstream's
            self._plain.update(key for key in element if names.get(key) is key)
        return None

    def apply_contract(self, page: Page, known_of) -> None:
        """``into.columns`` on ``page``: ``known_of(table)`` is the table's folded column names
        (empty when it does not exist yet: then the page defines it). ``freeze`` raises
        ShapeError naming the first new key; ``discard`` drops new keys' values, counted."""
        if self.contract == "evolve":
            return
        if page.children and known_of(self.table):  # a table that exists gets no new child table
            for name, key in page.lists.items():
                if name in page.children and not known_of(name):
                    if self.contract == "freeze":
                        raise ShapeError(f"into.columns is freeze and key `{clip(key, 60)}` is a list with no "
                                         f"child table {name} — create it, or use columns: evolve or discard")
                    parents, _ = page.children.pop(name)
                    page.discarded[key] = page.discarded.get(key, 0) + len(parents)
        tables = [(self.table, page.rows, self.keys)]
        tables += [(name, rows, tuple(PARENT + k for k in self.keys) + (INDEX,))
                   for name, (_, rows) in page.children.items()]
        for table, rows, keys in tables:
            known = known_of(table)
            if not known:
                continue  # a new table: its first page defines it
            good = good_rows(keys, rows)
            seen: dict = {}
            for row in good:
                for key in row:
                    if key not in seen:
                        seen[key] = fold(column_name(key)) in known
            new = [key for key, ok in seen.items() if not ok]
            if not new:
                continue
            if self.contract == "freeze":
                raise ShapeError(f"into.columns is freeze and key `{clip(new[0], 60)}` is not a column of {table}"
                                 " — add the column, or use columns: evolve or discard")
            drop = set(new)
            for row in good:
                for key in [k for k in row if k in drop]:
                    del row[key]
                    page.discarded[key] = page.discarded.get(key, 0) + 1


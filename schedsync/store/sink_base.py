"""The data sink's interface (``Sink``, ``SinkError``) and the base both SQL backends share.

What each operation promises is documented in ``store.sink`` (the port users open with
``open_sink``). ``SQLSink`` holds everything the backends have in common: the row filter
(``good_rows``: objects with the whole key, not null, not NaN), the column rule
(``column_name``, ``fold``, ``PageColumns``), type inference, schema work, the upsert
statement and its cache, ``max_value``, and savepoints inside a caller's transaction
(``ctx.db.transaction()``). A dialect (``sink_sqlite``, ``sink_postgres``) fills in small
hooks: quoting is shared, type names and error classes are class attributes, and it says
how a transaction begins and ends, how columns are read, how placeholders look, and how a
page is sent. Backends inherit from here so they never import the module that chooses
between them.
"""

from __future__ import annotations

from schedsync.core.redact import clip

TYPE_CHECKING = False  # typing stays off the path of `run`; type checkers read this block
if TYPE_CHECKING:
    from typing import Any

NAME_BYTES = 63  # PostgreSQL's identifier length; the rule is the same on SQLite
MAX_COLUMNS = 1000  # columns in one table: a page that would add more fails (SQLite allows 2000, PostgreSQL 1600)
_NESTED = (list, dict)
_FOLD = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


class SinkError(Exception):
    """The sink could not store or read; str() is a one-line reason."""


class Sink:
    """The interface every data sink provides (what each operation promises: ``store.sink``)."""

    def upsert(self, table: str, pk, rows: list) -> tuple[int, int]:
        raise NotImplementedError

    def max_value(self, table: str, column: str) -> str | None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def key_columns(pk) -> tuple[str, ...]:
    """``pk`` (a name or a list of names) as a tuple of column names."""
    return (pk,) if isinstance(pk, str) else tuple(pk)


def since_text(value) -> str | None:
    """A stored maximum as ``since`` sends it: None stays None, 1700000000.0 becomes 1700000000."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if hasattr(value, "isoformat"):  # a timestamptz (into.types): ISO 8601, as SQLite stores it
        return value.isoformat()
    return str(value)


def fold(name: str) -> str:
    """``name`` as columns are compared: ASCII letters in lower case (as SQLite compares them)."""
    return name.translate(_FOLD)


def column_name(key: str) -> str:
    """The column an item's ``key`` is stored in, on every backend: the key itself, with a NUL
    as U+FFFD; a key over 63 UTF-8 bytes is cut to 54 bytes (at a character's edge) and
    given ``_`` and the first 8 hex digits of its SHA-256, so long keys with one prefix stay apart."""
    if "\0" in key:
        key = key.replace("\0", "\ufffd")
    if len(key) <= NAME_BYTES // 4:
        return key
    raw = key.encode("utf-8", "surrogatepass")
    if len(raw) <= NAME_BYTES:
        return key
    import hashlib

    head = raw[:NAME_BYTES - 9].decode("utf-8", "ignore")
    return f"{head}_{hashlib.sha256(raw).hexdigest()[:8]}"


class PageColumns:
    """The columns of one page whose keys (in order) are ``keys``.

    ``columns`` holds one name per column (the first key's spelling); ``of`` is None when each
    key is its own column (the common case, nothing to do per item), else {key: column}:
    keys that ``fold`` to one name (``Name``, ``name``) share a column, and ``merge`` turns an
    item into {column: value}, or None when the item has two keys for one column.
    """

    __slots__ = ("columns", "of")

    def __init__(self, keys: tuple):
        names = tuple(map(column_name, keys))
        first: dict[str, str] = {}
        for name in names:
            first.setdefault(fold(name), name)
        if names == keys and len(first) == len(keys):
            self.columns, self.of = keys, None
        else:
            self.columns = tuple(first.values())
            self.of = {key: first[fold(name)] for key, name in zip(keys, names, strict=True)}

    def merge(self, row: dict) -> dict | None:
        of = self.of
        assert of is not None  # called only when keys are re-keyed
        merged = {of[key]: value for key, value in row.items()}
        return merged if len(merged) == len(row) else None


def clashing_keys(row: dict) -> tuple[str, str] | None:
    """Two keys of ``row`` that the column rule stores in one column, if it has such keys."""
    seen: dict[str, str] = {}
    for key in row:
        other = seen.setdefault(fold(column_name(key)), key)
        if other is not key:
            return other, key
    return None


def _children_by_parent(children: dict, keys: tuple) -> dict:
    """{parent key: {child table: its child rows}} of a page's ``children`` (``SQLSink.upsert``)."""
    out: dict = {}
    columns = tuple("_parent_" + k for k in keys)
    for name, (parents, kids) in children.items():
        for parent in parents:
            out.setdefault(parent, {})[name] = []
        for kid in kids:
            out[tuple(kid[c] for c in columns)][name].append(kid)
    return out


def quote(name: str) -> str:
    """``name`` as a quoted SQL identifier (the same on SQLite and PostgreSQL)."""
    return '"' + str(name).replace('"', '""') + '"'


def good_rows(keys: tuple, rows: list) -> list:
    """The rows that are objects with every part of the key there, not null, not NaN (SQLite
    would store a NaN as NULL, and PostgreSQL's NaN equals NaN: either way a new row every run),
    and not a list or an object (JSON text on one backend, jsonb on the other: no stable key)."""
    if len(keys) == 1:
        key = keys[0]
        return [row for row in rows if type(row) is dict and (v := row.get(key)) is not None and v == v
                and type(v) not in _NESTED]
    return [row for row in rows if type(row) is dict and all(
        (v := row.get(k)) is not None and v == v and type(v) not in _NESTED for k in keys)]


class SQLSink(Sink):
    """What both SQL backends share: the row filter, the column rule, type inference, schema work
    and the upsert statement. A dialect sets ``TYPES``/``TEXT``/``ERRORS``/``IF_NOT_EXISTS`` and
    provides ``conn`` and the hooks below the line; it may override ``_store`` (how a page is
    written) and ``_reason`` (error translation)."""

    DIALECT = ""              # "sqlite", "postgresql"
    TYPES: dict = {}          # a first non-null value's Python type -> the column's type
    TEXT = "TEXT"             # the type of anything else
    ERRORS: tuple = ()        # exceptions that mean "cannot store": translated to SinkError
    ROW_ERRORS: tuple = ()    # a value its column's type refuses: the page is sent again row by row
    PINNED: dict = {}         # into.types' type -> the column's type
    IF_NOT_EXISTS = ""        # "IF NOT EXISTS " where schema work can race other writers
    MAX = "max"               # the aggregate, named with its schema where others may shadow it
    conn: Any = None          # the driver's connection (DB-API)
    in_transaction = False    # a caller's transaction is open: pages become savepoints

    def __init__(self) -> None:
        self._columns: dict[str, dict[str, str]] = {}  # table -> {fold(name): name}
        self._sql: dict[tuple, str] = {}
        self.pinned: dict[str, dict[str, str]] = {}  # table -> {fold(column): into.types' type}
        self.rejected: list[str] = []  # why the last upsert's type-refused rows were not stored

    def pin(self, table: str, types: dict) -> None:
        """Create ``table``'s columns named in ``types`` ({column: integer|real|text|json|timestamp})
        with that type (a column that exists keeps its own)."""
        self.pinned[table] = {fold(c): kind for c, kind in types.items()}

    def known_columns(self, table: str) -> set[str]:
        """``table``'s columns, folded (``fold``); empty when it does not exist."""
        known = self._columns.get(table)
        if known is None:
            try:
                cur = self.conn.cursor()
                try:
                    known = self._read_columns(cur, table)
                finally:
                    cur.close()
                    if not self.in_transaction:
                        self._rollback()
            except self.ERRORS as exc:
                raise SinkError(self._reason(exc)) from None
        return set(known)

    def upsert(self, table: str, pk, rows: list, children: dict | None = None) -> tuple[int, int]:
        """``children``: {child table: (parent keys, child rows)} (``store.shape``): in the same
        transaction, each listed parent's rows in the child table are replaced by its child rows."""
        self.rejected = []
        keys = key_columns(pk)
        good = good_rows(keys, rows)
        if not good:
            return 0, len(rows)
        first = good[0].keys()
        same = all(map(first.__eq__, map(dict.keys, good)))
        if same:
            columns = tuple(first)
        else:
            union = dict.fromkeys(first)
            for row in good:
                union.update(dict.fromkeys(row))
            columns = tuple(union)
        page = PageColumns(columns)
        if page.of is not None:  # keys renamed or sharing a column (rare): items re-keyed
            good = [row for row in map(page.merge, good) if row is not None]
            if not good:
                return 0, len(rows)
            columns, keys = page.columns, tuple(page.of[k] for k in keys)
        try:
            try:
                self._store(table, keys, columns, good, same, children)
            except self.ROW_ERRORS:  # a value its column refuses: find the rows, store the others
                self._columns.pop(table, None)
                refused = self._store(table, keys, columns, good, same, children, one_by_one=True)
                return len(good) - refused, len(rows) - len(good) + refused
        except self.ERRORS as exc:
            self._columns.pop(table, None)  # re-read the schema next time
            for name in children or ():
                self._columns.pop(name, None)
            raise SinkError(self._reason(exc)) from None
        return len(good), len(rows) - len(good)

    def _store(self, table: str, keys: tuple, columns: tuple, rows: list, same: bool,
               children: dict | None = None, one_by_one: bool = False) -> int:
        """Write one page in one transaction (a savepoint inside a caller's transaction), its
        children too; ``one_by_one``: each row in its own savepoint, those refused left out
        (with their children; why in ``rejected``). Returns how many rows were refused."""
        cur = self.conn.cursor()
        nested = self.in_transaction
        cur.execute("SAVEPOINT sink_page") if nested else self._begin(cur)
        try:
            sql = self._prepare(cur, table, keys, columns, rows)
            refused: set = set()
            if not one_by_one:
                self._write(cur, sql, columns, rows, same)
                for name, (parents, kids) in (children or {}).items():
                    self._replace_children(cur, name, keys, parents, kids)
            else:  # an item is its row and its children: refused together
                of_parent = _children_by_parent(children or {}, keys)
                for row in rows:
                    parent = tuple(row[k] for k in keys)
                    cur.execute("SAVEPOINT sink_row")
                    try:
                        self._write(cur, sql, columns, [row], False)
                        for name, kids in of_parent.get(parent, {}).items():
                            self._replace_children(cur, name, keys, [parent], kids)
                        cur.execute("RELEASE SAVEPOINT sink_row")
                    except self.ROW_ERRORS as exc:
                        cur.execute("ROLLBACK TO SAVEPOINT sink_row")
                        cur.execute("RELEASE SAVEPOINT sink_row")
                        refused.add(parent)
                        if len(self.rejected) < 20:
                            self.rejected.append(self._reason(exc))
            cur.execute("RELEASE SAVEPOINT sink_page") if nested else self._commit()
            return len(refused)
        except BaseException:
            if nested:
                cur.execute("ROLLBACK TO SAVEPOINT sink_page")
                cur.execute("RELEASE SAVEPOINT sink_page")
            else:
                self._rollback()
            raise
        finally:
            cur.close()

    def _prepare(self, cur, table: str, keys: tuple, columns: tuple, rows: list) -> str:
        """The schema work ``rows`` need, and the upsert statement for ``columns``."""
        known = self._columns.get(table)
        if known is None or any(fold(c) not in known for c in columns):
            known = self._schema(cur, table, keys, columns, rows)
        names = tuple(known[fold(c)] for c in columns)  # the table's spelling
        pk_names = tuple(known[fold(c)] for c in keys)
        sql = self._sql.get((table, pk_names, names))
        if sql is None:
            sql = self._sql[(table, pk_names, names)] = self._upsert_sql(table, pk_names, names)
        return sql

    def _replace_children(self, cur, table: str, parent_keys: tuple, parents: list, rows: list) -> None:
        """In ``table`` (a child table), delete the rows of ``parents`` and write ``rows``."""
        keys = tuple("_parent_" + k for k in parent_keys)
        known = self._columns.get(table)
        if known is None:
            known = self._read_columns(cur, table)
        if known and parents:
            self._delete_children(cur, table, tuple(known[fold(k)] for k in keys), parents)
        if not rows:
            return
        union = dict.fromkeys(rows[0])
        for row in rows:
            union.update(dict.fromkeys(row))
        page = PageColumns(tuple(union))
        if page.of is not None:  # the shaper has already failed parents whose elements clash
            rows = [r for r in map(page.merge, rows) if r is not None]
        columns = page.columns
        sql = self._prepare(cur, table, keys + ("_idx",), columns, rows)
        self._write(cur, sql, columns, rows, False)

    def _delete_children(self, cur, table: str, keys: tuple, parents: list) -> None:
        """Delete the rows of ``table`` whose ``keys`` columns hold one of ``parents`` (tuples)."""
        where = " AND ".join(f"{quote(k)} = {self._placeholder()}" for k in keys)
        cur.executemany(f"DELETE FROM {quote(table)} WHERE {where}", parents)

    def _schema(self, cur, table: str, keys: tuple, columns: tuple, rows: list) -> dict[str, str]:
        """Create ``table`` or add the columns it lacks (inside the page's transaction)."""
        self._lock_schema(cur, table)
        known = self._read_columns(cur, table)
        missing = [c for c in columns if fold(c) not in known]
        if not missing:
            return known
        if len(known) + len(missing) > MAX_COLUMNS:
            raise SinkError(f"{table} would have {len(known) + len(missing):,} columns, more than "
                            f"{MAX_COLUMNS:,} — keep fewer keys with into.select or into.columns: discard")
        pinned = self.pinned.get(table, {})
        types = {c: self.PINNED[pinned[fold(c)]] if fold(c) in pinned else self._type_of(c, rows)
                 for c in missing}
        if not known:
            defs = [f"{quote(c)} {types[c]}" for c in missing]
            defs.append(f"PRIMARY KEY ({', '.join(map(quote, keys))})")
            cur.execute(f"CREATE TABLE {self.IF_NOT_EXISTS}{quote(table)} ({', '.join(defs)})")
        # With IF NOT EXISTS a concurrent writer's CREATE may have won: its columns may differ.
        for c in missing if known or self.IF_NOT_EXISTS else ():
            cur.execute(f"ALTER TABLE {quote(table)} ADD COLUMN {self.IF_NOT_EXISTS}{quote(c)} {types[c]}")
        for c in missing:
            known.setdefault(fold(c), c)
        return known

    def _read_columns(self, cur, table: str) -> dict[str, str]:
        known: dict[str, str] = {}
        for name in self._column_names(cur, table):
            known.setdefault(fold(name), name)
        self._columns[table] = known
        return known

    def _type_of(self, column: str, rows: list) -> str:
        for row in rows:
            value = row.get(column)
            if value is not None:
                return self.TYPES.get(type(value), self.TEXT)
        return self.TEXT

    def _upsert_sql(self, table: str, keys: tuple, columns: tuple) -> str:
        updates = [f"{quote(c)} = excluded.{quote(c)}" for c in columns if c not in keys]
        action = f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING"
        return self._statement(f"INSERT INTO {quote(table)} ({', '.join(map(quote, columns))}) VALUES ",
                               len(columns), f" ON CONFLICT ({', '.join(map(quote, keys))}) {action}")

    def max_value(self, table: str, column: str) -> str | None:
        try:
            cur = self.conn.cursor()
            try:
                found = self._read_columns(cur, table).get(fold(column_name(column)))
                value = None
                if found is not None:
                    cur.execute(f"SELECT {self.MAX}({quote(found)}) FROM {quote(table)}")
                    value = cur.fetchone()[0]
            finally:
                cur.close()
                if not self.in_transaction:
                    self._rollback()  # read only: end the transaction, hold no snapshot
        except self.ERRORS as exc:
            raise SinkError(self._reason(exc)) from None
        return since_text(value)

    def _reason(self, exc: BaseException) -> str:
        """``exc`` as a SinkError's one line (a dialect redacts what its driver may echo)."""
        return clip(str(exc) or type(exc).__name__, 200)

    # -- dialect hooks --

    def _begin(self, cur) -> None:
        """Open the page's transaction (nothing where the driver opens one itself)."""

    def _commit(self) -> None:
        self.conn.commit()

    def _rollback(self) -> None:
        self.conn.rollback()

    def _lock_schema(self, cur, table: str) -> None:
        """Keep other writers out of ``table``'s schema until the transaction ends."""

    def _column_names(self, cur, table: str) -> list[str]:
        """``table``'s column names in order; none when it does not exist."""
        raise NotImplementedError

    def _placeholder(self) -> str:
        """One value's placeholder in a statement run by ``executemany``."""
        raise NotImplementedError

    def _statement(self, head: str, width: int, tail: str) -> str:
        """The upsert statement: ``head``, the placeholders of a row of ``width`` values, ``tail``."""
        raise NotImplementedError

    def _write(self, cur, sql: str, columns: tuple, rows: list, same: bool) -> None:
        """Run ``sql`` over ``rows`` (dicts keyed by ``columns``; ``same``: all have every key)."""
        raise NotImplementedError

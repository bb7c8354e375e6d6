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
PARENT = "_parent_"  # a child table's copy of its parent's key column K is _parent_K (into.nested)
INDEX = "_idx"       # and the element's position in the parent's list
_NESTED = (list, dict)
_FOLD = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


RUN_COLUMN = "_schedsync_run"              # into.lineage: the run that last wrote the row
SYNCED_COLUMN = "_schedsync_synced_at"     # into.lineage: when it did
DELETED_COLUMN = "_deleted_at"             # into.delete with soft: when the item said deleted
STAGING = "__schedsync_staging"            # into.mode replace loads into TABLE + this
MODES = ("merge", "append", "replace")


class Counts:
    """What writing one page did: rows stored (inserted, updated or deleted) and failed."""

    __slots__ = ("stored", "failed", "inserted", "updated", "deleted")

    def __init__(self, stored: int, failed: int, inserted: int = 0, updated: int = 0, deleted: int = 0):
        self.stored, self.failed = stored, failed
        self.inserted, self.updated, self.deleted = inserted, updated, deleted


class Load:
    """How pages are written: ``mode`` (merge, append, replace), ``delete`` ({field, equals,
    soft}) and ``lineage`` ((run id, ISO UTC time) written to each row, or None)."""

    __slots__ = ("mode", "delete", "lineage")

    def __init__(self, mode: str = "merge", delete: dict | None = None, lineage: tuple | None = None):
        self.mode, self.delete, self.lineage = mode, delete, lineage

    def flagged(self, row: dict) -> bool:
        """Whether ``row`` says it is deleted: its field equals the value (a bool only a bool)."""
        rule = self.delete
        assert rule is not None
        value = row.get(rule["field"])
        return value == rule["equals"] and (type(value) is bool) == (type(rule["equals"]) is bool)

    def split(self, keys: tuple, rows: list) -> tuple[list, list]:
        """``rows`` as (to store, deleted): of the rows sharing a key the last decides."""
        last: dict = {}
        for row in rows:
            key = tuple(_hashable(row[k]) for k in keys)
            last.pop(key, None)
            last[key] = row
        keep: list = []
        gone: list = []
        for row in last.values():
            (gone if self.flagged(row) else keep).append(row)
        return keep, gone

    @staticmethod
    def now() -> str:
        """The time written to ``_deleted_at`` and ``_schedsync_synced_at``: ISO 8601 UTC."""
        import time

        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


MERGE = Load()


def _hashable(value):
    return value if type(value) not in (list, dict) else repr(value)


class SinkError(Exception):
    """The sink could not store or read; str() is a one-line reason."""


class Sink:
    """The interface every data sink provides (what each operation promises: ``store.sink``)."""

    def upsert(self, table: str, pk, rows: list) -> tuple[int, int]:
        raise NotImplementedError

    def max_value(self, table: str, column: str) -> str | None:
        raise NotImplementedError

    def write(self, table: str, pk, rows: list, load: Load | None = None) -> Counts:
        raise NotImplementedError

    def begin_replace(self, table: str, pk) -> None:
        raise NotImplementedError

    def swap(self, table: str) -> None:
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


def child_keys(pk) -> tuple[str, ...]:
    """The key of a child table of a table keyed on ``pk``: ``_parent_K`` for each part, ``_idx``."""
    return tuple(PARENT + k for k in key_columns(pk)) + (INDEX,)


def _hard_deleted(pk, rows: list, load) -> set:
    """The keys (tuples) of the page's rows that ``load`` deletes outright (``into.delete``
    without ``soft``; of the rows sharing a key the last decides, as ``Load.split``)."""
    if load is None or load.delete is None or load.delete.get("soft") or not pk:
        return set()
    keys = key_columns(pk)
    _, gone = load.split(keys, good_rows(keys, rows))
    return {tuple(row[k] for k in keys) for row in gone}


def _children_of(children: dict, keys: tuple) -> dict:
    """{parent key: {child table: (its child rows)}} of a page's ``children``."""
    out: dict = {}
    columns = tuple(PARENT + k for k in keys)
    for name, (parents, kids) in children.items():
        for parent in parents:
            out.setdefault(parent, {})[name] = []
        for kid in kids:
            out[tuple(kid[c] for c in columns)][name].append(kid)
    return out


class SQLSink(Sink):
    """What both SQL backends share: the row filter, the column rule, type inference, schema work
    and the upsert statement. A dialect sets ``TYPES``/``TEXT``/``ERRORS``/``IF_NOT_EXISTS`` and
    provides ``conn`` and the hooks below the line; it may override ``_store`` (how a page is
    written) and ``_reason`` (error translation)."""

    DIALECT = ""              # "sqlite", "postgresql"
    TYPES: dict = {}          # a first non-null value's Python type -> the column's type
    TEXT = "TEXT"             # the type of anything else
    TIMESTAMP = "TEXT"        # _deleted_at, _schedsync_synced_at
    ERRORS: tuple = ()        # exceptions that mean "cannot store": translated to SinkError
    ROW_ERRORS: tuple = ()    # a value its column's type refuses: store_page finds the rows one by one
    PINNED: dict = {}         # into.types' type -> the column's type
    IF_NOT_EXISTS = ""        # "IF NOT EXISTS " where schema work can race other writers
    MAX = "max"               # the aggregate, named with its schema where others may shadow it
    conn: Any = None          # the driver's connection (DB-API)
    in_transaction = False    # a caller's transaction is open: pages become savepoints

    def __init__(self) -> None:
        self._columns: dict[str, dict[str, str]] = {}  # table -> {fold(name): name}
        self._sql: dict[tuple, str] = {}
        self.pinned: dict[str, dict[str, str]] = {}  # table -> {fold(column): into.types' type}
        self.rejected: list[str] = []  # why store_page's rows refused for a value's type were

    # -- an http job's page, as store.shape made it --

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

    def store_page(self, table: str, pk, rows: list, children: dict | None = None,
                   load: Load | None = None) -> Counts:
        """``write`` (with ``load``), with the page's ``children`` and rows refused for a
        value's type (see ``store.sink``)."""
        self.rejected = []
        if not children:
            try:
                return self.write(table, pk, rows, load)
            except SinkError as exc:
                if not isinstance(exc.__context__, self.ROW_ERRORS):
                    raise
            return self._together([table], lambda cur: self._one_by_one(cur, table, pk, rows, {}, load))
        tables = [table, *children]
        try:
            return self._together(tables, lambda cur: self._with_children(cur, table, pk, rows, children, load))
        except SinkError as exc:
            if not isinstance(exc.__context__, self.ROW_ERRORS):
                raise
        return self._together(tables, lambda cur: self._one_by_one(cur, table, pk, rows, children, load))

    def _with_children(self, cur, table: str, pk, rows: list, children: dict, load) -> Counts:
        gone = _hard_deleted(pk, rows, load)
        counts = self.write(table, pk, rows, load)
        for name, (parents, kids) in children.items():
            if gone:  # a parent into.delete removed: its children go, none come back
                columns = tuple(PARENT + k for k in key_columns(pk))
                parents = list(dict.fromkeys([*parents, *gone]))
                kids = [kid for kid in kids if tuple(kid[c] for c in columns) not in gone]
            self._replace_children(cur, name, pk, parents, kids)
        return counts

    def _one_by_one(self, cur, table: str, pk, rows: list, children: dict, load) -> Counts:
        """Each item (its row and its children) in a savepoint: those refused are left out."""
        keys = key_columns(pk)
        of_parent = _children_of(children, keys)
        total = Counts(0, 0)
        for row in rows:
            cur.execute("SAVEPOINT sink_item")
            try:
                gone = _hard_deleted(pk, [row], load)
                counts = self.write(table, pk, [row], load)
                if counts.stored:
                    for name, kids in of_parent.get(tuple(row[k] for k in keys), {}).items():
                        self._replace_children(cur, name, pk, [tuple(row[k] for k in keys)], [] if gone else kids)
                cur.execute("RELEASE SAVEPOINT sink_item")
            except (SinkError, *self.ROW_ERRORS) as exc:
                if isinstance(exc, SinkError) and not isinstance(exc.__context__, self.ROW_ERRORS):
                    raise
                cur.execute("ROLLBACK TO SAVEPOINT sink_item")
                cur.execute("RELEASE SAVEPOINT sink_item")
                for name in (table, *children):
                    self._columns.pop(name, None)
                if len(self.rejected) < 20:
                    self.rejected.append(str(exc) if isinstance(exc, SinkError) else self._reason(exc))
                counts = Counts(0, 1)
            total.stored += counts.stored
            total.failed += counts.failed
            total.inserted += counts.inserted
            total.updated += counts.updated
            total.deleted += counts.deleted
        return total

    def _replace_children(self, cur, table: str, pk, parents: list, rows: list) -> None:
        """In child table ``table``, delete the rows of ``parents`` (key tuples), then upsert ``rows``."""
        keys = child_keys(pk)[:-1]
        known = self._columns.get(table)
        if known is None or not known:
            known = self._read_columns(cur, table)
        if known and parents and all(fold(k) in known for k in keys):
            self._delete_children(cur, table, tuple(known[fold(k)] for k in keys), parents)
        if rows:
            self.upsert(table, list(child_keys(pk)), rows)

    def _together(self, tables: list, work):
        """``work(cur)`` in one transaction (a savepoint inside a caller's); on failure the schema
        of ``tables`` is read again next time (their changes were rolled back)."""
        outer = self.in_transaction
        try:
            cur = self.conn.cursor()
            try:
                cur.execute("SAVEPOINT sink_items") if outer else self._begin(cur)
                self.in_transaction = True
                result = work(cur)
                cur.execute("RELEASE SAVEPOINT sink_items") if outer else self._commit()
                return result
            except BaseException:
                for name in tables:
                    self._columns.pop(name, None)
                self.in_transaction = outer
                if outer:
                    cur.execute("ROLLBACK TO SAVEPOINT sink_items")
                    cur.execute("RELEASE SAVEPOINT sink_items")
                else:
                    self._rollback()
                raise
            finally:
                self.in_transaction = outer
                cur.close()
        except self.ERRORS as exc:
            raise SinkError(self._reason(exc)) from None  # __context__ keeps exc (store_page reads it)

    def _delete_children(self, cur, table: str, keys: tuple, parents: list) -> None:
        """Delete the rows of ``table`` whose ``keys`` columns hold one of ``parents`` (tuples)."""
        where = " AND ".join(f"{quote(k)} = {self._placeholder()}" for k in keys)
        cur.executemany(f"DELETE FROM {quote(table)} WHERE {where}", parents)

    # -- one page --

    def upsert(self, table: str, pk, rows: list) -> tuple[int, int]:
        counts = self.write(table, pk, rows)
        return counts.stored, counts.failed

    def write(self, table: str, pk, rows: list, load: Load | None = None) -> Counts:
        """Store one page as ``load`` says (``into.mode``, ``into.delete``, ``into.lineage``):
        in one transaction; what it did as ``Counts``. ``upsert`` is ``write`` with a merge."""
        load = load or MERGE
        keys = key_columns(pk) if pk else ()
        keyed = load.mode == "merge" or (load.mode == "replace" and keys)
        if keyed:
            good = good_rows(keys, rows)
        else:  # append (and replace without pk): every object is a row, pk or not
            keys = ()
            good = [row for row in rows if type(row) is dict and row]
        if not good:
            return Counts(0, len(rows))
        accepted = len(good)
        gone: list = []
        if load.delete is not None:
            good, gone = load.split(keys, good)
        twice = accepted - len(good) - len(gone)  # rows a later one of the same key overrode
        if load.lineage is not None:
            run, at = load.lineage
            for row in good:
                row[RUN_COLUMN] = run
                row[SYNCED_COLUMN] = at
            for row in gone:
                row[RUN_COLUMN] = run
                row[SYNCED_COLUMN] = at
        soft = load.delete is not None and load.delete.get("soft")
        if soft:
            stamp = load.now()
            for row in good:
                row[DELETED_COLUMN] = None
            for row in gone:
                row[DELETED_COLUMN] = stamp
        if gone and not soft:  # hard: the key is all a delete needs
            gone = [{k: row[k] for k in keys} for row in gone]
        sample = good + gone if soft else good or gone
        first = sample[0].keys()
        same = all(map(first.__eq__, map(dict.keys, sample)))
        if same:
            columns = tuple(first)
        else:
            union = dict.fromkeys(first)
            for row in sample:
                union.update(dict.fromkeys(row))
            columns = tuple(union)
        page = PageColumns(columns)
        if page.of is not None:  # keys renamed or sharing a column (rare): items re-keyed
            before = len(good) + len(gone)
            good = [row for row in map(page.merge, good) if row is not None]
            gone = [row for row in map(page.merge, gone) if row is not None]
            accepted -= before - len(good) - len(gone)
            if not good and not gone:
                return Counts(0, len(rows))
            columns, keys = page.columns, tuple(page.of[k] for k in keys)
        into = self.staging(table) if load.mode == "replace" else table
        try:
            counts = self._store(into, keys, columns, good, same, load, gone)
        except self.ERRORS as exc:
            self._columns.pop(into, None)  # re-read the schema next time
            raise SinkError(self._reason(exc)) from None
        counts.stored, counts.failed = accepted, len(rows) - accepted
        counts.updated += twice
        return counts

    def _store(self, table: str, keys: tuple, columns: tuple, rows: list, same: bool,
               load: Load | None = None, gone: tuple | list = ()) -> Counts:
        """Write one page in one transaction (a savepoint inside a caller's transaction)."""
        load = load or MERGE
        cur = self.conn.cursor()
        nested = self.in_transaction
        cur.execute("SAVEPOINT sink_page") if nested else self._begin(cur)
        try:
            known = self._columns.get(table)
            if known is None or any(fold(c) not in known for c in columns):
                known = self._schema(cur, table, keys, columns, rows or list(gone))
            names = tuple(known[fold(c)] for c in columns)  # the table's spelling
            pk_names = tuple(known[fold(c)] for c in keys)
            soft = load.delete is not None and load.delete.get("soft")
            counts = Counts(0, 0)
            if keys:
                flagged = gone if soft else ()
                if rows:
                    sql = self._cached(table, pk_names, names, "merge")
                    counts.inserted = self._merge(cur, sql, table, pk_names, keys, columns, rows, same)
                    counts.updated = len(rows) - counts.inserted
                if flagged:
                    sql = self._cached(table, pk_names, names, "soft")
                    self._merge(cur, sql, table, pk_names, keys, columns, list(flagged), False)
                    counts.deleted = len(flagged)
                elif gone:
                    counts.deleted = self._delete(cur, table, pk_names, keys, list(gone))
                counts.stored = len(rows) + len(gone)
            else:
                sql = self._cached(table, (), names, "append")
                self._write(cur, sql, columns, rows, same)
                counts.inserted = counts.stored = len(rows)
            cur.execute("RELEASE SAVEPOINT sink_page") if nested else self._commit()
        except BaseException:
            if nested:
                cur.execute("ROLLBACK TO SAVEPOINT sink_page")
                cur.execute("RELEASE SAVEPOINT sink_page")
            else:
                self._rollback()
            raise
        finally:
            cur.close()
        return counts

    def _cached(self, table: str, keys: tuple, names: tuple, how: str) -> str:
        sql = self._sql.get((table, keys, names, how))
        if sql is None:
            if how == "append":
                sql = self._statement(f"INSERT INTO {quote(table)} ({', '.join(map(quote, names))}) VALUES ",
                                      len(names), "")
            else:
                sql = self._upsert_sql(table, keys, names, soft=how == "soft")
            self._sql[(table, keys, names, how)] = sql
        return sql

    def _merge(self, cur, sql: str, table: str, keys: tuple, row_keys: tuple, columns: tuple,
               rows: list, same: bool) -> int:
        """Upsert ``rows`` (their key is ``row_keys``, the table's ``keys``); how many were new
        keys (the rest updated a row)."""
        raise NotImplementedError

    def _delete(self, cur, table: str, keys: tuple, columns: tuple, rows: list) -> int:
        """Delete the rows whose key ``rows`` (dicts of the key ``columns``) hold; how many went."""
        raise NotImplementedError

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
            missing.sort(key=lambda c: c not in keys)  # the key's columns first
            defs = [f"{quote(c)} {types[c]}" for c in missing]
            if keys:
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
        if column in (DELETED_COLUMN, SYNCED_COLUMN):
            return self.TIMESTAMP
        for row in rows:
            value = row.get(column)
            if value is not None:
                return self.TYPES.get(type(value), self.TEXT)
        return self.TEXT

    def _upsert_sql(self, table: str, keys: tuple, columns: tuple, soft: bool = False) -> str:
        rest = [c for c in columns if c not in keys]
        updates = [f"{quote(c)} = excluded.{quote(c)}" for c in rest]
        if soft:  # a row deleted again keeps when it was first deleted
            updates = [f"{quote(c)} = coalesce({quote(table)}.{quote(c)}, excluded.{quote(c)})"
                       if c == DELETED_COLUMN else u for c, u in zip(rest, updates, strict=True)]
        action = f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING"
        return self._statement(f"INSERT INTO {quote(table)} ({', '.join(map(quote, columns))}) VALUES ",
                               len(columns), f" ON CONFLICT ({', '.join(map(quote, keys))}) {action}")

    # -- replace: a staging table swapped in when the sync completes --

    @staticmethod
    def staging(table: str) -> str:
        """The table a ``replace`` loads into before it is swapped in."""
        return column_name(table + STAGING)

    def begin_replace(self, table: str, pk) -> None:
        """Drop a staging table a killed run left, and create it fresh with ``table``'s columns
        (and ``pk`` as its key) so the swapped-in table is shaped like the old one."""
        keys = key_columns(pk) if pk else ()
        staging = self.staging(table)
        try:
            cur = self.conn.cursor()
            self._begin(cur)
            try:
                self._lock_schema(cur, staging)
                cur.execute(f"DROP TABLE IF EXISTS {quote(staging)}")
                old = self._column_types(cur, table)
                if old and all(k in dict(old) for k in keys):
                    defs = [f"{quote(name)} {kind}" for name, kind in old]
                    if keys:
                        defs.append(f"PRIMARY KEY ({', '.join(map(quote, keys))})")
                    cur.execute(f"CREATE TABLE {quote(staging)} ({', '.join(defs)})")
                self._commit()
            except BaseException:
                self._rollback()
                raise
            finally:
                cur.close()
        except self.ERRORS as exc:
            raise SinkError(self._reason(exc)) from None
        self._columns.pop(staging, None)

    def swap(self, table: str) -> None:
        """Put the staging table in ``table``'s place in one transaction, with ``table``'s
        indexes: readers see the old table or the new one, never a missing or half one."""
        staging = self.staging(table)
        try:
            cur = self.conn.cursor()
            self._begin(cur)
            try:
                self._lock_schema(cur, table)
                if self._column_names(cur, staging):
                    self._swap(cur, table, staging)
                self._commit()
            except BaseException:
                self._rollback()
                raise
            finally:
                cur.close()
        except self.ERRORS as exc:
            raise SinkError(self._reason(exc)) from None
        for name in (table, staging):
            self._columns.pop(name, None)
        self._sql = {k: v for k, v in self._sql.items() if k[0] not in (table, staging)}

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

    def _column_types(self, cur, table: str) -> list[tuple[str, str]]:
        """``table``'s (column, declared type) in order; none when it does not exist."""
        raise NotImplementedError

    def _swap(self, cur, table: str, staging: str) -> None:
        """Inside the swap's transaction: drop ``table``, rename ``staging`` to it, indexes again."""

    def _placeholder(self) -> str:
        """One value's placeholder in a statement run by ``executemany``."""
        raise NotImplementedError

    def _statement(self, head: str, width: int, tail: str) -> str:
        """The upsert statement: ``head``, the placeholders of a row of ``width`` values, ``tail``."""
        raise NotImplementedError

    def _write(self, cur, sql: str, columns: tuple, rows: list, same: bool) -> None:
        """Run ``sql`` over ``rows`` (dicts keyed by ``columns``; ``same``: all have every key)."""
        raise NotImplementedError

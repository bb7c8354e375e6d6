"""The SQLite data sink (``data.db``): one prepared ``executemany`` per page.

What it does per page, inside one ``BEGIN IMMEDIATE … COMMIT``:

- keep the rows that are objects with every part of the key (not null, not NaN);
- name the columns by the shared rule (``sink_base.PageColumns``; per page, and per
  row only when keys are renamed or share a column);
- if the page has a key the table lacks (known from a cached ``PRAGMA table_info``,
  re-read inside the write lock so concurrent writers cannot race), create the table
  or ``ALTER TABLE … ADD COLUMN`` it, typed from the first non-null value;
- one ``INSERT … ON CONFLICT (pk) DO UPDATE SET col = excluded.col`` statement over
  the page's columns, run by ``executemany`` on tuples built by ``itemgetter``;
  lists and objects become JSON through a sqlite3 adapter registered while the sink is
  open, so no Python code runs per plain value.

The database is created private to the user (0600; SQLite gives its ``-wal`` and
``-shm`` the same mode), in WAL mode (``synchronous=NORMAL``) with a 60 s busy timeout, so several jobs can write
one file at once. Files that already exist keep their mode.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from operator import itemgetter

from schedsync.core.redact import clip
from schedsync.store.sink_base import (PageColumns, Sink, SinkError, column_name, fold, key_columns,
                                       since_text)

BUSY_TIMEOUT = 60.0
_TYPES = {int: "INTEGER", bool: "INTEGER", float: "FLOAT", str: "TEXT", bytes: "BLOB",
          dict: "TEXT", list: "TEXT"}
# One encoder, built once: json.dumps with any argument builds a new encoder per call.
_to_json = json.JSONEncoder(default=repr, ensure_ascii=False).encode
_ADAPTED = ((dict, sqlite3.PrepareProtocol), (list, sqlite3.PrepareProtocol))
_open_sinks = 0  # the JSON adapters stay registered while any sink is open


def connect(path: str) -> sqlite3.Connection:
    """A connection to the data database at ``path``, created private, in WAL mode, autocommit.

    Writers wrap each batch in ``BEGIN IMMEDIATE … COMMIT`` so no read lock is upgraded.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    if not os.path.exists(path):
        # Create it private before SQLite does (its -wal and -shm copy this mode).
        os.close(os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600))
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
    try:
        # As the state does: WAL with NORMAL syncs at checkpoints, not at every page's commit;
        # an application crash loses nothing, a power cut at most the last pages, re-fetched.
        conn.execute("PRAGMA synchronous=NORMAL")
        for attempt in range(100):  # switching to WAL needs a moment alone with the file
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 99:
                    raise
                time.sleep(0.05)
    except BaseException:
        conn.close()
        raise
    return conn


def quote(name: str) -> str:
    return '"' + str(name).replace('"', '""') + '"'


class SQLiteSink(Sink):
    def __init__(self, path: str):
        global _open_sinks
        self.path = path
        try:
            self.conn = connect(path)
        except (sqlite3.Error, OSError) as exc:
            raise SinkError(_reason(exc)) from None
        self._columns: dict[str, dict[str, str]] = {}  # table -> {fold(name): name}
        self._sql: dict[tuple, str] = {}
        if not _open_sinks:
            for key in _ADAPTED:
                sqlite3.adapters[key] = _to_json
        _open_sinks += 1

    # -- upsert --

    def upsert(self, table: str, pk, rows: list) -> tuple[int, int]:
        keys = key_columns(pk)
        # A key must be there, not null and not NaN (SQLite would store NaN as NULL: a new
        # row on every run).
        if len(keys) == 1:
            key = keys[0]
            good = [row for row in rows
                    if type(row) is dict and (v := row.get(key)) is not None and v == v]
        else:
            good = [row for row in rows
                    if type(row) is dict and all((v := row.get(k)) is not None and v == v for k in keys)]
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
        if len(columns) == 1:
            name = columns[0]
            values = [(row.get(name),) for row in good]
        elif same:
            values = list(map(itemgetter(*columns), good))
        else:
            values = [tuple(row.get(c) for c in columns) for row in good]
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                known = self._columns.get(table)
                if known is None or any(fold(c) not in known for c in columns):
                    known = self._schema(table, keys, columns, good)
                names = tuple(known[fold(c)] for c in columns)  # the table's spelling
                pk_names = tuple(known[fold(c)] for c in keys)
                sql = self._sql.get((table, pk_names, names))
                if sql is None:
                    sql = self._sql[(table, pk_names, names)] = _upsert_sql(table, pk_names, names)
                conn.executemany(sql, values)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError, OverflowError, ValueError) as exc:
            self._columns.pop(table, None)  # re-read the schema next time
            raise SinkError(_reason(exc)) from None
        return len(good), len(rows) - len(good)

    def _schema(self, table: str, keys: tuple, columns: tuple, rows: list) -> dict[str, str]:
        """Create ``table`` or add the columns it lacks (inside the page's transaction)."""
        known = self._read_columns(table)
        missing = [c for c in columns if fold(c) not in known]
        if not missing:
            return known
        types = {c: _type_of(c, rows) for c in missing}
        if not known:
            if len(keys) == 1 and types.get(keys[0]) == "INTEGER":
                defs = [f"{quote(c)} INTEGER PRIMARY KEY" if c == keys[0] else f"{quote(c)} {types[c]}"
                        for c in missing]
            else:
                defs = [f"{quote(c)} {types.get(c, 'TEXT')}" for c in missing]
                defs.append(f"PRIMARY KEY ({', '.join(map(quote, keys))})")
            self.conn.execute(f"CREATE TABLE {quote(table)} ({', '.join(defs)})")
        else:
            for c in missing:
                self.conn.execute(f"ALTER TABLE {quote(table)} ADD COLUMN {quote(c)} {types[c]}")
        for c in missing:
            known[fold(c)] = c
        return known

    def _read_columns(self, table: str) -> dict[str, str]:
        rows = self.conn.execute(f"PRAGMA table_info({quote(table)})").fetchall()
        known = self._columns[table] = {fold(row[1]): row[1] for row in rows}
        return known

    # -- since --

    def max_value(self, table: str, column: str) -> str | None:
        try:
            column = self._read_columns(table).get(fold(column_name(column)))
            if column is None:
                return None
            value = self.conn.execute(f"SELECT MAX({quote(column)}) FROM {quote(table)}").fetchone()[0]
        except (sqlite3.Error, OSError) as exc:
            raise SinkError(_reason(exc)) from None
        return since_text(value)

    def close(self) -> None:
        global _open_sinks
        if self.conn is None:
            return
        self.conn.close()
        self.conn = None
        _open_sinks -= 1
        if not _open_sinks:
            for key in _ADAPTED:
                sqlite3.adapters.pop(key, None)


def _upsert_sql(table: str, keys: tuple, columns: tuple) -> str:
    names = ", ".join(map(quote, columns))
    marks = ", ".join("?" * len(columns))
    updates = [f"{quote(c)} = excluded.{quote(c)}" for c in columns if c not in keys]
    action = f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING"
    return (f"INSERT INTO {quote(table)} ({names}) VALUES ({marks}) "
            f"ON CONFLICT ({', '.join(map(quote, keys))}) {action}")


def _type_of(column: str, rows: list) -> str:
    for row in rows:
        value = row.get(column)
        if value is not None:
            return _TYPES.get(type(value), "TEXT")
    return "TEXT"


def _reason(exc: BaseException) -> str:
    return clip(str(exc) or type(exc).__name__, 200)

"""The SQLite data sink (``data.db``): one prepared ``executemany`` per page.

The shared work (row filter, column rule, schema, the upsert statement) is
``sink_base.SQLSink``'s; this dialect adds, per page:

- one ``BEGIN IMMEDIATE … COMMIT`` (the write lock first, so the cached
  ``PRAGMA table_info`` is re-read inside it when a page brings a new key and
  concurrent writers cannot race);
- ``?`` placeholders, run by ``executemany`` on tuples built by ``itemgetter``;
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

from schedsync.store.sink_base import SinkError, SQLSink, quote
from schedsync.store.sqlite import BUSY, LOCKED, error_code

BUSY_TIMEOUT = 60.0
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
                if error_code(exc) not in (BUSY, LOCKED) or attempt == 99:
                    raise
                time.sleep(0.05)
    except BaseException:
        conn.close()
        raise
    return conn


class SQLiteSink(SQLSink):
    DIALECT = "sqlite"
    TYPES = {int: "INTEGER", bool: "INTEGER", float: "FLOAT", str: "TEXT", bytes: "BLOB",
             dict: "TEXT", list: "TEXT"}
    ERRORS = (sqlite3.Error, OSError, OverflowError, ValueError)
    PINNED = {"integer": "INTEGER", "real": "REAL", "text": "TEXT", "json": "TEXT", "timestamp": "TEXT"}

    def __init__(self, path: str):
        global _open_sinks
        super().__init__()
        self.path = path
        try:
            self.conn = connect(path)
        except (sqlite3.Error, OSError) as exc:
            raise SinkError(self._reason(exc)) from None
        if not _open_sinks:
            for key in _ADAPTED:
                sqlite3.adapters[key] = _to_json
        _open_sinks += 1

    def _begin(self, cur) -> None:
        cur.execute("BEGIN IMMEDIATE")  # the write lock first: no read lock is ever upgraded

    def _commit(self) -> None:
        self.conn.execute("COMMIT")

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def _column_names(self, cur, table: str) -> list[str]:
        return [row[1] for row in cur.execute(f"PRAGMA table_info({quote(table)})")]

    def _column_types(self, cur, table: str) -> list[tuple[str, str]]:
        return [(row[1], row[2]) for row in cur.execute(f"PRAGMA table_info({quote(table)})")]

    def _placeholder(self) -> str:
        return "?"

    def _statement(self, head: str, width: int, tail: str) -> str:
        return f"{head}({', '.join('?' * width)}){tail}"

    def _merge(self, cur, sql: str, table: str, keys: tuple, row_keys: tuple, columns: tuple,
               rows: list, same: bool) -> int:
        # New keys are counted before the upsert: one lookup of the page's keys on the key's index.
        try:
            if len(row_keys) == 1:
                key = row_keys[0]
                wanted = list({row[key] for row in rows})
            else:
                wanted = list({tuple(map(row.__getitem__, row_keys)) for row in rows})
        except TypeError:  # a list or an object in the key: counted as updates
            wanted = []
        existing = 0
        if wanted:
            if len(keys) == 1:
                probe = (f"SELECT count(*) FROM {quote(table)} WHERE {quote(keys[0])} IN"
                         " (SELECT value FROM json_each(?))")
            else:
                picks = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(keys)))
                probe = (f"SELECT count(*) FROM {quote(table)} WHERE ({', '.join(map(quote, keys))}) IN"
                         f" (SELECT {picks} FROM json_each(?))")
            existing = cur.execute(probe, (_to_json(wanted),)).fetchone()[0]
        self._write(cur, sql, columns, rows, same)
        return len(wanted) - existing

    def _delete(self, cur, table: str, keys: tuple, columns: tuple, rows: list) -> int:
        where = " AND ".join(f"{quote(k)} = ?" for k in keys)
        before = self.conn.total_changes
        cur.executemany(f"DELETE FROM {quote(table)} WHERE {where}", [tuple(map(row.get, columns)) for row in rows])
        return self.conn.total_changes - before

    def _swap(self, cur, table: str, staging: str) -> None:
        indexes = [sql for (sql,) in cur.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL", (table,))]
        cur.execute(f"DROP TABLE IF EXISTS {quote(table)}")
        cur.execute(f"ALTER TABLE {quote(staging)} RENAME TO {quote(table)}")
        for sql in indexes:
            cur.execute(sql)

    def _write(self, cur, sql: str, columns: tuple, rows: list, same: bool) -> None:
        # Tuples by itemgetter when every row has every key: no Python code per plain value.
        if len(columns) == 1:
            name = columns[0]
            values = [(row.get(name),) for row in rows]
        elif same:
            values = list(map(itemgetter(*columns), rows))
        else:
            values = [tuple(map(row.get, columns)) for row in rows]
        cur.executemany(sql, values)

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

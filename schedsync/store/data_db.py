"""``ctx.db``: python jobs' handle on the data database, the same on SQLite and PostgreSQL.

- ``upsert(table, rows, pk=...) -> (stored, failed)``: http jobs' sink (``store.sink``):
  same column rule, types, NaN/null key rule and last-item-wins; one transaction.
- ``query(sql, params=()) -> iterator of dicts`` and ``execute(sql, params=()) -> int``
  (rows changed): ``?`` and ``:name`` placeholders on both backends (translated to
  psycopg2's ``%s`` and ``%(name)s`` on PostgreSQL, outside quotes and comments, so a
  ``%`` in the SQL needs no doubling). Database errors are ``SinkError`` one-liners.
- Outside ``with ctx.db.transaction():`` each ``execute`` and ``upsert`` commits on its
  own and each ``query`` reads in a transaction that ends with its last row; inside it
  they commit together or, on an exception, not at all (an ``upsert`` that fails there
  undoes only its own rows: it is a savepoint).
- ``conn``: the driver's connection (sqlite3 in autocommit mode, or psycopg2), and
  ``backend``: ``"sqlite"`` or ``"postgresql"``. On SQLite every other attribute and
  ``ctx.db["table"]`` are those of a ``sqlite_utils.Database`` on the same connection
  (SQLite only).
"""

from __future__ import annotations

import re
from contextlib import contextmanager

from schedsync.store.sink import SinkError, open_sink

TYPE_CHECKING = False  # sqlite_utils is imported on first use; type checkers read this block
if TYPE_CHECKING:
    import sqlite_utils

# What psycopg2 must not read as a placeholder, and what it must: quoted text, comments,
# dollar quotes and :: casts are kept (a % in them doubled); ? and :name become %s and
# %(name)s; any other % becomes %%.
_PARTS = re.compile(r"""'[^']*'|"[^"]*"|--[^\n]*|/\*.*?\*/|\$((?:[A-Za-z_]\w*)?)\$.*?\$\1\$"""
                    r"""|::|\?|:([A-Za-z_]\w*)|%""", re.S)
BATCH = 500


def psycopg2_sql(sql: str) -> str:
    """``sql`` written with ``?``/``:name`` placeholders as psycopg2 reads it."""
    def part(match: re.Match) -> str:
        text = match.group(0)
        if text == "?":
            return "%s"
        if text == "%":
            return "%%"
        return f"%({match.group(2)})s" if match.group(2) else text.replace("%", "%%")

    return _PARTS.sub(part, sql)


class DataDB:
    """The data database at ``target`` (a path or a ``postgresql://`` URL); see the module doc."""

    Error = SinkError

    def __init__(self, target: str):
        self._sink = open_sink(target)
        self.conn = self._sink.conn
        self.backend = self._sink.DIALECT
        self._utils: sqlite_utils.Database | None = None

    def upsert(self, table: str, rows, *, pk) -> tuple[int, int]:
        """Store ``rows`` in ``table`` keyed on ``pk`` as http jobs do; (stored, failed)."""
        return self._sink.upsert(table, pk, rows if isinstance(rows, list) else list(rows))

    def query(self, sql: str, params=()):
        """The rows ``sql`` selects, as dicts (read as they are iterated)."""
        cur = self._run(sql, params)
        try:
            names = [column[0] for column in cur.description or ()]
            while True:
                try:
                    batch = cur.fetchmany(BATCH)
                except self._sink.ERRORS as exc:
                    raise SinkError(self._sink._reason(exc)) from None
                if not batch:
                    break
                for row in batch:
                    yield dict(zip(names, row, strict=True))
        finally:
            cur.close()
            self._done()

    def execute(self, sql: str, params=()) -> int:
        """Run ``sql`` (committed at once outside ``transaction()``); the number of rows changed."""
        cur = self._run(sql, params)
        count = cur.rowcount
        cur.close()
        self._done(commit=True)
        return count

    @contextmanager
    def transaction(self):
        """Group what the block does into one transaction: committed at its end, or, on an
        exception, rolled back. Nested blocks join the outer one."""
        if self._sink.in_transaction:
            yield self
            return
        sink = self._sink
        if self.backend == "sqlite":
            self._call(self.conn.execute, "BEGIN IMMEDIATE")
        sink.in_transaction = True
        try:
            yield self
        except BaseException:
            sink.in_transaction = False
            self._call(sink._rollback)
            raise
        sink.in_transaction = False
        self._call(sink._commit)

    def close(self) -> None:
        self._sink.close()

    def _call(self, function, *args):
        try:
            return function(*args)
        except self._sink.ERRORS as exc:
            raise SinkError(self._sink._reason(exc)) from None

    def _run(self, sql: str, params):
        cur = self.conn.cursor()
        try:
            cur.execute(psycopg2_sql(sql) if self.backend == "postgresql" else sql, params)
        except self._sink.ERRORS as exc:
            cur.close()
            if not self._sink.in_transaction:
                self._sink._rollback()
            raise SinkError(self._sink._reason(exc)) from None
        return cur

    def _done(self, commit: bool = False) -> None:
        """End the statement's own transaction, unless the caller holds one open."""
        if self._sink.in_transaction or self.backend == "sqlite":  # SQLite: autocommit
            return
        self.conn.commit() if commit else self.conn.rollback()

    # -- SQLite only: sqlite-utils on the same connection --

    def _sqlite_utils(self, name: str):
        if self.backend != "sqlite":
            raise AttributeError(f"ctx.db.{name} is SQLite-only (sqlite-utils); on PostgreSQL use "
                                 "ctx.db.upsert, query, execute or ctx.db.conn")
        if self._utils is None:
            import sqlite_utils

            self._utils = sqlite_utils.Database(self.conn)
        return self._utils

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._sqlite_utils(name), name)

    def __getitem__(self, table: str):
        return self._sqlite_utils("[table]")[table]

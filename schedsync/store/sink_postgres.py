"""The PostgreSQL data sink: http jobs' items in tables of a PostgreSQL database.

Used when the target is a ``postgresql://`` URL (the state's own database by
default with a PostgreSQL state, or the one ``into.db`` names). The shared work (row
filter, column rule, schema, the upsert statement) is ``sink_base.SQLSink``'s; this
dialect adds, per page, in one transaction:

- schema work (``CREATE TABLE IF NOT EXISTS``, ``ADD COLUMN IF NOT EXISTS``) under a
  transaction-level advisory lock per table, so concurrent writers on several hosts
  cannot trip on each other in the catalog; types bigint, double precision, boolean,
  jsonb for lists and objects, text for the rest;
- one ``INSERT … VALUES (…), (…), … ON CONFLICT (pk) DO UPDATE`` per 1000 rows
  (``execute_values``, with ``%`` in names doubled). One statement may not update a
  row twice, so of rows sharing a key only the last is sent. A page refused for a NUL
  in its text is sent again with U+FFFD.

Tables go to the connection's ``search_path`` (``public`` by default), beside the
``schedsync`` schema of the state.
"""

from __future__ import annotations

import json

from schedsync.core.redact import clip
from schedsync.store.sink_base import SinkError, SQLSink, column_name, quote

PAGE = 1000
_to_json = json.JSONEncoder(default=repr, sort_keys=True).encode


class PostgresSink(SQLSink):
    DIALECT = "postgresql"
    TYPES = {int: "bigint", bool: "boolean", float: "double precision", str: "text",
             dict: "jsonb", list: "jsonb", bytes: "bytea"}
    TEXT = "text"
    TIMESTAMP = "timestamptz"
    PINNED = {"integer": "bigint", "real": "double precision", "text": "text", "json": "jsonb",
              "timestamp": "timestamptz"}
    IF_NOT_EXISTS = "IF NOT EXISTS "
    MAX = "pg_catalog.max"  # a role with CREATE on public could plant a better-matching max()

    def __init__(self, url: str):
        from schedsync.core.redact import MISENCODED_FIX, misencoded_password, redact_url
        from schedsync.store.postgres import KEEPALIVE, _need_driver

        super().__init__()
        _need_driver(url)
        import psycopg2
        import psycopg2.extras

        self._pg, self._json = psycopg2, psycopg2.extras.Json
        self._execute_values = psycopg2.extras.execute_values
        self.ERRORS = (psycopg2.Error, ValueError)
        self.ROW_ERRORS = (psycopg2.DataError,)  # "abc" for a bigint, a number out of range…
        self.path = redact_url(url)
        if misencoded_password(url):  # libpq would read and quote a piece of it as the host
            raise SinkError(f"its password holds a raw /, @ or % — {MISENCODED_FIX}")
        try:
            params = {**KEEPALIVE, "connect_timeout": "10", "application_name": "schedsync-sink",
                      **psycopg2.extensions.parse_dsn(url)}
            self._secret = params.get("password")
            self.conn = psycopg2.connect(**params)
        except psycopg2.Error as exc:
            raise SinkError(self._reason(exc)) from None

    def _reason(self, exc: BaseException) -> str:
        # The driver's first line only: its SQL excerpt (which may quote values) is not kept.
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        secret = getattr(self, "_secret", None)
        return clip(text.replace(secret, "***") if secret else text, 200)

    def _store(self, table: str, keys: tuple, columns: tuple, rows: list, same: bool,
               load=None, gone: tuple | list = ()):
        dropped = 0
        if keys:
            before = len(rows)
            rows = _last_of_each_key(rows, keys)  # one statement may update a row only once
            dropped = before - len(rows)
        try:
            counts = super()._store(table, keys, columns, rows, same, load, gone)
        except (ValueError, self._pg.errors.UntranslatableCharacter) as exc:
            if isinstance(exc, ValueError) and "NUL" not in str(exc):
                raise
            self._columns.pop(table, None)  # text cannot hold a NUL: store U+FFFD instead
            counts = super()._store(table, keys, columns, list(map(_without_nul, rows)), same, load,
                                    list(map(_without_nul, gone)))
        # rows sent once for their key count as updates of it, as on SQLite
        counts.stored += dropped
        counts.updated += dropped
        return counts

    def _delete_children(self, cur, table: str, keys: tuple, parents: list) -> None:
        names = ", ".join(map(quote, keys)).replace("%", "%%")
        self._execute_values(cur, f"DELETE FROM {quote(table).replace('%', '%%')} WHERE ({names}) IN (VALUES %s)",
                             parents, page_size=PAGE)

    def _placeholder(self) -> str:
        return "%s"

    def _lock_schema(self, cur, table: str) -> None:
        # Concurrent CREATE TABLE IF NOT EXISTS races in the catalog: one writer at a time
        # per table does schema work (held until this page's transaction ends).
        # Built-ins named with their schema: a role with CREATE on public could otherwise add a
        # better-matching overload (say hashtextextended(text, integer)) that we would run.
        cur.execute("SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended(%s, 0))",
                    ("schedsync-sink:" + table,))

    def _column_names(self, cur, table: str) -> list[str]:
        cur.execute("SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = pg_catalog.to_regclass(%s)"
                    " AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (quote(table),))
        return [name for (name,) in cur.fetchall()]

    def _column_types(self, cur, table: str) -> list[tuple[str, str]]:
        cur.execute("SELECT attname, pg_catalog.format_type(atttypid, atttypmod) FROM pg_catalog.pg_attribute"
                    " WHERE attrelid = pg_catalog.to_regclass(%s) AND attnum > 0 AND NOT attisdropped"
                    " ORDER BY attnum", (quote(table),))
        return [(name, kind) for name, kind in cur.fetchall()]

    def _merge(self, cur, sql: str, table: str, keys: tuple, row_keys: tuple, columns: tuple,
               rows: list, same: bool) -> int:
        # A row the statement inserted has no xmax yet; one it updated has this transaction's.
        wrap = self._json
        values = [tuple(wrap(v) if type(v) in (dict, list) else v for v in map(row.get, columns))
                  for row in rows]
        got = self._execute_values(cur, sql + " RETURNING (xmax = 0)", values, page_size=PAGE, fetch=True)
        return sum(1 for (new,) in got if new)

    def _delete(self, cur, table: str, keys: tuple, columns: tuple, rows: list) -> int:
        match = " AND ".join(f"t.{quote(k)} = d.{quote(k)}" for k in keys)
        sql = (f"DELETE FROM {quote(table)} AS t USING (VALUES ".replace("%", "%%") + "%s"
               + f") AS d ({', '.join(map(quote, keys))}) WHERE {match} RETURNING 1".replace("%", "%%"))
        values = [tuple(map(row.get, columns)) for row in rows]
        return len(self._execute_values(cur, sql, values, page_size=PAGE, fetch=True))

    def _swap(self, cur, table: str, staging: str) -> None:
        cur.execute("SELECT pg_catalog.to_regclass(%s) IS NOT NULL", (quote(table),))
        indexes, key_name = [], None
        if cur.fetchone()[0]:
            # Readers wait on this lock and then read the new table: never a missing or half one.
            cur.execute(f"LOCK TABLE {quote(table)} IN ACCESS EXCLUSIVE MODE")
            cur.execute("SELECT pg_catalog.pg_get_indexdef(indexrelid) FROM pg_catalog.pg_index"
                        " WHERE indrelid = pg_catalog.to_regclass(%s) AND NOT indisprimary", (quote(table),))
            indexes = [sql for (sql,) in cur.fetchall()]
            key_name = self._key_name(cur, table)
            cur.execute(f"DROP TABLE {quote(table)}")
        cur.execute(f"ALTER TABLE {quote(staging)} RENAME TO {quote(table)}")
        new_name = self._key_name(cur, table)
        if key_name and new_name and key_name != new_name:  # the next staging table may reuse its name
            cur.execute(f"ALTER TABLE {quote(table)} RENAME CONSTRAINT {quote(new_name)} TO {quote(key_name)}")
        elif new_name and not key_name:
            cur.execute(f"ALTER TABLE {quote(table)} RENAME CONSTRAINT {quote(new_name)} TO "
                        f"{quote(column_name(table + '_pkey'))}")
        for sql in indexes:
            cur.execute(sql)

    @staticmethod
    def _key_name(cur, table: str) -> str | None:
        cur.execute("SELECT conname FROM pg_catalog.pg_constraint WHERE conrelid = pg_catalog.to_regclass(%s)"
                    " AND contype = 'p'", (quote(table),))
        found = cur.fetchone()
        return found[0] if found else None

    def _statement(self, head: str, width: int, tail: str) -> str:
        # execute_values reads a % in the statement as a placeholder: names may hold one.
        return head.replace("%", "%%") + "%s" + tail.replace("%", "%%")

    def _write(self, cur, sql: str, columns: tuple, rows: list, same: bool) -> None:
        wrap = self._json
        values = [tuple(wrap(v) if type(v) in (dict, list) else v for v in map(row.get, columns))
                  for row in rows]
        self._execute_values(cur, sql, values, page_size=PAGE)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _last_of_each_key(rows: list, keys: tuple) -> list:
    """``rows`` with only the last of those sharing a key (as SQLite's row-by-row upsert leaves it)."""
    try:
        if len(keys) == 1:
            key = keys[0]
            last = {row[key]: row for row in rows}
        else:
            last = {tuple(map(row.__getitem__, keys)): row for row in rows}
    except TypeError:  # a list or an object in the key
        last = {_to_json([row[k] for k in keys]): row for row in rows}
    return rows if len(last) == len(rows) else list(last.values())


def _without_nul(value):
    """``value`` with every NUL in its text (keys too) as U+FFFD: PostgreSQL text cannot hold one."""
    kind = type(value)
    if kind is str:
        return value.replace("\0", "\ufffd")
    if kind is list:
        return [_without_nul(v) for v in value]
    if kind is dict:
        return {k.replace("\0", "\ufffd"): _without_nul(v) for k, v in value.items()}
    return value

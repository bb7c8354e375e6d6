"""The PostgreSQL data sink: http jobs' items in tables of a PostgreSQL database.

Used when the target is a ``postgresql://`` URL (the state's own database by
default with a PostgreSQL state, or the one ``into.db`` names). Per page, in one
transaction:

- keep the rows that are objects with every part of the key;
- if the page has a key the table lacks (known from a cached column list, re-read
  when a page brings a new key), ``CREATE TABLE IF NOT EXISTS`` it with the key as
  its primary key, or ``ALTER TABLE … ADD COLUMN IF NOT EXISTS``, under a
  transaction-level advisory lock per table (so concurrent writers on several
  hosts cannot trip on each other in the catalog), typed from the first
  non-null value: bigint, double precision, boolean, jsonb for lists and objects,
  text for the rest;
- one ``INSERT … VALUES (…), (…), … ON CONFLICT (pk) DO UPDATE`` per 1000 rows
  (``execute_values``), columns the page does not mention keep their values.

Tables go to the connection's ``search_path`` (``public`` by default), beside the
``schedsync`` schema of the state.
"""

from __future__ import annotations

from schedsync.store.sink_base import Sink, SinkError, key_columns, since_text

PAGE = 1000
_TYPES = {int: "bigint", bool: "boolean", float: "double precision", str: "text",
          dict: "jsonb", list: "jsonb", bytes: "bytea"}


def quote(name: str) -> str:
    return '"' + str(name).replace('"', '""') + '"'


class PostgresSink(Sink):
    def __init__(self, url: str):
        from schedsync.core.redact import MISENCODED_FIX, misencoded_password, redact_url
        from schedsync.store.postgres import KEEPALIVE, _need_driver

        _need_driver(url)
        import psycopg2
        import psycopg2.extras

        self._pg, self._json = psycopg2, psycopg2.extras.Json
        self._execute_values = psycopg2.extras.execute_values
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
        self._columns: dict[str, dict[str, str]] = {}

    def _reason(self, exc: BaseException) -> str:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        secret = getattr(self, "_secret", None)
        if secret:
            text = text.replace(secret, "***")
        text = " ".join(text.split())  # one line (the driver's message is; its SQL excerpt is not kept)
        return text if len(text) <= 200 else text[:199] + "…"

    def upsert(self, table: str, pk, rows: list) -> tuple[int, int]:
        keys = key_columns(pk)
        good = [row for row in rows if type(row) is dict and all(row.get(k) is not None for k in keys)]
        if not good:
            return 0, len(rows)
        union = dict.fromkeys(good[0])
        for row in good:
            union.update(dict.fromkeys(row))
        columns = tuple(union)
        wrap = self._json
        values = [tuple(wrap(v) if type(v) in (dict, list) else v for v in map(row.get, columns))
                  for row in good]
        conn = self.conn
        try:
            with conn.cursor() as cur:
                known = self._columns.get(table)
                if known is None or any(c not in known for c in columns):
                    self._schema(cur, table, keys, columns, good)
                names = ", ".join(map(quote, columns))
                updates = [f"{quote(c)} = excluded.{quote(c)}" for c in columns if c not in keys]
                action = f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING"
                self._execute_values(
                    cur, f"INSERT INTO {quote(table)} ({names}) VALUES %s"
                         f" ON CONFLICT ({', '.join(map(quote, keys))}) {action}", values, page_size=PAGE)
            conn.commit()
        except self._pg.Error as exc:
            conn.rollback()
            self._columns.pop(table, None)
            raise SinkError(self._reason(exc)) from None
        return len(good), len(rows) - len(good)

    def _schema(self, cur, table, keys, columns, rows) -> None:
        # Concurrent CREATE TABLE IF NOT EXISTS races in the catalog: one writer at a time
        # per table does schema work (held until this page's transaction ends).
        cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("schedsync-sink:" + table,))
        known = self._read_columns(cur, table)
        missing = [c for c in columns if c not in known]
        if not missing:
            return
        types = {c: _type_of(c, rows) for c in missing}
        if not known:
            defs = [f"{quote(c)} {types[c]}" for c in missing]
            defs.append(f"PRIMARY KEY ({', '.join(map(quote, keys))})")
            cur.execute(f"CREATE TABLE IF NOT EXISTS {quote(table)} ({', '.join(defs)})")
        for c in missing:  # also after a concurrent CREATE won: its columns may differ
            cur.execute(f"ALTER TABLE {quote(table)} ADD COLUMN IF NOT EXISTS {quote(c)} {types[c]}")
        self._read_columns(cur, table)

    def _read_columns(self, cur, table: str) -> dict[str, str]:
        cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s)"
                    " AND attnum > 0 AND NOT attisdropped", (quote(table),))
        known = self._columns[table] = {name: name for (name,) in cur.fetchall()}
        return known

    def max_value(self, table: str, column: str) -> str | None:
        try:
            with self.conn.cursor() as cur:
                known = self._read_columns(cur, table)
                if column not in known:
                    self.conn.rollback()
                    return None
                cur.execute(f"SELECT max({quote(column)}) FROM {quote(table)}")
                value = cur.fetchone()[0]
            self.conn.rollback()  # read only: end the transaction, hold no snapshot
        except self._pg.Error as exc:
            self.conn.rollback()
            raise SinkError(self._reason(exc)) from None
        return since_text(value)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _type_of(column: str, rows: list) -> str:
    for row in rows:
        value = row.get(column)
        if value is not None:
            return _TYPES.get(type(value), "text")
    return "text"

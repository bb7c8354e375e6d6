"""The PostgreSQL data sink: http jobs' items in tables of a PostgreSQL database.

Used when the target is a ``postgresql://`` URL (the state's own database by
default with a PostgreSQL state, or the one ``into.db`` names). Per page, in one
transaction:

- keep the rows that are objects with every part of the key (not null, not NaN);
- if the page has a key the table lacks (known from a cached column list, re-read
  when a page brings a new key), ``CREATE TABLE IF NOT EXISTS`` it with the key as
  its primary key, or ``ALTER TABLE … ADD COLUMN IF NOT EXISTS``, under a
  transaction-level advisory lock per table (so concurrent writers on several
  hosts cannot trip on each other in the catalog), typed from the first
  non-null value: bigint, double precision, boolean, jsonb for lists and objects,
  text for the rest;
- one ``INSERT … VALUES (…), (…), … ON CONFLICT (pk) DO UPDATE`` per 1000 rows
  (``execute_values``), columns the page does not mention keep their values. One
  statement may not update a row twice, so of rows sharing a key only the last is sent;
  names are the table's own spelling (``sink_base.fold``), with ``%`` doubled for
  ``execute_values``. A page refused for a NUL in its text is sent again with U+FFFD.

Tables go to the connection's ``search_path`` (``public`` by default), beside the
``schedsync`` schema of the state.
"""

from __future__ import annotations

import json

from schedsync.store.sink_base import (PageColumns, Sink, SinkError, column_name, fold, key_columns,
                                       since_text)

PAGE = 1000
_to_json = json.JSONEncoder(default=repr, sort_keys=True).encode
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
        # A key must be there, not null and not NaN (as on SQLite, which cannot keep a NaN).
        good = [row for row in rows
                if type(row) is dict and all((v := row.get(k)) is not None and v == v for k in keys)]
        if not good:
            return 0, len(rows)
        union = dict.fromkeys(good[0])
        for row in good:
            union.update(dict.fromkeys(row))
        columns = tuple(union)
        page = PageColumns(columns)
        if page.of is not None:  # keys renamed or sharing a column (rare): items re-keyed
            good = [row for row in map(page.merge, good) if row is not None]
            if not good:
                return 0, len(rows)
            columns, keys = page.columns, tuple(page.of[k] for k in keys)
        stored = len(good)
        good = _last_of_each_key(good, keys)  # one statement may update a row only once
        try:
            try:
                self._write(table, keys, columns, good)
            except (ValueError, self._pg.errors.UntranslatableCharacter) as exc:
                if isinstance(exc, ValueError) and "NUL" not in str(exc):
                    raise
                self.conn.rollback()  # text cannot hold a NUL: store U+FFFD instead
                self._columns.pop(table, None)
                self._write(table, keys, columns, list(map(_without_nul, good)))
        except (self._pg.Error, ValueError) as exc:
            self.conn.rollback()
            self._columns.pop(table, None)
            raise SinkError(self._reason(exc)) from None
        return stored, len(rows) - stored

    def _write(self, table: str, keys: tuple, columns: tuple, rows: list) -> None:
        wrap = self._json
        values = [tuple(wrap(v) if type(v) in (dict, list) else v for v in map(row.get, columns))
                  for row in rows]
        with self.conn.cursor() as cur:
            known = self._columns.get(table)
            if known is None or any(fold(c) not in known for c in columns):
                known = self._schema(cur, table, keys, columns, rows)
            names = [known[fold(c)] for c in columns]  # the table's spelling
            pk_names = [known[fold(c)] for c in keys]
            updates = [f"{quote(c)} = excluded.{quote(c)}" for c in names if c not in pk_names]
            action = f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING"
            head = f"INSERT INTO {quote(table)} ({', '.join(map(quote, names))}) VALUES "
            tail = f" ON CONFLICT ({', '.join(map(quote, pk_names))}) {action}"
            # execute_values reads a % in the statement as a placeholder: names may hold one.
            self._execute_values(cur, head.replace("%", "%%") + "%s" + tail.replace("%", "%%"),
                                 values, page_size=PAGE)
        self.conn.commit()

    def _schema(self, cur, table, keys, columns, rows) -> dict[str, str]:
        # Concurrent CREATE TABLE IF NOT EXISTS races in the catalog: one writer at a time
        # per table does schema work (held until this page's transaction ends).
        # Built-ins named with their schema: a role with CREATE on public could otherwise add a
        # better-matching overload (say hashtextextended(text, integer)) that we would run.
        cur.execute("SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended(%s, 0))",
                    ("schedsync-sink:" + table,))
        known = self._read_columns(cur, table)
        missing = [c for c in columns if fold(c) not in known]
        if not missing:
            return known
        types = {c: _type_of(c, rows) for c in missing}
        if not known:
            defs = [f"{quote(c)} {types[c]}" for c in missing]
            defs.append(f"PRIMARY KEY ({', '.join(map(quote, keys))})")
            cur.execute(f"CREATE TABLE IF NOT EXISTS {quote(table)} ({', '.join(defs)})")
        for c in missing:  # also after a concurrent CREATE won: its columns may differ
            cur.execute(f"ALTER TABLE {quote(table)} ADD COLUMN IF NOT EXISTS {quote(c)} {types[c]}")
        return self._read_columns(cur, table)

    def _read_columns(self, cur, table: str) -> dict[str, str]:
        cur.execute("SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = pg_catalog.to_regclass(%s)"
                    " AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (quote(table),))
        known: dict[str, str] = {}
        for (name,) in cur.fetchall():
            known.setdefault(fold(name), name)
        self._columns[table] = known
        return known

    def max_value(self, table: str, column: str) -> str | None:
        try:
            with self.conn.cursor() as cur:
                column = self._read_columns(cur, table).get(fold(column_name(column)))
                if column is None:
                    self.conn.rollback()
                    return None
                cur.execute(f"SELECT pg_catalog.max({quote(column)}) FROM {quote(table)}")
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

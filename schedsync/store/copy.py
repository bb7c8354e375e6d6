"""``schedsync state copy --to postgresql://…``: move a SQLite state into PostgreSQL.

Copies history (runs with their ids, output and owners), the run counters (and the
durations, items and retries of run_totals and run_buckets), first-seen, pauses and
the settings of ``exec``'s ad-hoc jobs, the slot ledger and its queue, budgets (tokens, last refill, a
Retry-After pause), breakers and their transitions, notifications and sent-alert
marks, in one PostgreSQL transaction:
all of it or nothing. The destination must hold no runs yet (a second copy would
duplicate history). The SQLite file is opened read-only and left as it was.
Text is copied as the PostgreSQL store writes it (a NUL becomes U+FFFD).
A run still ``running`` in the file is copied as is; no session holds its lock
on the server, so it reads as ``crashed`` there: stop cron before copying.
"""

from __future__ import annotations

import json
import os

from schedsync.core.errors import ConfigError, StateError
from schedsync.core.models import DURATION_BUCKETS
from schedsync.store.base import RUN_FIELDS, SLOT_FIELDS

TABLES = {  # table: columns, as both backends name them (SQLite's pid_start is the token)
    "runs": (*RUN_FIELDS, "pid_start"),
    "jobs": ("name", "first_seen", "paused", "paused_at", "adhoc"),
    "run_counts": ("job", "status", "runs", "requests"),
    "run_totals": ("job", "runs", "seconds", "processed", "failed", "deleted", "retries"),
    "run_buckets": ("job", "le", "runs"),
    "buckets": ("name", "tokens", "updated", "blocked_until"),
    "breakers": ("name", "state", "failures", "opened_at", "opens_until", "leases"),
    "breaker_events": ("id", "name", "at", "old", "new", "reason"),
    "notifications": ("id", "job", "event", "target", "at", "ok", "detail", "run_id"),
    "alert_marks": ("job", "event", "mark"),
    "slots": SLOT_FIELDS,  # the slot ledger and its queue (marks are re-derived by the next tick)
    "slot_counts": ("job", "state", "n"),
    "ticks": ("host", "at", "error"),
    "audit": ("id", "at", "action", "job", "who", "client", "breaker", "run_id", "item_id", "params", "reason"),
    "resume_points": ("job", "point", "saved_at", "run_id", "began_at", "done_run", "done_began"),
    "watermarks": ("job", "value", "noted_at"),
}


_ENDED = "FROM schedsync.runs WHERE status NOT IN ('running', 'skipped', 'crashed')"
# As the migration that made run_totals seeds them (0008_run_totals.sql).
SEED_TOTALS = (
    "INSERT INTO schedsync.run_totals (job, runs, seconds, processed, failed, deleted, retries)"
    " SELECT job, count(*), coalesce(sum(duration_ms), 0) / 1000.0, coalesce(sum(items_processed), 0),"
    f" coalesce(sum(items_failed), 0), 0, coalesce(sum(greatest(attempts - 1, 0)), 0) {_ENDED} GROUP BY job;"
    " INSERT INTO schedsync.run_buckets (job, le, runs) SELECT job, le, count(*) FROM ("
    " SELECT job, (SELECT min(b) FROM unnest(%s::float8[]) AS b WHERE b >= coalesce(duration_ms, 0) / 1000.0)"
    f" AS le {_ENDED}) AS r WHERE le IS NOT NULL GROUP BY job, le")


def copy_state(source: str, url: str) -> dict:
    """Copy the SQLite state at ``source`` into the PostgreSQL state at ``url``; {table: rows}."""
    import sqlite3

    from schedsync.paths import is_url
    from schedsync.store.postgres import PostgresStore, redact_url, storable

    if is_url(source):
        raise ConfigError("state copy reads a SQLite state, and --state is a URL",
                          "pass --state PATH of the SQLite file to copy")
    if not is_url(url):
        raise ConfigError(f"--to {redact_url(url)} is not a postgresql:// URL", "pass --to postgresql://…")
    if not os.path.isfile(source):
        raise StateError(f"state file {source} does not exist", "pass --state PATH of the file to copy")
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        src.execute("SELECT 1 FROM runs LIMIT 1")
    except sqlite3.Error as exc:
        raise StateError(f"state file {source} cannot be read: {exc}", "check the path") from None
    dest = PostgresStore(url)
    counts = {}
    db = dest.db
    try:
        import psycopg2
        from psycopg2.extras import execute_values

        db.autocommit = False
        with db.cursor() as cur:
            cur.execute("LOCK TABLE schedsync.runs IN EXCLUSIVE MODE")
            cur.execute("SELECT EXISTS (SELECT 1 FROM schedsync.runs)")
            if cur.fetchone()[0]:
                raise StateError(f"state database {dest.label} already holds runs",
                                 "copy into a new, empty database")
            for table, columns in TABLES.items():
                have = {row[1] for row in src.execute(f"PRAGMA table_info({table})")}
                picked = [c for c in columns if c in have]
                if not picked:  # a file from before the table existed (run_counts: seeded below)
                    counts[table] = 0
                    continue
                rows = src.execute(f"SELECT {', '.join(picked)} FROM {table}").fetchall()
                names = ["token" if c == "pid_start" else c for c in picked]
                rows = [storable(_convert(table, picked, row)) for row in rows]  # NUL: as stored
                if rows:
                    if table in ("jobs", "buckets", "breakers", "alert_marks", "run_counts", "run_totals",
                                 "run_buckets"):
                        # see_jobs may have run when the store opened: the file's rows win
                        key = {"alert_marks": "(job, event)", "run_counts": "(job, status)", "run_totals": "(job)",
                               "run_buckets": "(job, le)"}.get(table, "(name)")
                        sets = ", ".join(f"{n} = excluded.{n}" for n in names
                                         if n not in ("name", "job", "event", "status", "le"))
                        tail = f" ON CONFLICT {key} DO UPDATE SET {sets}"
                    else:
                        tail = ""
                    execute_values(cur, f"INSERT INTO schedsync.{table} ({', '.join(names)}) VALUES %s{tail}",
                                   rows, page_size=1000)
                counts[table] = len(rows)
            if not any(row[1] == "runs" for row in src.execute("PRAGMA table_info(run_counts)")):
                # a file older than the counters: count its runs, as its own migration would
                cur.execute("INSERT INTO schedsync.run_counts (job, status, runs, requests)"
                            " SELECT job, status, count(*), coalesce(sum(requests), 0) FROM schedsync.runs"
                            " WHERE status <> 'running' GROUP BY job, status"
                            " ON CONFLICT (job, status) DO UPDATE SET runs = excluded.runs,"
                            " requests = excluded.requests")
            if not counts.get("run_totals") and not any(
                    row[1] == "runs" for row in src.execute("PRAGMA table_info(run_totals)")):
                # a file older than run_totals: sum its runs, as its own migration would
                cur.execute(SEED_TOTALS, (list(DURATION_BUCKETS),))
            for table in ("runs", "breaker_events", "notifications", "slots", "audit"):
                cur.execute(f"SELECT setval(pg_get_serial_sequence('schedsync.{table}', 'id'),"
                            f" greatest((SELECT max(id) FROM schedsync.{table}), 1))")
        db.commit()
    except psycopg2.Error as exc:
        db.rollback()
        raise dest._state_error(exc) from None
    except BaseException:
        db.rollback()
        raise
    finally:
        db.autocommit = True
        dest.close()
        src.close()
    return counts


def _convert(table: str, columns: list, row: tuple) -> tuple:
    if table == "breakers" or table == "jobs" or table == "notifications":
        values = list(row)
        if table == "breakers":
            i = columns.index("leases")
            values[i] = json.loads(values[i] or "[]")
        if table == "jobs":
            i = columns.index("paused")
            values[i] = bool(values[i])
        if table == "notifications":
            i = columns.index("ok")
            values[i] = bool(values[i])
        return tuple(values)
    return row

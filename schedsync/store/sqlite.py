"""The SQLite backend of the store: WAL, a busy timeout, and every
read-modify-write inside ``BEGIN IMMEDIATE`` so concurrent cron processes
serialise instead of failing with "database is locked".
"""

from __future__ import annotations

import os
import sqlite3
import time

from schedsync.core.errors import StateError
from schedsync.store.lock import FileLock
from schedsync.core.models import FAILURES, PARTIAL, SKIPPED, SUCCESS, Breaker, Bucket, JobState, Notification, Run

BUSY_TIMEOUT = 60.0  # seconds; cron fires many lines in the same second

RUN_FIELDS = ("id", "job", "status", "trigger", "started_at", "host", "pid", "reason",
              "finished_at", "duration_ms", "attempts", "requests", "items_processed",
              "items_failed", "exit_code", "error", "retry_at", "output")
RUN_COLUMNS = ", ".join(RUN_FIELDS)


def _v1(db: sqlite3.Connection) -> None:
    _script(db, """
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY, job TEXT NOT NULL, status TEXT NOT NULL, reason TEXT,
            trigger TEXT NOT NULL, started_at REAL NOT NULL, finished_at REAL,
            duration_ms INTEGER, attempts INTEGER NOT NULL DEFAULT 0,
            requests INTEGER NOT NULL DEFAULT 0, items_processed INTEGER NOT NULL DEFAULT 0,
            items_failed INTEGER NOT NULL DEFAULT 0, exit_code INTEGER, error TEXT,
            retry_at REAL, host TEXT NOT NULL, pid INTEGER NOT NULL, pid_start INTEGER,
            output TEXT);
        CREATE INDEX runs_by_job ON runs (job, id);
        CREATE INDEX runs_by_job_status ON runs (job, status, started_at);
        CREATE INDEX runs_running ON runs (job) WHERE status = 'running';
        CREATE TABLE jobs (name TEXT PRIMARY KEY, first_seen REAL NOT NULL,
                           paused INTEGER NOT NULL DEFAULT 0, paused_at REAL);
        CREATE TABLE buckets (name TEXT PRIMARY KEY, tokens REAL NOT NULL, updated REAL NOT NULL);
        CREATE TABLE breakers (name TEXT PRIMARY KEY, state TEXT NOT NULL,
                               failures INTEGER NOT NULL, opened_at REAL, opens_until REAL,
                               leases TEXT NOT NULL DEFAULT '[]');
        CREATE TABLE breaker_events (id INTEGER PRIMARY KEY, name TEXT NOT NULL, at REAL NOT NULL,
                                     old TEXT NOT NULL, new TEXT NOT NULL, reason TEXT);
        CREATE INDEX breaker_events_by_name ON breaker_events (name, id);
    """)


def _script(db: sqlite3.Connection, sql: str) -> None:
    # Not executescript(): it COMMITs first, which would end the migration's transaction.
    for statement in sql.split(";"):
        if statement.strip():
            db.execute(statement)


def _v2(db: sqlite3.Connection) -> None:
    # Webhook and ping attempts (bounded per job), and which alerts were sent for
    # what, so an alert noticed by many processes (late) goes out once.
    _script(db, """
        CREATE TABLE notifications (id INTEGER PRIMARY KEY, job TEXT NOT NULL, event TEXT NOT NULL,
                                    target TEXT NOT NULL, at REAL NOT NULL, ok INTEGER NOT NULL,
                                    detail TEXT, run_id INTEGER);
        CREATE INDEX notifications_by_job ON notifications (job, id);
        CREATE TABLE alert_marks (job TEXT NOT NULL, event TEXT NOT NULL, mark REAL NOT NULL,
                                  PRIMARY KEY (job, event))
    """)


def _v3(db: sqlite3.Connection) -> None:
    # Counters that only grow (Prometheus `rate()` needs them to survive retention
    # pruning), seeded from the runs already recorded; and the settings of jobs that
    # `schedsync exec` ran without a registry entry, so status can show them.
    _script(db, """
        CREATE TABLE run_counts (job TEXT NOT NULL, status TEXT NOT NULL, runs INTEGER NOT NULL,
                                 requests INTEGER NOT NULL, PRIMARY KEY (job, status));
        INSERT INTO run_counts (job, status, runs, requests)
            SELECT job, status, COUNT(*), COALESCE(SUM(requests), 0) FROM runs
            WHERE status != 'running' GROUP BY job, status;
        ALTER TABLE jobs ADD COLUMN adhoc TEXT
    """)


MIGRATIONS = [_v1, _v2, _v3]  # append, never edit: user_version counts how many were applied


def state_error(path: str, exc: BaseException) -> StateError:
    text = str(exc)
    if "readonly" in text or "read-only" in text or isinstance(exc, PermissionError):
        fix = "make it (and its folder) writable by this user, or pass --state PATH"
        text = "is read-only"
    elif "not a database" in text or "malformed" in text:
        fix = "point --state at a schedsync state file, or move this file aside"
        text = "is not a schedsync state database"
    elif os.path.isdir(path):
        fix = "pass the path of a file, e.g. --state /srv/sync/schedsync.db"
        text = "is a folder"
    elif "full" in text or getattr(exc, "errno", None) == 28 or ("disk I/O" in text and _disk_full(path)):
        fix = "free space on that disk"
        text = "cannot be written: the disk is full"
    elif "unable to open" in text:
        fix = "check that its folder exists and is writable, or pass --state PATH"
        text = "cannot be opened"
    elif "locked" in text:
        fix = "another process held it too long; try again"
        text = "is locked"
    else:
        fix = "check the file, or pass --state PATH"
    return StateError(f"state file {path} {text}", fix)


class _Transaction:
    # A class, not @contextmanager: every budget acquire is one transaction, and the
    # generator machinery was a measurable share of it.
    __slots__ = ("store", "depth")

    def __init__(self, store: "SQLiteStore"):
        self.store, self.depth = store, 0

    def __enter__(self) -> None:
        if not self.depth:
            try:
                self.store.db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise state_error(self.store.path, exc) from None
        self.depth += 1

    def __exit__(self, kind, exc, tb) -> None:
        self.depth -= 1
        if self.depth:
            return
        db = self.store.db
        if kind is not None:
            if db.in_transaction:
                db.execute("ROLLBACK")
            return
        try:
            db.execute("COMMIT")
        except sqlite3.Error as error:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise state_error(self.store.path, error) from None


def _disk_full(path: str) -> bool:
    # In WAL mode a full disk surfaces as "disk I/O error" (the -shm cannot grow).
    try:
        return os.statvfs(os.path.dirname(os.path.abspath(path))).f_bavail == 0
    except OSError:
        return False


class SQLiteStore:
    def __init__(self, path: str):
        self.path = path
        self._tx = _Transaction(self)
        try:
            folder = os.path.dirname(os.path.abspath(path))
            os.makedirs(folder, mode=0o700, exist_ok=True)
            if not os.path.exists(path):
                # Create it private before SQLite does (its -wal and -shm copy these modes).
                os.close(os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600))
            self.db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None,
                                      check_same_thread=False)
            self.db.execute("PRAGMA synchronous=NORMAL")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version != len(MIGRATIONS):
                self._migrate(version)
        except (sqlite3.Error, OSError) as exc:
            raise state_error(path, exc) from None

    def _migrate(self, version: int) -> None:
        if version > len(MIGRATIONS):
            raise StateError(f"state file {self.path} was written by a newer schedsync",
                             "upgrade schedsync, or pass --state PATH")
        self._wal()
        with self.transaction():
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            for migration in MIGRATIONS[version:]:
                migration(self.db)
            self.db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")

    def _wal(self) -> None:
        # Switching to WAL takes an exclusive lock that the busy handler does not
        # always wait for, so many first-time processes retry here.
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def transaction(self) -> "_Transaction":
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an exception); nested calls join the outer one."""
        return self._tx

    def _run_sql(self, sql: str, params=()):
        try:
            return self.db.execute(sql, params)
        except sqlite3.Error as exc:
            raise state_error(self.path, exc) from None

    # --- runs -------------------------------------------------------------------------

    def start_run(self, run: Run) -> int:
        cur = self._run_sql(
            "INSERT INTO runs (job, status, reason, trigger, started_at, finished_at,"
            " duration_ms, retry_at, host, pid, pid_start, error, exit_code)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (run.job, run.status, run.reason, run.trigger, run.started_at, run.finished_at,
             run.duration_ms, run.retry_at, run.host, run.pid, run.pid_start,
             run.error, run.exit_code))
        run.id = cur.lastrowid
        if run.status == SKIPPED:  # a skip is recorded finished, in one step
            self._count(run.job, run.status, run.requests)
        return run.id

    def _count(self, job: str, status: str, requests: int) -> None:
        self._run_sql("INSERT INTO run_counts (job, status, runs, requests) VALUES (?, ?, 1, ?)"
                      " ON CONFLICT (job, status) DO UPDATE SET runs = runs + 1,"
                      " requests = requests + excluded.requests", (job, status, requests or 0))

    def finish_run(self, run: Run) -> None:
        self._run_sql(
            "UPDATE runs SET status=?, reason=?, finished_at=?, duration_ms=?, attempts=?,"
            " requests=?, items_processed=?, items_failed=?, exit_code=?, error=?, retry_at=?,"
            " output=? WHERE id=?",
            (run.status, run.reason, run.finished_at, run.duration_ms, run.attempts,
             run.requests, run.items_processed, run.items_failed, run.exit_code, run.error,
             run.retry_at, run.output, run.id))
        self._count(run.job, run.status, run.requests)

    def running_runs(self, job: str | None = None) -> list[Run]:
        where = "status = 'running'" + (" AND job = ?" if job else "")
        rows = self._run_sql(f"SELECT {RUN_COLUMNS}, pid_start FROM runs WHERE {where}",
                             (job,) if job else ()).fetchall()
        return [Run(*row) for row in rows]

    def mark_crashed(self, run_id: int, now: float, error: str) -> bool:
        cur = self._run_sql(
            "UPDATE runs SET status='crashed', finished_at=?,"
            " duration_ms=CAST((? - started_at) * 1000 AS INTEGER), error=?"
            " WHERE id=? AND status='running'", (now, now, error, run_id))
        if cur.rowcount != 1:
            return False
        job = self._run_sql("SELECT job FROM runs WHERE id = ?", (run_id,)).fetchone()[0]
        self._count(job, "crashed", 0)
        return True

    def counters(self) -> dict[str, dict[str, tuple[int, int]]]:
        rows = self._run_sql("SELECT job, status, runs, requests FROM run_counts").fetchall()
        out: dict[str, dict[str, tuple[int, int]]] = {}
        for job, status, runs, requests in rows:
            out.setdefault(job, {})[status] = (runs, requests)
        return out

    def runs(self, job: str, limit: int = 20, failed_only: bool = False) -> list[Run]:
        where, args = "job = ?", (job,)
        if failed_only:
            where += f" AND status IN ({','.join('?' * len(FAILURES))})"
            args += FAILURES
        rows = self._run_sql(f"SELECT {RUN_COLUMNS} FROM runs WHERE {where} ORDER BY id DESC LIMIT ?",
                             (*args, limit)).fetchall()
        return [Run(*row) for row in rows]

    def job_states(self, names: list[str], recent: int = 10) -> dict[str, JobState]:
        seen = dict(self._run_sql("SELECT name, first_seen FROM jobs").fetchall())
        paused = {n for (n,) in self._run_sql("SELECT name FROM jobs WHERE paused = 1")}
        out = {}
        for name in names:
            runs = self.runs(name, recent)
            success = self._last_success(name)
            out[name] = JobState(name, seen.get(name), name in paused, runs, success,
                                 runs[0].started_at if runs else None)
        return out

    def _last_success(self, job: str, before: float | None = None) -> float | None:
        # runs_by_job_status answers this with one seek per status, however many runs there are.
        sql = "SELECT MAX(started_at) FROM runs WHERE job = ? AND status IN (?, ?)"
        args: tuple = (job, SUCCESS, PARTIAL)
        if before is not None:
            sql, args = sql + " AND started_at < ?", args + (before,)
        return self._run_sql(sql, args).fetchone()[0]

    def failure_streak(self, job: str, before: float | None = None) -> int:
        since = self._last_success(job, before)
        marks = ",".join("?" * len(FAILURES))
        sql = f"SELECT COUNT(*) FROM runs WHERE job = ? AND status IN ({marks}) AND started_at > ?"
        args = (job, *FAILURES, since if since is not None else float("-inf"))
        if before is not None:
            sql, args = sql + " AND started_at < ?", args + (before,)
        return self._run_sql(sql, args).fetchone()[0]

    def prune(self, job: str, now: float, keep_success: float | None,
              keep_failed: float | None, limit: int | None = None) -> int:
        removed = 0
        for statuses, keep in (((SUCCESS, PARTIAL, SKIPPED), keep_success),
                               (FAILURES, keep_failed)):
            if keep is None:
                continue
            marks = ",".join("?" * len(statuses))
            pick = f"SELECT id FROM runs WHERE job = ? AND status IN ({marks}) AND started_at < ?"
            args = (job, *statuses, now - keep)
            newest = self._last_success(job) if SUCCESS in statuses else None
            if newest is not None:
                # Keep the newest success however old (and only it: skips after it go):
                # "last success 20d ago", STALLED and failure streaks need it.
                pick += " AND NOT (status IN (?, ?) AND started_at = ?)"
                args += (SUCCESS, PARTIAL, newest)
            pick += f" LIMIT {int(limit) if limit else -1}"
            cur = self._run_sql(f"DELETE FROM runs WHERE id IN ({pick})", args)
            removed += cur.rowcount
        return removed

    def prune_all(self, policies: dict, now: float, batch_seconds: float = 2.0, chunk: int = 20_000) -> int:
        # Runs of all jobs interleave in the file, so pruning one job touches pages
        # everywhere: one transaction per job rewrote most of the file 200 times
        # (1M runs: 47s). Few transactions of about ``batch_seconds`` each (and a
        # bigger page cache meanwhile) cost 5-6s, yet never hold the write lock long
        # enough for a cron run waiting on it to give up.
        pending = list(policies.items())
        removed = 0
        previous = self._run_sql("PRAGMA cache_size").fetchone()[0]
        self._run_sql("PRAGMA cache_size = -65536")
        try:
            while pending:
                deadline = time.monotonic() + batch_seconds
                with self.transaction():
                    while pending and time.monotonic() < deadline:
                        job, (keep_success, keep_failed) = pending[0]
                        count = self.prune(job, now, keep_success, keep_failed, limit=chunk)
                        removed += count
                        if not count:
                            pending.pop(0)
        finally:
            self._run_sql(f"PRAGMA cache_size = {int(previous)}")
        if removed:
            self._run_sql("PRAGMA wal_checkpoint(TRUNCATE)")  # best effort: gives the WAL's space back
        return removed

    # --- jobs -------------------------------------------------------------------------

    def see_job(self, name: str, now: float) -> None:
        self._run_sql("INSERT OR IGNORE INTO jobs (name, first_seen) VALUES (?, ?)", (name, now))

    def set_adhoc(self, name: str, settings: str | None, now: float) -> None:
        self._run_sql("INSERT INTO jobs (name, first_seen, adhoc) VALUES (?, ?, ?)"
                      " ON CONFLICT (name) DO UPDATE SET adhoc = excluded.adhoc", (name, now, settings))

    def adhoc_jobs(self) -> dict[str, str]:
        return dict(self._run_sql("SELECT name, adhoc FROM jobs WHERE adhoc IS NOT NULL").fetchall())

    def set_paused(self, name: str, paused: bool, now: float) -> None:
        with self.transaction():
            self.see_job(name, now)
            self._run_sql("UPDATE jobs SET paused = ?, paused_at = ? WHERE name = ?",
                          (int(paused), now if paused else None, name))

    def is_paused(self, name: str) -> bool:
        row = self._run_sql("SELECT paused FROM jobs WHERE name = ?", (name,)).fetchone()
        return bool(row and row[0])

    # --- budgets and breakers ---------------------------------------------------------

    def load_bucket(self, name: str) -> Bucket | None:
        row = self._run_sql("SELECT tokens, updated FROM buckets WHERE name = ?", (name,)).fetchone()
        return Bucket(name, *row) if row else None

    def save_bucket(self, bucket: Bucket) -> None:
        # An upsert, not INSERT OR REPLACE: replace deletes and re-inserts, rewriting the
        # primary-key index page too, and every acquire pays for that page in the WAL.
        self._run_sql("INSERT INTO buckets (name, tokens, updated) VALUES (?, ?, ?)"
                      " ON CONFLICT (name) DO UPDATE SET tokens = excluded.tokens,"
                      " updated = excluded.updated",
                      (bucket.name, bucket.tokens, bucket.updated))

    def load_breaker(self, name: str) -> Breaker:
        row = self._run_sql("SELECT state, failures, opened_at, opens_until, leases FROM breakers"
                            " WHERE name = ?", (name,)).fetchone()
        if not row:
            return Breaker(name)
        return Breaker(name, row[0], row[1], row[2], row[3], _leases(row[4]))

    def save_breaker(self, breaker: Breaker) -> None:
        self._run_sql(
            "INSERT OR REPLACE INTO breakers (name, state, failures, opened_at, opens_until, leases)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (breaker.name, breaker.state, breaker.failures, breaker.opened_at,
             breaker.opens_until, _leases_text(breaker.leases)))

    def record_transition(self, name: str, at: float, old: str, new: str, reason: str) -> None:
        self._run_sql("INSERT INTO breaker_events (name, at, old, new, reason) VALUES (?,?,?,?,?)",
                      (name, at, old, new, reason))

    def transitions(self, name: str, limit: int = 10) -> list[tuple[float, str, str, str]]:
        return self._run_sql("SELECT at, old, new, reason FROM breaker_events WHERE name = ?"
                             " ORDER BY id DESC LIMIT ?", (name, limit)).fetchall()

    # --- alerts -----------------------------------------------------------------------

    def record_notifications(self, notes: list[Notification], keep: int = 50) -> None:
        with self.transaction():
            for note in notes:
                self._run_sql("INSERT INTO notifications (job, event, target, at, ok, detail, run_id)"
                              " VALUES (?,?,?,?,?,?,?)",
                              (note.job, note.event, note.target, note.at, int(note.ok),
                               note.detail, note.run_id))
            for job in {note.job for note in notes}:
                self._run_sql("DELETE FROM notifications WHERE job = ? AND id <= (SELECT id FROM"
                              " notifications WHERE job = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                              (job, job, keep))

    def notifications(self, job: str, limit: int = 10) -> list[Notification]:
        rows = self._run_sql("SELECT job, event, target, at, ok, detail, run_id FROM notifications"
                             " WHERE job = ? ORDER BY id DESC LIMIT ?", (job, limit)).fetchall()
        return [Notification(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6]) for r in rows]

    def claim_alert(self, job: str, event: str, mark: float) -> bool:
        with self.transaction():
            row = self._run_sql("SELECT mark FROM alert_marks WHERE job = ? AND event = ?",
                                (job, event)).fetchone()
            if row and row[0] == mark:
                return False
            self._run_sql("INSERT OR REPLACE INTO alert_marks (job, event, mark) VALUES (?, ?, ?)",
                          (job, event, mark))
            return True

    # --- overlap ----------------------------------------------------------------------

    def job_lock(self, name: str) -> FileLock:
        folder = f"{self.path}.locks"
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise state_error(folder, exc) from None
        return FileLock(os.path.join(folder, f"{name}.lock"))

    def close(self) -> None:
        self.db.close()


def _leases(text: str) -> list[float]:
    if text == "[]":
        return []  # the usual case: json only when a half-open trial is in flight
    import json

    return json.loads(text)


def _leases_text(leases: list[float]) -> str:
    if not leases:
        return "[]"
    import json

    return json.dumps(leases)

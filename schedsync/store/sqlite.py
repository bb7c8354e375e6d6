"""The SQLite backend of the store: WAL, a busy timeout, and every operation that
reads and then writes inside its own ``BEGIN IMMEDIATE``, so concurrent cron
processes serialise instead of failing with "database is locked". The pure
arithmetic (``core.budgets``, ``core.breaker``) runs inside that transaction.

Its other ports: the overlap lock is ``flock`` on a file in ``STATE.locks/``, and
liveness is pid + kernel start time on this host (``store.liveness``).

``write=False`` opens it for a read command: a missing (or empty) file is "no state
yet" and is not created; a state the user can read but not write (another user's file,
a read-only mount) opens read-only (``writable`` is then False: reads work, writes raise
``StateError``); and nothing waits on another process's write transaction longer than
``READ_WAIT``: reads under WAL never do, and an optional write (first-seen, a crashed
run) that would raises ``StateBusy`` and turns the store read-only, so a later read makes
it. A state not in WAL mode (rollback journal: readers wait for a committing writer) is
switched to WAL whenever it is opened and no other process is using it.
"""

from __future__ import annotations

import math
import os
import sqlite3
import sys
import time
from errno import ENOSPC

from schedsync.core import breaker as breakers
from schedsync.core.budgets import block_until, refill, take
from schedsync.core.errors import StateBusy, StateError
from schedsync.core.models import (
    ALREADY_RAN,
    BREAKER_OPEN,
    CRASHED,
    DURATION_BUCKETS,
    FAILURES,
    PARTIAL,
    PAUSED,
    RATE_LIMITED,
    RUNNING,
    SKIPPED,
    SUCCESS,
    AuditEntry,
    Breaker,
    Bucket,
    JobState,
    Notification,
    Run,
    SlotItem,
    Tick,
)
from schedsync.store.base import (
    AUDIT_COLUMNS,
    AUDIT_KEEP,
    CLAIM_STALE,
    PRUNE_BATCH,
    RUN_COLUMNS,
    SLOT_COLUMNS,
    Admitted,
    Locks,
    ResumePoint,
    Store,
    already_ran_error,
    item_taken_error,
    no_state,
    totals_of,
)
from schedsync.store.liveness import ProcLiveness
from schedsync.store.lock import FileLock, lock_folder

BUSY_TIMEOUT = 60.0  # seconds; cron fires many lines in the same second
READ_WAIT = 1.0  # seconds a read command waits on a writer before it skips (or fails) a step


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
    # A 429's Retry-After pauses a bucket and keeps its tokens (it used to empty it).
    db.execute("ALTER TABLE buckets ADD COLUMN blocked_until REAL")


def _v4(db: sqlite3.Connection) -> None:
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


def _v5(db: sqlite3.Connection) -> None:
    # The slot ledger (issue 17): one row per scheduled slot or queued work item, the
    # runs' slot and retry chain, the ticks noted, each job's mark (slots accounted up
    # to ``until``; nothing to look at before ``next_at``), and missed slots counted.
    _script(db, """
        CREATE TABLE slots (id INTEGER PRIMARY KEY, job TEXT NOT NULL, slot REAL, kind TEXT NOT NULL,
                            state TEXT NOT NULL, due_at REAL NOT NULL, run_id INTEGER, reason TEXT,
                            retry_of INTEGER, retry_number INTEGER NOT NULL DEFAULT 0,
                            claimed_at REAL, claimed_by TEXT);
        CREATE UNIQUE INDEX slots_once ON slots (job, ifnull(slot, -1), kind, ifnull(retry_of, 0),
                                                 retry_number);
        CREATE INDEX slots_by_job ON slots (job, slot);
        CREATE INDEX slots_open ON slots (due_at) WHERE state IN ('queued', 'claimed');
        CREATE TABLE slot_marks (job TEXT PRIMARY KEY, key TEXT NOT NULL, until REAL, next_at REAL);
        CREATE TABLE slot_counts (job TEXT NOT NULL, state TEXT NOT NULL, n INTEGER NOT NULL,
                                  PRIMARY KEY (job, state));
        CREATE TABLE ticks (host TEXT PRIMARY KEY, at REAL NOT NULL, error TEXT);
        ALTER TABLE runs ADD COLUMN slot REAL;
        ALTER TABLE runs ADD COLUMN retry_of INTEGER;
        ALTER TABLE runs ADD COLUMN retry_number INTEGER NOT NULL DEFAULT 0
    """)


def _v6(db: sqlite3.Connection) -> None:
    # What a dashboard needs beside run_counts, only growing too: per job, the finished
    # (not skipped, not crashed) runs' durations (sum, count, and a count per histogram
    # bucket, DURATION_BUCKETS), items processed/failed/deleted, and retries inside runs
    # (attempts - 1); seeded from the runs already recorded.
    _script(db, f"""
        CREATE TABLE run_totals (job TEXT PRIMARY KEY, runs INTEGER NOT NULL, seconds REAL NOT NULL,
                                 processed INTEGER NOT NULL, failed INTEGER NOT NULL,
                                 deleted INTEGER NOT NULL, retries INTEGER NOT NULL);
        CREATE TABLE run_buckets (job TEXT NOT NULL, le REAL NOT NULL, runs INTEGER NOT NULL,
                                  PRIMARY KEY (job, le));
        INSERT INTO run_totals (job, runs, seconds, processed, failed, deleted, retries)
            SELECT job, COUNT(*), COALESCE(SUM(duration_ms), 0) / 1000.0,
                   COALESCE(SUM(items_processed), 0), COALESCE(SUM(items_failed), 0), 0,
                   COALESCE(SUM(MAX(attempts - 1, 0)), 0)
            FROM runs WHERE status NOT IN ('running', 'skipped', 'crashed') GROUP BY job;
        INSERT INTO run_buckets (job, le, runs)
            SELECT job, le, COUNT(*) FROM (SELECT job, (SELECT MIN(value) FROM json_each('{_BOUNDS}')
                                                        WHERE value >= COALESCE(duration_ms, 0) / 1000.0) AS le
                                           FROM runs WHERE status NOT IN ('running', 'skipped', 'crashed'))
            WHERE le IS NOT NULL GROUP BY job, le
    """)


def _v7(db: sqlite3.Connection) -> None:
    # Triggers (issue 18): an ``api`` item (``schedsync trigger``) carries its params (JSON
    # text), and a run the params it ran with. Any number of api items of a job may exist
    # over time (the once-per-slot index leaves them out), but one waiting (queued or
    # claimed) item per job and params: a second identical trigger finds the first.
    _script(db, """
        ALTER TABLE slots ADD COLUMN params TEXT;
        ALTER TABLE runs ADD COLUMN params TEXT;
        DROP INDEX slots_once;
        CREATE UNIQUE INDEX slots_once ON slots (job, ifnull(slot, -1), kind, ifnull(retry_of, 0),
                                                 retry_number) WHERE kind <> 'api';
        CREATE UNIQUE INDEX slots_api_waiting ON slots (job, ifnull(params, ''))
            WHERE kind = 'api' AND state IN ('queued', 'claimed')
    """)


def _v8(db: sqlite3.Connection) -> None:
    # The audit log (issue 18): every write through serve's API or dashboard, bounded per job.
    _script(db, """
        CREATE TABLE audit (id INTEGER PRIMARY KEY, at REAL NOT NULL, action TEXT NOT NULL, job TEXT,
                            who TEXT NOT NULL, client TEXT NOT NULL, breaker TEXT, run_id INTEGER,
                            item_id INTEGER, params TEXT, reason TEXT);
        CREATE INDEX audit_by_job ON audit (job, id);
        CREATE INDEX audit_by_breaker ON audit (breaker, id) WHERE breaker IS NOT NULL
    """)


def _v9(db: sqlite3.Connection) -> None:
    # Chains (``after:``): an ``after`` item and the run it starts name the upstream run
    # whose end queued them (``parent``); one item per downstream job and upstream run,
    # so the ledger's identity takes ``parent`` in.
    _script(db, """
        ALTER TABLE slots ADD COLUMN parent INTEGER;
        ALTER TABLE runs ADD COLUMN parent INTEGER;
        DROP INDEX slots_once;
        CREATE UNIQUE INDEX slots_once ON slots (job, ifnull(slot, -1), kind, ifnull(retry_of, 0),
                                                 retry_number, ifnull(parent, 0)) WHERE kind <> 'api'
    """)


def _v13(db: sqlite3.Connection) -> None:
    # Issue 19: where an http job's interrupted sync resumes (``point``: the next page,
    # JSON without secrets; ``began_at``: the start of the run that fetched its page 1;
    # ``done_run``: the run that completed a resumed sync, ``point`` then NULL), and each
    # job's freshness watermark (the newest value of its ``fresh.field`` stored, POSIX s).
    _script(db, """
        CREATE TABLE resume_points (job TEXT PRIMARY KEY, point TEXT, saved_at REAL NOT NULL,
                                    run_id INTEGER, began_at REAL, done_run INTEGER,
                                    done_began REAL);
        CREATE TABLE watermarks (job TEXT PRIMARY KEY, value REAL NOT NULL, noted_at REAL NOT NULL)
    """)


_BOUNDS = "[" + ",".join(repr(b) for b in DURATION_BUCKETS) + "]"


def _v10(db: sqlite3.Connection) -> None:
    # overlap: replace: a newer run's request that a running run stop (who asked, as text).
    db.execute("ALTER TABLE runs ADD COLUMN stop TEXT")


def _v11(db: sqlite3.Connection) -> None:
    # What an http job's load did per run (into.mode, into.delete): rows inserted, updated, deleted.
    _script(db, """
        ALTER TABLE runs ADD COLUMN items_inserted INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE runs ADD COLUMN items_updated INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE runs ADD COLUMN items_deleted INTEGER NOT NULL DEFAULT 0
    """)


MIGRATIONS = [_v1, _v2, _v3, _v4, _v5, _v6, _v7, _v8, _v9, _v10, _v11, _v13]  # append, never edit


# SQLite's primary result codes (the low byte of an extended code: SQLITE_IOERR_* is SQLITE_IOERR).
PERM, BUSY, LOCKED, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, NOTADB = 3, 5, 6, 8, 10, 11, 13, 14, 26
_TEXTS = (("locked", BUSY), ("readonly", READONLY), ("not a database", NOTADB), ("malformed", CORRUPT),
          ("full", FULL), ("disk I/O", IOERR), ("unable to open", CANTOPEN), ("permission denied", PERM))


def error_code(exc: BaseException) -> int | None:
    """The primary SQLite result code of a ``sqlite3`` error (``BUSY``, ``READONLY`` …), else None."""
    if not isinstance(exc, sqlite3.Error):
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF
    if sys.version_info >= (3, 11):
        return None  # an error of the sqlite3 module itself, not of SQLite
    return code_of_text(str(exc))


def code_of_text(text: str) -> int | None:
    # Python 3.10 only: its sqlite3 errors carry no code, just SQLite's own text for
    # it (sqlite3_errstr, English, never translated). Nothing else reads the text.
    return next((code for words, code in _TEXTS if words in text), None)


def state_error(path: str, exc: BaseException) -> StateError:
    code, text = error_code(exc), str(exc)
    folder = os.path.dirname(os.path.abspath(path))
    denied = code in (PERM, READONLY) or isinstance(exc, PermissionError)
    if (denied or code == CANTOPEN) and not os.path.lexists(path) and not os.access(folder, os.W_OK):
        why = "is not writable" if os.path.isdir(folder) else "cannot be created"
        return StateError(f"cannot create state file {path}: its folder {folder} {why}",
                          "make that folder writable by this user, or pass --state PATH")
    if denied:
        fix = "make it (and its folder) writable by this user, or pass --state PATH"
        text = "is read-only"
    elif code in (NOTADB, CORRUPT):
        fix = "point --state at a schedsync state file, or move this file aside"
        text = "is not a schedsync state database"
    elif os.path.isdir(path):
        fix = "pass the path of a file, e.g. --state /srv/sync/schedsync.db"
        text = "is a folder"
    elif code == FULL or getattr(exc, "errno", None) == ENOSPC or (code == IOERR and _disk_full(path)):
        fix = "free space on that disk"
        text = "cannot be written: the disk is full"
    elif code == CANTOPEN:
        fix = "check that its folder exists and is writable, or pass --state PATH"
        text = "cannot be opened"
    elif code in (BUSY, LOCKED):
        fix = "another process held it too long; try again"
        text = "is locked"
    else:
        fix = "check the file, or pass --state PATH"
    return StateError(f"state file {path} {text}", fix)


class _Transaction:
    # A class, not @contextmanager: every budget acquire is one transaction, and the
    # generator machinery was a measurable share of it.
    __slots__ = ("store", "depth")

    def __init__(self, store: SQLiteStore):
        self.store, self.depth = store, 0

    def __enter__(self) -> None:
        if not self.depth:
            store = self.store
            try:
                if not store._busy:
                    store.db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                if store._write or error_code(exc) not in (BUSY, LOCKED):
                    raise state_error(store._path, exc) from None
                store._busy = True
            if store._busy:
                # A read command's optional write: skipped, and so is every later one.
                store.writable = False
                raise StateBusy(f"state file {store._path} is busy", "a later read records it")
        self.depth += 1

    def __exit__(self, kind, exc, tb) -> None:
        self.depth -= 1
        if self.depth:
            return
        db = self.store.db
        if kind is not None:
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the error on its way out says more; SQLite ends the transaction itself
            return
        try:
            db.execute("COMMIT")
        except sqlite3.Error as error:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise state_error(self.store._path, error) from None


def _disk_full(path: str) -> bool:
    # In WAL mode a full disk surfaces as "disk I/O error" (the -shm cannot grow).
    try:
        return os.statvfs(os.path.dirname(os.path.abspath(path))).f_bavail == 0
    except OSError:
        return False


SAVE_BUCKET = ("INSERT INTO buckets (name, tokens, updated, blocked_until) VALUES (?, ?, ?, ?)"
               " ON CONFLICT (name) DO UPDATE SET tokens = excluded.tokens,"
               " updated = excluded.updated, blocked_until = excluded.blocked_until")
SLOTS_ONCE = ("ON CONFLICT (job, ifnull(slot, -1), kind, ifnull(retry_of, 0), retry_number, ifnull(parent, 0))"
              " WHERE kind <> 'api' DO UPDATE")
COUNT_REQUESTS = "UPDATE runs SET requests = ? WHERE id = ? AND status = 'running'"


def _table_check(db: sqlite3.Connection) -> tuple[int, str | None]:
    # One statement, so the version and the tables are of one snapshot (another
    # process may be committing the migration meanwhile).
    return db.execute("SELECT (SELECT user_version FROM pragma_user_version),"
                      " (SELECT group_concat(name, ', ') FROM (SELECT name FROM sqlite_master"
                      "  WHERE type = 'table' ORDER BY name LIMIT 4))").fetchone()


def _uri(path: str, mode: str) -> str:
    from urllib.parse import quote  # read-only opening only: not on the run path

    return f"file:{quote(os.path.abspath(path))}?{mode}"


def _writable(path: str) -> bool:
    if not os.access(path, os.W_OK):
        return False
    folder = os.path.dirname(os.path.abspath(path))
    # WAL needs -wal and -shm beside the file: the folder, or both already there and writable.
    return os.access(folder, os.W_OK) or all(
        os.access(path + tail, os.W_OK) for tail in ("-wal", "-shm"))


class FileLocks(Locks):
    """Overlap locks: ``flock`` on one file per job in ``folder`` (``STATE.locks``)."""

    def __init__(self, folder: str):
        self.folder = folder

    def lock(self, job: str) -> FileLock:
        try:
            lock_folder(self.folder)  # private, or refused if another user could tamper with it
        except OSError as exc:
            raise state_error(self.folder, exc) from None
        return FileLock(os.path.join(self.folder, f"{job}.lock"))

    def place(self, limit: str, index: int) -> FileLock:
        try:
            lock_folder(self.folder)
        except OSError as exc:
            raise state_error(self.folder, exc) from None
        # "limit-" + a name of [a-z0-9_.-]: never a job's NAME.lock
        return FileLock(os.path.join(self.folder, f"limit-{limit}.{index}"))


class SQLiteStore(Store):
    """The state in one SQLite file. ``write=False``: a state this user cannot write
    opens read-only instead of failing (``status``, ``history``, ``metrics``)."""

    writable = True

    def __init__(self, path: str, write: bool = True, create: bool | None = None):
        self._path = self.label = path
        self._write, self._busy = write, False
        self._tx = _Transaction(self)
        self.locks = FileLocks(f"{path}.locks")
        self.liveness = ProcLiveness()
        create = write if create is None else create
        try:
            if os.path.islink(path) and (not os.path.exists(path) or os.path.getsize(path) == 0):
                # A link to nothing (or to an empty file) is not adopted as a new state.
                raise StateError(f"state file {path} is a symbolic link to "
                                 f"{'an empty' if os.path.exists(path) else 'a missing'} file",
                                 "point --state at the real file, or at a new path schedsync may create")
            if not create and (not os.path.exists(path) or os.path.isfile(path) and os.path.getsize(path) == 0):
                raise no_state(path)  # a typo or an unmounted volume must not read as "all OK"
            if not write and os.path.isfile(path) and not _writable(path):
                self._open_read_only(path)
                return
            folder = os.path.dirname(os.path.abspath(path))
            os.makedirs(folder, mode=0o700, exist_ok=True)
            if not os.path.exists(path):
                # Create it private before SQLite does (its -wal and -shm copy these modes).
                os.close(os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600))
            self.db = sqlite3.connect(path, timeout=BUSY_TIMEOUT if write else READ_WAIT,
                                      isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA synchronous=NORMAL")
            version, journal = self.db.execute(
                "SELECT user_version, journal_mode FROM pragma_user_version, pragma_journal_mode").fetchone()
            if version != len(MIGRATIONS):
                if version == 0 and not create:
                    self._refuse(*_table_check(self.db))
                    raise no_state(path)
                self.created = version == 0
                self._migrate(version)
            elif journal != "wal":
                self._wal()
        except (sqlite3.Error, OSError) as exc:
            raise state_error(path, exc) from None

    def _open_read_only(self, path: str) -> None:
        # mode=ro reads a WAL state when its -shm can be used; immutable when it
        # cannot (another user's 0600 -shm, a read-only mount), reading the file as is.
        error = None
        for mode in ("mode=ro", "immutable=1"):
            db = sqlite3.connect(_uri(path, mode), uri=True, timeout=READ_WAIT,
                                 isolation_level=None, check_same_thread=False)
            try:
                version, tables = _table_check(db)
                db.execute("SELECT 1 FROM runs LIMIT 1").fetchall()
            except sqlite3.Error as exc:
                db.close()
                error = exc
                continue
            self.db, self.writable = db, False
            if version != len(MIGRATIONS):
                db.close()
                self._refuse(version, tables)
                raise StateError(f"state file {path} was written by an older schedsync and is read-only"
                                 " here", "run any schedsync command once as its owner, to upgrade it")
            return
        assert error is not None  # both modes were tried, and failed
        raise state_error(path, error)

    def _refuse(self, version: int, tables: str | None) -> None:
        if version > len(MIGRATIONS):
            raise StateError(f"state file {self._path} was written by a newer schedsync",
                             "upgrade schedsync, or pass --state PATH")
        if version == 0 and tables:
            raise StateError(f"state file {self._path} is another application's SQLite database"
                             f" (tables: {tables})",
                             "point --state at a schedsync state file, or at a new path")

    def _migrate(self, version: int) -> None:
        self._refuse(*_table_check(self.db))  # before WAL: a foreign database is left as it was
        self._wal()
        with self._tx:
            version, tables = _table_check(self.db)
            self._refuse(version, tables)
            for migration in MIGRATIONS[version:]:
                migration(self.db)
            self.db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")

    def _wal(self) -> None:
        # Switching to WAL takes an exclusive lock that the busy handler does not
        # always wait for, so many first-time processes retry here. A read command
        # does not wait: another process is using the state, a later open switches it.
        deadline = time.monotonic() + (BUSY_TIMEOUT if self._write else READ_WAIT)
        while True:
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if error_code(exc) not in (BUSY, LOCKED):
                    raise
                if time.monotonic() > deadline:
                    if self._write:
                        raise
                    self._busy, self.writable = True, False
                    return
                time.sleep(0.01)

    def _sql(self, sql: str, params=()):
        try:
            return self.db.execute(sql, params)
        except sqlite3.Error as exc:
            raise state_error(self._path, exc) from None

    def now(self) -> float:
        return time.time()

    # --- runs -------------------------------------------------------------------------

    def admit_run(self, job, trigger, breaker, lease, budgets, rates, cost, now=None, slot=None,
                  item=None, params=None):
        now = time.time() if now is None else now
        host, pid, token = self.liveness.owner()
        with self._tx:
            self._see(job, now)
            row = self._sql("SELECT paused FROM jobs WHERE name = ?", (job,)).fetchone()
            if row and row[0]:
                return Admitted(reason=PAUSED, error="paused; `schedsync resume` it")
            before = self._breaker(breaker.name)
            # the lease ends when the run surely has (``finish_run`` hands it back by this value)
            admission, state = breakers.admit(before, breaker.settings, now, lease=lease)
            if not admission.allowed:
                return Admitted(reason=BREAKER_OPEN, retry_at=admission.retry_at,
                                error=f"breaker {breaker.name} is open")
            chain: tuple = (None, 0)
            parent = None
            if item is not None:
                found = self._sql("SELECT state, slot, retry_of, retry_number, run_id, claimed_by, parent"
                                  " FROM slots WHERE id = ?", (item,)).fetchone()
                if found is None or found[0] not in ("claimed", "queued"):
                    return Admitted(reason=ALREADY_RAN, error=item_taken_error(
                        item, found and found[0], found and found[4]))
                slot, chain, parent = found[1], (found[2], found[3]), found[6]
            elif slot is not None:
                taken = self._sql(
                    "SELECT state, claimed_by, slot FROM slots WHERE job = ? AND kind = 'cron'"
                    " AND (slot = ? AND state IN ('ran', 'claimed', 'queued')"
                    "      OR slot > ? AND state = 'ran') ORDER BY slot = ? DESC LIMIT 1",
                    (job, slot, slot, slot)).fetchone()
                if taken:
                    return Admitted(reason=ALREADY_RAN,
                                    error=already_ran_error(slot, taken[1], taken[2] != slot))
            if budgets and cost:
                try:
                    ready = self._spend(budgets, rates, cost, now)
                except sqlite3.Error as exc:
                    raise state_error(self._path, exc) from None
                if ready is not None:
                    return Admitted(reason=RATE_LIMITED, retry_at=ready,
                                    error=f"budget {', '.join(budgets)} is empty")
            if state != before:
                self._save_breaker(state)  # a half-open trial's lease
            run = Run(0, job, RUNNING, trigger, now, host, pid, pid_start=token, slot=slot,
                      retry_of=chain[0], retry_number=chain[1] or 0, params=params, parent=parent)
            self._insert(run)
            if item is not None:
                self._sql("UPDATE slots SET state = 'ran', run_id = ?, reason = NULL WHERE id = ?",
                          (run.id, item))
            elif slot is not None:
                self._sql("INSERT INTO slots (job, slot, kind, state, due_at, run_id, claimed_at,"
                          " claimed_by) VALUES (?, ?, 'cron', 'ran', ?, ?, ?, ?)"
                          f" {SLOTS_ONCE} SET state = 'ran', run_id = excluded.run_id,"
                          " reason = NULL, claimed_at = excluded.claimed_at,"
                          " claimed_by = excluded.claimed_by",
                          (job, slot, slot, run.id, now, f"{host}:{pid}"))
            return Admitted(run=run, trial=admission.trial)

    def record_skip(self, run, retention, item=None):
        """Insert a finished run that never started: a skip, or a run that could not start."""
        with self._tx:
            self._see(run.job, run.started_at)
            self._insert(run)
            self._tally(run.job, run.status, run.requests)
            if item is not None:
                self._sql("UPDATE slots SET state = CASE kind WHEN 'cron' THEN 'skipped' ELSE 'queued' END,"
                          " reason = ?, claimed_at = NULL, claimed_by = NULL"
                          " WHERE id = ? AND state IN ('claimed', 'queued')", (run.reason, item))
            elif run.slot is not None and run.reason != ALREADY_RAN:
                self._sql("INSERT INTO slots (job, slot, kind, state, due_at, reason)"
                          f" VALUES (?, ?, 'cron', 'skipped', ?, ?) {SLOTS_ONCE}"
                          " SET state = 'skipped', reason = excluded.reason"
                          " WHERE state IN ('skipped', 'missed')",
                          (run.job, run.slot, run.slot, run.reason or run.status))
            self._prune(run.job, run.started_at, retention.get("success"), retention.get("failed"),
                        PRUNE_BATCH)  # a paused or rate-limited job must not grow without bound

    def _insert(self, run: Run) -> None:
        cur = self._sql(
            "INSERT INTO runs (job, status, reason, trigger, started_at, finished_at,"
            " duration_ms, retry_at, host, pid, pid_start, error, exit_code, slot, retry_of,"
            " retry_number, params, parent) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (run.job, run.status, run.reason, run.trigger, run.started_at, run.finished_at,
             run.duration_ms, run.retry_at, run.host, run.pid, run.pid_start,
             run.error, run.exit_code, run.slot, run.retry_of, run.retry_number or 0, run.params,
             getattr(run, "parent", None)))
        run.id = cur.lastrowid

    def _tally(self, job: str, status: str, requests: int) -> None:
        # run_counts: inside the caller's transaction, so a counter moves with its run.
        self._sql("INSERT INTO run_counts (job, status, runs, requests) VALUES (?, ?, 1, ?)"
                  " ON CONFLICT (job, status) DO UPDATE SET runs = runs + 1,"
                  " requests = requests + excluded.requests", (job, status, requests or 0))

    def _totals(self, run: Run) -> None:
        # run_totals and run_buckets (_v6), in finish_run's transaction like _tally.
        seconds = (run.duration_ms or 0) / 1000
        self._sql("INSERT INTO run_totals (job, runs, seconds, processed, failed, deleted, retries)"
                  " VALUES (?, 1, ?, ?, ?, ?, ?) ON CONFLICT (job) DO UPDATE SET runs = runs + 1,"
                  " seconds = seconds + excluded.seconds, processed = processed + excluded.processed,"
                  " failed = failed + excluded.failed, deleted = deleted + excluded.deleted,"
                  " retries = retries + excluded.retries",
                  (run.job, seconds, run.items_processed or 0, run.items_failed or 0, run.items_deleted or 0,
                   max((run.attempts or 0) - 1, 0) + (1 if run.retry_number else 0)))
        le = next((b for b in DURATION_BUCKETS if seconds <= b), None)
        if le is not None:
            self._sql("INSERT INTO run_buckets (job, le, runs) VALUES (?, ?, 1)"
                      " ON CONFLICT (job, le) DO UPDATE SET runs = runs + 1", (run.job, le))

    def finish_run(self, run, breaker, evidence, trial, lease, retention, now=None, later=None, after=None):
        now = time.time() if now is None else now
        with self._tx:
            self._chain(run.id, after, now)
            if later is not None:
                self._sql("INSERT OR IGNORE INTO slots (job, slot, kind, state, due_at, reason, retry_of,"
                          " retry_number) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                          (run.job, later.get("slot"), later["kind"], later.get("state", "queued"),
                           later["due_at"], later.get("reason"), later.get("retry_of"),
                           later.get("retry_number") or 0))
            self._sql(
                "UPDATE runs SET status=?, reason=?, finished_at=?, duration_ms=?, attempts=?,"
                " requests=?, items_processed=?, items_failed=?, exit_code=?, error=?, retry_at=?,"
                " output=?, items_inserted=?, items_updated=?, items_deleted=? WHERE id=?",
                (run.status, run.reason, run.finished_at, run.duration_ms, run.attempts,
                 run.requests, run.items_processed, run.items_failed, run.exit_code, run.error,
                 run.retry_at, run.output, run.items_inserted or 0, run.items_updated or 0,
                 run.items_deleted or 0, run.id))
            self._tally(run.job, run.status, run.requests)
            if run.status != SKIPPED:
                self._totals(run)
            transition = None
            if evidence and run.status != SKIPPED:
                transition = self._count(breaker, run, trial, now)
            elif trial:  # hand the half-open trial slot back: nothing was tried
                state = self._breaker(breaker.name)
                end = run.started_at + lease
                if end in state.leases:
                    state.leases.remove(end)
                    self._save_breaker(state)
            self._prune(run.job, now, retention.get("success"), retention.get("failed"), PRUNE_BATCH)
        return transition

    def _count(self, breaker, run: Run, trial: bool, now: float):
        before = self._breaker(breaker.name)
        after, transition = breakers.record(before, breaker.settings, now,
                                            ok=run.status not in FAILURES, trial=trial)
        if after != before:
            self._save_breaker(after)
        if not transition:
            return None
        why = f"run {run.id} of {run.job}: {run.status}" + (f" ({run.error})" if run.error else "")
        self._sql("INSERT INTO breaker_events (name, at, old, new, reason) VALUES (?,?,?,?,?)",
                  (breaker.name, now, transition[0], transition[1], why[:300]))
        return transition[0], transition[1], after

    def running_runs(self, jobs=None):
        where, args = "status = 'running'", ()
        if jobs:
            where += f" AND job IN ({','.join('?' * len(jobs))})"
            args = tuple(jobs)
        rows = self._sql(f"SELECT {RUN_COLUMNS}, pid_start FROM runs WHERE {where}", args).fetchall()
        return [Run(*row) for row in rows]

    def _chain(self, run_id: int, after, now: float) -> None:
        """Queue an ``after`` item (due now, ``parent`` = the run) for each job of ``after``."""
        for job in after or ():
            self._sql("INSERT OR IGNORE INTO slots (job, kind, state, due_at, parent)"
                      " VALUES (?, 'after', 'queued', ?, ?)", (job, now, run_id))

    def request_stop(self, job, text):
        with self._tx:
            rows = self._sql(f"UPDATE runs SET stop = ? WHERE job = ? AND status = 'running'"
                             f" RETURNING {RUN_COLUMNS}, pid_start", (text, job)).fetchall()
        return [Run(*row) for row in rows]

    def stop_requested(self, run):
        row = self._sql("SELECT stop FROM runs WHERE id = ?", (run.id,)).fetchone()
        return row[0] if row else None

    def mark_crashed(self, run, error, breaker, evidence, now=None, after=None):
        now = time.time() if now is None else now
        with self._tx:
            cur = self._sql(
                "UPDATE runs SET status='crashed', finished_at=?,"
                " duration_ms=CAST((? - started_at) * 1000 AS INTEGER), error=?"
                " WHERE id=? AND status='running'", (now, now, error, run.id))
            if cur.rowcount != 1:
                return False  # another process recorded it first
            self._chain(run.id, after, now)
            # What ``spend`` stored as the run went: the requests it made before it died.
            run.requests = self._sql("SELECT requests FROM runs WHERE id = ?", (run.id,)).fetchone()[0]
            self._tally(run.job, CRASHED, run.requests)
            run.status, run.error, run.finished_at = CRASHED, error, now
            run.duration_ms = int((now - run.started_at) * 1000)
            if evidence and breaker is not None:
                self._count(breaker, run, False, now)
            return True

    # --- the slot ledger ----------------------------------------------------------------

    def item(self, item_id):
        row = self._sql(f"SELECT {SLOT_COLUMNS} FROM slots WHERE id = ?", (item_id,)).fetchone()
        return SlotItem(*row) if row else None

    def enqueue(self, job, items, now=None, requeue=False):
        ids = []
        with self._tx:
            for it in items:
                key = (job, it.get("slot"), it["kind"], it.get("retry_of"), it.get("retry_number") or 0)
                self._sql("INSERT OR IGNORE INTO slots (job, slot, kind, state, due_at, retry_of,"
                          " retry_number) VALUES (?, ?, ?, 'queued', ?, ?, ?)",
                          (job, key[1], key[2], it["due_at"], key[3], key[4]))
                ids.append(self._sql(
                    "SELECT id FROM slots WHERE job = ? AND ifnull(slot, -1) = ifnull(?, -1) AND kind = ?"
                    " AND ifnull(retry_of, 0) = ifnull(?, 0) AND retry_number = ?", key).fetchone()[0])
                if requeue:
                    self._sql("UPDATE slots SET state = 'queued', due_at = ?, run_id = NULL, reason = NULL,"
                              " claimed_at = NULL, claimed_by = NULL WHERE id = ?"
                              " AND state IN ('ran', 'skipped', 'missed')", (it["due_at"], ids[-1]))
        return ids

    def enqueue_waiting(self, job, slot, due_at):
        with self._tx:  # BEGIN IMMEDIATE: one writer at a time, so one waiter
            row = self._sql("SELECT id FROM slots WHERE job = ? AND kind = 'queue'"
                            " AND state IN ('queued', 'claimed') LIMIT 1", (job,)).fetchone()
            if row:
                return row[0], False
            row = self._sql("INSERT INTO slots (job, slot, kind, state, due_at) VALUES (?, ?, 'queue', 'queued', ?)"
                            f" {SLOTS_ONCE} SET state = 'queued', due_at = excluded.due_at, run_id = NULL,"
                            " reason = NULL, claimed_at = NULL, claimed_by = NULL RETURNING id",
                            (job, slot, due_at)).fetchone()
            return row[0], True

    def enqueue_api(self, job, params, due_at, now=None):
        with self._tx:  # BEGIN IMMEDIATE: two triggers at once serialise, the second finds the first
            cur = self._sql("INSERT OR IGNORE INTO slots (job, slot, kind, state, due_at, params)"
                            " VALUES (?, NULL, 'api', 'queued', ?, ?)", (job, due_at, params))
            if cur.rowcount:
                return cur.lastrowid, False
            row = self._sql("SELECT id FROM slots WHERE job = ? AND kind = 'api' AND ifnull(params, '') = ifnull(?, '')"
                            " AND state IN ('queued', 'claimed')", (job, params)).fetchone()
            return row[0], True

    def claim_due(self, jobs, limit, claimer, now=None, per_job=1):
        now = time.time() if now is None else now
        with self._tx:
            return self._claim_due(jobs, limit, claimer, now, per_job)

    def _claim_due(self, jobs, limit, claimer, now, per_job=1) -> list:
        # A claim whose run never started (the tick died between claiming and starting,
        # or the run could not start) goes back to the queue.
        self._sql("UPDATE slots SET state = 'queued', claimed_at = NULL, claimed_by = NULL"
                  " WHERE state = 'claimed' AND claimed_at < ?", (now - CLAIM_STALE,))
        if not jobs or limit <= 0:
            return []
        # A job whose item is being started, or whose run is going, gets nothing more now:
        # its next item would only be skipped by the job's lock.
        busy = {job for (job,) in self._sql(
            "SELECT job FROM slots WHERE state = 'claimed' UNION SELECT job FROM runs WHERE status = 'running'")}
        wanted = sorted(set(jobs) - busy)
        if not wanted:
            return []
        # The oldest due items, at most per_job of each job: bounded however long the queue.
        rows = self._sql(
            f"SELECT {SLOT_COLUMNS} FROM (SELECT *, row_number() OVER (PARTITION BY job ORDER BY due_at, id)"
            f" AS nth FROM slots WHERE state = 'queued' AND due_at <= ? AND job IN ({','.join('?' * len(wanted))}))"
            " WHERE nth <= ? ORDER BY due_at, id LIMIT ?", (now, *wanted, per_job, limit)).fetchall()
        out = []
        for row in rows:
            item = SlotItem(*row)
            self._sql("UPDATE slots SET state = 'claimed', claimed_at = ?, claimed_by = ? WHERE id = ?",
                      (now, claimer, item.id))
            item.state, item.claimed_at, item.claimed_by = "claimed", now, claimer
            out.append(item)
        return out

    def release_item(self, item_id, state, reason=None):
        with self._tx:
            cur = self._sql("UPDATE slots SET state = ?, reason = ?, claimed_at = NULL, claimed_by = NULL"
                            " WHERE id = ? AND state IN ('claimed', 'queued')", (state, reason, item_id))
            if cur.rowcount and state == "missed":
                job = self._sql("SELECT job FROM slots WHERE id = ?", (item_id,)).fetchone()[0]
                self._count_slots(job, "missed", 1)
            return cur.rowcount == 1

    def record_slots(self, job, slots, state, reason=None, now=None):
        with self._tx:
            return self._record_slots(job, slots, state, reason)

    def _record_slots(self, job, slots, state, reason) -> int:
        added = 0
        for slot in slots:
            cur = self._sql("INSERT OR IGNORE INTO slots (job, slot, kind, state, due_at, reason)"
                            " VALUES (?, ?, 'cron', ?, ?, ?)", (job, slot, state, slot, reason))
            added += cur.rowcount
        if added and state == "missed":
            self._count_slots(job, state, added)
        return added

    def _count_slots(self, job: str, state: str, n: int) -> None:
        self._sql("INSERT INTO slot_counts (job, state, n) VALUES (?, ?, ?)"
                  " ON CONFLICT (job, state) DO UPDATE SET n = n + excluded.n", (job, state, n))

    def slots(self, job, limit=20):
        rows = self._sql(f"SELECT {SLOT_COLUMNS} FROM slots WHERE job = ?"
                         " ORDER BY ifnull(slot, due_at) DESC, id DESC LIMIT ?", (job, limit)).fetchall()
        return [SlotItem(*row) for row in rows]

    def slot_winner(self, job, slot):
        row = self._sql("SELECT claimed_by, run_id FROM slots WHERE job = ? AND slot = ? AND kind = 'cron'"
                        " AND state = 'ran'", (job, slot)).fetchone()
        return (row[0].rpartition(":")[0] or row[0], row[1]) if row and row[0] else None

    def queued(self, job):
        return self._sql("SELECT COUNT(*) FROM slots WHERE job = ? AND state IN ('queued', 'claimed')",
                         (job,)).fetchone()[0]

    def cancel_queued(self, job, kind=None):
        with self._tx:
            if kind is None:
                return self._sql("DELETE FROM slots WHERE job = ? AND state = 'queued'", (job,)).rowcount
            return self._sql("DELETE FROM slots WHERE job = ? AND state = 'queued' AND kind = ?",
                             (job, kind)).rowcount

    def note_tick(self, host, error=None, now=None):
        now = time.time() if now is None else now
        with self._tx:
            self._note_tick(host, error, now)

    def _note_tick(self, host: str, error: str | None, now: float) -> None:
        self._sql("INSERT INTO ticks (host, at, error) VALUES (?, ?, ?) ON CONFLICT (host)"
                  " DO UPDATE SET at = excluded.at, error = excluded.error", (host, now, error))

    def last_tick(self):
        row = self._sql("SELECT host, at, error FROM ticks ORDER BY at DESC LIMIT 1").fetchone()
        return Tick(*row) if row else None

    def slot_counters(self):
        return dict(self._sql("SELECT job, n FROM slot_counts WHERE state = 'missed'").fetchall())

    def begin_tick(self, host, claimer, marks, limit, now=None):
        now = time.time() if now is None else now
        with self._tx:
            self._note_tick(host, None, now)
            items = self._claim_due(list(marks), limit, claimer, now)
            stored = {job: (key, until, next_at) for job, key, until, next_at in
                      self._sql("SELECT job, key, until, next_at FROM slot_marks").fetchall()}
            seen = dict(self._sql("SELECT name, first_seen FROM jobs").fetchall())
        look = {}
        for job, key in marks.items():
            mark = stored.get(job)
            if mark is None or mark[0] != key:
                look[job] = (None, seen.get(job))
            elif mark[2] is None or mark[2] <= now:
                look[job] = (mark[1], seen.get(job))
        return look, items

    def settle_slots(self, settled, claimer, now=None):
        now = time.time() if now is None else now
        claimed = []
        with self._tx:
            for s in settled:
                job = s["job"]
                if s.get("missed"):
                    self._record_slots(job, s["missed"], "missed", None)
                self._sql("INSERT INTO slot_marks (job, key, until, next_at) VALUES (?, ?, ?, ?)"
                          " ON CONFLICT (job) DO UPDATE SET key = excluded.key, next_at = excluded.next_at,"
                          " until = CASE WHEN until IS NULL OR excluded.until > until"
                          "   THEN excluded.until ELSE until END",
                          (job, s["key"], s.get("until"), s.get("next_at")))
                slot = s.get("claim")
                if slot is None:
                    continue
                cur = self._sql(
                    "INSERT INTO slots (job, slot, kind, state, due_at, claimed_at, claimed_by)"
                    " SELECT ?, ?, 'cron', 'claimed', ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM slots"
                    "   WHERE job = ? AND kind = 'cron' AND (slot = ? OR slot > ? AND state = 'ran'))"
                    " ON CONFLICT DO NOTHING",
                    (job, slot, slot, now, claimer, job, slot, slot))
                if cur.rowcount:
                    claimed.append(SlotItem(cur.lastrowid, job, slot, "cron", "claimed", slot,
                                            claimed_at=now, claimed_by=claimer))
        return claimed

    # --- reads ------------------------------------------------------------------------

    def runs(self, job, limit=20, failed_only=False):
        where = "job = ?"
        args: tuple = (job,)
        if failed_only:
            where += f" AND status IN ({','.join('?' * len(FAILURES))})"
            args += FAILURES
        rows = self._sql(f"SELECT {RUN_COLUMNS} FROM runs WHERE {where} ORDER BY id DESC LIMIT ?",
                         (*args, limit)).fetchall()
        return [Run(*row) for row in rows]

    def run(self, job, run_id=None):
        where = "job = ?"
        args: tuple = (job,)
        if run_id is not None:
            where, args = ("id = ?", (run_id,)) if job is None else (where + " AND id = ?", (job, run_id))
        row = self._sql(f"SELECT {RUN_COLUMNS} FROM runs WHERE {where} ORDER BY id DESC LIMIT 1",
                        args).fetchone()
        return Run(*row) if row else None

    def job_states(self, names, recent=10):
        seen = dict(self._sql("SELECT name, first_seen FROM jobs").fetchall())
        paused = {n for (n,) in self._sql("SELECT name FROM jobs WHERE paused = 1")}
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
        return self._sql(sql, args).fetchone()[0]

    def failure_streak(self, job, before=None):
        since = self._last_success(job, before)
        marks = ",".join("?" * len(FAILURES))
        sql = f"SELECT COUNT(*) FROM runs WHERE job = ? AND status IN ({marks}) AND started_at > ?"
        args: tuple = (job, *FAILURES, since if since is not None else float("-inf"))
        if before is not None:
            sql, args = sql + " AND started_at < ?", args + (before,)
        return self._sql(sql, args).fetchone()[0]

    def counters(self):
        rows = self._sql("SELECT job, status, runs, requests FROM run_counts").fetchall()
        out: dict = {}
        for job, status, runs, requests in rows:
            out.setdefault(job, {})[status] = (runs, requests)
        return out

    def run_totals(self):
        return totals_of(self._sql("SELECT job, runs, seconds, processed, failed, deleted, retries"
                                     " FROM run_totals").fetchall(),
                           self._sql("SELECT job, le, runs FROM run_buckets").fetchall())

    def adhoc_jobs(self):
        return dict(self._sql("SELECT name, adhoc FROM jobs WHERE adhoc IS NOT NULL").fetchall())

    def breakers(self, names):
        return {name: self._breaker(name) for name in names}

    def transitions(self, name, limit=10):
        return self._sql("SELECT at, old, new, reason FROM breaker_events WHERE name = ?"
                         " ORDER BY id DESC LIMIT ?", (name, limit)).fetchall()

    def budget_levels(self, rates, now=None):
        now = time.time() if now is None else now
        out = {}
        for name, (capacity, per) in rates.items():
            bucket = self._bucket(name)
            out[name] = capacity if bucket is None else refill(bucket, capacity, per, now).tokens
        return out

    def notifications(self, job, limit=10):
        rows = self._sql("SELECT job, event, target, at, ok, detail, run_id FROM notifications"
                         " WHERE job = ? ORDER BY id DESC LIMIT ?", (job, limit)).fetchall()
        return [Notification(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6]) for r in rows]

    # --- budgets and breakers ---------------------------------------------------------

    def spend(self, budgets, rates, cost, now=None, count=None):
        now = time.time() if now is None else now
        with self._tx:
            try:
                ready = self._spend(budgets, rates, cost, now)
                if ready is None and count is not None:
                    self.db.execute(COUNT_REQUESTS, (count[1], count[0]))
                return ready
            except sqlite3.Error as exc:
                raise state_error(self._path, exc) from None

    def _spend(self, names, rates, cost, now):
        # Every budget acquire is this: plain db.execute, one try around it all (in the callers).
        execute = self.db.execute
        taken, clamped, ready = [], [], None
        for name in names:
            capacity, per = rates[name]
            row = execute("SELECT tokens, updated, blocked_until FROM buckets WHERE name = ?",
                          (name,)).fetchone()
            stored = Bucket(name, *row) if row else None
            granted, bucket, at = take(stored, name, capacity, per, cost, now)
            if not granted:
                # A flag, not ``ready > now``: a denial whose wait rounds to zero is still a denial.
                ready = max(now if ready is None else ready, math.inf if at is None else at)
            if stored is not None and stored.updated > now:
                # a time from a clock that ran ahead: kept clamped, even on a denial (and then unspent)
                clamped.append(refill(stored, capacity, per, now) if granted else bucket)
            taken.append(bucket)
        for bucket in (taken if ready is None else clamped):
            # An upsert, not INSERT OR REPLACE: replace deletes and re-inserts, rewriting the
            # primary-key index page too, and every acquire pays for that page in the WAL.
            execute(SAVE_BUCKET, (bucket.name, bucket.tokens, bucket.updated, bucket.blocked_until))
        return ready

    def block_budgets(self, budgets, until, rates=None, now=None):
        now = time.time() if now is None else now
        with self._tx:
            for name in budgets:
                capacity, per = (rates or {}).get(name) or (math.inf, math.inf)
                self._save_bucket(block_until(self._bucket(name), name, until, capacity, per, now))

    def _bucket(self, name: str) -> Bucket | None:
        row = self._sql("SELECT tokens, updated, blocked_until FROM buckets WHERE name = ?",
                        (name,)).fetchone()
        return Bucket(name, *row) if row else None

    def _save_bucket(self, bucket: Bucket) -> None:
        self._sql(SAVE_BUCKET, (bucket.name, bucket.tokens, bucket.updated, bucket.blocked_until))

    def _breaker(self, name: str) -> Breaker:
        row = self._sql("SELECT state, failures, opened_at, opens_until, leases FROM breakers"
                        " WHERE name = ?", (name,)).fetchone()
        if not row:
            return Breaker(name)
        return Breaker(name, row[0], row[1], row[2], row[3], _leases(row[4]))

    def _save_breaker(self, breaker: Breaker) -> None:
        self._sql(
            "INSERT OR REPLACE INTO breakers (name, state, failures, opened_at, opens_until, leases)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (breaker.name, breaker.state, breaker.failures, breaker.opened_at,
             breaker.opens_until, _leases_text(breaker.leases)))

    def reset_breaker(self, breaker, reason, now=None):
        now = time.time() if now is None else now
        with self._tx:
            before = breakers.state_at(self._breaker(breaker), now)
            self._save_breaker(Breaker(breaker))
            if before == breakers.CLOSED:
                return None
            self._sql("INSERT INTO breaker_events (name, at, old, new, reason) VALUES (?,?,?,?,?)",
                      (breaker, now, before, breakers.CLOSED, reason))
            return before

    # --- jobs -------------------------------------------------------------------------

    def _see(self, name: str, now: float) -> None:
        self._sql("INSERT OR IGNORE INTO jobs (name, first_seen) VALUES (?, ?)", (name, now))

    def see_jobs(self, names, now=None):
        now = time.time() if now is None else now
        with self._tx:
            for name in names:
                self._see(name, now)

    def set_paused(self, name, paused, now=None):
        now = time.time() if now is None else now
        with self._tx:
            self._see(name, now)
            self._sql("UPDATE jobs SET paused = ?, paused_at = ? WHERE name = ?",
                      (int(paused), now if paused else None, name))

    def set_adhoc(self, name, settings, now=None):
        now = time.time() if now is None else now
        self._sql("INSERT INTO jobs (name, first_seen, adhoc) VALUES (?, ?, ?)"
                  " ON CONFLICT (name) DO UPDATE SET adhoc = excluded.adhoc", (name, now, settings))

    # --- resume points and watermarks (http jobs) --------------------------------------

    def resume_point(self, job):
        row = self._sql("SELECT point, saved_at, run_id, began_at, done_run, done_began FROM resume_points"
                        " WHERE job = ?", (job,)).fetchone()
        return ResumePoint(*row) if row else None

    def save_resume(self, job, run_id, point, began_at, now=None):
        self._sql("INSERT INTO resume_points (job, point, saved_at, run_id, began_at)"
                  " VALUES (?, ?, ?, ?, ?) ON CONFLICT (job) DO UPDATE SET point = excluded.point,"
                  " saved_at = excluded.saved_at, run_id = excluded.run_id, began_at = excluded.began_at",
                  (job, point, time.time() if now is None else now, run_id, began_at))

    def end_resume(self, job, done_run=None, began_at=None, now=None):
        if done_run is None:
            self._sql("DELETE FROM resume_points WHERE job = ?", (job,))
            return
        self._sql("INSERT INTO resume_points (job, point, saved_at, done_run, done_began)"
                  " VALUES (?, NULL, ?, ?, ?) ON CONFLICT (job) DO UPDATE SET point = NULL,"
                  " saved_at = excluded.saved_at, run_id = NULL, began_at = NULL,"
                  " done_run = excluded.done_run, done_began = excluded.done_began",
                  (job, time.time() if now is None else now, done_run, began_at))

    def note_watermark(self, job, value, now=None):
        if value is not None:
            self._sql("INSERT INTO watermarks (job, value, noted_at) VALUES (?, ?, ?)"
                      " ON CONFLICT (job) DO UPDATE SET value = max(value, excluded.value),"
                      " noted_at = excluded.noted_at", (job, value, time.time() if now is None else now))
        row = self._sql("SELECT value FROM watermarks WHERE job = ?", (job,)).fetchone()
        return row[0] if row else None

    def watermarks(self, names):
        if not names:
            return {}
        marks = ",".join("?" * len(names))
        return dict(self._sql(f"SELECT job, value FROM watermarks WHERE job IN ({marks})",
                              tuple(names)).fetchall())

    # --- alerts -----------------------------------------------------------------------

    def record_notifications(self, notes, keep=50):
        with self._tx:
            for note in notes:
                self._sql("INSERT INTO notifications (job, event, target, at, ok, detail, run_id)"
                          " VALUES (?,?,?,?,?,?,?)",
                          (note.job, note.event, note.target, note.at, int(note.ok),
                           note.detail, note.run_id))
            for job in {note.job for note in notes}:
                self._sql("DELETE FROM notifications WHERE job = ? AND id <= (SELECT id FROM"
                          " notifications WHERE job = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                          (job, job, keep))

    def claim_alert(self, job, event, mark, every=None):
        with self._tx:
            row = self._sql("SELECT mark FROM alert_marks WHERE job = ? AND event = ?",
                            (job, event)).fetchone()
            if row and (row[0] == mark if every is None else row[0] > mark - every):
                return False
            self._sql("INSERT OR REPLACE INTO alert_marks (job, event, mark) VALUES (?, ?, ?)",
                      (job, event, mark))
            return True

    # --- the audit log ----------------------------------------------------------------

    def record_audit(self, entry, keep=AUDIT_KEEP):
        at = time.time() if entry.at is None else entry.at
        with self._tx:
            cur = self._sql("INSERT INTO audit (at, action, job, who, client, breaker, run_id, item_id,"
                            " params, reason) VALUES (?,?,?,?,?,?,?,?,?,?)",
                            (at, entry.action, entry.job, entry.who, entry.client, entry.breaker,
                             entry.run_id, entry.item_id, entry.params, entry.reason))
            self._sql("DELETE FROM audit WHERE job IS ? AND (job IS NOT NULL OR breaker IS ?) AND id <= (SELECT id"
                      " FROM audit WHERE job IS ? AND (job IS NOT NULL OR breaker IS ?)"
                      " ORDER BY id DESC LIMIT 1 OFFSET ?)",
                      (entry.job, entry.breaker, entry.job, entry.breaker, keep))
            return cur.lastrowid

    def audit(self, job, breaker=None, limit=10):
        rows = self._sql(f"SELECT {AUDIT_COLUMNS} FROM audit WHERE job = ? OR breaker = ?"
                         " ORDER BY id DESC LIMIT ?", (job, breaker, limit)).fetchall()
        return [AuditEntry(*row) for row in rows]

    # --- retention --------------------------------------------------------------------

    def _prune(self, job: str, now: float, keep_success: float | None,
               keep_failed: float | None, limit: int | None = None) -> int:
        """Delete finished runs past retention (at most ``limit``); a job's newest success is kept."""
        removed = 0
        for statuses, keep in (((SUCCESS, PARTIAL, SKIPPED), keep_success),
                               (FAILURES, keep_failed)):
            if keep is None:
                continue
            marks = ",".join("?" * len(statuses))
            pick = f"SELECT id FROM runs WHERE job = ? AND status IN ({marks}) AND started_at < ?"
            args: tuple = (job, *statuses, now - keep)
            newest = self._last_success(job) if SUCCESS in statuses else None
            if newest is not None:
                # Keep the newest success however old (and only it: skips after it go):
                # "last success 20d ago", STALLED and failure streaks need it.
                pick += " AND NOT (status IN (?, ?) AND started_at = ?)"
                args += (SUCCESS, PARTIAL, newest)
            pick += f" LIMIT {int(limit) if limit else -1}"
            cur = self._sql(f"DELETE FROM runs WHERE id IN ({pick})", args)
            removed += cur.rowcount
        if keep_success is not None:
            # The ledger goes with the runs; the newest cron slot stays (a clock that steps
            # back must still find it), as does work still queued.
            self._sql("DELETE FROM slots WHERE id IN (SELECT id FROM slots WHERE job = ?"
                      " AND ifnull(slot, due_at) < ? AND state NOT IN ('queued', 'claimed')"
                      " AND id IS NOT (SELECT id FROM slots WHERE job = ? AND kind = 'cron'"
                      "   ORDER BY slot DESC LIMIT 1)"
                      f" LIMIT {int(limit) if limit else -1})", (job, now - keep_success, job))
        return removed

    def prune_all(self, policies, now=None, batch_seconds: float = 2.0, chunk: int = 20_000):
        # Runs of all jobs interleave in the file, so pruning one job touches pages
        # everywhere: one transaction per job rewrote most of the file 200 times
        # (1M runs: 47s). Few transactions of about ``batch_seconds`` each (and a
        # bigger page cache meanwhile) cost 5-6s, yet never hold the write lock long
        # enough for a cron run waiting on it to give up.
        now = time.time() if now is None else now
        pending = list(policies.items())
        removed = 0
        previous = self._sql("PRAGMA cache_size").fetchone()[0]
        self._sql("PRAGMA cache_size = -65536")
        try:
            while pending:
                deadline = time.monotonic() + batch_seconds
                with self._tx:
                    while pending and time.monotonic() < deadline:
                        job, (keep_success, keep_failed) = pending[0]
                        count = self._prune(job, now, keep_success, keep_failed, limit=chunk)
                        removed += count
                        if not count:
                            pending.pop(0)
        finally:
            self._sql(f"PRAGMA cache_size = {int(previous)}")
        if removed:
            self._sql("PRAGMA wal_checkpoint(TRUNCATE)")  # best effort: gives the WAL's space back
        return removed

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

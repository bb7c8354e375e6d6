"""The PostgreSQL backend of the store: one state for many hosts.

Selected by a ``postgresql://`` or ``postgres://`` state URL (``open_store``).
The driver is psycopg2 (the ``postgres`` extra): measured on the ``run`` path it
adds ~35 ms of import (~24 ms with the ssl trick below) where psycopg 3 adds
~215-240 ms, and every cron tick pays it. Only this module imports it, so SQLite users pay nothing.

- Every operation is one server-side function or statement (``postgres_sql``),
  in its own transaction (autocommit), on the server's clock.
- ``locks``: a lease per job (``Leases``): a row in ``schedsync.leases`` whose
  ``expires_at`` is on the server's clock, renewed every second by a thread and
  taken by another holder only once expired. No session matters: a server restart
  loses nothing, the renewer reconnects. The job is stopped (by schedsync, and by
  its keeper on its own clock) before a lease that stopped being renewed can lapse.
- ``liveness``: a ``running`` row is alive while a lease naming it has not expired
  (a run without a job lease, ``overlap: allow``, holds one of its own), whichever
  host asks. Never a pid check on another host.
"""

from __future__ import annotations

import os
import re
import sys
import time

from schedsync.core.breaker import settings_of
from schedsync.core.budgets import never_short
from schedsync.core.errors import ConfigError, StateBusy, StateError, StateUnreachable
from schedsync.core.models import FAILURES, AuditEntry, Breaker, JobState, Notification, Run, SlotItem, Tick

# URL redaction lives with the rest of redaction; imported here for the callers that name it here.
from schedsync.core.redact import MISENCODED_FIX, misencoded_password, redact_url, strip_password  # noqa: F401
from schedsync.paths import spool_dir
from schedsync.store.base import (
    AUDIT_COLUMNS,
    AUDIT_KEEP,
    CLAIM_STALE,
    PRUNE_BATCH,
    RUN_COLUMNS,
    SLOT_COLUMNS,
    Admitted,
    BreakerSpec,
    Liveness,
    Lock,
    Locks,
    ResumePoint,
    Store,
    already_ran_error,
    item_taken_error,
    no_state,
    totals_of,
)
from schedsync.store.postgres_sql import FOREIGN, MIGRATION_LOCK, MIGRATIONS, TRUST_CHECK

TYPE_CHECKING = False  # typing stays off the path of `run`; type checkers read this block
if TYPE_CHECKING:
    import threading

# psycopg2's C module imports Python's ssl only to hand OpenSSL's locking callbacks to
# Python, which OpenSSL >= 1.1 no longer needs (the wheel bundles OpenSSL 3, and libpq
# initialises it itself when that import fails). Hiding ssl during the import cuts it
# by ~40% (measured 41-49 ms -> 24 ms under load), and every cron tick pays it; ssl
# imports normally afterwards (http jobs).
_hide_ssl = "ssl" not in sys.modules
if _hide_ssl:
    sys.modules["ssl"] = None  # type: ignore[assignment]
try:
    import psycopg2
    import psycopg2.extensions
except ImportError:  # exercised by the CLI test without the extra
    psycopg2 = None
finally:
    if _hide_ssl and "ssl" in sys.modules and sys.modules["ssl"] is None:
        del sys.modules["ssl"]

HOST = os.uname().nodename

# Dead connections are noticed: the server probes an idle connection after 5 s, every
# 1 s, 3 times (and gives up on unacknowledged data after 8 s), and so do we. Nothing
# is held by a session any more (leases are rows, below); this only frees slots.
KEEPALIVE = {"keepalives": "1", "keepalives_idle": "5", "keepalives_interval": "1",
             "keepalives_count": "3", "tcp_user_timeout": "8000"}
# search_path: this connection names schedsync's objects in full, and no schema another
# role can create in (``public``, one named after our role) may shadow a built-in.
SERVER_OPTIONS = ("-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=1"
                  " -c tcp_keepalives_count=3 -c tcp_user_timeout=8000"
                  " -c search_path=pg_catalog,pg_temp")
# The same, per transaction: through PgBouncer's transaction pooling a session's settings
# are another client's, and the startup options may be dropped (ignore_startup_parameters).
# Sent ahead of every statement, in its round trip (one implicit transaction).
LOCAL = "SET LOCAL search_path = pg_catalog, pg_temp; "
# Leases (docs/several-hosts.md): LEASE seconds from a renewal, renewed every
# RENEW_EVERY seconds; the job is stopped once no renewal was confirmed for
# LEASE - MARGIN seconds (SIGTERM, then SIGKILL after FENCE_GRACE = 1 s), so it is gone
# MARGIN - FENCE_GRACE = 3 s before another host can take the lease. A server restart
# (1-3 s) fits many renewals into the 6 s before the fence.
LEASE, RENEW_EVERY, MARGIN = 10.0, 1.0, 4.0
RECONNECT_FOR = 20.0  # seconds (in all, per outage) a run tries to reach a restarted server
CONNECT_TIMEOUT = 10  # seconds per attempt (a ``connect_timeout`` in the URL wins)
# Seconds of retrying "too many clients" and connect timeouts (jittered backoff) before
# the run gives up and leaves a trace in the spool; $SCHEDSYNC_CONNECT_RETRY overrides.
CROWDED_FOR = 15.0
# Seconds a run's end is retried on a lost connection (a restart, a failover) before it
# goes to this host's spool; $SCHEDSYNC_FINISH_RETRY overrides.
FINISH_FOR = 30.0
LEAN_AFTER = 1.5  # seconds into a run before it gives its connection back (``lean``)
LEAN_PATIENCE = 2.0  # seconds a statement of a running job (a renewal) retries for a connection
READ_WAIT = 1.0  # seconds a read command waits on another session's lock

SPEND = "SELECT schedsync.spend(%s::text[], %s::float8[], %s::float8[], %s, %s)"
COUNT_REQUESTS = "UPDATE schedsync.runs SET requests = %s WHERE id = %s AND status = 'running'"


def _need_driver(url: str) -> None:
    if psycopg2 is None:
        raise ConfigError(f"state {redact_url(url)} is PostgreSQL, but its driver is not installed",
                          "pip install 'schedsync[postgres]'")


# A refusal to connect is the only error read by its text: the server sends its SQLSTATE
# (53300, 28P01, 3D000), but libpq hands on only the message before a session exists, so
# psycopg2's error has no pgcode. On a server whose lc_messages is not English these
# match nothing, and the error reads "unreachable" with the server's own text.
_REFUSALS = (("too many clients", "crowded"), ("connection slots are reserved", "crowded"),
             ("password authentication failed", "password"), ("no password supplied", "password"),
             ("does not exist", "missing"), ("timeout expired", "timeout"))


def _refusal(text: str) -> str | None:
    return next((kind for words, kind in _REFUSALS if words in text), None)


def _spool_pending() -> list:
    try:
        return [n for n in os.listdir(spool_dir()) if n.endswith(".json")]
    except OSError:
        return []


def _patience(variable: str = "SCHEDSYNC_CONNECT_RETRY", default: float | None = None) -> float:
    """Seconds a connection is retried for ("too many clients", connect timeouts), or a
    run's end (``$SCHEDSYNC_FINISH_RETRY``, ``FINISH_FOR``)."""
    default = CROWDED_FOR if default is None else default
    try:
        return max(0.0, float(os.environ.get(variable) or default))
    except ValueError:
        return default


class PostgresStore(Store):
    locks: Leases
    claims_slots = True
    live_claims = True  # a running row counts only while its session holds its liveness lock
    writable = True  # a role without write access fails on its first write, with one line

    def __init__(self, url: str, write: bool = True, create: bool | None = None):
        """``write=False`` (read commands): no state is created (``create`` defaults to
        ``write``), and no statement waits on another session's lock longer than
        ``READ_WAIT``: a write that would (first-seen, a crashed run) raises ``StateBusy``."""
        _need_driver(url)
        self.url = url
        self.label = redact_url(url)  # what any message may show
        if misencoded_password(url):  # libpq would read and quote a piece of it as the host
            raise ConfigError(f"state URL {self.label}: its password holds a raw /, @ or %", MISENCODED_FIX)
        self._secret = _password(url)
        self._mutex: threading.Lock | None = None  # once the lease renewer shares the connection
        self._lost_at: float | None = None  # when the connection was lost (monotonic), until back
        self._create = write if create is None else create
        self._local = LOCAL
        self._lean = False  # no connection held between statements (``lean``)
        self._lean_from = 0.0  # monotonic: when lean starts letting go
        self._no_options = False  # the server (a pooler) refused the startup options
        self._released = False  # the connection was given back (``lean``); the next statement reconnects
        self._dropped = False  # the last statement's error was a lost connection
        self.db = self._connect()
        self.locks = Leases(self)
        self.liveness = LeaseLiveness(self)
        try:
            if not write:  # per transaction, never per session: a pooler shares sessions
                self._local += f"SET LOCAL lock_timeout = {int(READ_WAIT * 1000)}; "
            self._open()
        except BaseException:
            self.db.close()
            raise
        spooled = _spool_pending()  # one listdir: the spool module is imported only when needed
        if spooled:
            from schedsync.store.spool import replay

            replay(self, spooled)

    # --- connection ---------------------------------------------------------------------

    def _connect(self, patience: float | None = None):
        """A new connection; "too many clients" and connect timeouts are retried for
        ``patience`` seconds (default ``$SCHEDSYNC_CONNECT_RETRY`` or ``CROWDED_FOR``)."""
        try:
            params = psycopg2.extensions.parse_dsn(self.url)
        except psycopg2.Error as exc:
            # libpq quotes the part it could not read, which may be a password.
            text = re.sub(r'"[^"]*"', "(…)", self._clean(exc))
            raise ConfigError(f"state URL {self.label} is not a valid PostgreSQL URL: {text}",
                              "see the README's several-hosts section") from None
        params = {**KEEPALIVE, "connect_timeout": str(CONNECT_TIMEOUT),
                  "application_name": "schedsync", **params}
        params["options"] = (SERVER_OPTIONS + " " + params.get("options", "")).strip()
        if self._no_options:  # a pooler that refuses them: known since this process's first connect
            del params["options"]
        patience = _patience() if patience is None else patience
        began = time.monotonic()
        until, nap = began + patience, 0.05
        while True:
            try:
                db = psycopg2.connect(**params)
                db.autocommit = True
                return db
            except psycopg2.Error as exc:
                text = self._clean(exc)
                if "unsupported startup parameter: options" in text and "options" in params:
                    # PgBouncer without ignore_startup_parameters = options: the settings
                    # those options carry are made per transaction (LOCAL) anyway.
                    del params["options"]
                    self._no_options = True
                    continue
                refusal = _refusal(text)
                if refusal in ("crowded", "timeout") and time.monotonic() < until:
                    import random

                    time.sleep(min(nap * random.uniform(0.5, 1.5), max(0.0, until - time.monotonic())))
                    nap = min(nap * 2, 1.0)
                    continue
                raise self._connect_error(text, refusal, params, time.monotonic() - began) from None

    def _connect_error(self, text: str, refusal: str | None, params: dict | None = None,
                       waited: float = 0.0) -> StateError:
        where = f"state database {self.label}"
        if refusal == "password":
            return StateError(f"{where}: {text}", "check the password in ~/.pgpass or $PGPASSWORD")
        if refusal == "missing":
            return StateError(f"{where}: {text}", "create it (createdb) or fix the state URL")
        if refusal == "crowded":
            return StateUnreachable(
                f"{where} has no free connection slot (too many clients, retried for {waited:.0f}s)",
                "put PgBouncer (pool_mode = transaction) in front of it, or raise max_connections"
                " on the server, or run fewer jobs at once", why="too many clients")
        if refusal == "timeout":
            params = params or {}
            host = params.get("host") or os.environ.get("PGHOST") or "localhost"
            port = params.get("port") or os.environ.get("PGPORT") or "5432"
            each = params.get("connect_timeout") or CONNECT_TIMEOUT
            return StateUnreachable(
                f"{where}: timed out connecting to {host}:{port} after {each}s"
                f" (retried for {waited:.0f}s)",
                "the server or the network is overloaded or dropping packets; check the host's"
                " link and the server's load", why="connect timeout")
        return StateUnreachable(f"{where} is unreachable: {text}",
                                "start PostgreSQL, or check the host and port in the state URL",
                                why="server down")

    def _clean(self, exc: BaseException) -> str:
        """The first meaningful line of a driver error, with the password redacted."""
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        text = " ".join(lines[:2])[:300] if lines else type(exc).__name__
        if self._secret:
            text = text.replace(self._secret, "***")
        return text

    def _open(self) -> None:
        # One round trip: the ownership check, then (only if it passed) the schema's version.
        try:
            version, server_now = self._fetch(
                TRUST_CHECK + "; SELECT (SELECT version FROM schedsync.meta), schedsync.now()")[0]
        except psycopg2.errors.UndefinedTable:
            version, server_now = self._migrate()
        except psycopg2.errors.UndefinedFunction:
            raise StateError(f"state database {self.label} is not a schedsync state database "
                             "(its schedsync schema is not ours)",
                             "point the state URL at another database") from None
        except psycopg2.Error as exc:
            raise self._state_error(exc) from None
        if version is None or version < len(MIGRATIONS):
            version, server_now = self._migrate()
        if version > len(MIGRATIONS):
            raise StateError(f"state database {self.label} was written by a newer schedsync "
                             f"(schema {version}, this one knows {len(MIGRATIONS)})",
                             "upgrade schedsync on this host")
        # The server's clock, without a round trip per read of it.
        self._offset = server_now - time.time()

    def _migrate(self) -> tuple[int, float]:
        """Apply missing migrations under a transaction-level advisory lock (one host does it)."""
        db = self.db
        try:
            db.autocommit = False
            with db.cursor() as cur:
                cur.execute(LOCAL + "SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                cur.execute(TRUST_CHECK)
                cur.execute("SELECT to_regclass('schedsync.meta') IS NOT NULL,"
                            " to_regnamespace('schedsync') IS NOT NULL")
                has_meta, has_schema = cur.fetchone()
                if has_schema and not has_meta:
                    db.rollback()
                    raise StateError(f"state database {self.label} is not a schedsync state database "
                                     "(it has a schedsync schema that is not ours)",
                                     "point the state URL at another database")
                if not has_meta and not self._create:
                    db.rollback()
                    raise no_state(self.label)
                self.created = not has_meta
                version = 0
                if has_meta:
                    cur.execute("SELECT version FROM schedsync.meta")
                    version = cur.fetchone()[0]
                for sql in MIGRATIONS[version:]:
                    cur.execute(sql)
                cur.execute(TRUST_CHECK)  # a schema another role created meanwhile (V1: IF NOT EXISTS)
                cur.execute("SELECT (SELECT version FROM schedsync.meta), schedsync.now()")
                row = cur.fetchone()
            db.commit()
            return row
        except psycopg2.Error as exc:
            db.rollback()
            raise self._state_error(exc) from None
        finally:
            db.autocommit = True

    def _state_error(self, exc: BaseException) -> StateError:
        text = self._clean(exc)
        code = getattr(exc, "pgcode", None) or ""
        if code == FOREIGN:
            return self._foreign(exc)
        if code == "42501":  # insufficient_privilege
            return StateError(f"state database {self.label}: {text}",
                              "grant this role access to the schedsync schema, or use another role")
        if code == "55P03":  # lock_timeout (read commands): another session holds a lock
            self.writable = False  # skip this optional write and every later one
            return StateBusy(f"state database {self.label} is busy: another session holds a lock",
                             "try again in a moment")
        if code == "25006":  # read_only_sql_transaction
            return StateError(f"state database {self.label} is read-only", "use a writable server")
        if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
            return StateError(f"state database {self.label} was lost: {text}",
                              "check that PostgreSQL is up and reachable")
        return StateError(f"state database {self.label}: {text}", "check the server's log")

    def _foreign(self, exc) -> StateError:
        """``schema schedsync is owned by role X``: refused, naming the owner and the fix."""
        what = " ".join((exc.diag.message_primary or "").split())[:200]
        owner = _ident(what.rpartition(" is owned by role ")[2])
        user = _ident(str(self.db.info.user))
        return StateError(f"state database {self.label}: {what}, not by {user} or a role it is a member "
                          "of, so schedsync will not run its code",
                          f"if you trust {owner}: GRANT {owner} TO {user}; else drop the schedsync schema"
                          " or point the state URL at another database")

    def _fetch(self, sql: str, args=(), retry: bool = False) -> list:
        """One statement. ``retry``: on a connection the server ended (a restart), connect
        again (for up to RECONNECT_FOR seconds) and send it once more."""
        mutex = self._mutex
        if mutex:
            mutex.acquire()
        try:
            if self._released:  # let go while the job ran: one for this statement
                # a renewal must not wait past its lease: crowded or slow, it tries again next time
                self.db = self._connect(patience=LEAN_PATIENCE if self._lean else None)
                self._released = False
            if retry and self.db.closed:
                self._reconnect()
            try:
                return self._execute(sql, args)
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                if not (retry and self.db.closed):
                    raise
            self._reconnect()
            return self._execute(sql, args)
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            self._dropped = bool(self.db.closed)  # the connection died (not just the statement)
            raise
        finally:
            if self._lean and time.monotonic() >= self._lean_from:
                self._let_go()
            if mutex:
                mutex.release()

    def _let_go(self) -> None:
        try:
            self.db.close()
        except psycopg2.Error:
            pass
        self._released = True  # closed on purpose: the next statement connects again

    def lean(self, on: bool = True) -> None:
        """``on``: from ``LEAN_AFTER`` seconds on, hold no connection between statements (a
        running job: its lease renewals take one briefly each; through PgBouncer that is
        cheap), so running jobs do not each pin a server connection. A job that ends sooner
        (most cron ticks) keeps its one connection: no second connect for its end.
        Off: keep one again (after the run's end)."""
        self._lean = on
        self._lean_from = time.monotonic() + LEAN_AFTER

    def _execute(self, sql: str, args) -> list:
        with self.db.cursor() as cur:
            cur.execute(self._local + sql, storable(args))
            return cur.fetchall() if cur.description else []

    def _reconnect(self) -> None:
        """A new session for a lost one, while the server restarts: for RECONNECT_FOR
        seconds from the first failure, shared by every caller; after that, none."""
        if self._lost_at is None:
            self._lost_at = time.monotonic()
        until, last = self._lost_at + RECONNECT_FOR, None
        while time.monotonic() < until:
            try:
                db = self._connect()
            except StateError as exc:
                last = exc
                if time.monotonic() < until:
                    time.sleep(0.25)
                continue
            self._lost_at = None
            try:
                self.db.close()
            except psycopg2.Error:
                pass
            self.db = db
            return
        raise last or StateError(f"state database {self.label} was lost", "check that PostgreSQL is up")

    def _lasting(self, sql: str, args=()) -> list | None:
        """A write that must not be lost (a run's end; safe to send twice): on a lost
        connection, reconnect and send it again for up to ``FINISH_FOR`` seconds. None if
        the database stayed away that long; other errors raise."""
        until, nap = time.monotonic() + _patience("SCHEDSYNC_FINISH_RETRY", FINISH_FOR), 0.2
        while True:
            try:
                return self._fetch(sql, args, retry=True)
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                if not self._dropped:
                    raise  # the statement failed, not the connection
            except StateError:
                pass  # _reconnect found no server yet
            if time.monotonic() >= until:
                return None
            import random

            time.sleep(min(nap * random.uniform(0.5, 1.5), max(0.0, until - time.monotonic())))
            nap = min(nap * 2, 2.0)

    def _q(self, sql: str, args=()) -> list:
        try:
            # While this process holds a lease it is mid-run: a restarted server is reached again.
            return self._fetch(sql, args, retry=bool(self.locks.names))
        except psycopg2.Error as exc:
            raise self._state_error(exc) from None

    def _now(self, now: float | None) -> float:
        return self.now() if now is None else now

    def now(self) -> float:
        return time.time() + self._offset

    # --- runs ---------------------------------------------------------------------------

    def admit_run(self, job, trigger, breaker, lease, budgets, rates, cost, now=None, slot=None,
                  item=None, params=None):
        host, pid, token = self.liveness.owner()
        caps = [float(rates[b][0]) for b in budgets]
        pers = [float(rates[b][1]) for b in budgets]
        held = job if job in self.locks.names else None
        sent = time.monotonic()
        [row] = self._q(
            "SELECT * FROM schedsync.admit(%s, %s, %s, %s, %s, %s::text[], %s::float8[], %s::float8[],"
            " %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (job, trigger, breaker.name, int(settings_of(breaker.settings)["half_open_runs"]),
             float(lease), list(budgets), caps, pers, float(cost), now, slot, host, pid, token, item,
             held, LEASE, time.time(), params))
        (run_id, started_at, trial, reason, retry_at, other_host, served, retry_of, retry_number,
         taken, taken_run, later, other_run, lease_name) = row
        if reason is None:
            if lease_name != held:
                self.locks.holding(lease_name, sent)
            run = Run(run_id, job, "running", trigger, started_at, host, pid, pid_start=token,
                      slot=served, retry_of=retry_of, retry_number=retry_number or 0, params=params)
            self.lean()  # the job runs now: its connection goes back (to PgBouncer, or the server)
            return Admitted(run, trial=bool(trial))
        if reason == "rate_limited" and retry_at is not None and retry_at != float("inf"):
            retry_at = never_short(retry_at)
        if retry_at == float("inf"):
            retry_at = None
        if reason == "already_ran" and item is not None:
            error = item_taken_error(item, None if taken == "gone" else taken, taken_run)
        elif reason == "already_ran":
            error = already_ran_error(slot, other_host, bool(later), other_run)
        else:
            error = _skip_error(reason, breaker.name, budgets)
        return Admitted(reason=reason, retry_at=retry_at, error=error)

    def record_skip(self, run, retention: dict, item=None) -> None:
        [(run.id,)] = self._q(
            "WITH j AS (INSERT INTO schedsync.jobs (name, first_seen) VALUES (%s, %s)"
            "   ON CONFLICT (name) DO NOTHING),"
            " r AS (INSERT INTO schedsync.runs (job, status, reason, trigger, started_at,"
            " finished_at, duration_ms, retry_at, host, pid, token, error, exit_code, slot, retry_of,"
            " retry_number, params, parent) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " %s, %s, %s) RETURNING id)"
            " SELECT id FROM r, schedsync.prune(%s, %s, %s, %s, %s), schedsync.tally(%s, %s, %s),"
            " schedsync.skip_slot(%s, %s, %s, %s)",
            (run.job, run.started_at,
             run.job, run.status, run.reason, run.trigger, run.started_at, run.finished_at,
             run.duration_ms, run.retry_at, run.host, run.pid, run.pid_start, run.error,
             run.exit_code, run.slot, run.retry_of, run.retry_number or 0, run.params, getattr(run, "parent", None),
             run.job, run.started_at, retention.get("success"),
             retention.get("failed"), PRUNE_BATCH, run.job, run.status, run.requests or 0,
             run.job, run.slot, item, run.reason or run.status))

    def record_spooled(self, entry: dict) -> int:
        """Insert a spooled run that could not start (``store.spool``), once: under a
        transaction-level lock on its key, and only if no run of the job with its host,
        pid and start exists. 1 if this call inserted it."""
        key = f"schedsync-spool:{entry['job']}:{entry['host']}:{entry['pid']}:{entry['at']!r}"
        error = f"not started: {entry['why']}: {entry['error']}"[:300]
        rows = self._q(
            "SELECT pg_advisory_xact_lock(hashtextextended(%(k)s, 0));"
            " WITH j AS (INSERT INTO schedsync.jobs (name, first_seen) VALUES (%(j)s, %(at)s)"
            "   ON CONFLICT (name) DO NOTHING),"
            " r AS (INSERT INTO schedsync.runs (job, status, reason, trigger, started_at, finished_at,"
            "   duration_ms, host, pid, error, slot)"
            "   SELECT %(j)s, 'failed', 'not_started', %(t)s, %(at)s, %(at)s, 0, %(h)s, %(p)s, %(e)s, %(s)s"
            "   WHERE NOT EXISTS (SELECT 1 FROM schedsync.runs WHERE job = %(j)s AND host = %(h)s"
            "     AND pid = %(p)s AND started_at = %(at)s) RETURNING id)"
            " SELECT id, schedsync.tally(%(j)s, 'failed', 0) FROM r",
            {"k": key, "j": entry["job"], "at": float(entry["at"]), "t": entry["trigger"],
             "h": entry["host"], "p": int(entry["pid"]), "e": error, "s": entry.get("slot")})
        return len(rows)

    def finish_run(self, run, breaker, evidence, trial, lease, retention, now=None, later=None, after=None):
        """Also when the connection is lost at the end of a run: reconnect and retry for
        ``FINISH_FOR`` seconds; if the database stays away, the end goes to this host's
        spool (``store.spool``) and the next schedsync here records it, never ``crashed``."""
        self.locks.forget(f"run:{run.id}")  # finish drops it: the renewer must not miss it
        try:
            lost, rows = False, None
            try:  # ``now`` None: the end is judged on the server's clock, in the statement
                rows = self._fetch(*self._finish_sql(run, breaker, evidence, trial, lease, retention, now, later,
                                                     after))
                ended: float | None = None
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                if not self._dropped:
                    raise
                lost = True
            except StateUnreachable:  # no connection to be had (lean: the job ran without one)
                lost = True
            if lost:
                # Sent again later: the end as it was (the server's start plus this host's
                # monotonic duration), not the instant the database came back.
                ended = now if now is not None else (
                    run.started_at + run.duration_ms / 1000 if run.duration_ms is not None else run.finished_at)
                rows = self._lasting(*self._finish_sql(run, breaker, evidence, trial, lease, retention, ended,
                                                        later, after))
        except psycopg2.Error as exc:
            raise self._state_error(exc) from None
        if rows is None:
            from schedsync.store.spool import write_finish

            path = write_finish(self.label, run, breaker, evidence, trial, lease, retention,
                                host=HOST, at=ended if ended is not None else self.now(), later=later,
                                after=after)
            kept = (f"the run's end ({run.status}) is kept in {path} and recorded by the next"
                    " schedsync on this host" if path else "the run's end could not be kept (spool full)")
            raise StateUnreachable(f"state database {self.label} was lost at the end of run {run.id} of"
                                   f" {run.job}; {kept}", "check that PostgreSQL is up and reachable",
                                   why="lost")
        self.lean(False)  # the run is recorded: the hooks and the close reuse one connection
        return self._transition(rows, breaker)

    def finish_spooled(self, entry: dict) -> int:
        """Apply a run's end that ``finish_run`` spooled: 1 if this call recorded it (the run
        was still ``running``, or ``crashed`` by a reaper meanwhile), 0 if already recorded."""
        run = Run(**entry["run"])
        breaker = BreakerSpec(entry["breaker"], entry["settings"])
        sql, args = self._finish_sql(run, breaker, entry["evidence"], entry["trial"], entry["lease"],
                                     entry["retention"], entry["at"], entry.get("later"), entry.get("after"))
        return len(self._q(sql, args))

    def _finish_sql(self, run, breaker, evidence, trial, lease, retention, now, later=None, after=None):
        """The statements of a run's end, safe to send twice: under a transaction-level lock
        on the run, they apply only while it is ``running`` or ``crashed`` (a reaper's mark
        while this host had lost the database: its tally moves to the real status); with
        ``later``, the retry the run calls for is queued in the same transaction, and so
        are the chains' ``after`` items (finish's ``p_after``)."""
        settings = settings_of(breaker.settings)
        why = f"run {run.id} of {run.job}: {run.status}" + (f" ({run.error})" if run.error else "")
        hand_back = trial and not evidence
        end = run.started_at + lease
        open_ = "EXISTS (SELECT 1 FROM schedsync.runs WHERE id = %s AND status IN ('running', 'crashed'))"
        queue = () if later is None else (
            run.job, later.get("slot"), later["kind"], later.get("state", "queued"), later["due_at"],
            later.get("reason"), later.get("retry_of"), later.get("retry_number") or 0, run.id)
        sql = (
            "SELECT pg_advisory_xact_lock(hashtextextended('schedsync-finish:' || %s::text, 0));"
            # the row too: a reaper's crash() waits, then finds the run no longer running
            " SELECT 1 FROM schedsync.runs WHERE id = %s FOR UPDATE;"
            + (" INSERT INTO schedsync.slots (job, slot, kind, state, due_at, reason, retry_of, retry_number)"
               f" SELECT %s, %s, %s, %s, %s, %s, %s, %s WHERE {open_} ON CONFLICT DO NOTHING;" if queue else "")
            # A trial handed back frees one lease (two trials admitted at one instant hold
            # equal ones; finish's array_remove would free both): first, in the same
            # implicit transaction, and finish is then told of no lease to hand back.
            + (" UPDATE schedsync.breakers SET leases = leases[:array_position(leases, %s) - 1]"
               " || leases[array_position(leases, %s) + 1:] WHERE name = %s AND %s = ANY (leases)"
               f" AND {open_};" if hand_back else "")
            + " UPDATE schedsync.run_counts c SET runs = c.runs - 1, requests = c.requests - r.requests"
            " FROM schedsync.runs r WHERE r.id = %s AND r.status = 'crashed' AND c.job = r.job"
            " AND c.status = 'crashed';"
            f" SELECT f.* FROM (SELECT 1 AS one WHERE {open_}) AS g, LATERAL schedsync.finish("
            "%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::text[], %s) AS f")
        back = (end, end, breaker.name, end, run.id) if hand_back else ()
        args = ((run.id, run.id) + queue + back + (run.id, run.id) + (
             run.id, run.status, run.reason, now, run.duration_ms,
             run.attempts, run.requests, run.items_processed, run.items_failed,
             run.exit_code, run.error, run.retry_at, run.output,
             run.job, breaker.name, int(settings["failures"]),
             float(settings["reset_after"]), bool(evidence), run.status not in FAILURES,
             bool(trial), None if hand_back else end, why[:300],
             retention.get("success"), retention.get("failed"), PRUNE_BATCH, list(after or ()),
             [run.items_inserted or 0, run.items_updated or 0, run.items_deleted or 0]))
        return sql, args

    @staticmethod
    def _transition(rows, breaker):
        if not rows:
            return None
        old, new, failures, opened_at, opens_until = rows[0]
        if old is None:
            return None
        return old, new, Breaker(breaker.name, "open" if new == "open" else "closed",
                                 failures or 0, opened_at, opens_until)

    def running_runs(self, jobs=None) -> list:
        if jobs is None:
            rows = self._q(f"SELECT {RUN_COLUMNS}, token FROM schedsync.runs WHERE status = 'running'")
        else:
            rows = self._q(f"SELECT {RUN_COLUMNS}, token FROM schedsync.runs WHERE status = 'running'"
                           " AND job = ANY (%s::text[])", (list(jobs),))
        return [Run(*row) for row in rows]

    def request_stop(self, job, text) -> list:
        asked = {i for (i,) in self._q(
            "UPDATE schedsync.leases SET stop = %s WHERE name = %s AND expires_at >= schedsync.now()"
            " RETURNING run_id", (text, job)) if i is not None}
        return [r for r in self.running_runs([job]) if r.id in asked] if asked else []

    def stop_requested(self, run):
        if self.locks.stop_request is not None:  # heard by the heartbeat
            return self.locks.stop_request
        rows = self._q("SELECT stop FROM schedsync.leases WHERE run_id = %s AND token = %s",
                       (run.id, self.locks.token))
        return rows[0][0] if rows else None

    def mark_crashed(self, run, error, breaker, evidence, now=None, after=None) -> bool:
        settings = settings_of(breaker.settings if breaker else {})
        why = f"run {run.id} of {run.job}: crashed ({error})"
        [(done, _old, _new)] = self._q(
            # a crashed run's own lapsed lease (overlap: allow) goes with it; a job's stays
            # until the job's next run takes it over
            "DELETE FROM schedsync.leases WHERE name = 'run:' || %s AND expires_at < schedsync.now();"
            " SELECT * FROM schedsync.crash(%s, %s, %s, %s, %s, %s, %s, %s, %s::text[])",
            (run.id, run.id, now, error, breaker.name if breaker else None,
             int(settings["failures"]), float(settings["reset_after"]),
             bool(evidence), why[:300], list(after or ())))
        return bool(done)

    # --- the slot ledger ------------------------------------------------------------------

    def item(self, item_id):
        rows = self._q(f"SELECT {SLOT_COLUMNS} FROM schedsync.slots WHERE id = %s", (item_id,))
        return SlotItem(*rows[0]) if rows else None

    def enqueue(self, job, items, now=None, requeue=False) -> list:
        if not items:
            return []
        cols = ([i.get("slot") for i in items], [i["kind"] for i in items], [i["due_at"] for i in items],
                [i.get("retry_of") for i in items], [i.get("retry_number") or 0 for i in items])
        rows = self._q(
            "WITH x AS (SELECT * FROM unnest(%(s)s::float8[], %(k)s::text[], %(d)s::float8[],"
            "   %(o)s::bigint[], %(n)s::int[]) WITH ORDINALITY AS x(slot, kind, due_at, retry_of, n, pos)),"
            # requeue: a done item asked for again is queued again (it existed before this statement)
            " again AS (UPDATE schedsync.slots s SET state = 'queued', due_at = x.due_at, run_id = NULL,"
            "   reason = NULL, claimed_at = NULL, claimed_by = NULL FROM x WHERE %(r)s AND s.job = %(j)s"
            "   AND coalesce(s.slot, -1) = coalesce(x.slot, -1) AND s.kind = x.kind"
            "   AND coalesce(s.retry_of, 0) = coalesce(x.retry_of, 0) AND s.retry_number = x.n"
            "   AND s.state IN ('ran', 'skipped', 'missed') RETURNING s.id),"
            " ins AS (INSERT INTO schedsync.slots (job, slot, kind, state, due_at, retry_of, retry_number)"
            "   SELECT %(j)s, slot, kind, 'queued', due_at, retry_of, n FROM x ORDER BY pos"
            "   ON CONFLICT DO NOTHING RETURNING id, slot, kind, retry_of, retry_number)"
            " SELECT x.pos, coalesce(ins.id, s.id) FROM x"
            " LEFT JOIN ins ON coalesce(ins.slot, -1) = coalesce(x.slot, -1) AND ins.kind = x.kind"
            "   AND coalesce(ins.retry_of, 0) = coalesce(x.retry_of, 0) AND ins.retry_number = x.n"
            " LEFT JOIN schedsync.slots s ON s.job = %(j)s AND coalesce(s.slot, -1) = coalesce(x.slot, -1)"
            "   AND s.kind = x.kind AND coalesce(s.retry_of, 0) = coalesce(x.retry_of, 0)"
            "   AND s.retry_number = x.n ORDER BY x.pos",
            {"j": job, "s": cols[0], "k": cols[1], "d": cols[2], "o": cols[3], "n": cols[4], "r": bool(requeue)})
        return [row[1] for row in rows]

    def enqueue_waiting(self, job, slot, due_at):
        # One implicit transaction: the job's advisory lock (transaction-level) makes the
        # look and the insert one step across hosts; the next statement sees a rival's row.
        [(waiting, added)] = self._q(
            "SELECT pg_advisory_xact_lock(hashtextextended('schedsync.queue:' || %s, 0));"
            " WITH waiting AS (SELECT id FROM schedsync.slots WHERE job = %s AND kind = 'queue'"
            "   AND state IN ('queued', 'claimed') LIMIT 1),"
            " added AS (INSERT INTO schedsync.slots (job, slot, kind, state, due_at)"
            "   SELECT %s, %s, 'queue', 'queued', %s WHERE NOT EXISTS (SELECT 1 FROM waiting)"
            "   ON CONFLICT (job, coalesce(slot, -1), kind, coalesce(retry_of, 0), retry_number, coalesce(parent, 0))"
            "   WHERE kind <> 'api'"
            "   DO UPDATE SET state = 'queued', due_at = excluded.due_at, run_id = NULL, reason = NULL,"
            "   claimed_at = NULL, claimed_by = NULL RETURNING id)"
            " SELECT (SELECT id FROM waiting), (SELECT id FROM added)",
            (job, job, job, slot, due_at))
        return (added, True) if added is not None else (waiting, False)

    def enqueue_api(self, job, params, due_at, now=None) -> tuple:
        # One statement: inserted, else the waiting twin the unique index found. A twin
        # committed after this statement's snapshot is not seen by its SELECT (nor one
        # that started meanwhile): then ask again.
        for _ in range(50):
            rows = self._q(
                "WITH ins AS (INSERT INTO schedsync.slots (job, slot, kind, state, due_at, params)"
                "   VALUES (%(j)s, NULL, 'api', 'queued', %(d)s, %(p)s) ON CONFLICT DO NOTHING RETURNING id)"
                " SELECT id, false FROM ins UNION ALL SELECT s.id, true FROM schedsync.slots s"
                " WHERE NOT EXISTS (SELECT 1 FROM ins) AND s.job = %(j)s AND s.kind = 'api'"
                "   AND coalesce(s.params, '') = coalesce(%(p)s, '') AND s.state IN ('queued', 'claimed')"
                " LIMIT 1", {"j": job, "d": due_at, "p": params})
            if rows:
                return int(rows[0][0]), bool(rows[0][1])
            time.sleep(0.01)
        raise StateError(f"could not queue a run of {job} in {self.label}: its waiting twin kept changing",
                         "try again")

    def claim_due(self, jobs, limit, claimer, now=None, per_job=1) -> list:
        rows = self._q(f"SELECT {SLOT_COLUMNS} FROM schedsync.claim_due(%s::text[], %s, %s, %s, %s, %s)",
                       (list(jobs), limit, claimer, now, per_job, CLAIM_STALE))
        return [SlotItem(*row) for row in rows]

    def release_item(self, item_id, state, reason=None) -> bool:
        rows = self._q(
            "WITH u AS (UPDATE schedsync.slots SET state = %(s)s, reason = %(r)s, claimed_at = NULL,"
            "   claimed_by = NULL WHERE id = %(i)s AND state IN ('claimed', 'queued') RETURNING job),"
            " c AS (INSERT INTO schedsync.slot_counts AS c (job, state, n)"
            "   SELECT job, 'missed', 1 FROM u WHERE %(s)s = 'missed'"
            "   ON CONFLICT (job, state) DO UPDATE SET n = c.n + 1)"
            " SELECT count(*) FROM u", {"s": state, "r": reason, "i": item_id})
        return bool(rows[0][0])

    def record_slots(self, job, slots, state, reason=None, now=None) -> int:
        [(n,)] = self._q("SELECT schedsync.record_slots(%s, %s::float8[], %s, %s)",
                         (job, list(slots), state, reason))
        return n

    def slots(self, job, limit=20) -> list:
        rows = self._q(f"SELECT {SLOT_COLUMNS} FROM schedsync.slots WHERE job = %s"
                       " ORDER BY coalesce(slot, due_at) DESC, id DESC LIMIT %s", (job, limit))
        return [SlotItem(*row) for row in rows]

    def queued(self, job) -> int:
        [(n,)] = self._q("SELECT count(*) FROM schedsync.slots WHERE job = %s"
                         " AND state IN ('queued', 'claimed')", (job,))
        return n

    def cancel_queued(self, job, kind=None) -> int:
        [(n,)] = self._q("WITH d AS (DELETE FROM schedsync.slots WHERE job = %s AND state = 'queued'"
                         " AND (%s::text IS NULL OR kind = %s) RETURNING 1) SELECT count(*) FROM d",
                         (job, kind, kind))
        return n

    def note_tick(self, host, error=None, now=None) -> None:
        self._q("INSERT INTO schedsync.ticks (host, at, error) VALUES (%s, coalesce(%s, schedsync.now()), %s)"
                " ON CONFLICT (host) DO UPDATE SET at = excluded.at, error = excluded.error",
                (host, now, error))

    def last_tick(self):
        rows = self._q("SELECT host, at, error FROM schedsync.ticks ORDER BY at DESC LIMIT 1")
        return Tick(*rows[0]) if rows else None

    def slot_counters(self) -> dict:
        return {job: int(n) for job, n in self._q(
            "SELECT job, n FROM schedsync.slot_counts WHERE state = 'missed'")}

    def begin_tick(self, host, claimer, marks, limit, now=None):
        names = list(marks)
        rows = self._q("SELECT * FROM schedsync.begin_tick(%s, %s, %s::text[], %s::text[], %s, %s, %s)",
                       (host, claimer, names, [marks[n] for n in names], limit, now, CLAIM_STALE))
        look, items = {}, []
        for row in rows:
            if row[0] == "item":
                items.append(SlotItem(*row[1:13]))
            else:
                look[row[2]] = (row[13], row[14])
        return look, items

    def settle_slots(self, settled, claimer, now=None) -> list:
        if not settled:
            return []
        missed_jobs, missed = [], []
        for s in settled:
            for slot in s.get("missed") or ():
                missed_jobs.append(s["job"])
                missed.append(slot)
        rows = self._q(
            f"SELECT {SLOT_COLUMNS} FROM schedsync.settle_slots(%s::text[], %s::text[], %s::float8[],"
            " %s::float8[], %s::float8[], %s::text[], %s::float8[], %s, %s)",
            ([s["job"] for s in settled], [s["key"] for s in settled], [s.get("until") for s in settled],
             [s.get("next_at") for s in settled], [s.get("claim") for s in settled], missed_jobs, missed,
             claimer, now))
        return [SlotItem(*row) for row in rows]

    # --- reads --------------------------------------------------------------------------

    def runs(self, job, limit=20, failed_only=False) -> list:
        where = "job = %s" + (" AND status = ANY (%s::text[])" if failed_only else "")
        rows = self._q(f"SELECT {RUN_COLUMNS} FROM schedsync.runs WHERE {where}"
                       " ORDER BY id DESC LIMIT %s", (job, *([list(FAILURES)] if failed_only else []), limit))
        return [Run(*row) for row in rows]

    def run(self, job, run_id=None):
        if run_id is None:
            rows = self._q(f"SELECT {RUN_COLUMNS} FROM schedsync.runs WHERE job = %s"
                           " ORDER BY id DESC LIMIT 1", (job,))
        else:
            rows = self._q(f"SELECT {RUN_COLUMNS} FROM schedsync.runs WHERE job = %s AND id = %s",
                           (job, run_id))
        return Run(*rows[0]) if rows else None

    def job_states(self, names, recent=10) -> dict:
        names = list(names)
        # Three queries however many jobs: status over the network stays a handful of round trips.
        jobs = {n: (seen, paused) for n, seen, paused in self._q(
            "SELECT name, first_seen, paused FROM schedsync.jobs WHERE name = ANY (%s::text[])", (names,))}
        recent_rows = self._q(
            f"SELECT r.* FROM unnest(%s::text[]) AS n(name) CROSS JOIN LATERAL"
            f" (SELECT {RUN_COLUMNS} FROM schedsync.runs WHERE job = n.name"
            f" ORDER BY id DESC LIMIT %s) AS r", (names, recent))
        marks = dict(self._q(
            "SELECT n.name, schedsync.last_success(n.name, NULL) FROM unnest(%s::text[]) AS n(name)",
            (names,)))
        by_job: dict = {n: [] for n in names}
        for row in recent_rows:
            by_job[row[1]].append(Run(*row))
        out = {}
        for name in names:
            seen, paused = jobs.get(name, (None, False))
            runs = by_job[name]
            out[name] = JobState(name, seen, bool(paused), runs, marks.get(name),
                                 runs[0].started_at if runs else None)
        return out

    def failure_streak(self, job, before=None) -> int:
        [(count,)] = self._q(
            "SELECT count(*) FROM schedsync.runs WHERE job = %(j)s"
            " AND status = ANY (%(f)s::text[])"
            " AND started_at > coalesce(schedsync.last_success(%(j)s, %(b)s), '-Infinity')"
            " AND (%(b)s::float8 IS NULL OR started_at < %(b)s)", {"j": job, "b": before, "f": list(FAILURES)})
        return count

    def counters(self) -> dict:
        out: dict = {}
        for job, status, runs, requests in self._q(
                "SELECT job, status, runs, requests FROM schedsync.run_counts"):
            out.setdefault(job, {})[status] = (int(runs), int(requests))
        return out

    def run_totals(self) -> dict:
        return totals_of(
            self._q("SELECT job, runs, seconds, processed, failed, deleted, retries FROM schedsync.run_totals"),
            self._q("SELECT job, le, runs FROM schedsync.run_buckets"))

    def adhoc_jobs(self) -> dict:
        return dict(self._q("SELECT name, adhoc FROM schedsync.jobs WHERE adhoc IS NOT NULL"))

    def slot_winner(self, job, slot):
        rows = self._q("SELECT regexp_replace(claimed_by, ':[0-9]+$', ''), run_id FROM schedsync.slots"
                       " WHERE job = %s AND slot = %s AND kind = 'cron' AND state = 'ran'", (job, slot))
        return tuple(rows[0]) if rows else None

    def host_skews(self) -> dict:
        return {h: (skew, seen) for h, skew, seen in self._q("SELECT host, skew, seen_at FROM schedsync.hosts")}

    def breakers(self, names) -> dict:
        rows = self._q("SELECT name, state, failures, opened_at, opens_until, leases"
                       " FROM schedsync.breakers WHERE name = ANY (%s::text[])", (list(names),))
        out = {n: Breaker(n) for n in names}
        for name, state, failures, opened_at, opens_until, leases in rows:
            out[name] = Breaker(name, state, failures, opened_at, opens_until, list(leases or []))
        return out

    def transitions(self, name, limit=10) -> list:
        return [tuple(r) for r in self._q(
            "SELECT at, old, new, reason FROM schedsync.breaker_events WHERE name = %s"
            " ORDER BY id DESC LIMIT %s", (name, limit))]

    def budget_levels(self, rates, now=None) -> dict:
        from schedsync.core.budgets import refill
        from schedsync.core.models import Bucket

        rows = self._q(  # the server's clock, read in the statement, unless a time is given
            "SELECT name, tokens, updated, blocked_until, coalesce(%s, schedsync.now())"
            " FROM schedsync.buckets WHERE name = ANY (%s::text[])", (now, list(rates)))
        stored = {n: (t, u, b) for n, t, u, b, _ in rows}
        now = rows[0][4] if rows else self._now(now)
        out = {}
        for name, (capacity, per) in rates.items():
            if name not in stored:
                out[name] = capacity
            else:
                out[name] = refill(Bucket(name, *stored[name]), capacity, per, now).tokens
        return out

    def notifications(self, job, limit=10) -> list:
        rows = self._q("SELECT job, event, target, at, ok, detail, run_id FROM schedsync.notifications"
                       " WHERE job = %s ORDER BY id DESC LIMIT %s", (job, limit))
        return [Notification(*row) for row in rows]

    # --- budgets and breakers ---------------------------------------------------------

    def spend(self, budgets, rates, cost, now=None, count=None):
        if not budgets or cost <= 0:
            if count is not None:
                self._q(COUNT_REQUESTS, count[::-1])
            return None
        args = (list(budgets), [float(rates[b][0]) for b in budgets],
                [float(rates[b][1]) for b in budgets], float(cost), now)
        if count is None:
            [(ready,)] = self._q(SPEND, args)
        else:  # one statement, one round trip: the run's count moves only with a granted token
            [(ready,)] = self._q(f"WITH s AS ({SPEND} AS ready), c AS ({COUNT_REQUESTS}"
                                 " AND (SELECT ready FROM s) IS NULL) SELECT ready FROM s",
                                 args + count[::-1])
        return ready if ready is None or ready == float("inf") else never_short(ready)

    def block_budgets(self, budgets, until, rates=None, now=None) -> None:
        if budgets:
            rates = rates or {}
            self._q("SELECT schedsync.block(%s::text[], %s::float8[], %s::float8[], %s, %s)",
                    (list(budgets), [_rate(rates, b, 0) for b in budgets],
                     [_rate(rates, b, 1) for b in budgets], until, now))

    def reset_breaker(self, breaker, reason, now=None):
        rows = self._q(
            "WITH old AS (SELECT name, state, opens_until FROM schedsync.breakers WHERE name = %(n)s"
            "   AND (state <> 'closed' OR failures <> 0) FOR UPDATE),"
            " upd AS (UPDATE schedsync.breakers b SET state = 'closed', failures = 0,"
            "   opened_at = NULL, opens_until = NULL, leases = '{}' FROM old WHERE b.name = old.name),"
            " t AS (SELECT coalesce(%(t)s, schedsync.now()) AS at),"
            " shown AS (SELECT CASE WHEN state = 'open' AND opens_until IS NOT NULL"
            "   AND (SELECT at FROM t) >= opens_until THEN 'half-open' ELSE state END AS s FROM old"
            "   WHERE state <> 'closed'),"
            " ev AS (INSERT INTO schedsync.breaker_events (name, at, old, new, reason)"
            "   SELECT %(n)s, (SELECT at FROM t), s, 'closed', %(r)s FROM shown RETURNING old)"
            " SELECT old FROM ev", {"n": breaker, "t": now, "r": reason})
        return rows[0][0] if rows else None

    # --- jobs ---------------------------------------------------------------------------

    def see_jobs(self, names, now=None) -> None:
        if names:
            self._q("INSERT INTO schedsync.jobs (name, first_seen)"
                    " SELECT n, coalesce(%s, schedsync.now()) FROM unnest(%s::text[]) AS n ORDER BY n"
                    " ON CONFLICT (name) DO NOTHING", (now, list(names)))

    def set_paused(self, name, paused, now=None) -> None:
        self._q("INSERT INTO schedsync.jobs (name, first_seen, paused, paused_at)"
                " VALUES (%(n)s, coalesce(%(t)s, schedsync.now()), %(p)s,"
                "   CASE WHEN %(p)s THEN coalesce(%(t)s, schedsync.now()) END)"
                " ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, paused_at = excluded.paused_at",
                {"n": name, "t": now, "p": bool(paused)})

    def set_adhoc(self, name, settings, now=None) -> None:
        self._q("INSERT INTO schedsync.jobs (name, first_seen, adhoc)"
                " VALUES (%s, coalesce(%s, schedsync.now()), %s)"
                " ON CONFLICT (name) DO UPDATE SET adhoc = excluded.adhoc", (name, now, settings))

    # --- resume points and watermarks (http jobs) ----------------------------------------

    def resume_point(self, job):
        rows = self._q("SELECT point, saved_at, run_id, began_at, done_run, done_began FROM schedsync.resume_points"
                       " WHERE job = %s", (job,))
        return ResumePoint(*rows[0]) if rows else None

    def save_resume(self, job, run_id, point, began_at, now=None) -> None:
        # One statement, one round trip per stored page; saved_at on the server's clock.
        self._q("INSERT INTO schedsync.resume_points AS r (job, point, saved_at, run_id, began_at)"
                " VALUES (%s, %s, coalesce(%s, schedsync.now()), %s, %s) ON CONFLICT (job) DO UPDATE"
                " SET point = excluded.point, saved_at = excluded.saved_at, run_id = excluded.run_id,"
                " began_at = excluded.began_at", (job, point, now, run_id, began_at))

    def end_resume(self, job, done_run=None, began_at=None, now=None) -> None:
        if done_run is None:
            self._q("DELETE FROM schedsync.resume_points WHERE job = %s", (job,))
            return
        self._q("INSERT INTO schedsync.resume_points AS r (job, point, saved_at, done_run, done_began)"
                " VALUES (%s, NULL, coalesce(%s, schedsync.now()), %s, %s) ON CONFLICT (job) DO UPDATE"
                " SET point = NULL, saved_at = excluded.saved_at, run_id = NULL, began_at = NULL,"
                " done_run = excluded.done_run, done_began = excluded.done_began", (job, now, done_run, began_at))

    def note_watermark(self, job, value, now=None):
        if value is None:
            rows = self._q("SELECT value FROM schedsync.watermarks WHERE job = %s", (job,))
        else:
            rows = self._q("INSERT INTO schedsync.watermarks AS w (job, value, noted_at)"
                           " VALUES (%s, %s, coalesce(%s, schedsync.now())) ON CONFLICT (job) DO UPDATE"
                           " SET value = greatest(w.value, excluded.value), noted_at = excluded.noted_at"
                           " RETURNING value", (job, value, now))
        return rows[0][0] if rows else None

    def watermarks(self, names) -> dict:
        if not names:
            return {}
        return dict(self._q("SELECT job, value FROM schedsync.watermarks WHERE job = ANY (%s::text[])",
                            (list(names),)))

    # --- alerts -------------------------------------------------------------------------

    def claim_alert(self, job, event, mark, every=None) -> bool:
        rows = self._q("INSERT INTO schedsync.alert_marks (job, event, mark) VALUES (%s, %s, %s)"
                       " ON CONFLICT (job, event) DO UPDATE SET mark = excluded.mark"
                       " WHERE alert_marks.mark IS DISTINCT FROM excluded.mark"
                       " AND (%s::float8 IS NULL OR alert_marks.mark <= excluded.mark - %s::float8) RETURNING 1",
                       (job, event, mark, every, every))
        return bool(rows)

    def record_notifications(self, notes, keep=50) -> None:
        if not notes:
            return
        self._q("INSERT INTO schedsync.notifications (job, event, target, at, ok, detail, run_id)"
                " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::float8[], %s::boolean[],"
                " %s::text[], %s::bigint[])",
                ([n.job for n in notes], [n.event for n in notes], [n.target for n in notes],
                 [n.at for n in notes], [bool(n.ok) for n in notes], [n.detail for n in notes],
                 [n.run_id for n in notes]))
        self._q("DELETE FROM schedsync.notifications n USING unnest(%s::text[]) AS j(job)"
                " WHERE n.job = j.job AND n.id <= (SELECT id FROM schedsync.notifications"
                "   WHERE job = j.job ORDER BY id DESC LIMIT 1 OFFSET %s)",
                (sorted({n.job for n in notes}), keep))

    # --- the audit log ------------------------------------------------------------------

    def record_audit(self, entry, keep=AUDIT_KEEP) -> int:
        [(entry_id,)] = self._q(
            "WITH e AS (INSERT INTO schedsync.audit (at, action, job, who, client, breaker, run_id, item_id,"
            "   params, reason) VALUES (coalesce(%(at)s, schedsync.now()), %(action)s, %(job)s, %(who)s,"
            "   %(client)s, %(breaker)s, %(run)s, %(item)s, %(params)s, %(reason)s) RETURNING id),"
            " d AS (DELETE FROM schedsync.audit a WHERE a.job IS NOT DISTINCT FROM %(job)s"
            "   AND (a.job IS NOT NULL OR a.breaker IS NOT DISTINCT FROM %(breaker)s)"
            "   AND a.id <= (SELECT id FROM schedsync.audit WHERE job IS NOT DISTINCT FROM %(job)s"
            "     AND (job IS NOT NULL OR breaker IS NOT DISTINCT FROM %(breaker)s)"
            "     ORDER BY id DESC LIMIT 1 OFFSET %(keep)s - 1))"
            " SELECT id FROM e",
            {"at": entry.at, "action": entry.action, "job": entry.job, "who": entry.who,
             "client": entry.client, "breaker": entry.breaker, "run": entry.run_id, "item": entry.item_id,
             "params": entry.params, "reason": entry.reason, "keep": keep})
        return entry_id

    def audit(self, job, breaker=None, limit=10) -> list:
        rows = self._q(f"SELECT {AUDIT_COLUMNS} FROM schedsync.audit WHERE job = %s OR breaker = %s"
                       " ORDER BY id DESC LIMIT %s", (job, breaker, limit))
        return [AuditEntry(*row) for row in rows]

    # --- retention ----------------------------------------------------------------------

    def prune_all(self, policies, now=None) -> int:
        now = self._now(now)
        removed = 0
        for job, (keep_success, keep_failed) in policies.items():
            while True:  # bounded transactions: a cron run waiting on a row never waits long
                [(count,)] = self._q("SELECT schedsync.prune(%s, %s, %s, %s, %s)",
                                     (job, now, keep_success, keep_failed, 20_000))
                removed += count
                if not count:
                    break
        return removed

    def close(self) -> None:
        self.locks.release_all()
        try:
            self.db.close()
        except psycopg2.Error:
            pass


NUL, NUL_STORED = "\0", "\ufffd"


def storable(value):
    """``value`` with every NUL in its text as U+FFFD: PostgreSQL's ``text`` cannot hold
    U+0000, so a NUL in a run's output, error or any other field is stored as �."""
    if isinstance(value, str):
        return value.replace(NUL, NUL_STORED) if NUL in value else value
    if isinstance(value, (list, tuple)):
        return type(value)(storable(v) for v in value)
    if isinstance(value, dict):
        return {k: storable(v) for k, v in value.items()}
    return value


def _ident(name: str) -> str:
    """A role name as SQL spells it (quoted unless plain lower case), on one line."""
    name = " ".join(name.split())
    plain = name.replace("_", "a")
    if plain.isascii() and plain.isalnum() and name == name.lower() and not name[0].isdigit():
        return name
    return '"' + name.replace('"', '""') + '"'


def _rate(rates: dict, name: str, i: int):
    rate = rates.get(name)
    return float(rate[i]) if rate else None


def _password(url: str) -> str | None:
    try:
        return psycopg2.extensions.parse_dsn(url).get("password")
    except psycopg2.Error:
        return None


def _skip_error(reason, breaker, budgets) -> str:
    if reason == "paused":
        return "paused; `schedsync resume` it"
    if reason == "breaker_open":
        return f"breaker {breaker} is open"
    return f"budget {', '.join(budgets)} is empty"


# --- leases and liveness ------------------------------------------------------------------

ACQUIRE = ("INSERT INTO schedsync.leases AS l (name, token, host, pid, expires_at)"
           " VALUES (%s, %s, %s, %s, schedsync.now() + %s)"
           " ON CONFLICT (name) DO UPDATE SET token = excluded.token, host = excluded.host,"
           " pid = excluded.pid, run_id = NULL, expires_at = excluded.expires_at, stop = NULL"
           " WHERE l.expires_at < schedsync.now() RETURNING l.name")
# Only a lease that has not lapsed is renewed: once expired it may be taken, and its
# run judged gone (crashed), so a holder that finds one lapsed has lost it.
# It reads back a stop request (overlap: replace) in the same round trip.
RENEW = ("UPDATE schedsync.leases SET expires_at = schedsync.now() + %s"
         " WHERE token = %s AND expires_at >= schedsync.now() RETURNING name, stop")


class Lease(Lock):
    """One job's lease (``schedsync.leases``, named after the job): see ``Leases``."""

    def __init__(self, leases: Leases, job: str):
        self.leases, self.name = leases, job
        self.taken = False

    def acquire(self, wait: float = 0.0) -> bool:
        deadline = time.monotonic() + wait
        while True:
            if self.leases.take(self.name):
                self.taken = True
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(0.2, left))

    def release(self) -> None:
        if self.taken:
            self.taken = False
            self.leases.release(self.name)

    def held(self) -> bool:
        return not self.taken or self.leases.held()


class Leases(Locks):
    """This process's leases: rows with ``expires_at`` on the server's clock, all under
    one random token, renewed together by one thread every ``RENEW`` seconds.

    Nothing depends on a session: after a server restart the renewer reconnects and
    renews while the lease has not lapsed. ``held()`` is False once no renewal was
    confirmed for ``LEASE - MARGIN`` seconds (this host's monotonic clock, counted from
    when the confirmed renewal was *sent*), or once a lease was taken by another
    (lost): the runner stops the job. A command's keeper hears of each confirmed
    renewal on a pipe (``pipe()``) and stops the job by itself at the same instant, so
    a paused or dead schedsync cannot leave it running into another holder's lease.
    """

    def __init__(self, store: PostgresStore):
        self.store = store
        self.token = int.from_bytes(os.urandom(8), "big") >> 1  # a positive bigint
        self.names: set[str] = set()
        self.valid_until = 0.0  # monotonic: the job must be stopped by then
        self.lost = False
        self._pipes: list[int] = []  # write ends of keepers' lease pipes
        self._thread: threading.Thread | None = None
        self._stopped: threading.Event | None = None
        self.stop_request: str | None = None  # a newer run asked us to stop (overlap: replace)
        self.armed = False  # the job is running: a stop request cancels it (SIGTERM to ourselves)

    def lock(self, job: str) -> Lease:
        return Lease(self, job)

    def place(self, limit: str, index: int) -> Lease:
        """A limit's place: a lease like a job's, under this process's token, so the one
        renewal statement renews it and its loss fences the job the same way."""
        return Lease(self, f"limit:{limit}:{index}")

    def take(self, name: str) -> bool:
        if name in self.names:
            return False  # one holder per lease, this process included
        sent = time.monotonic()
        host, pid, token = self.store.liveness.owner()
        if not self.store._q(ACQUIRE, (name, token, host, pid, LEASE)):
            return False
        self.holding(name, sent)
        return True

    def holding(self, name: str, sent: float) -> None:
        """``name`` was taken (or created by ``admit``) by a statement sent at ``sent``."""
        if not self.names:
            self.lost = False
            self.stop_request = None
            self.valid_until = sent + LEASE - MARGIN
        self.names.add(name)
        self._start()

    def release(self, name: str) -> None:
        self.names.discard(name)
        try:
            self.store._fetch("DELETE FROM schedsync.leases WHERE name = %s AND token = %s",
                              (name, self.token), retry=True)
        except (psycopg2.Error, StateError):  # StateError: no connection to be had (lean)
            pass  # it lapses by itself

    def forget(self, name: str) -> None:
        """A lease some statement of ours dropped (``finish`` drops a run's own)."""
        self.names.discard(name)

    def held(self) -> bool:
        return not self.lost and time.monotonic() < self.valid_until

    def pipe(self) -> tuple[int, int, float]:
        """A pipe for a keeper: (read end, write end, the instant it must stop the job by);
        each confirmed renewal writes the next such instant (monotonic seconds) as a line."""
        r, w = os.pipe()
        os.set_blocking(w, False)
        self._pipes.append(w)
        return r, w, self.valid_until if self.names else float("inf")

    def unpipe(self, w: int) -> None:
        if w in self._pipes:
            self._pipes.remove(w)
        os.close(w)

    def _start(self) -> None:
        if self._thread is not None:
            return
        import threading

        if self.store._mutex is None:
            self.store._mutex = threading.Lock()
        self._stopped = threading.Event()
        thread = self._thread = threading.Thread(target=self._loop, name="schedsync-leases", daemon=True)
        thread.start()

    def _loop(self) -> None:
        assert self._stopped is not None
        while not self._stopped.wait(RENEW_EVERY):
            if self.names:
                self.renew()

    def renew(self) -> None:
        sent, expected = time.monotonic(), set(self.names)
        try:
            rows = self.store._fetch(RENEW, (LEASE, self.token), retry=True)
        except Exception:  # unreachable for now: held() turns False when it lasts
            return
        got = {n for (n, _) in rows}
        stop = next((text for (n, text) in rows if text and n in self.names), None)
        if stop is not None and self.stop_request is None:
            self.stop_request = stop
            if self.armed:
                self._cancel()
        if (expected & self.names) - got:  # held before we asked and still meant to be
            self.lost = True  # lapsed and taken (or removed): never ours again
            return
        self.valid_until = max(self.valid_until, sent + LEASE - MARGIN)
        line = b"%.3f\n" % self.valid_until
        for w in list(self._pipes):
            try:
                os.write(w, line)
            except OSError:  # the keeper is gone, or not reading
                pass

    def arm(self, on: bool) -> None:
        """While the job runs (``on``), a stop request stops it: as a person's SIGTERM would."""
        self.armed = on
        if on and self.stop_request is not None:
            self._cancel()

    @staticmethod
    def _cancel() -> None:
        import signal

        os.kill(os.getpid(), signal.SIGTERM)  # the runner's handler cancels the job

    def release_all(self) -> None:
        if self._stopped is not None:
            self._stopped.set()
        if self.names:
            self.names.clear()
            try:
                self.store._fetch("DELETE FROM schedsync.leases WHERE token = %s", (self.token,), retry=True)
            except (psycopg2.Error, StateError):  # they lapse by themselves
                pass


class LeaseLiveness(Liveness):
    """A ``running`` row is alive while a lease names it and has not expired by the
    server's clock; whichever host asks, never a pid check on another host."""

    def __init__(self, store: PostgresStore):
        self.store = store

    def owner(self):
        return HOST, os.getpid(), self.store.locks.token

    def gone(self, runs: list) -> list:
        if not runs:
            return []
        alive = {i for (i,) in self.store._q(
            "SELECT run_id FROM schedsync.leases WHERE run_id = ANY (%s::bigint[])"
            " AND expires_at >= schedsync.now()", ([r.id for r in runs],))}
        return [r for r in runs if r.id not in alive]

"""Plain records passed between the store, the pure core and the renderers."""

from __future__ import annotations

from schedsync.core.records import dataclass, field

# Run statuses and skip reasons, as SPEC names them.
RUNNING, SUCCESS, PARTIAL, FAILED, TIMEOUT, SKIPPED, CRASHED = (
    "running", "success", "partial", "failed", "timeout", "skipped", "crashed",
)
FAILURES = (FAILED, TIMEOUT, CRASHED)
LOCKED, BREAKER_OPEN, RATE_LIMITED, PAUSED, CANCELLED, ALREADY_RAN = (
    "locked", "breaker_open", "rate_limited", "paused", "cancelled", "already_ran",
)
# A run over a concurrency limit (skipped), and a run another stopped (failed, overlap: replace).
LIMITED, REPLACED = "limited", "replaced"
UPSTREAM_NOT_READY = "upstream_not_ready"  # a ``requires:`` job's last run did not succeed in time
# Upper bounds (seconds) of schedsync_run_duration_seconds' buckets, for cron jobs: from
# 0.1 s to 1 h. The store keeps a count per bound (a run in the smallest bound that holds
# it, none over 1 h: +Inf is the count); the SQL of both backends names the same list.
DURATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


@dataclass
class Run:
    """One row of run history. Times are POSIX seconds (UTC)."""

    id: int
    job: str
    status: str
    trigger: str
    started_at: float
    host: str
    pid: int
    reason: str | None = None
    finished_at: float | None = None
    duration_ms: int | None = None
    attempts: int = 0
    requests: int = 0
    items_processed: int = 0
    items_failed: int = 0
    exit_code: int | None = None
    error: str | None = None
    retry_at: float | None = None
    output: str | None = None
    slot: float | None = None  # the scheduled start this run served (the ledger's slot), if any
    retry_of: int | None = None  # the first run of its retry chain (a retry later)
    retry_number: int = 0  # 0: not a retry; n: the chain's n-th retry
    params: str | None = None  # the run's params (JSON text, ``{NAME: value}``), if the job has any
    parent: int | None = None  # the run whose end queued this one (``after:``), if any
    items_inserted: int = 0  # http jobs: rows the load inserted, updated and deleted
    items_updated: int = 0
    items_deleted: int = 0
    pid_start: int | None = None  # kernel start time of pid, to tell a reused pid


# The slot ledger: what became of a scheduled start or a queued piece of work.
QUEUED, CLAIMED, RAN, MISSED = "queued", "claimed", "ran", "missed"  # and SKIPPED
SLOT_STATES = (QUEUED, CLAIMED, RAN, SKIPPED, MISSED)
# Item kinds: ``cron`` is a scheduled slot (claimed by a cron-started run or the tick);
# ``catchup``, ``backfill`` and ``retry`` are work the tick starts from the queue; ``api``
# a run asked for by ``schedsync trigger`` (or serve), with its params; ``after`` is a
# chain's: queued by the end of an upstream run (``parent``); ``queue`` overlap: queue's
# waiting run.
API = "api"
SLOT_KINDS = ("cron", "catchup", "backfill", "retry", API, "after", "queue")


@dataclass
class SlotItem:
    """One row of the slot ledger: a scheduled slot of a job, or a queued work item.

    ``slot`` is the scheduled start it serves (POSIX seconds; None for none), ``kind`` one
    of SLOT_KINDS, ``state`` one of SLOT_STATES, ``due_at`` when it may start, ``run_id``
    the run that served it, ``reason`` why it was skipped, missed or dropped, ``retry_of``
    and ``retry_number`` its retry chain, ``claimed_at``/``claimed_by`` (``host:pid``) who
    claimed it to start it, ``params`` an ``api`` item's params (JSON text)."""

    id: int
    job: str
    slot: float | None
    kind: str
    state: str
    due_at: float
    run_id: int | None = None
    reason: str | None = None
    retry_of: int | None = None
    retry_number: int = 0
    claimed_at: float | None = None
    claimed_by: str | None = None
    params: str | None = None  # an ``api`` item's params (JSON text), else None
    parent: int | None = None  # an ``after`` item's upstream run


@dataclass
class Tick:
    """The newest ``schedsync tick`` a host noted: when, and the error that stopped it (if any)."""

    host: str
    at: float
    error: str | None = None


@dataclass
class Bucket:
    """A token bucket's persisted level at ``updated``; ``blocked_until``: a Retry-After pause."""

    name: str
    tokens: float
    updated: float
    blocked_until: float | None = None


@dataclass
class Breaker:
    """A circuit breaker's persisted state; ``state`` is closed or open.

    half-open is derived: an open breaker whose ``opens_until`` has passed.
    ``leases`` holds the expiry times of trial runs in flight while half-open.
    """

    name: str
    state: str = "closed"
    failures: int = 0
    opened_at: float | None = None
    opens_until: float | None = None
    leases: list[float] = field(default_factory=list)


@dataclass
class JobState:
    """What status needs of one job, read in one go from the store."""

    name: str
    first_seen: float | None
    paused: bool
    recent: list[Run]  # newest first, bounded
    last_success_at: float | None
    last_started_at: float | None  # newest run of any status, skips included


@dataclass
class Notification:
    """One webhook or ping attempt, kept (bounded per job) so `status JOB` can show it."""

    job: str
    event: str  # failure | recovery | breaker_open | late | ping:start | ping:success | ping:fail
    target: str  # scheme://host/… only: webhook and ping paths often carry a token
    at: float
    ok: bool
    detail: str  # "HTTP 204", "timed out after 5s", …
    run_id: int | None = None


AUDIT_ACTIONS = ("trigger", "retry", "pause", "resume", "breaker_reset")


@dataclass
class AuditEntry:
    """One write through ``serve``'s API or dashboard, kept (bounded per job) in the state:
    when, what, which credential (a label, never the secret), from where, and why."""

    at: float
    action: str  # one of AUDIT_ACTIONS
    job: str | None  # None: a breaker reset named by its breaker, not by a job
    who: str  # "token" or "basic:USER"
    client: str  # the peer's address as serve saw it
    breaker: str | None = None  # breaker_reset: the breaker closed
    run_id: int | None = None  # retry: the run retried
    item_id: int | None = None  # trigger and retry: the queue id
    params: str | None = None  # trigger and retry: the params as JSON text
    reason: str | None = None
    id: int | None = None

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
    pid_start: int | None = None  # kernel start time of pid, to tell a reused pid


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

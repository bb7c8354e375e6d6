"""What a job kind returns, and the exceptions that cut a run short."""

from __future__ import annotations

from schedsync.core.records import dataclass


class Cancelled(BaseException):
    """SIGTERM/SIGINT/SIGHUP reached ``schedsync run``; str() names the signal."""


class Fenced(Cancelled):
    """The run's lease may lapse (no renewal confirmed in time): the job is stopped."""


FENCED = "stopped: lost the state database while holding the lock (fenced)"


class DeadlinePassed(BaseException):
    """The run's hard timeout passed inside Python code (http and python jobs)."""


@dataclass
class Outcome:
    status: str  # success | partial | failed | timeout
    exit_code: int | None = None
    error: str | None = None
    reason: str | None = None
    attempts: int = 1
    requests: int = 0
    items_processed: int = 0
    items_failed: int = 0
    items_inserted: int = 0  # http jobs: rows the load inserted, updated and deleted
    items_updated: int = 0
    items_deleted: int = 0
    output: str | None = None  # redacted tail kept in the record
    held: str | None = None  # redacted output shown when a cron run fails
    stderr: str | None = None  # fails_when.stderr: the first line the job wrote to stderr (redacted)
    window: str | None = None  # fails_when.output_matches: the last part of the output (app.rules.WINDOW)
    retry_at: float | None = None

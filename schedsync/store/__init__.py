"""The one interface to persisted state. Features are built on these domain
operations, never on SQL; every SQL string lives in a backend module
(``store_sqlite`` now, PostgreSQL next), and one contract test runs against each.

``Store`` documents the operations a backend provides; backends do not inherit
from it (a Protocol would cost every cron tick the ``typing`` import).
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from schedsync.store.lock import FileLock
from schedsync.core.models import Breaker, Bucket, JobState, Notification, Run


class Store:
    path: str

    def transaction(self) -> AbstractContextManager[None]:
        """Serialise a read-modify-write against every other process; calls nest."""

    # runs
    def start_run(self, run: Run) -> int: ...
    def finish_run(self, run: Run) -> None: ...
    def running_runs(self, job: str | None = None) -> list[Run]: ...
    def mark_crashed(self, run_id: int, now: float, error: str) -> bool:
        """True if this call turned the run from running to crashed (and no other did)."""
    def counters(self) -> dict[str, dict[str, tuple[int, int]]]:
        """{job: {status: (runs, requests)}}, counted as runs finish (and skip, and crash);
        retention pruning never lowers them."""
    def runs(self, job: str, limit: int = 20, failed_only: bool = False) -> list[Run]: ...
    def job_states(self, names: list[str], recent: int = 10) -> dict[str, JobState]: ...
    def prune(self, job: str, now: float, keep_success: float | None,
              keep_failed: float | None, limit: int | None = None) -> int:
        """Delete finished runs past retention (at most ``limit``); a job's newest success is kept."""
    def prune_all(self, policies: dict[str, tuple[float | None, float | None]], now: float) -> int:
        """``prune`` every job in ``policies`` ({job: (keep_success, keep_failed)}), in bounded transactions."""
    def failure_streak(self, job: str, before: float | None = None) -> int:
        """Failed, timed-out and crashed runs since the last success (started before ``before``)."""

    # jobs
    def see_job(self, name: str, now: float) -> None: ...
    def set_paused(self, name: str, paused: bool, now: float) -> None: ...
    def is_paused(self, name: str) -> bool: ...
    def set_adhoc(self, name: str, settings: str | None, now: float) -> None:
        """Remember (JSON text) the settings of a job `schedsync exec` ran without a registry entry."""
    def adhoc_jobs(self) -> dict[str, str]:
        """{name: settings JSON} of the jobs ``set_adhoc`` remembered."""

    # budgets and breakers
    def load_bucket(self, name: str) -> Bucket | None: ...
    def save_bucket(self, bucket: Bucket) -> None: ...
    def load_breaker(self, name: str) -> Breaker: ...
    def save_breaker(self, breaker: Breaker) -> None: ...
    def record_transition(self, name: str, at: float, old: str, new: str, reason: str) -> None: ...
    def transitions(self, name: str, limit: int = 10) -> list[tuple[float, str, str, str]]: ...

    # alerts
    def record_notifications(self, notes: list[Notification], keep: int = 50) -> None:
        """Store attempts, keeping the ``keep`` newest per job."""
    def notifications(self, job: str, limit: int = 10) -> list[Notification]: ...
    def claim_alert(self, job: str, event: str, mark: float) -> bool:
        """True if ``event`` was not yet sent for ``mark``; marks it sent (one process wins)."""

    # overlap
    def job_lock(self, name: str) -> FileLock:
        """The job's overlap lock (``acquire(wait)``, ``release()``, ``fd``), held by the OS."""

    def close(self) -> None: ...


def open_store(path: str) -> Store:
    """The store at ``path``: created, private to the user and migrated on open."""
    from schedsync.store.sqlite import SQLiteStore

    return SQLiteStore(path)

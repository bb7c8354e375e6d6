"""The store port: persisted state as *atomic domain operations*.

Every operation below is atomic on its own: the backend runs the pure arithmetic
(``core.budgets``, ``core.breaker``) inside its own transaction (SQLite:
``BEGIN IMMEDIATE``; PostgreSQL: one server-side statement or row locks), so no
caller ever holds a transaction or does load → decide → save on stored state.
Features are built on these operations, never on SQL; every SQL string lives in
a backend module, and one contract suite (``tests/test_store.py``) runs against
each backend.

Times: every operation that decides by the clock takes ``now=None``, meaning
"the backend's clock" (``time.time()`` for SQLite, the database server's clock for
PostgreSQL, so host clock skew neither mints tokens nor misjudges a breaker). An
explicit ``now`` is honoured (tests, and callers that must agree on one instant).

Besides state, a backend chooses two small ports that are not state:
``locks`` (the per-job overlap lock) and ``liveness`` (is a ``running`` row's owner
gone?). Synced data goes through the data-sink port (``store.sink``), chosen by
the job's configured target, not through this store.

``abc`` costs nothing measurable on the ``run`` path; ``typing`` would.
"""

from __future__ import annotations

import abc

from schedsync.core.errors import NoState
from schedsync.core.records import dataclass

# Both backends' run columns, in ``core.models.Run``'s order (``Run(*row)``); a backend
# appends its owner column (SQLite's pid_start, PostgreSQL's token) where it needs it.
RUN_FIELDS = ("id", "job", "status", "trigger", "started_at", "host", "pid", "reason",
              "finished_at", "duration_ms", "attempts", "requests", "items_processed",
              "items_failed", "exit_code", "error", "retry_at", "output")
RUN_COLUMNS = ", ".join(RUN_FIELDS)
PRUNE_BATCH = 100  # rows a finished run prunes, so retention stays cheap however old the backlog


def no_state(where: str) -> NoState:
    """What a command that never creates a state (``status``, ``resume``…) says when there is none."""
    return NoState(f"no state at {where} yet",
                      "`schedsync run JOB` creates it; or check --state, $SCHEDSYNC_STATE"
                      " and jobs.yaml's state:")


@dataclass
class BreakerSpec:
    """Which breaker a job feeds and its settings (``failures``, ``reset_after``,
    ``half_open_runs``) as config validated them."""

    name: str
    settings: dict


@dataclass
class Admitted:
    """``admit_run``'s answer: the ``running`` run, or why not.

    ``run`` is set (with its id) when admitted; else ``reason`` (``paused``,
    ``breaker_open``, ``rate_limited``, ``already_ran``), ``retry_at`` (when it may
    be allowed again; None when unknown) and ``error`` (one line for a person).
    ``trial`` is True when the run holds a half-open breaker's trial lease.
    """

    run: object = None
    trial: bool = False
    reason: str | None = None
    retry_at: float | None = None
    error: str | None = None


class Lock(abc.ABC):
    """One job's overlap lock, released by the OS or the database if its holder dies."""

    @abc.abstractmethod
    def acquire(self, wait: float = 0.0) -> bool:
        """Take it, waiting up to ``wait`` seconds; False if another holder keeps it."""

    @abc.abstractmethod
    def release(self) -> None: ...

    @property
    def pass_fds(self) -> tuple:
        """Descriptors a command's child inherits so the lock outlives a killed schedsync."""
        return ()

    def held(self) -> bool:
        """False once the lock may have been lost (fencing: the runner stops the job)."""
        return True


class Locks(abc.ABC):
    @abc.abstractmethod
    def lock(self, job: str) -> Lock: ...


class Liveness(abc.ABC):
    """Who owns a run, and whether that owner is surely gone."""

    @abc.abstractmethod
    def owner(self) -> tuple[str, int, int | None]:
        """(host, pid, token) to stamp on a new ``running`` row; ``token`` tells a
        reused pid apart (kernel start time) or names the owner's session."""

    @abc.abstractmethod
    def gone(self, runs: list) -> list:
        """Those of ``runs`` (``running`` rows) whose owner is surely gone. A run this
        process cannot judge (e.g. another host's, on SQLite) is never returned."""


class Store(abc.ABC):
    locks: Locks
    liveness: Liveness
    writable: bool = True  # False: opened read-only; reads work, every write raises StateError
    created: bool = False  # True: this open created the state (it did not exist)
    label: str  # where the state is, as messages may show it (a URL's password redacted)
    claims_slots: bool = False  # admit_run honours ``slot`` (once per slot across hosts)

    @abc.abstractmethod
    def now(self) -> float:
        """The clock every cross-process decision uses (POSIX seconds)."""

    # --- runs: the atomic steps of one run -----------------------------------------

    @abc.abstractmethod
    def admit_run(self, job: str, trigger: str, breaker: BreakerSpec, lease: float,
                  budgets: list[str], rates: dict, cost: float, now: float | None = None,
                  slot: float | None = None) -> Admitted:
        """In one step: note the job as seen; skip it if paused; admit it through its
        breaker (a half-open trial takes a lease ending ``lease`` seconds from now);
        spend ``cost`` tokens from every bucket in ``budgets`` (all or none; ``rates``
        is ``{name: (capacity, per_seconds)}``; cost 0 spends nothing); claim ``slot``
        (a scheduled start time; a slot already claimed is ``already_ran``) when the
        backend supports it; and insert the ``running`` row stamped with
        ``liveness.owner()``. Nothing is changed when the run is not admitted."""

    def slot_winner(self, job: str, slot: float) -> tuple | None:
        """(host, run id) of the run that claimed ``slot`` of ``job``, or None (also when
        the backend claims no slots)."""
        return None

    def host_skews(self) -> dict:
        """{host: (its clock minus the store's, seconds; when noted)} where known."""
        return {}

    @abc.abstractmethod
    def record_skip(self, run, retention: dict) -> None:
        """Insert a finished run that never started (``run.id`` is set) and prune cheaply:
        a ``skipped`` one, or a ``failed`` one that could not start (e.g. an unset
        ``${TOKEN}``). Also notes the job as seen."""

    @abc.abstractmethod
    def finish_run(self, run, breaker: BreakerSpec, evidence: bool, trial: bool,
                   lease: float, retention: dict, now: float | None = None):
        """In one step: store the run's end; if ``evidence`` (the run says something
        about the upstream), feed the breaker (``run.status`` in FAILURES is a
        failure); if it was a ``trial`` that proved nothing, hand its lease (ending at
        ``run.started_at + lease``) back; prune the job's old runs cheaply (bounded).
        Returns the breaker transition ``(old, new, breaker)`` or None."""

    @abc.abstractmethod
    def running_runs(self, jobs: list[str] | None = None) -> list:
        """``running`` rows, of ``jobs`` or of all jobs."""

    @abc.abstractmethod
    def mark_crashed(self, run, error: str, breaker: BreakerSpec | None,
                     evidence: bool, now: float | None = None) -> bool:
        """Turn ``run`` from running to crashed (and, if ``evidence``, count it on
        ``breaker``) in one step, keeping the requests ``spend`` stored for it (tallied in
        ``counters``). True if this call did it and no other."""

    # --- reads -----------------------------------------------------------------------

    @abc.abstractmethod
    def runs(self, job: str, limit: int = 20, failed_only: bool = False) -> list: ...

    @abc.abstractmethod
    def run(self, job: str | None, run_id: int | None = None):
        """One run of ``job`` with its output: ``run_id``, else the newest. None if absent.
        ``job`` None with a ``run_id``: that run, whichever job it belongs to."""

    @abc.abstractmethod
    def job_states(self, names: list[str], recent: int = 10) -> dict:
        """{name: JobState} for every name, in a bounded number of queries."""

    @abc.abstractmethod
    def failure_streak(self, job: str, before: float | None = None) -> int: ...

    @abc.abstractmethod
    def breakers(self, names: list[str]) -> dict:
        """{name: Breaker} (a closed one for a name never stored)."""

    @abc.abstractmethod
    def transitions(self, name: str, limit: int = 10) -> list: ...

    @abc.abstractmethod
    def budget_levels(self, rates: dict, now: float | None = None) -> dict:
        """{name: tokens now} for every bucket in ``rates`` (full when never used)."""

    @abc.abstractmethod
    def notifications(self, job: str, limit: int = 10) -> list: ...

    @abc.abstractmethod
    def counters(self) -> dict:
        """{job: {status: (runs, requests)}}: counted inside ``finish_run``,
        ``record_skip`` and ``mark_crashed`` (same transaction as the run's row), so they
        only grow; retention pruning never lowers them (Prometheus ``rate()`` needs that)."""

    @abc.abstractmethod
    def adhoc_jobs(self) -> dict:
        """{name: settings JSON text} of the jobs ``set_adhoc`` remembered."""

    # --- budgets and breakers --------------------------------------------------------

    @abc.abstractmethod
    def spend(self, budgets: list[str], rates: dict, cost: float,
              now: float | None = None, count: tuple[int, int] | None = None) -> float | None:
        """Take ``cost`` tokens from every bucket or from none. None when granted, else
        when all of them will have enough (``inf``: never, cost above capacity).

        ``count`` = ``(run_id, requests)``: when granted (no budget: always), also store
        ``requests`` as that ``running`` run's request count, in the same transaction, so
        a run that crashes keeps the requests it made (``mark_crashed`` counts them)."""

    @abc.abstractmethod
    def block_budgets(self, budgets: list[str], until: float, rates: dict | None = None,
                      now: float | None = None) -> None:
        """An upstream's Retry-After: the buckets grant nothing until ``until`` and keep
        their tokens (``rates`` as for ``spend``: a bucket never used starts full)."""

    @abc.abstractmethod
    def reset_breaker(self, breaker: str, reason: str, now: float | None = None) -> str | None:
        """Close it by hand; the state it had, or None if it was closed already."""

    # --- jobs ------------------------------------------------------------------------

    @abc.abstractmethod
    def see_jobs(self, names: list[str], now: float | None = None) -> None:
        """Record first-seen for names not seen before (LATE needs it)."""

    @abc.abstractmethod
    def set_paused(self, name: str, paused: bool, now: float | None = None) -> None: ...

    @abc.abstractmethod
    def set_adhoc(self, name: str, settings: str | None, now: float | None = None) -> None:
        """Remember (JSON text; None forgets) the settings of a job ``schedsync exec`` ran
        without a registry entry, so ``status`` and ``serve`` can show it. Notes it as seen."""

    # --- alerts ----------------------------------------------------------------------

    @abc.abstractmethod
    def claim_alert(self, job: str, event: str, mark: float) -> bool:
        """True if ``event`` was not yet sent for ``mark``; marks it sent (one process wins)."""

    @abc.abstractmethod
    def record_notifications(self, notes: list, keep: int = 50) -> None: ...

    # --- retention -------------------------------------------------------------------

    @abc.abstractmethod
    def prune_all(self, policies: dict, now: float | None = None) -> int:
        """Apply retention ({job: (keep_success, keep_failed)}) in bounded transactions;
        a job's newest success is always kept."""

    @abc.abstractmethod
    def close(self) -> None: ...

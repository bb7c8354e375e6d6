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
              "items_failed", "exit_code", "error", "retry_at", "output", "slot", "retry_of",
              "retry_number", "params", "parent", "items_inserted", "items_updated", "items_deleted")
RUN_COLUMNS = ", ".join(RUN_FIELDS)
SLOT_FIELDS = ("id", "job", "slot", "kind", "state", "due_at", "run_id", "reason", "retry_of",
               "retry_number", "claimed_at", "claimed_by", "params", "parent")  # ``core.models.SlotItem``'s order
SLOT_COLUMNS = ", ".join(SLOT_FIELDS)
AUDIT_COLUMNS = "at, action, job, who, client, breaker, run_id, item_id, params, reason, id"  # AuditEntry's order
CLAIM_STALE = 60.0  # seconds a claimed item may wait for its run to start before it is queued again
AUDIT_KEEP = 200  # audit entries kept per job (and per breaker reset by its own name)
PRUNE_BATCH = 100  # rows a finished run prunes, so retention stays cheap however old the backlog


def no_state(where: str) -> NoState:
    """What a command that never creates a state (``status``, ``resume``…) says when there is none."""
    return NoState(f"no state at {where} yet",
                      "`schedsync run JOB` creates it; or check --state, $SCHEDSYNC_STATE"
                      " and jobs.yaml's state:")


def already_ran_error(slot: float, holder: str | None, later: bool = False, run_id: int | None = None) -> str:
    """A cron-started run's ``already_ran``: which host (and run) has its slot (``holder``
    is ``host:pid``), or that a later slot already ran (a clock that stepped back)."""
    import time

    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(slot))
    if later:
        return (f"a slot after the one scheduled for {when} already ran (the clock stepped back?);"
                " run it on a terminal or with `run --force-slot` to run it anyway")
    host = holder.rpartition(":")[0] if holder and ":" in holder else holder
    where = (host or "another host") + (f" (run {run_id})" if run_id else "")
    return (f"the run scheduled for {when} already ran on {where};"
            " run it on a terminal or with `run --force-slot` to run it again")


def item_taken_error(item: int, state: str | None, run_id: int | None) -> str:
    """``run JOB --item ID`` when that item is no longer waiting to start."""
    if state is None:
        return f"work item {item} is not in the ledger (cancelled or pruned)"
    return f"work item {item} is {state}" + (f" (run {run_id})" if run_id else "")


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


@dataclass
class ResumePoint:
    """Where an http job's interrupted sync goes on (``resume_point``). ``point`` is the
    next page as JSON text holding no secret (None once a resumed sync completed);
    ``saved_at`` is on the store's clock; ``run_id`` the run that saved it; ``began_at``
    when the sync's page 1 was asked for (by that run or an earlier one). ``done_run``: the
    run that last completed a resumed sync, ``done_began`` when that sync's page 1 was
    asked for (``since`` counts from there, not from ``done_run``'s start)."""

    point: str | None
    saved_at: float
    run_id: int | None
    began_at: float | None
    done_run: int | None
    done_began: float | None


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

    @abc.abstractmethod
    def place(self, limit: str, index: int) -> Lock:
        """Place ``index`` (0 .. N-1) of the concurrency limit ``limit``: a lock like a job's
        (freed by the OS or the server when its holder dies), so at most N runs hold one.
        SQLite: the flock file ``limit-NAME.I``; PostgreSQL: the lease ``limit:NAME:I``."""


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

    def stop(self, run) -> bool:
        """``overlap: replace``: make ``run``'s owner stop its job now, if this process can
        reach it (SQLite: SIGTERM to a schedsync of this host, never to a reused pid). False
        when it cannot: on PostgreSQL the owner's heartbeat reads the stop request instead."""
        return False


class Store(abc.ABC):
    locks: Locks
    liveness: Liveness
    writable: bool = True  # False: opened read-only; reads work, every write raises StateError
    created: bool = False  # True: this open created the state (it did not exist)
    label: str  # where the state is, as messages may show it (a URL's password redacted)
    live_claims: bool = False  # claim_due itself tells a live running run from a dead one
    claims_slots: bool = True  # admit_run claims ``slot`` in the ledger (once per slot, across hosts)

    @abc.abstractmethod
    def now(self) -> float:
        """The clock every cross-process decision uses (POSIX seconds)."""

    # --- runs: the atomic steps of one run -----------------------------------------

    @abc.abstractmethod
    def admit_run(self, job: str, trigger: str, breaker: BreakerSpec, lease: float,
                  budgets: list[str], rates: dict, cost: float, now: float | None = None,
                  slot: float | None = None, item: int | None = None,
                  params: str | None = None) -> Admitted:
        """In one step: note the job as seen; skip it if paused; admit it through its
        breaker (a half-open trial takes a lease ending ``lease`` seconds from now);
        spend ``cost`` tokens from every bucket in ``budgets`` (all or none; ``rates``
        is ``{name: (capacity, per_seconds)}``; cost 0 spends nothing); claim the slot
        in the ledger; and insert the ``running`` row stamped with ``liveness.owner()``.
        Nothing is changed when the run is not admitted.

        The claim: with ``slot`` (a cron-started run's scheduled start) the ledger's
        ``cron`` row of that slot becomes ``ran`` with the new run's id; a slot already
        ``ran``, ``claimed`` or ``queued``, or older than a slot that already ran (a clock
        that stepped back), is ``already_ran`` (``error`` names the host that has it). A
        ``skipped`` or ``missed`` slot may still be claimed. With ``item`` (the id of a
        ledger row the tick claimed, ``schedsync run JOB --item ID``) that row becomes
        ``ran`` with the run's id, and the run takes its ``slot``, ``retry_of``,
        ``retry_number`` and ``parent`` (``slot`` is then ignored); an item no longer
        ``claimed`` or ``queued`` (another process started it) is ``already_ran``.
        ``params`` (JSON text) is stored on the run."""

    def slot_winner(self, job: str, slot: float) -> tuple | None:
        """(host, run id) of the run that claimed ``slot`` of ``job``, or None (also when
        the backend claims no slots)."""
        return None

    def host_skews(self) -> dict:
        """{host: (its clock minus the store's, seconds; when noted)} where known."""
        return {}

    @abc.abstractmethod
    def record_skip(self, run, retention: dict, item: int | None = None) -> None:
        """Insert a finished run that never started (``run.id`` is set) and prune cheaply:
        a ``skipped`` one, or a ``failed`` one that could not start (e.g. an unset
        ``${TOKEN}``). Also notes the job as seen.

        The ledger in the same step: a run with ``run.slot`` that was not admitted marks
        that ``cron`` slot ``skipped`` with ``run.reason`` (unless it ran or is taken:
        ``already_ran`` changes nothing). With ``item``: a ``cron`` item becomes
        ``skipped``; any other kind goes back to ``queued`` (reason kept), to be tried again."""

    @abc.abstractmethod
    def finish_run(self, run, breaker: BreakerSpec, evidence: bool, trial: bool,
                   lease: float, retention: dict, now: float | None = None, later: dict | None = None,
                   after: list | None = None):
        """In one step: store the run's end; if ``evidence`` (the run says something
        about the upstream), feed the breaker (``run.status`` in FAILURES is a
        failure); if it was a ``trial`` that proved nothing, hand its lease (ending at
        ``run.started_at + lease``) back; prune the job's old runs cheaply (bounded);
        and add ``later`` to the ledger, the retry the run calls for (``{slot, kind,
        due_at, retry_of, retry_number, state, reason}``: ``queued``, or ``skipped`` when
        the job's next slot supersedes it), unless that item exists, so a process dying
        right after the run ended loses no retry; and queue, for each job named in
        ``after`` (the chains ``after:`` the run's outcome calls for), an ``after`` item due
        now whose ``parent`` is the run (once per job and run). Returns the breaker
        transition ``(old, new, breaker)`` or None."""

    @abc.abstractmethod
    def running_runs(self, jobs: list[str] | None = None) -> list:
        """``running`` rows, of ``jobs`` or of all jobs."""

    def request_stop(self, job: str, text: str) -> list:
        """``overlap: replace``: ask the running run of ``job`` to stop, ``text`` saying by whom
        (its error once stopped). SQLite: noted on its ``running`` row; PostgreSQL: on the
        job's lease row, which the holder's heartbeat reads back. Returns the runs asked."""
        raise NotImplementedError

    def stop_requested(self, run) -> str | None:
        """The stop request addressed to ``run`` (this process's own), if any."""
        return None

    @abc.abstractmethod
    def mark_crashed(self, run, error: str, breaker: BreakerSpec | None,
                     evidence: bool, now: float | None = None, after: list | None = None) -> bool:
        """Turn ``run`` from running to crashed (and, if ``evidence``, count it on
        ``breaker``) in one step, keeping the requests ``spend`` stored for it (tallied in
        ``counters``), and queueing ``after`` items as ``finish_run`` does. True if this
        call did it and no other."""

    # --- the slot ledger and its queue (``schedsync tick``) ----------------------------

    @abc.abstractmethod
    def item(self, item_id: int):
        """The ledger row ``item_id`` (a ``SlotItem``), or None."""

    @abc.abstractmethod
    def enqueue(self, job: str, items: list[dict], now: float | None = None,
                requeue: bool = False) -> list[int]:
        """Queue work items of ``job``, each ``{slot, kind, due_at, retry_of, retry_number}``
        (``slot`` None for none; ``retry_*`` optional). An item identical to a stored one
        (same job, slot, kind, retry_of, retry_number) is not added again: its id is
        returned as is, whatever its state; with ``requeue`` (a backfill asked for again),
        one that is done (``ran``, ``skipped``, ``missed``) is queued again, due at the
        new ``due_at``. Ids in ``items``' order; atomic."""

    def enqueue_waiting(self, job: str, slot: float | None, due_at: float) -> tuple[int, bool]:
        """``overlap: queue``: one ``queue`` item of ``job`` waiting, atomically on every
        host: the ``queued`` or ``claimed`` one there is (``(id, False)``), else a new one
        serving ``slot``, due at ``due_at`` (``(id, True)``)."""
        raise NotImplementedError

    @abc.abstractmethod
    def enqueue_api(self, job: str, params: str | None, due_at: float,
                    now: float | None = None) -> tuple[int, bool]:
        """Queue an ``api`` item of ``job`` (``schedsync trigger``) due at ``due_at``, with
        ``params`` (canonical JSON text), unless one with the same params is still waiting
        (``queued`` or ``claimed``, its run not started): then nothing is added. Returns
        (the item's id, True if it was that waiting one). Atomic: two triggers at once, on
        any hosts, queue one item."""

    @abc.abstractmethod
    def claim_due(self, jobs: list[str], limit: int, claimer: str, now: float | None = None,
                  per_job: int = 1) -> list:
        """Claim due work atomically (one process wins each item, on every host): first
        every item ``claimed`` more than ``CLAIM_STALE`` seconds ago whose run never
        started goes back to ``queued``; then at most ``limit`` ``queued`` items of
        ``jobs`` with ``due_at <= now``, oldest due first, at most ``per_job`` per job,
        become ``claimed`` by ``claimer`` (``host:pid``). A job with an item ``claimed`` or a
        ``running`` run gets none (its lock would only skip it); where ``live_claims`` is
        False, a running row whose owner died counts until it is reaped (the tick reaps
        first). Returns them (``SlotItem``)."""

    @abc.abstractmethod
    def release_item(self, item_id: int, state: str, reason: str | None = None) -> bool:
        """Hand a ``claimed`` (or ``queued``) item on: back to ``queued`` (e.g. a budget
        cannot grant it yet), ``missed`` (its window closed) or ``skipped`` (e.g.
        ``superseded``). False if it was in neither state (it ran meanwhile)."""

    @abc.abstractmethod
    def record_slots(self, job: str, slots: list[float], state: str, reason: str | None = None,
                     now: float | None = None) -> int:
        """Account for scheduled slots of ``job`` that have no ledger row yet, as ``state``
        (``missed``, found by the tick) with ``reason``; a slot already accounted for is
        left alone. Missed slots are counted (``slot_counters``). Returns how many were added."""

    @abc.abstractmethod
    def slots(self, job: str, limit: int = 20) -> list:
        """The job's newest ledger rows (``SlotItem``), newest slot (else due time) first."""

    @abc.abstractmethod
    def queued(self, job: str) -> int:
        """How many items of ``job`` are ``queued`` or ``claimed``."""

    @abc.abstractmethod
    def cancel_queued(self, job: str, kind: str | None = None) -> int:
        """Drop the job's ``queued`` items (of ``kind``, or all); how many."""

    @abc.abstractmethod
    def note_tick(self, host: str, error: str | None = None, now: float | None = None) -> None:
        """Note that ``schedsync tick`` ran on ``host`` now, and the error that stopped it."""

    @abc.abstractmethod
    def last_tick(self):
        """The newest noted tick of any host (``Tick``), or None."""

    @abc.abstractmethod
    def slot_counters(self) -> dict:
        """{job: missed slots}: counted as ``record_slots`` adds them, never lowered by pruning."""

    @abc.abstractmethod
    def begin_tick(self, host: str, claimer: str, marks: dict, limit: int,
                   now: float | None = None) -> tuple[dict, list]:
        """One tick's first step, atomic (PostgreSQL: one round trip): ``note_tick``, then
        ``claim_due`` over ``marks``' jobs, and which jobs need their slots looked at.

        ``marks`` is ``{job: key}``, ``key`` a text naming the job's schedule settings. A
        job needs a look when it has no mark yet, its stored key differs, or its mark's
        ``next_at`` has come. Returns ``({job: (until, first_seen)}, claimed items)`` where
        ``until`` is the mark's last accounted slot (None: never looked at; or a key
        change) and ``first_seen`` when the job was first seen (None: never)."""

    @abc.abstractmethod
    def settle_slots(self, settled: list[dict], claimer: str, now: float | None = None) -> list:
        """The tick's second step, for the jobs ``begin_tick`` named, atomic: each of
        ``settled`` is ``{job, key, until, next_at, missed: [slots], claim: slot or None}``.
        Records ``missed`` as ``record_slots`` does, stores the mark (``until`` never moves
        back), and claims ``claim`` (a ``run_by: tick`` job's current slot) as a ``cron``
        item ``claimed`` by ``claimer`` unless that slot has a ledger row or a later slot
        of the job already ran (a clock that stepped back replays nothing). Returns the
        items it claimed."""

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
    def run_totals(self) -> dict:
        """{job: {"runs", "seconds", "processed", "failed", "deleted", "retries", "buckets":
        {le: runs}}} of the finished runs that were neither skipped nor crashed, counted
        inside ``finish_run`` (same transaction), so they only grow. ``buckets`` counts each
        run once, under the smallest ``DURATION_BUCKETS`` bound that holds its duration
        (none over the last one); ``retries`` sums ``attempts - 1``."""

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

    # --- resume points and watermarks (http jobs) -------------------------------------

    @abc.abstractmethod
    def resume_point(self, job: str) -> ResumePoint | None:
        """The job's stored resume point, or None."""

    @abc.abstractmethod
    def save_resume(self, job: str, run_id: int | None, point: str, began_at: float | None,
                    now: float | None = None) -> None:
        """Store where the job's sync goes on after its last stored page (one statement:
        called after every page), ``saved_at`` the store's clock; ``done_*`` are kept."""

    @abc.abstractmethod
    def end_resume(self, job: str, done_run: int | None = None, began_at: float | None = None,
                   now: float | None = None) -> None:
        """The job's sync completed: forget its resume point (and the row). With ``done_run``
        (a resumed sync completed), note ``began_at`` as its ``done_began``."""

    @abc.abstractmethod
    def note_watermark(self, job: str, value: float | None, now: float | None = None) -> float | None:
        """Keep the larger of the stored watermark and ``value`` (None: only read it);
        returns the stored one (None: none yet)."""

    @abc.abstractmethod
    def watermarks(self, names: list[str]) -> dict:
        """{job: watermark} of those of ``names`` that have one."""

    # --- alerts ----------------------------------------------------------------------

    @abc.abstractmethod
    def claim_alert(self, job: str, event: str, mark: float, every: float | None = None) -> bool:
        """True if ``event`` was not yet sent for ``mark``; marks it sent (one process wins).
        With ``every`` (``repeat:``; ``mark`` is then the time now), true only when the mark
        held is at least ``every`` older, or there is none."""

    @abc.abstractmethod
    def record_notifications(self, notes: list, keep: int = 50) -> None: ...

    # --- the audit log (``serve``'s writes) --------------------------------------------

    @abc.abstractmethod
    def record_audit(self, entry, keep: int = AUDIT_KEEP) -> int:
        """Keep ``entry`` (an ``AuditEntry``; ``at`` None: the store's clock) and return its
        id; the oldest entries of its ``job`` beyond the newest ``keep`` are pruned in the
        same step, so the log stays bounded as notifications do."""

    @abc.abstractmethod
    def audit(self, job: str | None, breaker: str | None = None, limit: int = 10) -> list:
        """The newest audit entries (``AuditEntry``) of ``job`` or of ``breaker``, newest first."""

    # --- retention -------------------------------------------------------------------

    @abc.abstractmethod
    def prune_all(self, policies: dict, now: float | None = None) -> int:
        """Apply retention ({job: (keep_success, keep_failed)}) in bounded transactions;
        a job's newest success is always kept."""

    @abc.abstractmethod
    def close(self) -> None: ...


def totals_of(totals, buckets) -> dict:
    """``run_totals()`` from the rows of run_totals and run_buckets (both backends)."""
    out: dict = {job: {"runs": int(runs), "seconds": float(seconds), "processed": int(processed),
                 "failed": int(failed), "deleted": int(deleted), "retries": int(retries), "buckets": {}}
           for job, runs, seconds, processed, failed, deleted, retries in totals}
    for job, le, runs in buckets:
        if job in out:  # buckets: {le: runs}
            out[job]["buckets"][float(le)] = int(runs)
    return out

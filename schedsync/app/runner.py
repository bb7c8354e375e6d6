"""One run of one job, in the order SPEC fixes:
jitter → lock → pause / breaker → budget → work → record
(reaping crashed runs first, and alerts after, are the application layer's: ``app.run``).

The runner decides nothing itself: the store's atomic operations admit and
record (running the breaker and bucket arithmetic inside), the job kinds
(``schedsync.kinds``) do the work. It returns a ``RunResult``; it never imports alerts.
"""

from __future__ import annotations

import time

try:  # the C module that ``signal`` wraps: see _cancel_on_signals
    import _signal as signal
except ImportError:  # pragma: no cover - not CPython
    import signal

from schedsync.config import Config, Job, Secrets
from schedsync.core.errors import Exit, SchedsyncError, StateError
from schedsync.core.models import (
    ALREADY_RAN,
    CANCELLED,
    CRASHED,
    FAILED,
    FAILURES,
    LIMITED,
    LOCKED,
    PARTIAL,
    RATE_LIMITED,
    REPLACED,
    SKIPPED,
    SUCCESS,
    Run,
)
from schedsync.core.outcome import Cancelled, Outcome
from schedsync.core.records import dataclass, field
from schedsync.core.redact import readable
from schedsync.kinds import kind as job_kind
from schedsync.store.base import BreakerSpec, Store, already_ran_error


@dataclass
class RunResult:
    run: Run
    exit_code: int
    held_output: str | None = None
    messages: list[str] = field(default_factory=list)  # one-line notes for stderr
    transition: tuple | None = None  # (old, new, Breaker) when this run moved its breaker
    quiet: bool = False  # nothing recorded and nothing to say (a slot someone else started)
    retry: dict | None = None  # the retry later this run queued or saw superseded (app.later.retry_item)
    chained: list = field(default_factory=list)  # the jobs whose ``after`` items its end queued


def breaker_spec(job: Job) -> BreakerSpec:
    return BreakerSpec(job.breaker["name"], job.breaker)


def evidence(run: Run) -> bool:
    """Does this run say anything about the job or its upstream? A crash (schedsync
    itself died) does not, nor does a run a person cancelled (Ctrl-C: SIGINT)."""
    if run.status == CRASHED or run.reason == REPLACED:  # a newer run stopped it: nothing of the job
        return False
    if run.reason == CANCELLED and (run.error or "").startswith("stopped: lost the state database"):
        return False  # fenced: the database went away, which says nothing of the job
    return not (run.reason == CANCELLED and (run.error or "").startswith("cancelled by SIGINT"))


@dataclass
class Context:
    """What a job kind may use: its deadline, the budgets, retries, the data db.

    ``deadline`` is on this host's monotonic clock (``time.monotonic()``): the run's
    timeout is a duration, never compared across clocks (the store's times are the
    database server's)."""

    job: Job
    config: Config
    store: Store
    secrets: Secrets
    deadline: float
    interactive: bool
    pass_fds: tuple = ()
    last_success_at: float | None = None
    sleep: object = time.sleep
    held: object = None  # the lock's held(): False once it may be lost (fencing stops the job)
    fence: object = None  # the store's leases (PostgreSQL): a command's keeper fences on them
    run_id: int | None = None  # the running run's row
    slot: float | None = None  # the scheduled start this run serves (the ledger's), if any
    params: dict | None = None  # the run's params ({NAME: value}), if it has any
    full_refresh: bool = False  # `run --full-refresh`: an http job ignores since (and a resume point)

    @property
    def data_db(self) -> str:
        """Where http and python jobs store items, as config resolved it (``Job.data_target``)."""
        return self.job.data_target

    def retrying(self, retry):
        from schedsync.core.retry import retrying

        return retrying(self.job.retries, self.deadline, retry=retry, sleep=self.sleep,
                        clock=time.monotonic)

    def left(self) -> float:
        """Seconds before the run's timeout (this host's monotonic clock)."""
        return self.deadline - time.monotonic()

    def spend(self, tokens: float = 1, requests: int | None = None) -> float | None:
        """Take tokens from the job's budgets, waiting up to ``max_wait``.

        Returns None when granted, else when the budget allows again. ``requests``: the
        run's request count once this one is sent, stored with the grant (a crash keeps it).
        """
        store = self.store
        count = None if requests is None or self.run_id is None else (self.run_id, requests)
        waited_until = time.monotonic() + self.job.max_wait
        while True:
            # None: the store's own clock decides, inside its statement (the server's)
            ready = store.spend(self.job.budgets, self.config.budgets, tokens, None, count)
            if ready is None:
                return None
            wait = ready - store.now()
            if time.monotonic() + wait > min(waited_until, self.deadline):
                return ready
            self.sleep(max(0.0, wait))

    def block_budgets(self, until: float) -> None:
        """An upstream's Retry-After: pause the job's buckets until then; they keep their tokens."""
        if self.job.budgets:
            self.store.block_budgets(self.job.budgets, until, self.config.budgets)


def run_job(config: Config, job: Job, secrets: Secrets, store: Store, *, trigger: str,
            interactive: bool, sleep=time.sleep, on_start=None, on_finish=None,
            item=None, slot: float | None = None, params: dict | None = None,
            full_refresh: bool = False) -> RunResult:
    """Run ``job`` (already expanded) once. The application layer's hooks: ``on_start(run)``
    once it is admitted (the start ping), ``on_finish(result)`` once it is recorded and
    while the lock is still held (webhooks, the closing ping). Neither runs for a run
    skipped before it started.

    A cron-triggered run of a scheduled job claims its slot in the ledger; ``item`` (a
    ``SlotItem`` the tick claimed, ``run JOB --item ID``) is claimed instead, and the run
    serves its slot. ``slot`` is the one it serves, found by the caller (``app.run``)
    before ``${SCHEDSYNC_SLOT}`` was expanded. ``params`` (``{NAME: value}``) reach the job
    (``ctx.params``) and are stored on the run (JSON, redacted)."""
    if job.jitter:
        import random

        sleep(random.uniform(0, job.jitter))

    stored = None
    if params is not None:  # as the run's row keeps them: JSON, redacted like its output
        from schedsync.config.params import encode

        stored = secrets.redact(encode(params))
    lock = None
    if job.overlap[0] != "allow":
        try:
            lock = store.locks.lock(job.name)
            locked = lock.acquire(job.overlap[1])
        except StateError as exc:  # an untrusted lock folder, a lock file we cannot open
            _record_refusal(store, job, trigger, str(exc))
            raise
        if not locked:
            winner = _slot_winner(store, job.name, slot) if slot is not None and item is None else None
            if winner is not None:  # this slot's run is under way elsewhere: not ours to run
                if job.run_by == "tick":  # as in _admitted: a slot the tick drives, taken, is quiet
                    run = never_started(store, job.name, trigger, SKIPPED, ALREADY_RAN, None, None)
                    run.slot = slot
                    return RunResult(run, Exit.SKIPPED, quiet=True)
                host, run_id = winner
                return _skip(store, job, trigger, ALREADY_RAN, None, already_ran_error(slot, host, False, run_id),
                             params=stored)
            mode, why = job.overlap[0], None
            if mode == "replace":  # imported only by the jobs that use it
                from schedsync.app.overlap import replace_holder

                locked, why = replace_holder(store, job, lock, trigger)
            elif mode == "queue" and item is None:  # a queued item itself never queues again
                from schedsync.app.overlap import queue_behind

                why = queue_behind(store, job, trigger, slot)
            if not locked:
                if why is None:
                    holder = store.running_runs([job.name])
                    who = f" (pid {holder[0].pid} on {holder[0].host})" if holder else ""
                    why = f"the previous run{who} is still going"
                return _skip(store, job, trigger, LOCKED, None, why, slot, item, stored)
    places: list = []
    result = None
    try:
        if job.requires and trigger != "after":  # a chain's run: its upstream just ended
            from schedsync.app.chains import upstream_ready
            from schedsync.core.models import UPSTREAM_NOT_READY

            why = upstream_ready(store, job, store.now())
            if why is not None:
                skipped = _skip(store, job, trigger, UPSTREAM_NOT_READY, None, why, slot, item, stored)
                if item is not None:  # not back to the queue: every tick would skip it again
                    store.release_item(item.id, SKIPPED, UPSTREAM_NOT_READY)
                return skipped
        if job.limits:  # concurrency limits: imported only by jobs that name one
            from schedsync.app.limits import take_places

            try:
                places, full = take_places(store, job, sleep)
            except StateError as exc:  # a lock folder we cannot trust, a place we cannot open
                _record_refusal(store, job, trigger, str(exc))
                raise
            if full is not None:
                return _limited(config, store, job, trigger, full, slot, item, stored)
        result = _admitted(config, job, secrets, store, lock, trigger, interactive, sleep,
                           on_start, on_finish, slot, item, places, params, stored, full_refresh)
        return result
    finally:
        if places:
            from schedsync.app.limits import release

            release(places)
        if lock:
            lock.release()
        if job.overlap[0] == "queue" and result is not None and result.run.status != SKIPPED:
            from schedsync.app.overlap import start_waiting

            try:
                start_waiting(config, store, job)  # the waiting run starts now, not at the next tick
            except (SchedsyncError, OSError):
                pass  # the run's own result stands; `schedsync tick` starts the waiting one


def _admitted(config, job, secrets, store, lock, trigger, interactive, sleep, on_start,
              on_finish, slot=None, item=None, places=(), params=None, stored=None,
              full_refresh=False) -> RunResult:
    spec = breaker_spec(job)
    lease = job.timeout + 60  # the lease ends when the run surely has
    kind = job_kind(job.kind)
    cost = job.cost if kind.spends_at_start and job.budgets else 0  # else it spends as it goes
    wait_until = time.monotonic() + job.max_wait
    if item is not None:  # the tick started it because its budgets grant it within the slack
        from schedsync.core.catchup import BUDGET_SLACK

        wait_until = max(wait_until, time.monotonic() + BUDGET_SLACK)
    while True:  # no ``now``: the store's clock (PostgreSQL: the server's) decides, in the statement
        admitted = store.admit_run(job.name, trigger, spec, lease, job.budgets, config.budgets, cost,
                                   slot=slot, item=item and item.id, params=stored)
        if admitted.run is not None:
            break
        if admitted.reason == RATE_LIMITED and admitted.retry_at is not None:
            wait = admitted.retry_at - store.now()
            if time.monotonic() + wait <= wait_until:
                sleep(max(0.0, wait))
                continue
        if admitted.reason == ALREADY_RAN and (item is not None or job.run_by == "tick"):
            # Someone else started this very slot or item (the tick, or a leftover crontab
            # line of a job the tick drives): nothing to record, nothing to say.
            run = never_started(store, job.name, trigger, SKIPPED, ALREADY_RAN, None, admitted.error)
            run.slot = slot
            return RunResult(run, Exit.SKIPPED, quiet=True)
        return _skip(store, job, trigger, admitted.reason, admitted.retry_at, admitted.error, slot, item, stored)
    run = admitted.run
    if item is not None:
        run.parent = getattr(item, "parent", None)
    began = time.monotonic()

    if on_start is not None:
        on_start(run)
    leases = getattr(store.locks, "pipe", None) and store.locks
    pass_fds = lock.pass_fds if lock else ()
    for place in places:  # a limit's places are held by the job's processes too
        pass_fds += place.pass_fds
    ctx = Context(job, config, store, secrets, deadline=time.monotonic() + job.timeout,
                  interactive=interactive, pass_fds=pass_fds, sleep=sleep,
                  held=lock.held if lock else (leases.held if leases else None), run_id=run.id,
                  slot=run.slot, fence=leases, params=params, full_refresh=full_refresh)
    if kind.needs_last_success:
        ctx.last_success_at = store.job_states([job.name], recent=1)[job.name].last_success_at
    replace = job.overlap[0] == "replace"
    arm = getattr(store.locks, "arm", None) if replace else None  # PostgreSQL: the heartbeat stops it
    with _cancel_on_signals():
        try:
            if arm is not None:
                arm(True)
            outcome = _runner(kind)(job, ctx)
        except Cancelled as exc:
            outcome = Outcome("failed", reason=CANCELLED, error=f"cancelled by {exc}")
        except SchedsyncError as exc:  # a cause a person can fix (say, no into.db with a URL state)
            outcome = Outcome("failed", error=str(exc)[:300])
        except Exception as exc:  # a bug of ours: record it, never leave the run "running"
            import traceback

            outcome = Outcome("failed", error=secrets.clip(f"internal error: {type(exc).__name__}: {exc}", 300),
                              held=traceback.format_exc())
        finally:
            if arm is not None:
                arm(False)
    if replace and outcome.reason == CANCELLED and (outcome.error or "").startswith("cancelled by SIGTERM"):
        stop = store.stop_requested(run)
        if stop:  # a newer run asked: replaced, not cancelled
            outcome.reason, outcome.error = REPLACED, stop
    if job.fails_when:  # failure rules: imported only by jobs that have them
        from schedsync.app.rules import judge

        outcome = judge(job, outcome, time.monotonic() - began, ctx.left())
    result = _finish(store, job, run, outcome, admitted.trial, secrets, lease, config.timezone,
                     time.monotonic() - began)
    if on_finish is not None:  # after the records are committed, still holding the lock
        on_finish(result)
    return result


def scheduled_slot(config: Config, job: Job, now: float) -> float | None:
    """The slot a cron-triggered run claims (once per slot, across hosts): the latest
    scheduled start at or before ``now`` (the store's clock), in the registry's zone, if
    ``now`` is within the job's grace of it (else the run serves no slot). Without
    cronsim (``core.cronmatch``): every cron tick's start-up pays for what it imports."""
    from schedsync.core.cronmatch import latest_fire

    return latest_fire(job.schedule, config.timezone, now, job.grace)


def _finish(store, job, run: Run, outcome: Outcome, trial: bool, secrets, lease: float,
            timezone: str | None = None, took: float | None = None) -> RunResult:
    now = store.now()
    run.status = outcome.status
    run.reason = outcome.reason
    run.finished_at = now
    # on this host's monotonic clock when known: a clock stepping mid-run changes nothing
    run.duration_ms = int((now - run.started_at if took is None else took) * 1000)
    run.attempts, run.requests = outcome.attempts, outcome.requests
    run.items_processed, run.items_failed = outcome.items_processed, outcome.items_failed
    run.items_inserted, run.items_updated = outcome.items_inserted, outcome.items_updated
    run.items_deleted = outcome.items_deleted
    run.exit_code = outcome.exit_code
    # readable(): a python job's exception may quote an undecodable file name, which
    # neither the store nor stdout could encode.
    run.error = readable(secrets.redact(outcome.error))
    run.output = readable(secrets.redact(outcome.output))
    run.retry_at = outcome.retry_at
    skipped = run.status == SKIPPED  # e.g. an http job whose budget was empty before any request
    later = retry = None
    if job.retry_later and run.status in FAILURES:  # retries later: imported only by jobs that have them
        from schedsync.app.later import retry_item

        later, retry = retry_item(job, run, timezone)
    after = None
    if job.downstream and run.reason != REPLACED:  # chains (a replaced run's successor ends for it)
        from schedsync.app.chains import downstream

        after = downstream(job, run.status) or None
    # no ``now``: the store's clock judges the breaker (PostgreSQL: the server's, in the statement)
    transition = store.finish_run(run, breaker_spec(job), evidence(run), trial, lease,
                                  job.retention, later=later, **({"after": after} if after else {}))
    ok = run.status in (SUCCESS, PARTIAL)
    result = RunResult(run, Exit.OK if ok else Exit.SKIPPED if skipped else Exit.FAILED,
                       held_output=None if ok or skipped else readable(secrets.redact(outcome.held)),
                       transition=transition, retry=retry, chained=after or [])
    if retry is not None:
        result.messages.append(retry["message"])
    if run.status == PARTIAL and run.reason == RATE_LIMITED:
        result.messages.append(f"{job.name}: partial: {run.items_processed} items stored, then {run.error}")
    elif run.status == PARTIAL and run.error and "fails_when.longer_than" in run.error \
            and not (run.items_failed or run.items_processed):
        result.messages.append(f"{job.name}: partial: {run.error}")  # a warning: it took too long
    elif run.status == PARTIAL:
        result.messages.append(f"{job.name}: partial: {run.items_failed} of "
                               f"{run.items_processed + run.items_failed} items failed"
                               + (f" ({run.error})" if run.error else ""))
    if transition and transition[1] == "open":
        result.messages.append(opened_message(transition[2], timezone, now))
    return result


WINNER_WAIT = 2.0  # seconds a lock loser asks again who has its slot (see _slot_winner)


def _slot_winner(store, job: str, slot: float):
    """(host, run id) of the run that has ``slot``, else None. The holder takes the job's
    lock a moment before its admission claims the slot, so a loser arriving in between
    asks again for up to WINNER_WAIT seconds before it calls the lock merely held."""
    end = time.monotonic() + WINNER_WAIT
    while True:
        winner = store.slot_winner(job, slot)
        if winner is not None or time.monotonic() >= end:
            return winner
        time.sleep(0.1)


def opened_message(breaker, timezone: str | None, now: float) -> str:
    """``breaker quests opened after 5 failures: runs skipped until 10:42:00 CET``: in the
    registry's zone (else the system's), with the date unless it is today."""
    from schedsync.core.durations import clock
    from schedsync.core.schedule import zone

    until = clock(breaker.opens_until, zone(timezone), now)
    count = f"{breaker.failures} failure{'s' if breaker.failures != 1 else ''}"
    return f"breaker {breaker.name} opened after {count}: runs skipped until {until}"


def _skip(store, job: Job, trigger: str, reason: str, retry_at, error: str, slot=None,
          item=None, params: str | None = None) -> RunResult:
    run = never_started(store, job.name, trigger, SKIPPED, reason, retry_at, error)
    run.slot, run.params = slot, params
    if item is not None:
        run.retry_of, run.retry_number = item.retry_of, item.retry_number
        run.parent = getattr(item, "parent", None)
    # pruned: a paused or rate-limited job must not grow; the ledger notes the skip
    store.record_skip(run, job.retention, item=item and item.id)
    return RunResult(run, Exit.SKIPPED)


def _limited(config, store, job: Job, trigger: str, limit: str, slot=None, item=None,
             stored=None) -> RunResult:
    """Skipped ``limited``: a limit stayed full past ``max_wait``. A ledger item goes back to
    ``queued`` (the tick tries it again), whatever its kind: it was not served."""
    from schedsync.app.limits import full_error

    error = full_error(config, store, limit, job.limits[limit])
    if job.max_wait:
        from schedsync.core.durations import format_duration

        error += f"; waited {format_duration(job.max_wait)}"
    run = never_started(store, job.name, trigger, SKIPPED, LIMITED, None, error)
    run.slot, run.params = slot, stored
    if item is not None:
        run.retry_of, run.retry_number = item.retry_of, item.retry_number
    store.record_skip(run, job.retention)
    if item is not None:
        store.release_item(item.id, "queued", LIMITED)
    return RunResult(run, Exit.SKIPPED)


def _record_refusal(store, job: Job, trigger: str, error: str) -> None:
    """Record a run that could not start, if the state lets us; the error is raised anyway.
    It is not evidence for the breaker: nothing reached the upstream."""
    try:
        store.record_skip(never_started(store, job.name, trigger, FAILED, None, None, error),
                          job.retention)
    except StateError:
        pass


def never_started(store, name: str, trigger: str, status: str, reason, retry_at, error) -> Run:
    """A finished run record for a run that never started (a skip, or a failed start)."""
    now = store.now()
    host, pid, _ = store.liveness.owner()
    return Run(0, name, status, trigger, now, host, pid, reason=reason, finished_at=now,
               duration_ms=0, retry_at=retry_at, error=error)


class _cancel_on_signals:
    """SIGTERM, SIGINT and SIGHUP raise Cancelled once, so the child is stopped and recorded.

    A class, not ``@contextmanager``, and ``_signal``, the C module that ``signal`` wraps:
    ``contextlib`` and ``signal``'s enums (``enum``, ``functools``, ``types``) would be every
    cron tick's largest imports after sqlite3 (docs/design.md, Start-up)."""

    def __enter__(self) -> None:
        names = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT", signal.SIGHUP: "SIGHUP"}
        self.previous = {sig: signal.getsignal(sig) for sig in names}

        def handler(sig, frame):
            for s in names:
                signal.signal(s, signal.SIG_IGN)  # one cancel; the cleanup must not be cut short
            raise Cancelled(names[sig])

        for sig in names:
            signal.signal(sig, handler)

    def __exit__(self, *exc) -> None:
        for sig, old in self.previous.items():
            signal.signal(sig, old)


def summary(result: RunResult) -> str:
    """One line for a person: what happened to this run."""
    from schedsync.core.durations import format_duration

    run = result.run
    if run.status == SKIPPED:
        when = ""
        if run.retry_at:
            when = f"; allowed again in {format_duration(run.retry_at - time.time())}"
        return f"{run.job}: skipped ({run.reason}): {run.error}{when}"
    took = format_duration((run.duration_ms or 0) / 1000)
    items = f", {run.items_processed} items" if run.items_processed or run.requests else ""
    error = f": {run.error}" if run.error and run.status not in (SUCCESS,) else ""
    return f"{run.job}: {run.status} in {took}{items}{error}"


def _runner(kind):
    """The function of ``schedsync.jobs`` that runs a job of ``kind``, imported now (a
    command job's run imports nothing of http)."""
    module, function = kind.runner.split(":")
    # __import__, not importlib: importing importlib costs a cron tick half a millisecond
    return getattr(__import__(f"schedsync.jobs.{module}", fromlist=[function]), function)

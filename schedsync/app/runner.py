"""One run of one job, in the order SPEC fixes:
reap crashed runs → jitter → lock → pause / breaker → budget → work → record.

The runner decides nothing itself: breaker and bucket arithmetic are pure
functions, the store persists, the job kinds do the work.
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager

from schedsync.core import breaker as breakers
from schedsync.core import budgets
from schedsync.config import Config, Job, Secrets, expand
from schedsync.core.errors import Exit, StateError
from schedsync.core.models import (BREAKER_OPEN, CANCELLED, CRASHED, FAILED, FAILURES, LOCKED, PARTIAL,
                     PAUSED, RATE_LIMITED, RUNNING, SKIPPED, SUCCESS, Run)
from schedsync.core.outcome import Cancelled, Outcome
from schedsync.core.records import dataclass, field
from schedsync.store import Store

HOST = os.uname().nodename  # what socket.gethostname() returns, without importing socket
PRUNE_BATCH = 100  # rows pruned per run, so retention stays cheap however old the backlog


@dataclass
class RunResult:
    run: Run
    exit_code: int
    held_output: str | None = None
    messages: list[str] = field(default_factory=list)  # one-line notes for stderr


@dataclass
class Context:
    """What a job kind may use: its deadline, the budgets, retries, the data db."""

    job: Job
    config: Config
    store: Store
    secrets: Secrets
    deadline: float
    interactive: bool
    pass_fds: tuple = ()
    last_success_at: float | None = None
    sleep: object = time.sleep

    @property
    def data_db(self) -> str:
        """Where http and python jobs store items, as config resolved it (``Job.data_target``)."""
        return self.job.data_target

    def retrying(self, retry):
        from schedsync.core.retry import retrying

        return retrying(self.job.retries, self.deadline, retry=retry, sleep=self.sleep)

    def spend(self, tokens: float = 1) -> float | None:
        """Take tokens from the job's budgets, waiting up to ``max_wait``.

        Returns None when granted, else when the budget allows again.
        """
        waited_until = time.time() + self.job.max_wait
        while True:
            now = time.time()
            ready = budgets.spend(self.store, self.config.budgets, self.job.budgets, tokens, now)
            if ready is None:
                return None
            if ready > min(waited_until, self.deadline):
                return ready
            self.sleep(max(0.0, ready - now))

    def block_budgets(self, until: float) -> None:
        if self.job.budgets:
            budgets.block(self.store, self.job.budgets, until)


def run_job(config: Config, name: str, store: Store, *, trigger: str, interactive: bool,
            environ=os.environ, sleep=time.sleep) -> RunResult:
    job, secrets = expand(config.job(name), config.path, environ)
    reap(store, config, [job.name])
    if job.jitter:
        import random

        sleep(random.uniform(0, job.jitter))

    lock = None
    if job.overlap[0] != "allow":
        try:
            lock = store.job_lock(job.name)
            locked = lock.acquire(job.overlap[1])
        except StateError as exc:  # an untrusted lock folder, a lock file we cannot open
            _record_refusal(store, job, trigger, str(exc))
            raise
        if not locked:
            holder = store.running_runs(job.name)
            who = f" (pid {holder[0].pid} on {holder[0].host})" if holder else ""
            return _skip(store, job, trigger, LOCKED, None, f"the previous run{who} is still going")
    try:
        return _admitted(config, job, secrets, store, lock, trigger, interactive, sleep)
    finally:
        if lock:
            lock.release()


def _admitted(config, job, secrets, store, lock, trigger, interactive, sleep) -> RunResult:
    breaker_name = job.breaker["name"]
    wait_until = time.time() + job.max_wait
    while True:
        now = time.time()
        with store.transaction():
            store.see_job(job.name, now)
            if store.is_paused(job.name):
                skip = (PAUSED, None, "paused; `schedsync resume` it")
            else:
                before = store.load_breaker(breaker_name)
                # the lease ends when the run surely has (``_finish`` hands it back by this value)
                admission, state = breakers.admit(before, job.breaker, now, lease=job.timeout + 60)
                skip = None
                if not admission.allowed:
                    skip = (BREAKER_OPEN, admission.retry_at, f"breaker {breaker_name} is open")
                elif job.kind != "http" and job.budgets and job.cost:
                    ready = budgets.spend(store, config.budgets, job.budgets, job.cost, now)
                    if ready is not None:
                        skip = (RATE_LIMITED, ready, f"budget {', '.join(job.budgets)} is empty")
                if skip is None:
                    if state != before:
                        store.save_breaker(state)  # a half-open trial's lease
                    run = Run(0, job.name, RUNNING, trigger, now, HOST, os.getpid(),
                              pid_start=process_start(os.getpid()))
                    store.start_run(run)
                    break
        reason, retry_at, error = skip
        if reason == RATE_LIMITED and retry_at is not None and retry_at <= wait_until:
            sleep(max(0.0, retry_at - time.time()))
            continue
        return _skip(store, job, trigger, reason, retry_at, error)

    if job.ping:  # alert code is imported only by jobs that use it
        from schedsync.ops.alerts import ping_start
        ping_start(store, job, run, secrets)
    ctx = Context(job, config, store, secrets, deadline=now + job.timeout,
                  interactive=interactive, pass_fds=(lock.fd,) if lock else (), sleep=sleep)
    if job.kind != "command":
        ctx.last_success_at = store.job_states([job.name], recent=1)[job.name].last_success_at
    with _cancel_on_signals():
        try:
            outcome = _work(job, ctx)
        except Cancelled as exc:
            outcome = Outcome("failed", reason=CANCELLED, error=f"cancelled by {exc}")
        except Exception as exc:  # a bug of ours: record it, never leave the run "running"
            import traceback

            outcome = Outcome("failed", error=secrets.clip(f"internal error: {type(exc).__name__}: {exc}", 300),
                              held=traceback.format_exc())
    result = _finish(store, job, run, outcome, admission.trial, secrets)
    if job.notify or job.ping:  # after the records are committed, still holding the lock
        from schedsync.ops.alerts import after_run
        after_run(config, store, job, result.run, secrets, now=result.run.finished_at)
    return result


def _work(job: Job, ctx: Context) -> Outcome:
    if job.kind == "command":
        from schedsync.jobs.command import run_command

        return run_command(job, ctx)
    if job.kind == "http":
        from schedsync.jobs.http import run_http

        return run_http(job, ctx)
    from schedsync.jobs.python import run_python

    return run_python(job, ctx)


def _finish(store, job, run: Run, outcome: Outcome, trial: bool, secrets) -> RunResult:
    now = time.time()
    run.status = outcome.status
    run.reason = outcome.reason
    run.finished_at = now
    run.duration_ms = int((now - run.started_at) * 1000)
    run.attempts, run.requests = outcome.attempts, outcome.requests
    run.items_processed, run.items_failed = outcome.items_processed, outcome.items_failed
    run.exit_code = outcome.exit_code
    run.error = secrets.redact(outcome.error)
    run.output = secrets.redact(outcome.output)
    run.retry_at = outcome.retry_at
    skipped = run.status == SKIPPED  # e.g. an http job whose budget was empty before any request
    with store.transaction():
        store.finish_run(run)
        if not skipped:
            count_on_breaker(store, job, run, trial, now)
        elif trial:  # hand the half-open trial slot back: nothing was tried
            breaker = store.load_breaker(job.breaker["name"])
            lease = run.started_at + job.timeout + 60
            if lease in breaker.leases:
                breaker.leases.remove(lease)
                store.save_breaker(breaker)
        keep = job.retention
        store.prune(job.name, now, keep.get("success"), keep.get("failed"), limit=PRUNE_BATCH)
    ok = run.status in (SUCCESS, PARTIAL)
    result = RunResult(run, Exit.OK if ok else Exit.SKIPPED if skipped else Exit.FAILED,
                       held_output=None if ok or skipped else secrets.redact(outcome.held))
    if run.status == PARTIAL and run.reason == RATE_LIMITED:
        result.messages.append(f"{job.name}: partial: {run.items_processed} items stored, then {run.error}")
    elif run.status == PARTIAL:
        result.messages.append(f"{job.name}: partial: {run.items_failed} of "
                               f"{run.items_processed + run.items_failed} items failed"
                               + (f" ({run.error})" if run.error else ""))
    return result


def count_on_breaker(store, job: Job, run: Run, trial: bool, now: float) -> None:
    """Feed a finished run to its breaker and record any transition."""
    name = job.breaker["name"]
    before = store.load_breaker(name)
    after, transition = breakers.record(before, job.breaker, now,
                                        ok=run.status not in FAILURES, trial=trial)
    if after != before:
        store.save_breaker(after)
    if transition:
        why = f"run {run.id} of {job.name}: {run.status}" + (f" ({run.error})" if run.error else "")
        store.record_transition(name, now, transition[0], transition[1], why[:300])


def _skip(store, job: Job, trigger: str, reason: str, retry_at, error: str) -> RunResult:
    now = time.time()
    run = Run(0, job.name, SKIPPED, trigger, now, HOST, os.getpid(), reason=reason,
              finished_at=now, duration_ms=0, retry_at=retry_at, error=error)
    with store.transaction():
        store.see_job(job.name, now)
        store.start_run(run)
        keep = job.retention  # a paused or rate-limited job must not grow without bound
        store.prune(job.name, now, keep.get("success"), keep.get("failed"), limit=PRUNE_BATCH)
    return RunResult(run, Exit.SKIPPED)


def _record_refusal(store, job: Job, trigger: str, error: str) -> None:
    """Record a run that could not start, if the state lets us; the error is raised anyway."""
    now = time.time()
    run = Run(0, job.name, FAILED, trigger, now, HOST, os.getpid(), finished_at=now,
              duration_ms=0, error=error)
    try:
        with store.transaction():
            store.see_job(job.name, now)
            store.start_run(run)
    except StateError:
        pass


def reap(store, config: Config, names: list[str] | None = None) -> list[Run]:
    """Turn ``running`` rows whose process is gone into ``crashed``, and count them."""
    crashed = []
    for run in store.running_runs(names[0] if names and len(names) == 1 else None):
        if run.host != HOST or (names and run.job not in names):
            continue
        if process_alive(run.pid, run.pid_start):
            continue
        now = time.time()
        with store.transaction():
            if not store.mark_crashed(run.id, now, f"schedsync (pid {run.pid}) died before the run ended"):
                continue  # another process recorded it first
            run.status, run.error = CRASHED, "schedsync died before the run ended"
            if run.job in config.jobs:
                count_on_breaker(store, config.job(run.job), run, trial=False, now=now)
        if run.job in config.jobs and (config.jobs[run.job]["notify"] or config.jobs[run.job]["ping"]):
            from schedsync.ops.alerts import after_crash
            after_crash(config, store, run, now)
        crashed.append(run)
    return crashed


@contextmanager
def _cancel_on_signals():
    """SIGTERM, SIGINT and SIGHUP raise Cancelled once, so the child is stopped and recorded."""
    names = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT", signal.SIGHUP: "SIGHUP"}
    previous = {sig: signal.getsignal(sig) for sig in names}

    def handler(sig, frame):
        for s in names:
            signal.signal(s, signal.SIG_IGN)  # one cancel; the cleanup must not be cut short
        raise Cancelled(names[sig])

    for sig in names:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
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


def process_start(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), to tell a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def process_alive(pid: int, started: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:  # a zombie (killed, not yet reaped by its parent) answers kill(0) but is dead
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X"):
                return False
    except (OSError, IndexError):
        pass
    return started is None or process_start(pid) in (None, started)

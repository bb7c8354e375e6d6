"""What ``status``, ``history`` and ``metrics`` show, as plain JSON-ready data.

Rendering for a terminal is ``render``'s job; this module only gathers and decides.
"""

from __future__ import annotations

from dataclasses import dataclass

from schedsync.core import breaker as breakers
from schedsync.core import budgets
from schedsync.core.durations import iso
from schedsync.config import Config, Job
from schedsync.core.errors import StateError
from schedsync.core.health import SEVERITY, Health, job_health
from schedsync.core.models import FAILURES, PARTIAL, SUCCESS, Breaker, JobState, Run
from schedsync.app.runner import reap
from schedsync.core.schedule import Schedule, local_zone

STRIP = 20  # recent runs shown per job
NEEDS_ACTION = ("LATE", "STALLED", "FAILING")  # `status --check` exits 1 for these

RUN_KEYS = ("id", "job", "status", "reason", "trigger", "started_at", "finished_at",
            "duration_ms", "attempts", "requests", "items_processed", "items_failed",
            "exit_code", "error", "retry_at", "host", "pid")


def run_json(run: Run, output: bool = False) -> dict:
    out = {k: getattr(run, k) for k in RUN_KEYS}
    for key in ("started_at", "finished_at", "retry_at"):
        out[key] = iso(out[key])
    if output:
        out["output"] = run.output
    return out


def zone(config: Config):
    if not config.timezone:
        return None
    from zoneinfo import ZoneInfo

    return ZoneInfo(config.timezone)


@dataclass
class JobView:
    """Everything shown about one job at one instant (``status``, ``metrics``, alerts)."""

    job: Job
    state: JobState
    breaker: Breaker
    breaker_state: str
    health: Health
    consecutive_failures: int


def views(config: Config, store, now: float, names: list[str]) -> list[JobView]:
    """The jobs in ``names`` as they stand at ``now``; reads the store, decides nothing itself."""
    states = store.job_states(names, recent=STRIP)
    tz = zone(config) or local_zone()  # once: the system's zone means reading /etc/localtime
    schedules: dict[str, _Shared] = {}
    out = []
    for name in names:
        job = config.job(name)
        state = states[name]
        schedule = None
        if job.schedule:
            if job.schedule not in schedules:
                schedules[job.schedule] = _Shared(Schedule(job.schedule, tz))
            schedule = schedules[job.schedule]
        breaker = store.load_breaker(job.breaker["name"])
        breaker_state = breakers.state_at(breaker, now)
        health = job_health(schedule=schedule, grace=job.grace, timeout=job.timeout,
                            state=state, breaker_state=breaker_state, now=now)
        out.append(JobView(job, state, breaker, breaker_state, health, _streak(store, state)))
    return out


def _streak(store, state: JobState) -> int:
    """Failures since the last success: from the recent runs already read when they reach back
    to a success (or to the job's first run), else from the store."""
    count = 0
    for run in state.recent:
        if run.status in (SUCCESS, PARTIAL):
            return count
        count += run.status in FAILURES
    return count if len(state.recent) < STRIP else store.failure_streak(state.name)


class _Shared:
    """A schedule shared by the jobs that use its expression, its answers remembered: at one
    ``now`` they all ask the same questions, and cronsim's walks are most of status's time."""

    def __init__(self, schedule: Schedule):
        self.schedule = schedule
        self.tz = schedule.tz
        self.expr = schedule.expr
        self._next: dict = {}
        self._previous: dict = {}

    def next_after(self, t: float) -> float:
        if t not in self._next:
            self._next[t] = self.schedule.next_after(t)
        return self._next[t]

    def previous_fires(self, t: float, n: int) -> list[float]:
        if (t, n) not in self._previous:
            self._previous[t, n] = self.schedule.previous_fires(t, n)
        return list(self._previous[t, n])

    def __getattr__(self, name):
        return getattr(self.schedule, name)


def job_json(view: JobView) -> dict:
    job, state, breaker = view.job, view.state, view.breaker
    return {
        "name": job.name, "health": view.health.health, "why": view.health.reason,
        "schedule": job.schedule, "description": job.description, "kind": job.kind,
        "paused": state.paused, "next_expected": iso(view.health.next_expected),
        "last_run": run_json(state.recent[0]) if state.recent else None,
        "last_success_at": iso(state.last_success_at),
        "consecutive_failures": view.consecutive_failures,
        "breaker": {"name": breaker.name, "state": view.breaker_state,
                    "failures": breaker.failures, "opens_until": iso(breaker.opens_until)},
        "budgets": job.budgets,
        "recent": [{"status": r.status, "duration_ms": r.duration_ms} for r in state.recent],
    }


def snapshot(config: Config, store, now: float, only: str | None = None) -> tuple[list[JobView], list[dict]]:
    """Every job (or ``only``) and every budget at ``now``, crashed runs reaped first."""
    from schedsync.app.adhoc import with_adhoc

    config = with_adhoc(config, store)  # and the jobs `schedsync exec` ran without an entry
    if only:
        config.job(only)  # an unknown name is a usage error before anything is read
    reap(store, config, [only] if only else None)
    names = [only] if only else list(config.jobs)
    try:
        # A job never run (say, its crontab line was forgotten) turns LATE only once
        # schedsync has seen it: status is where that is noticed first.
        with store.transaction():
            for name in names:
                store.see_job(name, now)
    except StateError:
        pass  # a read-only state can still be shown
    levels = budgets.levels(store, config.budgets, now)
    budget_rows = [{"name": n, "tokens": round(levels[n], 3), "capacity": c, "per_seconds": p}
                   for n, (c, p) in config.budgets.items()]
    return views(config, store, now, names), budget_rows


def status(config: Config, store, now: float, only: str | None = None) -> dict:
    """``status --json`` (SPEC: JSON)."""
    job_views, budget_rows = snapshot(config, store, now, only)
    return {"generated_at": iso(now), "jobs": [job_json(view) for view in job_views], "budgets": budget_rows}


def job_detail(config: Config, store, name: str, now: float) -> dict:
    """``status JOB``: the job's status row plus breaker transitions, recent runs and alerts."""
    data = status(config, store, now, only=name)
    job = data["jobs"][0]
    return {
        **data,
        "transitions": [{"at": iso(at), "from": old, "to": new, "reason": why}
                        for at, old, new, why in store.transitions(job["breaker"]["name"])],
        "runs": [run_json(r) for r in store.runs(name, 10)],
        "notifications": [{"at": iso(n.at), "event": n.event, "target": n.target, "ok": n.ok,
                           "detail": n.detail, "run_id": n.run_id}
                          for n in store.notifications(name, 8)],
    }


def worst_first(jobs: list[dict]) -> list[dict]:
    """By SEVERITY; among jobs needing action, the one without a success for longest first."""
    def key(job: dict):
        action = job["health"] in NEEDS_ACTION
        return SEVERITY.get(job["health"], 99), (job["last_success_at"] or "") if action else "", job["name"]

    return sorted(jobs, key=key)


def history(config: Config, store, job: str, limit: int, failed: bool) -> list[dict]:
    from schedsync.app.adhoc import with_adhoc

    config = with_adhoc(config, store)
    config.job(job)
    reap(store, config, [job])
    return [run_json(r, output=True) for r in store.runs(job, limit, failed_only=failed)]

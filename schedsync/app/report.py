"""What ``status``, ``history`` and ``metrics`` show, as plain JSON-ready data: the
views of jobs at one instant. It reads the store and records nothing; taking a
snapshot (reaping, first-seen, late alerts) is ``app.status``'s job, rendering for
a terminal ``cli.render``'s.
"""

from __future__ import annotations

from schedsync.config import Config, Job
from schedsync.core import breaker as breakers
from schedsync.core.durations import iso
from schedsync.core.health import SEVERITY, Health, job_health
from schedsync.core.models import FAILURES, PARTIAL, SUCCESS, Breaker, JobState, Run
from schedsync.core.records import dataclass
from schedsync.core.schedule import Schedule, zone

STRIP = 20  # recent runs shown per job
NEEDS_ACTION = ("LATE", "STALE", "STALLED", "FAILING")  # `status --check` exits 1 for these

RUN_KEYS = ("id", "job", "status", "reason", "trigger", "started_at", "finished_at",
            "duration_ms", "attempts", "requests", "items_processed", "items_failed",
            "exit_code", "error", "retry_at", "host", "pid", "slot", "retry_of", "retry_number", "parent",
            "items_inserted", "items_updated", "items_deleted")


def run_json(run: Run, output: bool = False) -> dict:
    out = {k: getattr(run, k) for k in RUN_KEYS}
    for key in ("started_at", "finished_at", "retry_at", "slot"):
        out[key] = iso(out[key])
    text = getattr(run, "params", None)
    if text:  # stored redacted (``app.runner``), as JSON: shown as an object
        from schedsync.config.params import decode

        out["params"] = decode(text)
    else:
        out["params"] = None
    out["parent"] = getattr(run, "parent", None)  # a chain's run: the run it came after
    if output:
        out["output"] = run.output
    return out


def display_zone(config: Config):
    """The zone schedules are read and times shown in: the registry's ``timezone:``, else the
    system's (``$TZ``, else /etc/localtime), as ``date`` shows it."""
    return zone(config.timezone)


@dataclass
class JobView:
    """Everything shown about one job at one instant (``status``, ``metrics``, alerts)."""

    job: Job
    state: JobState
    breaker: Breaker
    breaker_state: str
    health: Health
    consecutive_failures: int
    watermark: float | None = None  # the newest fresh.field value stored (jobs with fresh:)


def views(config: Config, store, now: float, names: list[str], crashed: list[Run] = (),
          seen: bool = False) -> list[JobView]:
    """The jobs in ``names`` as they stand at ``now``; reads the store, decides nothing itself.

    For a state that cannot record them, ``crashed`` (reaped runs) and ``seen`` (first-seen
    is ``now`` for a job never seen) are applied in memory."""
    states = store.job_states(names, recent=STRIP)
    breaker_states = store.breakers(list({config.jobs[name].breaker["name"] for name in names}))
    if crashed or seen:
        overlay(states.values(), crashed, now if seen else None)
    fresh = [name for name in names if config.jobs[name].fresh]
    watermarks = store.watermarks(fresh) if fresh else {}
    tz = display_zone(config)  # once: the system's zone means reading /etc/localtime
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
        breaker = breaker_states[job.breaker["name"]]
        breaker_state = breakers.state_at(breaker, now)
        health = job_health(schedule=schedule, grace=job.grace, timeout=job.timeout,
                            state=state, breaker_state=breaker_state, now=now,
                            fresh=job.fresh, watermark=watermarks.get(name))
        out.append(JobView(job, state, breaker, breaker_state, health, _streak(store, state),
                           watermarks.get(name)))
    return out


def overlay(states, crashed: list[Run], seen_at: float | None) -> None:
    """Apply what a read-only state could not record: crashed runs, first-seen."""
    by_id = {run.id: run for run in crashed}
    for state in states:
        state.recent = [by_id.get(run.id, run) for run in state.recent]
        if seen_at is not None and state.first_seen is None:
            state.first_seen = seen_at


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
        "fresh": {"field": job.fresh["field"], "within_seconds": job.fresh["within"],
                  "newest": iso(view.watermark)} if job.fresh else None,
    }


def worst_first(jobs: list[dict]) -> list[dict]:
    """By SEVERITY; among jobs needing action, the one without a success for longest first."""
    def key(job: dict):
        action = job["health"] in NEEDS_ACTION
        return SEVERITY.get(job["health"], 99), (job["last_success_at"] or "") if action else "", job["name"]

    return sorted(jobs, key=key)

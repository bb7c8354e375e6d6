"""What ``status``, ``history`` and ``metrics`` show, as plain JSON-ready data.

Rendering for a terminal is ``render``'s job; this module only gathers and decides.
"""

from __future__ import annotations

from datetime import datetime, timezone

from . import breaker as breakers
from . import budgets
from .config import Config
from .health import SEVERITY, job_health
from .models import Run
from .runner import reap
from .schedule import Schedule

STRIP = 20  # recent runs shown per job

RUN_KEYS = ("id", "job", "status", "reason", "trigger", "started_at", "finished_at",
            "duration_ms", "attempts", "requests", "items_processed", "items_failed",
            "exit_code", "error", "retry_at", "host", "pid")


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


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


def status(config: Config, store, now: float, only: str | None = None) -> dict:
    reap(store, config, [only] if only else None)
    names = [only] if only else list(config.jobs)
    if only:
        config.job(only)
    states = store.job_states(names, recent=STRIP)
    tz = zone(config)
    jobs = []
    for name in names:
        job = config.job(name)
        state = states[name]
        schedule = Schedule(job.schedule, tz) if job.schedule else None
        breaker = store.load_breaker(job.breaker["name"])
        breaker_state = breakers.state_at(breaker, now)
        health = job_health(schedule=schedule, grace=job.grace, timeout=job.timeout,
                            state=state, breaker_state=breaker_state, now=now)
        jobs.append({
            "name": name, "health": health.health, "why": health.reason,
            "schedule": job.schedule, "description": job.description, "kind": job.kind,
            "paused": state.paused, "next_expected": iso(health.next_expected),
            "last_run": run_json(state.recent[0]) if state.recent else None,
            "last_success_at": iso(state.last_success_at),
            "breaker": {"name": breaker.name, "state": breaker_state,
                        "failures": breaker.failures, "opens_until": iso(breaker.opens_until)},
            "budgets": job.budgets,
            "recent": [{"status": r.status, "duration_ms": r.duration_ms} for r in state.recent],
        })
    levels = budgets.levels(store, config.budgets, now)
    return {
        "generated_at": iso(now),
        "jobs": jobs,
        "budgets": [{"name": n, "tokens": round(levels[n], 3), "capacity": c, "per_seconds": p}
                    for n, (c, p) in config.budgets.items()],
    }


def worst_first(jobs: list[dict]) -> list[dict]:
    return sorted(jobs, key=lambda j: SEVERITY.get(j["health"], 99))


def history(config: Config, store, job: str, limit: int, failed: bool) -> list[dict]:
    config.job(job)
    reap(store, config, [job])
    return [run_json(r, output=True) for r in store.runs(job, limit, failed_only=failed)]

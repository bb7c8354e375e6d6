"""The application layer's "take a status snapshot at ``now``": it reaps crashed
runs, records first-seen (LATE needs it) and sends ``late`` alerts, then returns
the views. ``status``, ``history`` and ``metrics`` (and any later HTTP endpoint)
call these and only render.

On a state opened read-only (``store.writable`` False) the reaping and first-seen
that would be recorded are applied in memory instead, and no alert is sent (it
could not be recorded as sent). So it is when another process holds a write
transaction (``StateBusy``: a read never waits on a writer); a later read records them.
"""

from __future__ import annotations

import math

from schedsync.app.report import job_json, run_json, views
from schedsync.app.run import reap
from schedsync.config import Config
from schedsync.core.durations import iso
from schedsync.core.errors import StateBusy, StateError
from schedsync.core.records import dataclass


@dataclass
class Snapshot:
    views: list  # JobView per job
    budgets: list  # {name, tokens, capacity, per_seconds}
    now: float


def snapshot(config: Config, store, now: float | None = None, only: str | None = None,
             alert: bool = True) -> Snapshot:
    """Every job (or ``only``) and every budget at ``now`` (the store's clock by default),
    the jobs ``schedsync exec`` ran without a registry entry included."""
    config = _with_adhoc(config, store)
    if only:
        config.job(only)  # an unknown name is a usage error before anything is read
    given, now = now, store.now() if now is None else now
    crashed = reap(config, store, [only] if only else None)
    names = [only] if only else list(config.jobs)
    recorded = store.writable
    if recorded:
        try:
            # A job never run (say, its crontab line was forgotten) turns LATE only once
            # schedsync has seen it: status is where that is noticed first.
            store.see_jobs(names, now)
        except StateError:
            recorded = False  # a state that cannot be written can still be shown
    job_views = views(config, store, now, names, crashed=[] if store.writable else crashed,
                      seen=not recorded)
    levels = store.budget_levels(config.budgets, given)  # None: the store's clock, in its read
    # Down, never up: 23.7 tokens are 23 whole requests, and "24/30" would promise one more.
    budget_rows = [{"name": n, "tokens": math.floor(levels[n] * 1000) / 1000, "capacity": c,
                    "per_seconds": p} for n, (c, p) in config.budgets.items()]
    if alert and recorded and config.wants("late"):
        from schedsync.notify import late

        try:
            late(config, store, [job_json(view) for view in job_views], now)
        except StateBusy:
            pass  # behind another process's write: a later status sends it
    return Snapshot(job_views, budget_rows, now)


def _with_adhoc(config: Config, store) -> Config:
    from schedsync.app.adhoc import with_adhoc

    return with_adhoc(config, store)


def status(config: Config, store, now: float | None = None, only: str | None = None,
           alert: bool = True) -> dict:
    """``status --json`` (README: JSON). ``alert=False``: no ``late`` alert (``serve``)."""
    snap = snapshot(config, store, now, only, alert=alert)
    out = {"generated_at": iso(snap.now), "jobs": [job_json(view) for view in snap.views],
           "budgets": snap.budgets, "clock_skew": clock_skew(store)}
    from schedsync.app.tick import tick_health

    ticking = tick_health(config, store, snap.now)
    if ticking is not None:
        out["tick"] = ticking
    return out


SKEW_SHOWN = 5.0  # seconds: a host's clock further off than this is named by status


def clock_skew(store) -> list[dict]:
    """The hosts whose clock was off the store's (PostgreSQL: the server's) by more than
    ``SKEW_SHOWN`` seconds when they last started a run: ``seconds`` is host minus server."""
    return [{"host": host, "seconds": round(skew, 1), "noted_at": iso(seen)}
            for host, (skew, seen) in sorted(store.host_skews().items()) if abs(skew) > SKEW_SHOWN]


def job_detail(config: Config, store, name: str, now: float | None = None, alert: bool = True) -> dict:
    """``status JOB``: the job's status row plus breaker transitions, recent runs and alerts."""
    config = _with_adhoc(config, store)
    data = status(config, store, now, only=name, alert=alert)
    job = data["jobs"][0]
    from schedsync.app.tick import slot_view
    from schedsync.core.durations import posix

    runs = store.runs(name, 30)
    first_seen = store.job_states([name], recent=0)[name].first_seen
    return {
        **data,
        **slot_view(config, store, name, runs, first_seen, posix(data["generated_at"])),
        "transitions": [{"at": iso(at), "from": old, "to": new, "reason": why}
                        for at, old, new, why in store.transitions(job["breaker"]["name"])],
        "runs": [run_json(r) for r in _shown(store.runs(name, 10), store, config, name)],
        "notifications": [{"at": iso(n.at), "event": n.event, "target": n.target, "ok": n.ok,
                           "detail": n.detail, "run_id": n.run_id}
                          for n in store.notifications(name, 8)],
        "audit": [audit_json(a) for a in store.audit(name, job["breaker"]["name"], 8)],
    }


def audit_json(entry) -> dict:
    """An audit entry (a write through ``serve``) as ``status JOB --json`` and ``/job/NAME`` show it."""
    import json

    return {"at": iso(entry.at), "action": entry.action, "job": entry.job, "who": entry.who,
            "client": entry.client, "breaker": entry.breaker, "run_id": entry.run_id,
            "item_id": entry.item_id, "params": json.loads(entry.params) if entry.params else None,
            "reason": entry.reason}


def history(config: Config, store, job: str, limit: int, failed: bool) -> list[dict]:
    """``history JOB``: its runs, newest first, crashed ones reaped first."""
    config = _with_adhoc(config, store)
    config.job(job)
    crashed = reap(config, store, [job])
    runs = store.runs(job, limit, failed_only=failed)
    if not store.writable and crashed:
        by_id = {run.id: run for run in crashed}
        runs = [by_id.get(run.id, run) for run in runs]
    return [run_json(r, output=True) for r in runs]


def _shown(runs: list, store, config: Config, name: str) -> list:
    if store.writable:
        return runs
    by_id = {run.id: run for run in reap(config, store, [name])}
    return [by_id.get(run.id, run) for run in runs]


def run_log(config: Config, store, job: str, run_id: int | None = None) -> dict:
    """``logs JOB [RUN_ID]``: the job's last (or given) run with its output, which was redacted
    when it was recorded. An unknown job is a usage error; a missing run, or another job's, is not."""
    from schedsync.core.errors import SchedsyncError

    config = _with_adhoc(config, store)
    config.job(job)
    crashed = {run.id: run for run in reap(config, store, [job])}
    run = store.run(job, run_id)
    if run is None and run_id is None:
        raise SchedsyncError(f"{job} has no runs yet", f"run it once: schedsync run {job}")
    if run is None:
        other = store.run(None, run_id)
        if other is not None:
            raise SchedsyncError(f"run {run_id} is a run of {other.job}, not of {job}",
                                 f"schedsync logs {other.job} {run_id}")
        raise SchedsyncError(f"{job} has no run {run_id}",
                             f"`schedsync history {job}` lists its runs (pruned ones are gone)")
    if not store.writable:
        run = crashed.get(run.id, run)
    return run_json(run, output=True)

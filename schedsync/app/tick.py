"""``schedsync tick``: what cron cannot start, started once a minute by one crontab line.

Each tick, in two atomic store steps (``Store.begin_tick``, ``Store.settle_slots``):

1. notes itself (``status`` warns when a job needs the tick and none ran lately),
   hands claims whose run never started back to the queue, and claims due queued work
   (catch-up, backfill, retries: at most one item per job per tick, oldest due first);
2. for the jobs whose mark says it is time (a slot's grace passed, or a ``run_by:
   tick`` job's slot came; a tick with nothing due computes no schedule at all):
   records slots whose grace passed with no claim as ``missed``, and claims a
   ``run_by: tick`` job's current slot, unless a run (its own crontab line on any
   host) or another tick already has it, or a later slot already ran (a clock that
   stepped back replays nothing).

Then it starts each claimed item as its own ``schedsync run JOB --item ID`` process,
in a new session, and exits without waiting: the run has every protection a
cron-started run has (lock, budgets, breaker, timeout, records), its output goes where
the tick's goes (cron mails what a failed run prints), and a long job never delays the
next tick. A tick killed between claiming and starting loses nothing: the claim goes
stale and a later tick queues the item again and starts it. Two ticks at once (on one
host or on every host of a cluster) never start an item twice: each claim is atomic,
and a run of an item that already ran exits quietly.
"""

from __future__ import annotations

import os
import sys

from schedsync.app.starter import PAUSE, host, registry_path, starter
from schedsync.config import Config, Job

LIMIT = 100  # items one tick starts at most (one per job)
SCAN = 1000  # missed slots one look at a job records at most (an every-minute job after a long outage)


def needs_tick(job: Job) -> bool:
    """Does ``job`` rely on ``schedsync tick`` (so the crontab prints the tick line, and
    ``status`` warns when no tick ran lately)? A scheduled job with ``run_by: tick``, and any
    job with ``catchup`` or ``retry_later`` (``app.later``), or ``after`` (the tick starts a
    chain's item its upstream's end could not)."""
    return (bool(job.schedule) and job.run_by == "tick") or bool(job.catchup) or bool(job.retry_later) \
        or bool(job.after)


def mark_key(config: Config, job: Job) -> str:
    """What the job's mark depends on: a change of any re-derives it."""
    if not job.schedule:
        return "-"
    return f"{job.schedule}|{config.timezone or ''}|{job.grace:g}|{job.run_by}"


def tick(config: Config, store, state: str, now: float | None = None, start=None) -> list:
    """One tick over ``config``'s jobs, on ``store`` (opened from ``state``); the items it
    started (``SlotItem``). ``start(item)`` starts one item (default: a detached
    ``schedsync run JOB --item ID`` on the same state)."""
    me = host()
    claimer = f"{me}:{os.getpid()}"
    now = store.now() if now is None else now
    catching = [name for name, job in config.jobs.items() if job.catchup]
    if catching:  # a run whose schedsync died is `crashed` first: its slot counts as missed
        from schedsync.app.run import reap

        reap(config, store, catching)
    if catching or any(job.retry_later for job in config.jobs.values()):
        from schedsync.app import later

        later.plan(config, store, now)  # catch-up due now queued; expired and superseded items settled
    marks = {name: mark_key(config, job) for name, job in config.jobs.items()}
    if not store.live_claims:  # a dead run's row must not hold its job's queue (SQLite: cheap, local)
        from schedsync.app.run import reap

        reap(config, store, list(marks))
    look, items = store.begin_tick(me, claimer, marks, LIMIT, now=now)
    if look:
        settled = [_settle(config, config.jobs[name], marks[name], until, now) for name, (until, _) in look.items()]
        items += store.settle_slots(settled, claimer, now=now)
    if any(item.kind != "cron" for item in items):
        from schedsync.app.later import Gate

        gate = Gate(config, store, now)  # catch-up, backfill, retries: budgets and breaker first
        held = {item.id: gate(item) for item in items}
        for item_id, why in held.items():
            if why is not None:
                store.release_item(item_id, *why)
        items = [item for item in items if held[item.id] is None]
    if items and os.environ.get(PAUSE):
        import time

        time.sleep(float(os.environ[PAUSE]))
    if items:  # the starter imports subprocess (with locale, re, threading…): not for an idle tick
        start = start or starter(registry_path(config), state)
        for item in items:
            start(item)
    return items


def _settle(config: Config, job: Job, key: str, until: float | None, now: float) -> dict:
    """One job's look: its missed slots since ``until``, its new mark, its slot to claim."""
    if not job.schedule:
        return {"job": job.name, "key": key, "until": None, "next_at": float("inf"), "missed": [], "claim": None}
    from schedsync.core.schedule import Schedule, zone

    schedule = Schedule(job.schedule, zone(config.timezone))
    horizon = now - job.grace
    last = schedule.last_at_or_before(horizon)  # the newest slot whose grace has passed
    missed: list[float] = []
    if until is not None and last is not None:  # a first look (or a new schedule) starts afresh
        fire = last
        while fire is not None and fire > until and len(missed) < SCAN:
            missed.append(fire)
            fire = schedule.last_at_or_before(fire - 1)
    next_at = schedule.next_after(horizon) + job.grace  # when the next slot's grace passes
    claim = None
    if job.run_by == "tick":  # the tick starts its slots (catch-up and retries need the tick, not this)
        current = schedule.last_at_or_before(now)
        if current is not None and now - current <= job.grace:
            claim = current
        next_at = min(next_at, schedule.next_after(now))
    return {"job": job.name, "key": key, "until": last if last is not None else until, "next_at": next_at,
            "missed": missed, "claim": claim}


def tick_cli(config_opt: str | None, state_opt: str | None, now: float | None = None) -> int:
    """``schedsync tick`` as cron runs it; the exit code. A broken jobs.yaml: exit 2 with one
    line, noted on the tick where the state can still be found (``status`` shows why)."""
    from schedsync.config import load, resolve_config, resolve_state
    from schedsync.core.errors import ConfigError, SchedsyncError
    from schedsync.store import open_store

    try:
        try:
            config = load(resolve_config(config_opt))
        except ConfigError as exc:
            broken_tick(resolve_config(config_opt), state_opt, exc)
            raise
        state = resolve_state(state_opt, config)
        store = open_store(state)
        try:
            tick(config, store, state, now=now)
        finally:
            store.close()
    except SchedsyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    return 0


def broken_tick(config_path: str, state_opt: str | None, exc) -> None:
    """Note the tick's failure (its one-line error) in the state it would have used, if that
    state exists (--state, $SCHEDSYNC_STATE, the file's ``state:`` line, the default).
    Never raises: the configuration error is the one to show."""
    from schedsync.app.run import _state_line
    from schedsync.paths import default_state, is_url
    from schedsync.store import open_store

    state = state_opt or os.environ.get("SCHEDSYNC_STATE") or _state_line(config_path) or default_state()
    if not is_url(state) and not os.path.isfile(state):
        return
    try:
        store = open_store(state, create=False)
    except Exception:
        return
    try:
        store.note_tick(host(), error=str(exc)[:300])
    except Exception:
        pass
    finally:
        store.close()


TICK_LATE = 180.0  # seconds: `status` warns when a job needs the tick and none ran for this long
SHOWN = 10  # slots `status JOB` shows


def tick_health(config: Config, store, now: float) -> dict | None:
    """For ``status``: None when no job needs the tick; else the newest tick noted
    (``last_at``, ``host``, ``error``) and a one-line ``warning`` when none ran in the last
    3 minutes or the last one failed (then retries and catch-ups silently never happen)."""
    needing = [name for name, job in config.jobs.items() if needs_tick(job)]
    if not needing:
        return None
    from schedsync.core.durations import iso

    last = store.last_tick()
    warning = None
    jobs = ", ".join(needing[:3]) + (f" and {len(needing) - 3} more" if len(needing) > 3 else "")
    if last is not None and last.error:
        warning = f"the last `schedsync tick` failed: {last.error}"
    elif last is None or now - last.at > TICK_LATE:
        when = "ever" if last is None else "in the last 3 minutes"
        warning = (f"{jobs} need `schedsync tick`, and no tick ran {when} — add the tick line"
                   " `schedsync crontab` prints to this user's crontab")
    return {"needed_by": needing, "last_at": iso(last.at) if last else None, "host": last.host if last else None,
            "error": last.error if last else None, "warning": warning}


def slot_view(config: Config, store, name: str, runs: list, first_seen: float | None, now: float) -> dict:
    """For ``status JOB``: the job's recent slots and what became of each, newest first, and how
    many items are queued. Read-only: a slot whose grace passed with no ledger row shows as
    ``missed`` (the tick records it); one with a run started within its grace (a run from
    before the ledger) as ``ran``; one still within its grace as ``due``."""
    from schedsync.core.durations import iso

    job = config.job(name)
    rows = store.slots(name, SHOWN * 2)
    shown = [_slot_json(row, iso) for row in rows]
    if job.schedule:
        from schedsync.core.schedule import Schedule, zone

        # a ledger row's kind (cron, catchup…), not a job kind: scheduled slots are "cron" rows
        recorded = {row.slot for row, kind in ((r, r.kind) for r in rows) if kind == "cron"}
        for fire in Schedule(job.schedule, zone(config.timezone)).previous_fires(now, SHOWN):
            if fire in recorded:
                continue
            ran = next((r for r in runs if r.slot == fire or r.slot is None
                        and fire - 5 <= r.started_at <= fire + job.grace), None)
            if ran is not None:
                state, run_id, reason = "ran" if ran.status != "skipped" else "skipped", ran.id, ran.reason
            elif first_seen is None or fire < first_seen:
                continue  # before the job was first seen: nothing was expected
            elif now - fire <= job.grace:
                state, run_id, reason = "due", None, None
            else:
                state, run_id, reason = "missed", None, "no run claimed it within its grace"
            shown.append({"slot": iso(fire), "kind": "cron", "state": state, "run_id": run_id,
                          "reason": reason, "due_at": iso(fire), "retry_number": 0})
    shown.sort(key=lambda s: s["slot"] or s["due_at"], reverse=True)
    return {"slots": shown[:SHOWN * 2], "queued": store.queued(name)}


def _slot_json(row, iso) -> dict:
    return {"slot": iso(row.slot) if row.slot is not None else None, "kind": row.kind, "state": row.state,
            "run_id": row.run_id, "reason": row.reason, "due_at": iso(row.due_at),
            "retry_number": row.retry_number}

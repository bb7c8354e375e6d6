"""Work cron did not start, on top of the slot ledger (issue 17): ``backfill`` queues a
range of past slots; the tick asks ``plan`` for the catch-up, backfill and retry items it
may start now; the runner asks ``retry_item`` what a finished run queues. The rules are
``core.catchup``'s; the queue is the store's (``enqueue``, ``claim_due``, ``release_item``).
"""

from __future__ import annotations

from schedsync.config import Config
from schedsync.core.errors import ConfigError

BACKFILL, CATCHUP, RETRY, API, AFTER = "backfill", "catchup", "retry", "api", "after"  # API: ``schedsync trigger``


def backfill_range(config: Config, name: str, start: str, end: str, now: float) -> list[float]:
    """The slots ``schedsync backfill NAME --from START --to END`` queues, oldest first: the
    job's slots in ``[START, END]`` (ISO 8601; without an offset, in the registry's zone; END a
    date alone: that whole day) that
    are not in the future (those are cron's). A ``ConfigError`` (exit 2) for a job without a
    schedule, a time that does not parse, ``--to`` before ``--from``, or a range of more than
    10,000 slots."""
    from schedsync.core import catchup
    from schedsync.core.schedule import Schedule, zone

    job = config.job(name)
    if not job.schedule:
        raise ConfigError(f"backfill {name}: the job has no schedule, so it has no slots to queue",
                          f"give it a schedule: in {config.path}, or run it with `schedsync run {name}`")
    tz = zone(config.timezone)
    times = []
    for flag, text in (("--from", start), ("--to", end)):
        try:
            times.append(catchup.parse_time(text, tz, end=flag == "--to"))
        except ValueError as exc:
            raise ConfigError(f"backfill {name} {flag}: {exc}",
                              "write e.g. 2026-12-01T06:00 (the registry's zone) or 2026-12-01T05:00Z") from None
    first, last = times
    if last < first:
        raise ConfigError(f"backfill {name}: --to {end} is before --from {start}", "swap them")
    try:
        slots = catchup.backfill_slots(Schedule(job.schedule, tz), first, last)
    except ValueError as exc:
        raise ConfigError(f"backfill {name}: {exc} of {job.schedule!r}",
                          f"split it into ranges of at most {catchup.MAX_BACKFILL:,} slots") from None
    return [slot for slot in slots if slot <= now]


def backfill(config: Config, store, name: str, slots: list[float]) -> tuple[int, int]:
    """Queue ``slots`` (``backfill_range``'s, future ones included) as ``backfill`` items due
    now; (how many are queued, how many were left out as not yet past). A slot queued already
    is not queued twice; one backfilled before and done is queued again (asked for again)."""
    now = store.now()
    past = [slot for slot in slots if slot <= now]
    ids = store.enqueue(name, [{"slot": slot, "kind": BACKFILL, "due_at": now} for slot in past], requeue=True)
    return len(ids), len(slots) - len(past)


def no_tick(config: Config, name: str, store, now: float, late: float) -> str | None:
    """A warning for ``backfill`` when no ``schedsync tick`` ran in the last ``late`` seconds:
    queued slots wait for one (``crontab`` prints the tick line only for jobs whose settings
    need it)."""
    import os

    last = store.last_tick()
    if last is not None and now - last.at <= late:
        return None
    where = os.path.join(config.dir, os.path.basename(config.path))
    return (f"warning: no `schedsync tick` ran in the last 3 minutes, and the queued slots wait for one — "
            f"add a `* * * * *` line running `schedsync -c {where} tick` to the crontab, or run it once a "
            f"minute until `schedsync status {name}` shows nothing queued")


def backfill_line(config: Config, name: str, queued: int, future: int) -> str:
    """What ``schedsync backfill`` prints."""
    text = f"{name}: {queued} slot{'' if queued == 1 else 's'} queued for backfill"
    if queued:
        text += "; `schedsync tick` starts them oldest first, one a tick, through budgets and breaker"
    if future:
        text += f" ({future} not yet due left to cron)"
    return text


# --- the tick: what to queue, and whether a claimed item may start now -------------------

def plan(config: Config, store, now: float, names: list[str] | None = None) -> int:
    """Queue the catch-up items due now, and settle queued ones that can no longer run: a
    catch-up slot whose window closed is ``missed``; a retry the job's next slot has come
    before is ``skipped`` (``superseded``); with ``runs: latest``, a queued catch-up older
    than a slot that has since been served is ``skipped`` (``superseded``) too. Only jobs
    with ``catchup`` or ``retry_later`` are looked at. Returns how many items it queued."""
    jobs = [config.jobs[n] for n in (names if names is not None else config.jobs) if n in config.jobs]
    jobs = [job for job in jobs if job.schedule and (job.catchup or job.retry_later)]
    if not jobs:
        return 0  # and nothing imported: a tick with nothing of this to do stays cheap
    from schedsync.core import catchup
    from schedsync.core.models import CRASHED, MISSED, SKIPPED
    from schedsync.core.schedule import Schedule, zone

    tz = zone(config.timezone)
    seen = store.job_states([job.name for job in jobs], recent=1)
    queued = 0
    for job in jobs:
        schedule = Schedule(job.schedule, tz)
        rows = store.slots(job.name, limit=2 * catchup.MAX_LOOKBACK + 50)
        if job.retry_later:
            after = job.retry_later["after"]
            for row in rows:
                if (row.kind == RETRY and row.state == "queued"
                        and catchup.superseded(now, schedule.next_after(row.due_at - after))):
                    store.release_item(row.id, SKIPPED, catchup.SUPERSEDED)
        if not job.catchup:
            continue
        within, runs = job.catchup["within"], job.catchup["runs"]
        crashed = {run.slot for run in store.runs(job.name, limit=50, failed_only=True)
                   if run.status == CRASHED and getattr(run, "slot", None) is not None}
        served, tried = set(), set()
        for row in rows:
            if row.slot is None:
                continue
            if row.kind == CATCHUP:
                tried.add(row.slot)
            elif (row.kind in ("cron", BACKFILL) and row.state in ("ran", "claimed", "queued", SKIPPED)
                  and not (row.state == "ran" and row.slot in crashed)):  # a crashed run's slot is missed
                served.add(row.slot)
        newest_served = max(served, default=None)
        for row in rows:
            if row.kind != CATCHUP or row.state != "queued":
                continue
            if catchup.window_closed(row.slot, within, now):
                store.release_item(row.id, MISSED, "catch-up window closed")
            elif runs == catchup.LATEST and newest_served is not None and row.slot < newest_served:
                store.release_item(row.id, SKIPPED, catchup.SUPERSEDED)
        slots = catchup.due_slots(schedule, within=within, runs=runs, grace=job.grace, now=now,
                                  since=seen[job.name].first_seen, accounted=served | tried)
        if slots:
            store.enqueue(job.name, [{"slot": slot, "kind": CATCHUP, "due_at": now} for slot in slots])
            queued += len(slots)
    return queued


class Gate:
    """May the tick start a claimed catch-up, backfill, retry or api (triggered) item now? ``gate(item)``:
    None for yes; else ``(state, reason)`` to release it with: back to ``queued`` while the
    job is paused or its breaker is open, a budget cannot grant the run's cost now or its previous run is
    still going (the new one would only be skipped, every minute), or ``missed`` /
    ``skipped`` when it can no longer run. Budgets are read, not spent (the run spends), once
    a tick; one that grants the cost within ``BUDGET_SLACK`` seconds counts (the run waits that
    long, as ticks come on the minute and a 1-a-minute token was spent just after the last
    one); what this tick's earlier items will take is set aside, so two jobs sharing one
    token do not both start. Other kinds (a ``cron`` slot) always may. With one item a job
    a tick, catch-up never bursts."""

    def __init__(self, config: Config, store, now: float):
        self.config, self.store, self.now = config, store, now
        self.levels: dict | None = None

    def __call__(self, item) -> tuple[str, str] | None:
        from schedsync.core import breaker as breakers
        from schedsync.core import catchup
        from schedsync.core.models import MISSED, SKIPPED
        from schedsync.kinds import kind as job_kind

        config, store, now = self.config, self.store, self.now
        if item.kind not in (CATCHUP, BACKFILL, RETRY, API, AFTER) or item.job not in config.jobs:
            return None
        job = config.jobs[item.job]
        if item.kind == CATCHUP and job.catchup and item.slot is not None and catchup.window_closed(
                item.slot, job.catchup["within"], now):
            return MISSED, "catch-up window closed"
        if item.kind == RETRY and job.schedule and job.retry_later:
            from schedsync.core.schedule import Schedule, zone

            ended = item.due_at - job.retry_later["after"]
            if catchup.superseded(now, Schedule(job.schedule, zone(config.timezone)).next_after(ended)):
                return SKIPPED, catchup.SUPERSEDED
        if store.job_states([job.name], recent=1)[job.name].paused:
            return "queued", "paused"  # started, it would only be skipped, every minute: waits for resume
        running = store.running_runs([job.name])
        if running and len(store.liveness.gone(running)) < len(running):
            return "queued", "locked"  # its previous run is still going: the new one would only skip
        name = job.breaker["name"]
        if breakers.state_at(store.breakers([name])[name], now) == breakers.OPEN:
            return "queued", "breaker_open"
        if job.budgets:
            cost = job.cost if job_kind(job.kind).spends_at_start else 1  # an http run's first request
            if self.levels is None:
                self.levels = store.budget_levels(config.budgets, now)
            # Granted now, or within BUDGET_SLACK seconds at the bucket's rate (the run waits).
            if any(self.levels[b] + catchup.BUDGET_SLACK * config.budgets[b][0] / config.budgets[b][1] < cost
                   for b in job.budgets):
                return "queued", "rate_limited"
            for b in job.budgets:
                self.levels[b] -= cost
        return None


def retry_item(job, run, timezone: str | None) -> tuple[dict | None, dict | None]:
    """The retry later a finished ``run`` of ``job`` calls for, as ``finish_run`` adds it to
    the ledger (in the same step as the run's end), and what to tell about it; (None, None)
    for none. Sets the run's ``retry_at`` (when its retry is due) or, when the job's next
    slot comes first, its ``reason`` (``retry_superseded``): its record says so."""
    from schedsync.core import catchup
    from schedsync.core.durations import clock
    from schedsync.core.schedule import Schedule, zone

    tz = zone(timezone)
    end = run.finished_at or run.started_at
    next_slot = Schedule(job.schedule, tz).next_after(end) if job.schedule else None
    retry = catchup.retry_for(run, job.retry_later, next_slot)
    if retry is None:
        return None, None
    item = {"slot": getattr(run, "slot", None), "kind": RETRY, "due_at": retry.due_at, "retry_of": retry.of,
            "retry_number": retry.number, "state": "queued", "reason": None}
    told = {"number": retry.number, "of": retry.max, "at": _iso(retry.due_at), "shown": clock(retry.due_at, tz, end)}
    if retry.superseded:
        item.update(state="skipped", reason=catchup.SUPERSEDED)
        run.reason, run.retry_at = RETRY_SUPERSEDED, None
        told["message"] = (f"{job.name}: no retry later: the next slot, {clock(next_slot, tz, end)}, comes "
                           f"before retry {retry.number} of {retry.max} would ({told['shown']})")
        told["superseded"] = True
        return item, told
    run.retry_at = retry.due_at
    told["message"] = f"{job.name}: retry {retry.number} of {retry.max} at {told['shown']} (by `schedsync tick`)"
    return item, told


RETRY_SUPERSEDED = "retry_superseded"  # a failed run's reason when the next slot supersedes its retry


def _iso(t: float) -> str:
    from schedsync.core.durations import iso

    return iso(t) or ""

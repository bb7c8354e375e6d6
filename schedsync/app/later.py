"""Work cron did not start, on top of the slot ledger (issue 17): ``backfill`` queues a
range of past slots; the tick asks ``plan`` for the catch-up, backfill and retry items it
may start now; the runner asks ``retry_item`` what a finished run queues. The rules are
``core.catchup``'s; the queue is the store's (``enqueue``, ``claim_due``, ``release_item``).
"""

from __future__ import annotations

from schedsync.config import Config
from schedsync.core.errors import ConfigError

BACKFILL, CATCHUP, RETRY = "backfill", "catchup", "retry"


def backfill_range(config: Config, name: str, start: str, end: str, now: float) -> list[float]:
    """The slots ``schedsync backfill NAME --from START --to END`` queues, oldest first: the
    job's slots in ``[START, END]`` (ISO 8601; without an offset, in the registry's zone) that
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
            times.append(catchup.parse_time(text, tz))
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
    now; (how many were queued, how many were left out as not yet past). A slot queued
    already is not queued twice."""
    now = store.now()
    past = [slot for slot in slots if slot <= now]
    ids = store.enqueue(name, [{"slot": slot, "kind": BACKFILL, "due_at": now} for slot in past])
    return len(ids), len(slots) - len(past)


def backfill_line(config: Config, name: str, queued: int, future: int) -> str:
    """What ``schedsync backfill`` prints."""
    text = f"{name}: {queued} slot{'' if queued == 1 else 's'} queued for backfill"
    if queued:
        text += "; `schedsync tick` starts them oldest first, one a tick, through budgets and breaker"
    if future:
        text += f" ({future} not yet due left to cron)"
    return text

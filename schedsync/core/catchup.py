"""The rules of work cron did not start (issue 17): which missed slots catch-up queues,
which slots a backfill range holds, and when a failed run's retry is due. Pure: times
(POSIX seconds) and a ``Schedule`` in, decisions out; the tick and the runner act on them.

- **Catch-up** (``catchup: {within, runs}``): a slot is *missed* once its ``grace`` has
  passed and nothing accounts for it (no run claimed it, or the run that did crashed).
  Missed slots younger than ``within`` are queued: ``latest`` queues only the newest one,
  and only while no newer slot is accounted for (a newer run already brought the job up to
  date); ``all`` queues every one, oldest first. Slots from before the job was first seen
  (less its grace) are never caught up (a new job does not replay its window).
- **Backfill**: every slot in ``[start, end]``, at most ``MAX_BACKFILL``.
- **Retries later** (``retry_later: {after, max}``): a run that ends ``failed`` (not
  cancelled) or ``timeout`` queues retry ``n + 1`` of its chain ``after`` its end, up to
  ``max``; a retry due at or after the job's next slot is dropped, superseded by the slot.
"""

from __future__ import annotations

import math

from schedsync.core.models import CANCELLED, FAILED, REPLACED, TIMEOUT
from schedsync.core.records import dataclass

LATEST, ALL = "latest", "all"
RUNS = (LATEST, ALL)
MAX_BACKFILL = 10_000  # slots one backfill may queue
# Slots one tick looks back for catch-up: an every-minute job with `within: 6h` has 360;
# a window holding more (every minute for a week) catches up its newest MAX_LOOKBACK.
MAX_LOOKBACK = 1_000
RETRY_MAX = 3  # retry_later.max when not given
# A tick starts a queued item when its budgets can grant the run's cost now or within this
# many seconds, and the run waits that long for it: ticks come on the minute, and a run of
# a 1-a-minute budget spent its token a fraction of a second after the previous tick.
BUDGET_SLACK = 5.0
SUPERSEDED = "superseded"  # the reason a dropped retry, or a latest-run's older slot, carries


def due_slots(schedule, *, within: float, runs: str, grace: float, now: float,
              since: float | None, accounted) -> list[float]:
    """The missed slots catch-up queues now, oldest first.

    ``accounted``: the slots that need no catch-up (a run claimed them and did not crash,
    they were skipped, or a catch-up item exists for them in any state); ``since``: when the
    job was first seen (None: never, so nothing to catch up)."""
    if since is None:
        return []
    # The oldest slot still in the window; not before the job was first seen, but a slot within
    # its grace before that counts (the first run, cron's, notes the job a moment after its slot).
    opens = max(now - within, since - grace)
    fires = missed_fires(schedule, opens, now - grace)
    if runs == LATEST:
        if not fires:
            return []
        newest = fires[-1]
        return [] if any(slot >= newest for slot in accounted) else [newest]
    done = set(accounted)
    return [slot for slot in fires if slot not in done]


def missed_fires(schedule, opens: float, closes: float, limit: int = MAX_LOOKBACK) -> list[float]:
    """Fires of ``schedule`` in ``[opens, closes]``, oldest first, at most the ``limit`` newest."""
    fires: list[float] = []
    fire = schedule.last_at_or_before(closes) if closes >= opens else None
    while fire is not None and fire >= opens and len(fires) < limit:
        fires.append(fire)
        fire = schedule.last_at_or_before(fire - 1)
    fires.reverse()
    return fires


def window_closed(slot: float, within: float, now: float) -> bool:
    """Is a catch-up slot too old to run now? Then it is recorded ``missed``."""
    return slot < now - within


def backfill_slots(schedule, start: float, end: float, limit: int = MAX_BACKFILL) -> list[float]:
    """Every slot of ``schedule`` in ``[start, end]``, oldest first. ValueError when ``end``
    is before ``start`` or the range holds more than ``limit`` slots (found without listing
    more than ``limit + 1``)."""
    if end < start:
        raise ValueError("--to is before --from")
    slots: list[float] = []
    fire = schedule.next_after(math.ceil(start) - 1)  # fires are whole seconds: start itself counts
    while fire <= end:
        if len(slots) == limit:
            raise ValueError(f"the range holds more than {limit:,} slots")
        slots.append(fire)
        fire = schedule.next_after(fire)
    return slots


def parse_time(text: str, tz, end: bool = False) -> float:
    """An ISO 8601 time as ``backfill --from/--to`` take it (``2026-12-01``, ``2026-12-01T06:00``,
    ``2026-12-01 06:00:00Z``, ``…+01:00``); without an offset it is read in ``tz`` (the
    registry's zone, as the schedules are). A date alone is its midnight, or with ``end``
    (``--to``) the last second of that day, so ``--from D --to D`` is the whole day.
    ValueError with a short reason."""
    from datetime import datetime, timedelta

    text = text.strip()
    try:
        when = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ValueError(f"{text[:60]!r} is not an ISO 8601 time") from None
    day_only = len(text) in (8, 10) and text.replace("-", "").isdigit()
    if end and day_only:
        when += timedelta(days=1)
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz)
    return when.timestamp() - (1 if end and day_only else 0)


@dataclass
class Retry:
    """The retry a finished run calls for: retry ``number`` of ``of`` (the chain's first run),
    due at ``due_at``. ``superseded``: it would start at or after the job's next slot, so it
    is recorded dropped, not queued."""

    of: int
    number: int
    due_at: float
    max: int
    superseded: bool = False


def retry_for(run, settings: dict | None, next_slot: float | None) -> Retry | None:
    """The retry ``run`` (a finished ``Run``, with ``retry_of``/``retry_number`` if it is a
    retry itself) queues under ``settings`` (``{"after": s, "max": n}``; None: no retries
    later), or None: it succeeded, was skipped, crashed, cancelled or replaced (a newer run
    took its place), or its chain has had
    ``max`` retries. ``next_slot``: the job's first slot after ``run`` started (None when
    the job has no schedule)."""
    if not settings or run.status not in (FAILED, TIMEOUT) or run.reason in (CANCELLED, REPLACED):
        return None
    number = (getattr(run, "retry_number", 0) or 0) + 1
    most = settings.get("max", RETRY_MAX)
    if number > most:
        return None
    first = getattr(run, "retry_of", None) or run.id
    due = (run.finished_at or run.started_at) + settings["after"]
    return Retry(first, number, due, most, superseded=next_slot is not None and due >= next_slot)


def superseded(due_at: float, next_slot: float | None) -> bool:
    """Has the job's next slot come before a queued retry could start? (A retry held back by
    an open breaker or an empty budget until then is dropped, as one due then would be.)"""
    return next_slot is not None and due_at >= next_slot

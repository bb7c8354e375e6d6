"""The slot a cron-started run serves, without cronsim: ``run`` is on every cron tick's
start-up path, and cronsim (with calendar, locale and typing) would cost it more than all
the ledger's work. Cron fires on whole minutes, so the run's slot is the latest whole
minute at or before now, within a window (the job's grace), whose wall-clock fields in the
schedule's zone match the expression as cron matches them (day-of-month and day-of-week
either-or when both are restricted). Only what validation lets through is understood
(five fields, names, ranges, steps, the @-aliases). The zone is applied by ``time.localtime``
with ``$TZ`` set for the call, so no zone database module is imported. A fire that only
exists by cron's DST rules (a time skipped by spring-forward, run when the clock jumps)
is not found here: such a run serves no slot. ``core.schedule`` (cronsim) remains the
reference: the tests check the two agree.
"""

from __future__ import annotations

import os
import time

ALIASES = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
           "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
_BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_NAMES: tuple[dict, ...] = ({}, {}, {},
          {m: i + 1 for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct",
                                            "nov", "dec"))},
          {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))})


def _value(text: str, index: int) -> int:
    named = _NAMES[index].get(text.lower())
    return int(text) if named is None else named


def _field(text: str, index: int) -> set:
    low, high = _BOUNDS[index]
    out: set = set()
    for part in text.split(","):
        part, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if part == "*":
            start, end = low, high
        elif "-" in part:
            a, b = part.split("-", 1)
            start, end = _value(a, index), _value(b, index)
        else:
            start = _value(part, index)
            end = high if step_text else start
        out.update(range(start, end + 1, step))
    if index == 4 and 7 in out:
        out.add(0)  # Sunday is 0 or 7
    return out


def parse(expr: str) -> tuple:
    """(minutes, hours, days, months, weekdays, day-of-month restricted, day-of-week restricted)."""
    parts = ALIASES.get(expr.strip().lower(), expr).split()
    sets = [_field(part, i) for i, part in enumerate(parts)]
    return (*sets, not parts[2].startswith("*"), not parts[4].startswith("*"))


def matches(parsed: tuple, tm) -> bool:
    """Does the wall-clock minute ``tm`` (a ``time.struct_time``) match?"""
    minutes, hours, days, months, weekdays, dom_set, dow_set = parsed
    if tm.tm_min not in minutes or tm.tm_hour not in hours or tm.tm_mon not in months:
        return False
    day, weekday = tm.tm_mday in days, (tm.tm_wday + 1) % 7 in weekdays
    return (day or weekday) if dom_set and dow_set else (day and weekday)


def latest_fire(expr: str, zone: str | None, now: float, window: float) -> float | None:
    """The latest fire of ``expr`` at or before ``now`` and no more than ``window`` seconds
    before it, in ``zone`` (an IANA name; None: the system's), or None."""
    parsed = parse(expr)
    minute = now // 60 * 60
    steps = int(max(0.0, window) // 60) + 1
    saved = os.environ.get("TZ")
    if zone:
        os.environ["TZ"] = zone
        time.tzset()
    try:
        for back in range(min(steps, 24 * 60 + 1)):  # a day at most: cron just fired, or no slot
            t = minute - 60 * back
            if now - t > window:
                break
            if matches(parsed, time.localtime(t)):
                return float(t)
        return None
    finally:
        if zone:
            if saved is None:
                os.environ.pop("TZ", None)
            else:
                os.environ["TZ"] = saved
            time.tzset()

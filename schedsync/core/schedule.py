"""Cron schedules as system cron reads them, computed with cronsim.

We accept only what cron itself accepts (five fields, or one of its @-aliases),
because `schedsync crontab` hands the expression to cron unchanged. Times are
POSIX seconds. Fire times are found in the schedule's zone with Debian cron's
DST rules, which cronsim mimics: a fixed-time job whose time is skipped by
spring-forward runs when the clock jumps, one whose time repeats at fall-back
runs once (the first time), and jobs with a wildcard minute or hour follow real
time.
"""

from __future__ import annotations

import math
import os
import re
from datetime import datetime, timezone, tzinfo

from cronsim import CronSim, CronSimError

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
)
# cronsim understands these (last day, weekday, nth weekday); cron does not.
_EXTENSIONS = {2: "LW", 4: "L#"}
_ANY_INSTANT = datetime(2000, 1, 1, tzinfo=timezone.utc)


class Schedule:
    """One cron expression in one zone; ``tz`` None means the system's zone."""

    def __init__(self, expr: str, tz: tzinfo | None = None):
        self.expr = expr
        self.tz = tz if tz is not None else local_zone()
        self._cron = _five_fields(expr)

    def __repr__(self) -> str:
        return f"Schedule({self.expr!r}, tz={self.tz})"

    def next_after(self, t: float) -> float:
        """The first fire time strictly after ``t``."""
        # Start from whole seconds (fromtimestamp() would round 08:59:59.9999999 up
        # past 09:00), and skip answers not after t: in a repeated fall-back hour a
        # wall-clock time maps to its first pass, which cron does not fire again.
        return next(fire for fire in self._fires(math.floor(t)) if fire > t)

    def last_at_or_before(self, t: float) -> float | None:
        """The latest fire time at or before ``t``; None if there is none."""
        # Fires fall on whole seconds and cronsim steps back before it matches,
        # so starting one second later makes t itself a candidate.
        fire = next(self._fires(math.floor(t) + 1, reverse=True), None)
        if fire is None:
            return None
        # In a repeated fall-back hour cronsim's wall-clock walk back can land a
        # day early; walking forward again finds the fire it stepped over.
        while (later := self.next_after(fire)) <= t:
            fire = later
        return fire

    def previous_fires(self, t: float, n: int) -> list[float]:
        """The ``n`` latest fire times at or before ``t``, newest first."""
        fires: list[float] = []
        fire = self.last_at_or_before(t)
        while fire is not None and len(fires) < n:
            fires.append(fire)
            fire = self.last_at_or_before(fire - 1)
        return fires

    def _fires(self, t: int, reverse: bool = False):
        start = datetime.fromtimestamp(t, self.tz)
        return (fire.timestamp() for fire in CronSim(self._cron, start, reverse=reverse))


def zone(name: str | None) -> tzinfo:
    """The registry's ``timezone:`` (an IANA name), else the system's zone."""
    if not name:
        return local_zone()
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def local_zone() -> tzinfo:
    """The system's zone, found as the C library finds it: $TZ, /etc/localtime, else UTC."""
    from zoneinfo import ZoneInfo

    name = os.environ.get("TZ", "").removeprefix(":")
    if name:
        try:
            return ZoneInfo(name)
        except (ValueError, KeyError, OSError):  # a POSIX rule or a path: fall through
            pass
    try:
        with open("/etc/localtime", "rb") as file:
            return ZoneInfo.from_file(file, key="localtime")
    except (OSError, ValueError):
        return timezone.utc


def _five_fields(expr: str) -> str:
    """The cron line behind ``expr``; a ValueError says in a few words what is wrong."""
    text = expr.strip()
    if text == "@reboot":
        raise ValueError("@reboot is not supported (schedsync runs from cron's time schedule)")
    if text.startswith("@"):
        # Aliases are case-sensitive in cron too, and crontab passes them on as written.
        if text not in ALIASES:
            raise ValueError(f"{text} is not a cron alias (use {', '.join(ALIASES)})")
        return ALIASES[text]
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields, got {len(fields)}")
    for index, letters in _EXTENSIONS.items():
        for letter in letters:
            if letter in fields[index].upper():
                name = _FIELDS[index][0]
                raise ValueError(f'"{letter}" in the {name} field is a cronsim extension cron does not understand')
    if not _readable(text):
        raise ValueError(_explain(fields))
    return text


def _readable(cron: str) -> bool:
    try:
        CronSim(cron, _ANY_INSTANT)
    except CronSimError:
        return False
    return True


def _explain(fields: list[str]) -> str:
    """Why cronsim refused ``fields``; it only names the field, so look closer."""
    for (name, low, high), field in zip(_FIELDS, fields, strict=True):
        # Step values (after /) are not positions in the range.
        for number in re.findall(r"(?<![/\d])\d+", field):
            if not low <= int(number) <= high:
                return f"{name} {int(number)} is out of range {low}-{high}"
    for index, (name, _, _) in enumerate(_FIELDS):
        alone = ["0", "0", "*", "*", "*"]
        alone[index] = fields[index]
        if not _readable(" ".join(alone)):
            return f'cannot read the {name} field "{fields[index]}"'
    # Every field reads on its own, so only their combination can be impossible.
    return f"day-of-month {fields[2]} never occurs in month {fields[3]}"

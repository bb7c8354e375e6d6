"""Durations as users write them (``500ms``, ``30s``, ``5m``, ``1h``, ``2d``), and durations
and times as we show them."""

from __future__ import annotations

from schedsync.core import Pattern

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = Pattern(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")


def parse_duration(text: object) -> float:
    """Seconds in ``text``; raises ValueError with a short reason."""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise ValueError(f"{text!r} is not a duration (write e.g. 30s, 5m, 1h, 2d)")
    if isinstance(text, (int, float)):
        if not 0 <= text < float("inf"):  # also rejects YAML's .nan and .inf
            raise ValueError(f"{text!r} is not a duration (write e.g. 30s, 5m, 1h, 2d)")
        return float(text)
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (write e.g. 500ms, 30s, 5m, 1h, 2d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def format_duration(seconds: float) -> str:
    """Short and human: ``850ms``, ``42s``, ``5m``, ``3h05m``, ``2d4h``."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{int(seconds)}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s" if secs and minutes < 10 else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"


def iso(t: float | None) -> str | None:
    """POSIX seconds as ISO 8601 UTC, ``2026-11-22T05:00:00Z``: records, JSON and messages."""
    if t is None:
        return None
    from datetime import datetime, timezone  # not on the run path of a command job

    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def format_age(seconds: float) -> str:
    """An age or a time left, in whole units: ``0s``, ``9s``, ``42s``, ``5m``, ``3h05m``. Never
    ``850ms`` or ``1.0s``: those are for how long a run took, not for how long ago it was."""
    seconds = max(0.0, seconds)
    return f"{int(seconds)}s" if seconds < 60 else format_duration(seconds)


def relative(t: float, now: float) -> str:
    """``just now``, ``5m ago`` or ``in 3m``: ``t`` seen from ``now``. Both are cut to whole
    seconds first, so a time read back from ISO (whole seconds) and the same time as a float
    say the same thing side by side (never ``1s ago`` beside ``just now``)."""
    delta = int(now) - int(t)
    if delta == 0:
        return "just now"
    return f"{format_age(delta)} ago" if delta > 0 else f"in {format_age(-delta)}"


def clock(t: float, tz=None, now: float | None = None) -> str:
    """A wall-clock time as every table, message and page shows one: ``2026-12-01 10:05:02 CET``,
    in ``tz`` (the registry's zone; None: the system's) and labelled with it. With ``now``
    (in a sentence) the date is left out when it is the same day: ``10:05:02 CET``."""
    from datetime import datetime

    if tz is None:
        from schedsync.core.schedule import local_zone

        tz = local_zone()
    at = datetime.fromtimestamp(t, tz)
    same_day = now is not None and datetime.fromtimestamp(now, tz).date() == at.date()
    return at.strftime("%H:%M:%S %Z" if same_day else "%Y-%m-%d %H:%M:%S %Z")


def posix(iso_time: str) -> float:
    """The inverse of ``iso``."""
    from datetime import datetime

    return datetime.fromisoformat(iso_time.replace("Z", "+00:00")).timestamp()


def data_time(value) -> float | None:
    """POSIX seconds of a time as the data holds it (``fresh.field``): a number or a string of
    digits is epoch seconds, a string else ISO 8601 (no offset: UTC). None if neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        t = float(value)
    elif isinstance(value, str) and value:
        try:
            t = float(value)
        except ValueError:
            from datetime import datetime, timezone

            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                return None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            return parsed.timestamp()
    else:
        return None
    return t if t == t and abs(t) != float("inf") else None

"""Real ``schedsync`` processes at a pinned time: Debian's libfaketime (``LD_PRELOAD`` and
``FAKETIME``), so no test hook lives in schedsync itself. Each process starts its clock at
the given instant and lets it run on at the normal rate; children (the tick's runs, a
command job) inherit it."""

from __future__ import annotations

import glob
from datetime import datetime, timezone

import pytest

LIBS = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))


def at(text: str) -> float:
    """POSIX seconds of a UTC wall-clock time, ``2026-12-04 06:00``."""
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def pinned(env: dict, when: float | str) -> dict:
    """``env`` for a process whose clock starts at ``when`` (POSIX seconds or UTC text)."""
    if not LIBS:
        pytest.skip("libfaketime is not installed (apt-get install libfaketime; .ci/run does)")
    t = at(when) if isinstance(when, str) else when
    stamp = datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    # Monotonic clocks are shifted too: with FAKETIME_DONT_FAKE_MONOTONIC, libfaketime 0.9.10
    # makes Python's time.sleep (an absolute clock_nanosleep) fail with EINVAL.
    return {**env, "LD_PRELOAD": LIBS[0], "FAKETIME": f"@{stamp}", "TZ": "UTC"}

"""Real ``schedsync`` processes at a pinned time: Debian's libfaketime (``LD_PRELOAD`` and
``FAKETIME``), so no test hook lives in schedsync itself.

``pinned(env, when)`` gives a process a clock that reads ``when`` as ``pinned`` is called
and runs on at the normal rate: an offset from the real clock (``FAKETIME="-86400.5"``),
which its children (the tick's runs, a command job) inherit and share, whenever they start.

Every pinned process of this test process shares one libfaketime semaphore and segment,
held by a keeper started here (``FAKETIME_SHARED``). Without it, libfaketime 0.9.10 (Debian
12) names them after the first pinned process and unlinks them when it exits; a run the
tick started detached then makes its own, named after its pid, and ``/bin/sh`` (which ends
by ``_exit``) or a killed run never unlinks its own. A later process whose pid has such a
stale pair exits 1 at start-up ("sem_open failed and recreation attempts failed"): in CI a
run the tick started failed about once a suite. ``NO_FAKE_STAT`` keeps file times real, so
``stat`` does not take the shared semaphore (a process killed inside it would block every
other)."""

from __future__ import annotations

import atexit
import glob
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

LIBS = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
_KEEPER: list = []  # (Popen, FAKETIME_SHARED) of this test process, once started


def at(text: str) -> float:
    """POSIX seconds of a UTC wall-clock time, ``2026-12-04 06:00``."""
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def _shared() -> str:
    """``FAKETIME_SHARED`` of this test process's keeper: a libfaketime process that holds
    the semaphore and segment until this test process ends (it reads stdin until EOF)."""
    if not _KEEPER:
        keeper = subprocess.Popen(
            [sys.executable, "-c", "import os, sys; print(os.environ['FAKETIME_SHARED'], flush=True);"
                                   " sys.stdin.read()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={"LD_PRELOAD": LIBS[0], "FAKETIME": "+0", "NO_FAKE_STAT": "1", "PATH": "/usr/bin:/bin"})
        shared = keeper.stdout.readline().strip()
        assert shared.startswith("/faketime_sem_"), f"libfaketime gave no shared state: {shared!r}"
        _KEEPER.append((keeper, shared))
        atexit.register(_stop, keeper)
    return _KEEPER[0][1]


def _stop(keeper: subprocess.Popen) -> None:
    keeper.stdin.close()  # EOF: it exits normally, and libfaketime unlinks its pair
    keeper.wait(timeout=10)


def pinned(env: dict, when: float | str) -> dict:
    """``env`` for a process whose clock reads ``when`` (POSIX seconds or UTC text) now."""
    if not LIBS:
        pytest.skip("libfaketime is not installed (apt-get install libfaketime; .ci/run does)")
    t = at(when) if isinstance(when, str) else when
    # Monotonic clocks are shifted too: with FAKETIME_DONT_FAKE_MONOTONIC, libfaketime 0.9.10
    # makes Python's time.sleep (an absolute clock_nanosleep) fail with EINVAL.
    return {**env, "LD_PRELOAD": LIBS[0], "FAKETIME": f"{t - time.time():+.6f}", "TZ": "UTC",
            "FAKETIME_SHARED": _shared(), "NO_FAKE_STAT": "1"}

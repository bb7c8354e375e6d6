"""The job of the fault test (tests/test_cluster_faults.py): the truth about who ran when.

    python -S tests/faults_job.py LOG JOB SECONDS

Appends one line per event to LOG (O_APPEND, one write per line, so lines from every
host interleave whole): ``start``, a ``tick`` every 0.1 s for between half of SECONDS
and SECONDS (at random), then ``end``;
``term`` if SIGTERM stops it first (a SIGKILL leaves its last tick as the last word).
Each line: ``EVENT JOB HOST SCHEDSYNC_PID MONOTONIC REALTIME``, where HOST is this
host's name and SCHEDSYNC_PID the pid (in this host's pid namespace) of the schedsync
that runs it, which is what its run record holds. All namespaces share the kernel's
clocks, so the realtime stamps of every host are on one clock.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time


def argv_of(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except OSError:
        return []


def parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def is_schedsync(argv: list[str]) -> bool:
    return any(a == "-m" and b == "schedsync" for a, b in zip(argv, argv[1:], strict=False)) or (
        bool(argv) and os.path.basename(argv[0]) == "schedsync")


def schedsync_pid() -> int:
    """The topmost schedsync among our ancestors (our parent is its keeper, a fork of it)."""
    found, pid = 0, os.getppid()
    for _ in range(10):
        if pid <= 1 or not is_schedsync(argv_of(pid)):
            break
        found, pid = pid, parent_of(pid)
    return found


def main() -> None:
    log, job, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    head = f"{job} {os.uname().nodename} {schedsync_pid()}"

    def line(event: str) -> None:
        os.write(fd, f"{event} {head} {time.monotonic():.6f} {time.time():.6f}\n".encode())

    def stopped(signum, frame):
        line("term")
        os._exit(143)

    signal.signal(signal.SIGTERM, stopped)
    line("start")
    end = time.monotonic() + random.uniform(seconds / 2, seconds)
    while time.monotonic() < end:
        time.sleep(0.1)
        line("tick")
    line("end")


if __name__ == "__main__":
    main()

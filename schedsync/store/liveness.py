"""The SQLite backend's liveness port: a run's owner is a pid on this host, told
apart from a reused pid by its kernel start time (``/proc/PID/stat``).

Runs of other hosts cannot be judged from here and are never reported gone.
"""

from __future__ import annotations

import os

from schedsync.store.base import Liveness

HOST = os.uname().nodename  # what socket.gethostname() returns, without importing socket


def process_start(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), to tell a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def process_alive(pid: int, started: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:  # a zombie (killed, not yet reaped by its parent) answers kill(0) but is dead
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X"):
                return False
    except (OSError, IndexError):
        pass
    return started is None or process_start(pid) in (None, started)


class ProcLiveness(Liveness):
    def owner(self) -> tuple[str, int, int | None]:
        pid = os.getpid()
        return HOST, pid, process_start(pid)

    def gone(self, runs: list) -> list:
        return [run for run in runs if run.host == HOST and not process_alive(run.pid, run.pid_start)]

    def stop(self, run) -> bool:
        """SIGTERM to ``run``'s schedsync (it stops its job's group: SIGTERM, then SIGKILL after
        the grace, and records the run). Through a pidfd opened before the start time is
        checked: a pid reused before the check fails it, one reused after is not signalled."""
        if run.host != HOST or run.pid_start is None:
            return False
        import signal

        try:
            fd = os.pidfd_open(run.pid)
        except (AttributeError, OSError):
            return False
        try:
            if process_start(run.pid) != run.pid_start:
                return False  # another process has that pid now
            signal.pidfd_send_signal(fd, signal.SIGTERM)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

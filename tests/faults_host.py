"""One simulated host of the fault test: a cron-like loop, pid 1 of its own pid namespace.

    python tests/faults_host.py SETTINGS_JSON

SETTINGS: ``argv`` (the schedsync command line before ``run JOB``), ``jobs``, ``until``
(a wall-clock time: no start after it), ``every`` ([low, high] seconds between two
starts of one job), ``events`` (a file: one ``launch``/``exit`` line per run, appended)
and ``output`` (where the runs' stdout and stderr go, appended).

Each job is started every ``every`` seconds (uniformly random within), whether or not
its previous start has ended, as cron does; stdin is /dev/null, so each run is a cron
tick. As pid 1 it reaps every process of the namespace (orphaned keepers too), and it
exits only once all of them are gone (bounded), since the kernel kills whatever is left
in a pid namespace when its pid 1 exits.
"""

from __future__ import annotations

import errno
import json
import os
import random
import sys
import time

GRACE = 60.0  # seconds the runs may take to end after the last start


def main() -> None:
    settings = json.loads(sys.argv[1])
    argv, jobs, until = settings["argv"], settings["jobs"], settings["until"]
    low, high = settings["every"]
    events = os.open(settings["events"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    output = os.open(settings["output"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    devnull = os.open(os.devnull, os.O_RDONLY)
    host = os.uname().nodename
    ours: dict[int, str] = {}

    def note(text: str) -> None:
        os.write(events, f"{text} {host} {time.time():.6f}\n".encode())

    def reap() -> bool:
        """Reap what has ended; False once no process is left in the namespace."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True
            if pid in ours:
                note(f"exit {ours.pop(pid)} {pid} {os.waitstatus_to_exitcode(status)}")

    due = {job: time.time() + random.uniform(0, high) for job in jobs}
    while time.time() < until:
        for job in jobs:
            if time.time() >= due[job]:
                try:
                    pid = os.posix_spawn(argv[0], [*argv, "run", job], dict(os.environ),
                                         file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 0),
                                                       (os.POSIX_SPAWN_DUP2, output, 1),
                                                       (os.POSIX_SPAWN_DUP2, output, 2)])
                    ours[pid] = job
                    note(f"launch {job} {pid}")
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.ENOMEM):
                        raise
                due[job] = time.time() + random.uniform(low, high)
        reap()
        time.sleep(0.05)
    end = time.time() + GRACE
    while reap() and time.time() < end:
        time.sleep(0.1)
    if ours:
        note(f"left {len(ours)}")


if __name__ == "__main__":
    main()

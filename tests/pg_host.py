"""One simulated host: run a snippet against a PostgreSQL state in COUNT processes.

    python tests/pg_host.py URL COUNT START_AT CODE

Each process waits until the wall clock reaches START_AT (so processes on all
hosts start together), opens the store, runs CODE (with ``store``, ``spec``,
``BreakerSpec``, ``time``, ``os`` and ``out``, a dict it fills), and prints
``out`` as one JSON line. Tests start it under ``unshare --uts --pid --fork
--mount-proc`` with its own host name, so each host has its own name and pids.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from schedsync.store import open_store
from schedsync.store.base import BreakerSpec


def one(url: str, start_at: float, code: str) -> None:
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    out: dict = {"host": os.uname().nodename, "pid": os.getpid()}
    store = open_store(url)
    spec = BreakerSpec("b", {"failures": 3, "reset_after": 600, "half_open_runs": 1})
    try:
        exec(code, {"store": store, "spec": spec, "BreakerSpec": BreakerSpec, "time": time,
                    "os": os, "out": out, "sys": sys})
    finally:
        sys.stdout.flush()
        os.write(1, (json.dumps(out) + "\n").encode())  # one write: forked siblings share the pipe
        store.close()


def main() -> None:
    url, count, start_at, code = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    children = []
    for _ in range(count - 1):
        pid = os.fork()
        if pid == 0:
            try:
                one(url, start_at, code)
            finally:
                os._exit(0)
        children.append(pid)
    one(url, start_at, code)
    for pid in children:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()

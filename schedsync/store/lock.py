"""A per-job lock held by the kernel: ``flock`` on a file, released when every holder dies.

The runner passes the locked descriptor to the job's process, so if schedsync
itself is killed the job keeps the lock until it ends: never two copies.
"""

from __future__ import annotations

import fcntl
import os
import time

from schedsync.store.base import Lock


class FileLock(Lock):
    def __init__(self, path: str):
        self.path = path
        self.fd: int | None = None

    def acquire(self, wait: float = 0.0, sleep=time.sleep, clock=time.monotonic) -> bool:
        """Take the lock, polling for up to ``wait`` seconds; False if another holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = clock() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.fd = fd
                return True
            except BlockingIOError:
                if clock() >= deadline:
                    os.close(fd)
                    return False
                sleep(min(0.1, max(0.0, deadline - clock())))

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing our descriptor drops our hold; a child's copy keeps it
            self.fd = None

    @property
    def pass_fds(self) -> tuple:
        return () if self.fd is None else (self.fd,)

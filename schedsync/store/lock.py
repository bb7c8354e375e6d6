"""A per-job lock held by the kernel: ``flock`` on a file, released when every holder dies.

The runner passes the locked descriptor to the job's processes, so the lock is
held until the job and all of them are gone: never two copies.

The folder of lock files is trusted only if it is ours and private: another
user who can write into it could swap a lock file for a symlink to one of our
files, hold the lock for good, or delete it mid-run so that two copies start.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time

from schedsync.core.errors import StateError
from schedsync.store.base import Lock


def lock_folder(path: str) -> None:
    """Create the folder of lock files private (0700), or refuse one others could tamper with."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):  # lstat: a symlink to a folder is refused too
        raise StateError(f"lock folder {path} is not a folder", "remove it; schedsync creates its own")
    if info.st_uid != os.geteuid():
        raise _foreign(path, info.st_uid)
    if info.st_mode & 0o022:
        raise StateError(f"lock folder {path} is writable by other users",
                         f"make it private: `chmod 700 {path}`")


class FileLock(Lock):
    def __init__(self, path: str):
        self.path = path
        self.fd: int | None = None

    def acquire(self, wait: float = 0.0, sleep=time.sleep, clock=time.monotonic) -> bool:
        """Take the lock, polling for up to ``wait`` seconds; False if another holds it."""
        try:  # O_NOFOLLOW: a lock file swapped for a symlink is refused, never followed
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise _open_error(self.path, exc) from None
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


def _open_error(path: str, exc: OSError) -> StateError:
    if exc.errno == errno.ELOOP:
        return StateError(f"lock file {path} is a symbolic link", "remove it; schedsync creates its own")
    if isinstance(exc, PermissionError):
        return StateError(f"lock file {path} cannot be opened by this user (left by another, "
                          "e.g. `sudo schedsync run`?)",
                          f"remove it (`sudo rm {path}`) or run as its owner")
    return StateError(f"lock file {path} cannot be opened: {exc.strerror}",
                      "check its folder, or pass --state PATH")


def _foreign(path: str, uid: int) -> StateError:
    """Another user's lock folder. Beside a state that user owns too, it is their installation
    (root running a service's jobs): removing it would let two copies of their jobs run, so
    the fix is to run as them. Beside our own state, it was planted: remove it."""
    import pwd

    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = None
    who = f"uid {uid}" + (f" ({name})" if name else "")
    state = path[:-len(".locks")] if path.endswith(".locks") else None
    try:
        theirs = state is not None and os.stat(state).st_uid == uid
    except OSError:
        theirs = False
    if theirs:
        return StateError(f"lock folder {path} belongs to {who}, as does the state {state}: these are "
                          "that user's jobs, and their runs hold locks there",
                          f"run schedsync as that user (`sudo -u {name or '#' + str(uid)} schedsync …`), "
                          "or use a state of your own (--state PATH)")
    return StateError(f"lock folder {path} belongs to {who}, not this user",
                      f"remove it (`rm -r {path}`) so schedsync makes it private, or run as its owner")

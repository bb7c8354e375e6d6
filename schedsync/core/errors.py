"""One base error for everything a user can cause; each carries its exit code.

Only the CLI prints these (as ``error: <what> — <fix>``); library code raises them.
"""

from __future__ import annotations


class Exit:
    """The exit codes, as plain ints: not an ``IntEnum``, since ``enum`` (with functools and
    types) would cost every cron tick a tenth of its start-up (docs/design.md, Start-up)."""

    OK = 0
    FAILED = 1  # the job failed, or the state is unusable so it could not run
    USAGE = 2  # usage or configuration error: nothing was run
    SKIPPED = 75  # EX_TEMPFAIL: lock held, breaker open, budget exhausted, paused


class SchedsyncError(Exception):
    exit_code = Exit.FAILED

    def __init__(self, what: str, fix: str | None = None):
        super().__init__(what)
        self.what = what
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.what} — {self.fix}" if self.fix else self.what


class ConfigError(SchedsyncError):
    """jobs.yaml or the command line is wrong; nothing ran."""

    exit_code = Exit.USAGE


class StateError(SchedsyncError):
    """The state file cannot be opened or written; the job did not start."""

    exit_code = Exit.FAILED


class NoState(StateError):
    """No state where one was looked for, and this command does not create one."""


class StateBusy(StateError):
    """A read command's optional write (first-seen, a crashed run, a ``late`` alert) would
    wait on another process's write transaction: it is skipped, and a later read makes it."""


class StateUnreachable(StateError):
    """No connection to a database state: ``why`` is what happened in a few words
    (``too many clients``, ``connect timeout``, ``server down``). The run leaves a trace in
    this host's spool (``store.spool``) for the next schedsync that reaches the database."""

    def __init__(self, what: str, fix: str | None = None, why: str = "unreachable"):
        super().__init__(what, fix)
        self.why = why

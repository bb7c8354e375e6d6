"""Python jobs: ``python: "pkg.module:function"`` runs ``function(ctx)`` in this process.

The folder of jobs.yaml is on the import path, so ``python: "jobs.points:sync"``
finds ``jobs/points.py`` beside the registry. The function receives a
``JobContext``:

- ``ctx.http``: an httpx-like client (``get``, ``post``, ``request``, …) whose
  every request, retries included, spends a token from the job's budgets and
  is retried like an http job's (connection errors, timeouts, 429, 5xx,
  ``Retry-After`` honoured). It returns the last response (call
  ``raise_for_status()`` yourself); when the budget is empty it raises
  ``BudgetExhausted``, which, uncaught, ends the run ``rate_limited``. It may be
  shared by threads; the hard timeout interrupts only the main thread, but
  every request's timeout stops at the run's deadline.
- ``ctx.db``: the data database (``data.db`` beside the state file, or the
  state's PostgreSQL database), the same API on both backends: ``upsert``,
  ``query``, ``execute``, ``transaction()``, and ``conn`` (``store.data_db``).
- ``ctx.progress(n=1, failed=0)``: count items as they are done (and drive the
  progress display on a terminal).
- ``ctx.log``: a ``logging.Logger``. Its output, like anything the function
  prints, is redacted and held back under cron, shown only if the run fails.
- ``ctx.deadline`` (POSIX seconds), ``ctx.last_success_at`` (POSIX seconds or
  None), ``ctx.job`` (the job's name).

The function returns the number of items processed, or a mapping / object with
``processed`` and ``failed``; returning None uses the ``progress`` counts. Failed
items make the run ``partial``. An exception makes it ``failed`` with a one-line
error (``ExcType: message``); the traceback is kept in the run's output.

The run's hard timeout holds in Python code too: ``hard_deadline`` raises
``DeadlinePassed`` in the main thread when it passes (and every second after, in
case the function swallows it), and the run is recorded ``timeout``. A python
job spends its ``cost`` (default 1) at start like a command job, on top of what
``ctx.http`` spends; set ``cost: 0`` when ctx.http is its only use of the API.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
import time
import traceback
from contextlib import contextmanager

from schedsync.core.durations import format_duration
from schedsync.core.models import CANCELLED, FAILED, PARTIAL, RATE_LIMITED, SUCCESS, TIMEOUT
from schedsync.core.outcome import FENCED, Cancelled, DeadlinePassed, Fenced, Outcome
from schedsync.jobs.common import LiveProgress, hard_deadline, one_line

# --- python jobs ------------------------------------------------------------------------

class JobImportError(Exception):
    """The ``module:function`` of a python job cannot be loaded; str() is the one-line error."""


class JobContext:
    """What a python job's function receives (see the module docstring)."""

    def __init__(self, job, ctx, log: logging.Logger, display: LiveProgress, data_db: str):
        self._ctx = ctx
        self._display = display
        self._client = None
        self._db = None
        self.job = job.name
        # POSIX seconds on this host's clock, from the run's monotonic deadline
        self.deadline = time.time() + (ctx.deadline - time.monotonic())
        self._deadline = ctx.deadline
        self.last_success_at = ctx.last_success_at
        self.slot = ctx.slot  # the scheduled start this run serves (POSIX seconds), or None
        self.params = dict(getattr(ctx, "params", None) or {})  # the run's params, {NAME: value}
        self.log = log
        self.data_db = data_db
        self.processed = 0
        self.failed = 0

    @property
    def http(self):
        if self._client is None:
            from schedsync.jobs.client import BudgetedClient

            self._client = BudgetedClient(self._ctx)
        return self._client

    @property
    def db(self):
        if self._db is None:
            from schedsync.store.data_db import DataDB

            self._db = DataDB(self.data_db)
        return self._db

    @property
    def remaining(self) -> float:
        """Seconds left before the run's hard timeout."""
        return max(0.0, self._deadline - time.monotonic())

    def progress(self, n: int = 1, failed: int = 0) -> None:
        """Count ``n`` items done (and ``failed`` items that could not be)."""
        self.processed += n
        self.failed += failed
        self._display.update(items=n, failed=failed)

    @property
    def requests(self) -> int:
        return self._client.requests if self._client else 0

    @property
    def attempts(self) -> int:
        return self._client.attempts if self._client else 0

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._db is not None:
            self._db.close()


def run_python(job, ctx) -> Outcome:
    """Import and call the job's function under its deadline, budget and output rules."""
    from schedsync.jobs.command import Output

    display = LiveProgress(job.name, ctx.interactive)
    output = Output(ctx.secrets.redact, display if ctx.interactive else None,
                    hold=ctx.secrets.longest - 1)
    data_db = ctx.data_db if "://" in ctx.data_db else os.path.abspath(ctx.data_db)  # before any chdir
    log = _job_logger(job.name, output)
    jctx = JobContext(job, ctx, log, display, data_db)
    started_in = os.getcwd()
    try:
        with _job_environment(job, ctx.config.dir):
            try:
                fenced_by = ctx.held if ctx.fence is not None else None  # a lease (PostgreSQL)
                with hard_deadline(ctx.deadline, held=fenced_by), _captured(output), display:
                    function = load_function(job.section)
                    result = function(jctx)
                    if inspect.iscoroutine(result):  # an ``async def`` job
                        import asyncio

                        result = asyncio.run(result)
                counts = _counts(result, jctx, job.section, output.redact)
            except JobImportError as exc:
                return _finish(Outcome(FAILED, error=one_line(output.redact(str(exc)))), jctx, output)
            except DeadlinePassed:
                return _finish(Outcome(TIMEOUT, error=f"timed out after {format_duration(job.timeout)}"),
                               jctx, output)
            except Fenced:
                return _finish(Outcome(FAILED, reason=CANCELLED, error=FENCED), jctx, output)
            except Cancelled as exc:
                return _finish(Outcome(FAILED, reason=CANCELLED, error=f"cancelled by {exc}"),
                               jctx, output)
            except SystemExit as exc:  # sys.exit() in job code ends the job, not schedsync
                if exc.code in (None, 0):
                    counts = jctx.processed, jctx.failed
                else:
                    return _finish(Outcome(FAILED, error=f"{job.section} called sys.exit({exc.code!r})"),
                                   jctx, output)
            except Exception as exc:
                return _finish(_failure(exc, output, jctx), jctx, output)
    finally:
        os.chdir(started_in)
        jctx.close()
        for handler in list(log.handlers):
            log.removeHandler(handler)
    return _finish(Outcome(PARTIAL if counts[1] else SUCCESS), jctx, output, counts)


def load_function(target: str):
    """The callable named by ``module:function``; JobImportError with a one-line reason."""
    module_name, _, name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise JobImportError(f"cannot import {module_name}: {exc}") from exc
    except Exception as exc:  # cut to one line by the caller, once redacted
        raise JobImportError(f"cannot import {module_name}: {type(exc).__name__}: {exc}") from exc
    function = getattr(module, name, None)
    if function is None:
        raise JobImportError(f"{module_name} has no function {name}")
    if not callable(function):
        raise JobImportError(f"{module_name}.{name} is not a function")
    return function


@contextmanager
def _job_environment(job, config_dir: str):
    """The job's ``env`` and ``cwd``, and the jobs.yaml folder first on the import path."""
    if config_dir not in sys.path:
        sys.path.insert(0, config_dir)
    os.environ.update(job.env)
    if os.path.isdir(job.cwd):
        os.chdir(job.cwd)
    yield


class _Stream:
    """sys.stdout/sys.stderr for the job's function: into the held, redacted output."""

    def __init__(self, output):
        self.output = output

    def write(self, text: str) -> int:
        self.output.feed(text.encode("utf-8", "replace"))
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


@contextmanager
def _captured(output):
    stream = _Stream(output)
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = stream
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def _job_logger(name: str, output) -> logging.Logger:
    log = logging.getLogger(f"schedsync.job.{name}")
    log.propagate = False
    log.setLevel(logging.INFO)
    handler = logging.StreamHandler(_Stream(output))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    return log


def _counts(result, jctx: JobContext, target: str, redact=str) -> tuple[int, int]:
    if result is None:
        return jctx.processed, jctx.failed
    if isinstance(result, int) and not isinstance(result, bool):
        return result, jctx.failed
    if isinstance(result, dict):
        processed, failed = result.get("processed", jctx.processed), result.get("failed", jctx.failed)
    else:
        processed = getattr(result, "processed", None)
        failed = getattr(result, "failed", jctx.failed)
        if processed is None:
            processed = _bad_return(result, target, redact)
    for value in (processed, failed):
        if not isinstance(value, int) or isinstance(value, bool):
            _bad_return(result, target, redact)
    return processed, failed


def _bad_return(result, target: str, redact):
    raise TypeError(f"{target} returned {one_line(redact(repr(result)), 60)}; return a count of items, "
                    "or {'processed': N, 'failed': M}")


def _failure(exc: Exception, output, jctx: JobContext) -> Outcome:
    transport = sys.modules.get("schedsync.jobs.transport")  # loaded only if the job used ctx.http
    if transport is not None and isinstance(exc, transport.BudgetExhausted):
        return Outcome(PARTIAL if jctx.processed else FAILED, reason=RATE_LIMITED,
                       error=str(exc), retry_at=exc.retry_at)
    output.feed("".join(traceback.format_exception(exc)).encode("utf-8", "replace"))
    if type(exc).__module__.split(".")[0] == "httpx":
        from schedsync.jobs.display import describe_httpx_error

        return Outcome(FAILED, error=describe_httpx_error(exc, jctx._ctx.secrets))
    message = one_line(output.redact(str(exc)))  # whole, then cut
    return Outcome(FAILED, error=f"{type(exc).__name__}: {message}" if message else type(exc).__name__)


def _finish(outcome: Outcome, jctx: JobContext, output, counts: tuple[int, int] | None = None) -> Outcome:
    output.close()
    outcome.items_processed, outcome.items_failed = counts or (jctx.processed, jctx.failed)
    outcome.requests = jctx.requests
    outcome.attempts = max(1, jctx.attempts)
    outcome.held = output.held()
    outcome.output = output.record_tail()
    if outcome.error:
        outcome.error = output.redact(outcome.error)
    return outcome

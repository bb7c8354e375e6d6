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
- ``ctx.db``: a ``sqlite_utils.Database`` on the data database (``data.db``
  beside the state file).
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
import signal
import sys
import threading
import time
import traceback
from contextlib import contextmanager

from schedsync.core.durations import format_duration
from schedsync.core.models import CANCELLED, FAILED, PARTIAL, RATE_LIMITED, SUCCESS, TIMEOUT
from schedsync.core.outcome import Cancelled, DeadlinePassed, Outcome

ERROR_LENGTH = 300  # characters of an exception's message kept in the one-line error


# --- shared with http jobs ----------------------------------------------------------------

@contextmanager
def hard_deadline(deadline: float, repeat: float = 1.0):
    """Raise ``DeadlinePassed`` in the main thread once ``deadline`` (POSIX seconds) passes.

    The backstop for code that blocks where no timeout of ours reaches it. It
    fires again every ``repeat`` seconds until the block ends, so a bare
    ``except:`` in job code cannot keep the run alive. Off the main thread
    (signals cannot reach there) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    armed = [True]

    def on_alarm(signum, frame):
        if armed[0]:
            raise DeadlinePassed()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(deadline - time.time(), 0.001), repeat)
    try:
        yield
    finally:
        armed[0] = False  # first: an alarm landing in this cleanup must not raise
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class LiveProgress:
    """Pages, items and rate on stderr, on a terminal only, once the work takes a while.

    Rich is imported only when the display starts, so cron runs never pay for it.
    """

    def __init__(self, label: str, enabled: bool, delay: float = 0.5, clock=time.monotonic):
        self.label = label
        self.enabled = enabled
        self.stream = sys.stderr  # the terminal, taken before a python job's output is captured
        self.delay = delay
        self.clock = clock
        self.started = clock()
        self.items = self.failed = self.pages = 0
        self._progress = None
        self._task = None
        self._last_draw = 0.0

    def update(self, items: int = 0, failed: int = 0, pages: int = 0) -> None:
        self.items += items
        self.failed += failed
        self.pages += pages
        if not self.enabled:
            return
        now = self.clock()
        if self._progress is None:
            if now - self.started < self.delay:
                return
            self._start()
        if now - self._last_draw >= 0.1:
            self._draw(now)

    def write(self, text: str) -> None:
        """Job output on a terminal: above the display when it is showing."""
        if self._progress is not None:
            self._progress.console.print(text.rstrip("\n"), markup=False, highlight=False,
                                         soft_wrap=True)
        else:
            self.stream.write(text)

    def flush(self) -> None:
        if self._progress is None:
            self.stream.flush()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                  TimeElapsedColumn(), console=Console(file=self.stream),
                                  transient=True, refresh_per_second=4)
        self._task = self._progress.add_task(self.label, total=None)
        self._progress.start()

    def _draw(self, now: float) -> None:
        self._last_draw = now
        elapsed = max(now - self.started, 1e-6)
        parts = [self.label]
        if self.pages:
            parts.append(f"page {self.pages:,}")
        parts.append(f"{self.items:,} items")
        if self.failed:
            parts.append(f"{self.failed:,} failed")
        parts.append(f"{self.items / elapsed:,.0f}/s")
        self._progress.update(self._task, description="  ".join(parts))


def open_data_db(path: str):
    """A ``sqlite_utils.Database`` on the data database, fit for several jobs writing at once.

    WAL (readers never block the writer), a 60 s busy timeout, and autocommit: writers
    wrap each batch in ``BEGIN IMMEDIATE … COMMIT`` so no read lock is ever upgraded.
    """
    import sqlite3

    import sqlite_utils

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    conn = sqlite3.connect(path, timeout=60, isolation_level=None)
    try:
        for attempt in range(100):  # switching to WAL needs a moment alone with the file
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 99:
                    raise
                time.sleep(0.05)
    except BaseException:
        conn.close()
        raise
    return sqlite_utils.Database(conn)


def one_line(text: str, limit: int = ERROR_LENGTH) -> str:
    """``text`` on one line, whitespace collapsed, cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


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
        self.deadline = ctx.deadline
        self.last_success_at = ctx.last_success_at
        self.log = log
        self.data_db = data_db
        self.processed = 0
        self.failed = 0

    @property
    def http(self):
        if self._client is None:
            from schedsync.jobs.http import BudgetedClient

            self._client = BudgetedClient(self._ctx)
        return self._client

    @property
    def db(self):
        if self._db is None:
            self._db = open_data_db(self.data_db)
        return self._db

    @property
    def remaining(self) -> float:
        """Seconds left before the run's hard timeout."""
        return max(0.0, self.deadline - time.time())

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
    data_db = os.path.abspath(ctx.data_db)  # before any chdir: the state path may be relative
    log = _job_logger(job.name, output)
    jctx = JobContext(job, ctx, log, display, data_db)
    started_in = os.getcwd()
    try:
        with _job_environment(job, ctx.config.dir):
            try:
                with hard_deadline(ctx.deadline), _captured(output), display:
                    function = load_function(job.python)
                    result = function(jctx)
                    if inspect.iscoroutine(result):  # an ``async def`` job
                        import asyncio

                        result = asyncio.run(result)
                counts = _counts(result, jctx, job.python)
            except JobImportError as exc:
                return _finish(Outcome(FAILED, error=str(exc)), jctx, output)
            except DeadlinePassed:
                return _finish(Outcome(TIMEOUT, error=f"timed out after {format_duration(job.timeout)}"),
                               jctx, output)
            except Cancelled as exc:
                return _finish(Outcome(FAILED, reason=CANCELLED, error=f"cancelled by {exc}"),
                               jctx, output)
            except SystemExit as exc:  # sys.exit() in job code ends the job, not schedsync
                if exc.code in (None, 0):
                    counts = jctx.processed, jctx.failed
                else:
                    return _finish(Outcome(FAILED, error=f"{job.python} called sys.exit({exc.code!r})"),
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
        raise JobImportError(f"cannot import {module_name}: {exc}")
    except Exception as exc:
        raise JobImportError(f"cannot import {module_name}: {type(exc).__name__}: {one_line(exc)}")
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


def _counts(result, jctx: JobContext, target: str) -> tuple[int, int]:
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
            processed = _bad_return(result, target)
    for value in (processed, failed):
        if not isinstance(value, int) or isinstance(value, bool):
            _bad_return(result, target)
    return processed, failed


def _bad_return(result, target: str):
    raise TypeError(f"{target} returned {one_line(repr(result), 60)}; return a count of items, "
                    "or {'processed': N, 'failed': M}")


def _failure(exc: Exception, output, jctx: JobContext) -> Outcome:
    http = sys.modules.get("schedsync.jobs.http")  # loaded only if the job used ctx.http
    if http is not None and isinstance(exc, http.BudgetExhausted):
        return Outcome(PARTIAL if jctx.processed else FAILED, reason=RATE_LIMITED,
                       error=str(exc), retry_at=exc.retry_at)
    output.feed("".join(traceback.format_exception(exc)).encode("utf-8", "replace"))
    if type(exc).__module__.split(".")[0] == "httpx":
        from schedsync.jobs.http import describe_httpx_error

        return Outcome(FAILED, error=describe_httpx_error(exc))
    message = one_line(exc)
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

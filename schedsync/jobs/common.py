"""What the job kinds that run in this process (http, python) share.

The SIGALRM backstop for the run's deadline (``hard_deadline``), the progress display
on a terminal (``LiveProgress``) and ``one_line`` for error text. Neither job kind imports the other.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from contextlib import contextmanager

from schedsync.core.outcome import DeadlinePassed, Fenced
from schedsync.core.redact import clip

ERROR_LENGTH = 300  # characters of an exception's message kept in the one-line error


@contextmanager
def hard_deadline(deadline: float, repeat: float = 1.0, held=None):
    """Raise ``DeadlinePassed`` in the main thread once ``deadline`` (``time.monotonic()``
    seconds) passes; with ``held`` (the lease's), raise ``Fenced`` within half a second
    of it turning False, so job code in this process stops before the lease can lapse.

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
        if not armed[0]:
            return
        if time.monotonic() >= deadline:
            raise DeadlinePassed()
        if held is not None and not held():
            raise Fenced("lost lease")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    first = max(deadline - time.monotonic(), 0.001)
    if held is not None:
        first, repeat = min(first, 0.5), min(repeat, 0.5)
    signal.setitimer(signal.ITIMER_REAL, first, repeat)
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


def one_line(text, limit: int = ERROR_LENGTH) -> str:
    """``text`` on one line (no control characters), cut to ``limit`` characters.

    Cutting comes last: redact ``text`` before calling this (``Secrets.clip`` does both).
    """
    return clip(text, limit)

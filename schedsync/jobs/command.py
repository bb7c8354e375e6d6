"""Command jobs: a list runs without a shell, a string runs under ``/bin/sh -c``.

The command gets its own process group, so a timeout or a cancel can stop all
of it. Its output is redacted line by line as it arrives; it streams live on a
terminal and is held back (bounded) under cron, shown only when the run fails.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections import deque

from schedsync.core.durations import format_duration
from schedsync.core.models import CANCELLED, FAILED, SUCCESS, TIMEOUT
from schedsync.core.outcome import Cancelled, Outcome

KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
FENCE_GRACE = 1.0  # shorter when fenced: the job must be gone before the server frees the lock
HEAD, TAIL, RECORD_TAIL, LONG_LINE = 16_384, 49_152, 4_096, 8_192


class Output:
    """Everything the job printed: redacted, bounded, optionally echoed live."""

    def __init__(self, redact, live=None, hold: int = 0):
        self.redact = redact
        self.live = live
        self.hold = hold  # the longest secret's length - 1: see feed()
        self.pending = b""
        self.head: list[str] = []
        self.head_size = 0
        self.tail: deque[str] = deque()
        self.tail_size = 0
        self.dropped = 0

    def feed(self, data: bytes) -> None:
        self.pending += data
        cut = self.pending.rfind(b"\n") + 1
        if cut:  # whole lines: a secret cannot straddle a line's end
            chunk, self.pending = self.pending[:cut], self.pending[cut:]
            self._keep(self.redact(chunk.decode("utf-8", "replace")))
        elif len(self.pending) >= LONG_LINE:
            # A long line still going: redact what is there and hold back a tail as long
            # as any secret but one, so one split across reads is whole when redacted.
            text = self.redact(self.pending.decode("utf-8", "replace"))
            split = len(text) - self.hold
            self._keep(text[:split])
            self.pending = text[split:].encode()

    def close(self) -> None:
        if self.pending:
            self._keep(self.redact(self.pending.decode("utf-8", "replace")))
            self.pending = b""

    def _keep(self, text: str) -> None:
        if self.live:
            self.live.write(text)
            self.live.flush()
        if self.head_size < HEAD:
            self.head.append(text)
            self.head_size += len(text)
            return
        self.tail.append(text)
        self.tail_size += len(text)
        while self.tail_size > TAIL and len(self.tail) > 1:
            self.tail_size -= len(old := self.tail.popleft())
            self.dropped += len(old)

    def held(self) -> str:
        cut = f"\n[… {self.dropped} characters of output not kept …]\n" if self.dropped else ""
        return "".join(self.head) + cut + "".join(self.tail)

    def record_tail(self) -> str | None:
        text = self.held()
        return text[-RECORD_TAIL:] or None


def run_command(job, ctx) -> Outcome:
    """Run ``job.command`` until it ends, the deadline passes or the run is cancelled."""
    argv = job.command if isinstance(job.command, list) else ["/bin/sh", "-c", job.command]
    env = {**os.environ, **job.env}
    output = Output(ctx.secrets.redact, sys.stdout if ctx.interactive else None,
                    hold=ctx.secrets.longest - 1)
    codes = job.retries.get("on_exit_codes") or []
    if not codes:
        outcome = _once(argv, env, job, ctx, output)
    else:
        from tenacity import retry_if_result

        retrying = ctx.retrying(retry_if_result(lambda o: o.status == FAILED and o.exit_code in codes))
        outcome = retrying(_once, argv, env, job, ctx, output)
        outcome.attempts = retrying.statistics.get("attempt_number", 1)
    output.close()
    outcome.held = output.held()
    outcome.output = output.record_tail()
    return outcome


def _once(argv, env, job, ctx, output: Output) -> Outcome:
    if not os.path.isdir(job.cwd):
        return Outcome(FAILED, error=f"working folder {job.cwd} does not exist")
    try:
        proc = subprocess.Popen(argv, cwd=job.cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, pass_fds=ctx.pass_fds)
    except FileNotFoundError:
        return Outcome(FAILED, exit_code=127, error=f"command not found: {argv[0]}")
    except PermissionError:
        return Outcome(FAILED, exit_code=126, error=f"command not executable: {argv[0]}")
    fd = proc.stdout.fileno()
    timed_out = cancelled = fenced = False
    try:
        ended = _pump(proc, fd, output, ctx.deadline, getattr(ctx, "held", None))
        timed_out, fenced = ended is False, ended is None
    except Cancelled as exc:
        cancelled = exc
    if fenced:
        # The lock may be lost (the database stopped answering): another host may start
        # this job soon, so stop ours first and say so (the record may not reach the state).
        print(f"{job.name}: lost the state database while holding the job's lock;"
              " stopping the job so that no other host runs it at the same time", file=sys.stderr)
        _stop(proc, fd, output, FENCE_GRACE)
    elif timed_out or cancelled:
        _stop(proc, fd, output)
    else:
        # Leftover background processes of the job would hold its lock and pipe.
        _signal_group(proc.pid, signal.SIGTERM)
    code = proc.wait()
    _drain(fd, output, 0.2)
    proc.stdout.close()
    if fenced:
        return Outcome(FAILED, exit_code=code, reason=CANCELLED,
                       error="stopped: lost the state database while holding the lock (fenced)")
    if cancelled:
        return Outcome(FAILED, exit_code=code, reason=CANCELLED, error=f"cancelled by {cancelled}")
    if timed_out:
        return Outcome(TIMEOUT, exit_code=code, error=f"timed out after {format_duration(job.timeout)}")
    if code == 0:
        return Outcome(SUCCESS, exit_code=0)
    what = f"killed by signal {-code}" if code < 0 else f"exit {code}"
    last = _last_line(output)
    return Outcome(FAILED, exit_code=code, error=f"{what}: {last}" if last else what)


def _pump(proc, fd: int, output: Output, deadline: float, held=None) -> bool | None:
    """Copy output until the command exits; False if the deadline passed first, None if
    ``held()`` said the lock may be lost (checked at least every half second)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    try:  # readable once the child has exited: no sleep between the pipe's EOF and the exit
        pidfd = os.pidfd_open(proc.pid)
        poller.register(pidfd, select.POLLIN)
    except (AttributeError, OSError):  # not Linux >= 5.3
        pidfd = None
    open_pipe, nap = True, 0.001
    try:
        while True:
            left = deadline - time.time()
            if left <= 0:
                return False
            if held is not None and not held():
                return None
            if open_pipe or pidfd is not None:
                for ready, _ in poller.poll(min(left, 0.5) * 1000):
                    if ready != fd:
                        continue
                    data = os.read(fd, 65536)
                    if data:
                        output.feed(data)
                    else:
                        open_pipe = False
                        poller.unregister(fd)
            else:
                time.sleep(min(left, nap))  # the exit follows the pipe's EOF within microseconds
                nap = min(nap * 2, 0.05)
            # WNOWAIT: see the exit without reaping, so the group id cannot be reused yet.
            exited = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if exited is not None:
                return True
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _stop(proc, fd: int, output: Output, grace: float = KILL_GRACE) -> None:
    _signal_group(proc.pid, signal.SIGTERM)
    end = time.time() + grace
    while time.time() < end:
        _drain(fd, output, 0.05)
        if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            break
    _signal_group(proc.pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _drain(fd: int, output: Output, wait: float) -> None:
    while select.select([fd], [], [], wait)[0]:
        try:
            data = os.read(fd, 65536)
        except OSError:
            return
        if not data:
            return
        output.feed(data)


def _last_line(output: Output) -> str:
    text = output.held().rstrip()
    return text.rsplit("\n", 1)[-1][:200] if text else ""

"""Command jobs: a list runs without a shell, a string runs under ``/bin/sh -c``.

The command gets its own process group, so a timeout or a cancel can stop all
of it. Its parent is a keeper: a fork of schedsync that leads that group and
holds one end of a pipe whose other end only schedsync holds. When schedsync
dies, even by ``kill -9``, the pipe reads EOF and the keeper stops the whole
group; the keeper also kills it past the hard timeout on its own. With a lease
(PostgreSQL), schedsync writes on a second pipe, at each renewal the server
confirmed, the instant (monotonic) by which the job must be stopped; the keeper
stops the group itself when that instant passes with no newer one (a paused or
dead schedsync, a lost database). So the job never outlives schedsync, its
timeout or its lease, and never runs twice at once. Every deadline here is on
this host's monotonic clock.

Its output is redacted line by line as it arrives; it streams live on a
terminal and is held back (bounded) under cron, shown only when the run fails.
"""

from __future__ import annotations

import errno
import os
import select
import sys
import time
from collections import deque

# The C module that ``signal`` wraps, with the same names and int values: ``signal`` adds
# enums, and ``enum`` (with functools and types) would cost every cron tick about a tenth of
# its start-up (docs/design.md, Start-up).
try:
    import _signal as signal
except ImportError:  # pragma: no cover - not CPython
    import signal

from schedsync.core.models import CANCELLED, FAILED, SUCCESS, TIMEOUT
from schedsync.core.outcome import FENCED, Cancelled, Outcome

KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
CANCEL_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # what cancels a run
FENCE_GRACE = 1.0  # shorter when fenced: the job must be gone before its lease can lapse
HEAD, TAIL, RECORD_TAIL, LONG_LINE = 16_384, 49_152, 4_096, 8_192
WINDOW = 1 << 20  # fails_when.output_matches sees the last 1 MiB (app.rules.WINDOW)


class Output:
    """Everything the job printed: redacted, bounded, optionally echoed live."""

    def __init__(self, redact, live=None, hold: int = 0, window: int = 0):
        self.redact = redact
        self.live = live
        self.hold = hold  # the longest secret's length - 1: see feed()
        self.pending = b""
        self.err_pending = b""  # fails_when.stderr: the job's stderr, a pipe of its own
        self.first_err: str | None = None  # the first line it wrote there (None: nothing)
        self.window = window  # fails_when.output_matches: the last ``window`` characters, kept
        self.seen: deque[str] = deque()
        self.seen_size = 0
        self.head: list[str] = []
        self.head_size = 0
        self.tail: deque[str] = deque()
        self.tail_size = 0
        self.dropped = 0

    def feed(self, data: bytes) -> None:
        self.pending = self._feed(self.pending + data)

    def feed_err(self, data: bytes) -> None:
        """What the job wrote to stderr (a pipe of its own with ``fails_when.stderr``): kept
        with the rest, its first line noted."""
        self.err_pending = self._feed(self.err_pending + data, err=True)

    def _feed(self, pending: bytes, err: bool = False) -> bytes:
        cut = pending.rfind(b"\n") + 1
        if cut:  # whole lines: a secret cannot straddle a line's end
            chunk, pending = pending[:cut], pending[cut:]
            self._keep(self.redact(chunk.decode("utf-8", "replace")), err)
        elif len(pending) >= LONG_LINE:
            # A long line still going: redact what is there and hold back a tail as long
            # as any secret but one, so one split across reads is whole when redacted.
            text = self.redact(pending.decode("utf-8", "replace"))
            split = max(0, len(text) - self.hold)
            self._keep(text[:split], err)
            pending = text[split:].encode()
        return pending

    def close(self) -> None:
        for err in (False, True):
            pending = self.err_pending if err else self.pending
            if pending:
                self._keep(self.redact(pending.decode("utf-8", "replace")), err)
        self.pending = self.err_pending = b""

    def _keep(self, text: str, err: bool = False) -> None:
        if err and text and self.first_err is None or err and self.first_err == "" and text.strip():
            self.first_err = next((line for line in text.splitlines() if line.strip()), "")[:200]
        if self.window:
            self.seen.append(text)
            self.seen_size += len(text)
            while self.seen_size - len(self.seen[0]) >= self.window:
                self.seen_size -= len(self.seen.popleft())
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


def iso_utc(t: float) -> str:
    """``2026-12-04T03:00:00Z``: a slot as jobs see it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def run_command(job, ctx) -> Outcome:
    """Run the job's command (``job.section``) until it ends, the deadline passes or the run is cancelled."""
    argv = job.section if isinstance(job.section, list) else ["/bin/sh", "-c", job.section]
    env = {**os.environ, **job.env}
    if ctx.slot is not None:  # the scheduled start this run serves (a catch-up's, a backfill's)
        env["SCHEDSYNC_SLOT"] = iso_utc(ctx.slot)
    if ctx.params:  # the run's params (``schedsync trigger --param``, defaults): SCHEDSYNC_PARAM_<NAME>
        env.update({"SCHEDSYNC_PARAM_" + name.upper(): value for name, value in ctx.params.items()})
    rules = job.fails_when or {}
    output = Output(ctx.secrets.redact, sys.stdout if ctx.interactive else None,
                    hold=ctx.secrets.longest - 1, window=WINDOW if rules.get("output_matches") else 0)
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
    if rules.get("stderr"):
        outcome.stderr = output.first_err
    if output.window:
        outcome.window = "".join(output.seen)[-WINDOW:]
    return outcome


def _once(argv, env, job, ctx, output: Output) -> Outcome:
    if not os.path.isdir(job.cwd):
        return Outcome(FAILED, error=f"working folder {job.cwd} does not exist")
    leases = getattr(ctx, "fence", None)
    fence = leases.pipe() if leases is not None else None  # (read end, write end, stop-by)
    try:
        keeper, failure = _spawn(argv, job.cwd, env, ctx.pass_fds, ctx.deadline, fence,
                                 split=bool((job.fails_when or {}).get("stderr")))
    finally:
        if fence is not None:
            os.close(fence[0])
    try:
        return _watch(keeper, failure, argv, job, ctx, output)
    finally:
        if fence is not None:
            leases.unpipe(fence[1])


def _say_fenced(name: str) -> None:
    print(f"{name}: lost the state database while holding the job's lease;"
          " stopping the job so that no other host runs it at the same time", file=sys.stderr)


def _watch(keeper, failure, argv, job, ctx, output: Output) -> Outcome:
    if failure is not None:
        keeper.wait()
        os.close(keeper.stdout)
        if keeper.stderr is not None:
            os.close(keeper.stderr)
        if failure == errno.ENOENT:
            return Outcome(FAILED, exit_code=127, error=f"command not found: {argv[0]}")
        if failure in (errno.EACCES, errno.EPERM):
            return Outcome(FAILED, exit_code=126, error=f"command not executable: {argv[0]}")
        return Outcome(FAILED, exit_code=126, error=f"cannot run {argv[0]}: {os.strerror(failure)}")
    fd = keeper.stdout
    timed_out = cancelled = fenced = False
    try:
        ended = _pump(keeper, fd, output, ctx.deadline, getattr(ctx, "held", None), keeper.stderr)
        timed_out, fenced = ended is False, ended is None
    except Cancelled as exc:
        cancelled = exc
    if fenced:
        # The lock may be lost (the database stopped answering): another host may start
        # this job soon, so stop ours first and say so (the record may not reach the state).
        _say_fenced(job.name)
        _stop(keeper, fd, output, FENCE_GRACE, keeper.stderr)
    elif timed_out or cancelled:
        _stop(keeper, fd, output, err=keeper.stderr)
    else:
        # Leftover background processes of the job would hold its lock and pipe.
        _signal_group(keeper.pid, signal.SIGTERM)
    code = keeper.wait()
    held = getattr(ctx, "held", None)
    if not (fenced or cancelled) and code in (-signal.SIGTERM, -signal.SIGKILL) and held is not None \
            and not held():
        fenced = True  # the keeper fenced it first (on its own clock), or while we could not act
        _say_fenced(job.name)
    if code == -signal.SIGKILL and time.monotonic() >= ctx.deadline:
        timed_out = True  # the keeper's backstop, while we could not act (stopped, say)
    _drain(fd, output, 0.2)
    os.close(fd)
    if keeper.stderr is not None:
        _drain(keeper.stderr, output, 0.05, err=True)
        os.close(keeper.stderr)
    if fenced:
        return Outcome(FAILED, exit_code=code, reason=CANCELLED, error=FENCED)
    if cancelled:
        return Outcome(FAILED, exit_code=code, reason=CANCELLED, error=f"cancelled by {cancelled}")
    if timed_out:
        from schedsync.core.durations import format_duration  # a timeout's message only

        return Outcome(TIMEOUT, exit_code=code, error=f"timed out after {format_duration(job.timeout)}")
    if code == 0:
        return Outcome(SUCCESS, exit_code=0)
    what = f"killed by signal {-code}" if code < 0 else f"exit {code}"
    last = _last_line(output)
    return Outcome(FAILED, exit_code=code, error=f"{what}: {last}" if last else what)


class _Keeper:
    """Our child: the job's parent and the leader of its process group (pgid == pid)."""

    def __init__(self, pid: int, stdout: int, lifeline: int, stderr: int | None = None):
        self.pid, self.stdout, self.lifeline = pid, stdout, lifeline
        self.stderr = stderr  # the job's stderr, when it has a pipe of its own (fails_when.stderr)

    def wait(self) -> int:
        """Reap the keeper; its exit status is the job's (a negative signal number if killed)."""
        try:
            return os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        finally:
            os.close(self.lifeline)  # only now: an EOF tells the keeper to stop the job


def _spawn(argv, cwd: str, env: dict, pass_fds: tuple, deadline: float, fence=None, split: bool = False):
    """Start the job under a keeper; returns (keeper, errno of a failed exec or None).

    The cancel signals are blocked from before the fork until the job has started,
    so a SIGTERM cannot land between the fork and our knowing the keeper's pid: it
    waits, and raises Cancelled once there is a group to stop.
    """
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe() if split else (None, None)  # split: stderr apart (fails_when.stderr)
    report_r, report_w = os.pipe()
    life_r, life_w = os.pipe()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, CANCEL_SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:  # the keeper: never returns into schedsync's code
            code = 70
            try:
                for theirs in (out_r, report_r, life_w):
                    os.close(theirs)
                if err_r is not None:
                    os.close(err_r)
                if fence is not None:
                    os.close(fence[1])
                code = _keep(argv, cwd, env, pass_fds, deadline, mask, out_w, report_w, life_r,
                             fence and fence[::2], err_w)
            except BaseException:  # a bug of ours must not leave the job without a keeper
                _signal_group(os.getpid(), signal.SIGKILL)
            finally:
                os._exit(code)
        for keepers in (out_w, report_w, life_r):
            os.close(keepers)
        if err_w is not None:
            os.close(err_w)
        report = b""
        while chunk := os.read(report_r, 64):  # EOF once the job has exec'd or failed to
            report += chunk
        os.close(report_r)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    failure = int(report) if report and report != b"0" else None
    return _Keeper(pid, out_r, life_w, err_r), failure


def _executable(name: str, path: str) -> str:
    """Where ``name`` is on the job's PATH (not ours), as exec would look; else ``name``."""
    if "/" in name:
        return name
    for folder in path.split(os.pathsep):
        candidate = os.path.join(folder or ".", name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return name


def _close_all_but(keep: set) -> None:
    try:
        fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc: the slow way
        fds = range(os.sysconf("SC_OPEN_MAX"))
    for fd in fds:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _exit_code(pid: int) -> int | None:
    """The job's exit code once it has ended (negative: killed by that signal), else None."""
    done, status = os.waitpid(pid, os.WNOHANG)
    return os.waitstatus_to_exitcode(status) if done else None


def _keep(argv, cwd, env, pass_fds, deadline, mask, out_w, report_w, life_r, fence=None, err_w=None) -> int:
    """The keeper's life: start the job, then wait for it, for schedsync's end, the deadline,
    or (``fence`` = (read end, stop-by)) the lease's fence."""
    os.setsid()  # a new group, led by us: its id cannot be reused while we live
    devnull = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):  # never hold cron's mail pipe open after schedsync is gone
        os.dup2(devnull, std)
    os.close(devnull)
    for sig in CANCEL_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)  # the group's SIGTERM is for the job, not us
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    # posix_spawn, not subprocess: the least Python in this fresh fork, whose every
    # touched page is a copy; every cron tick pays for it.
    # Only the job's own descriptors cross: fds schedsync inherited from its caller would not
    # be close-on-exec, and posix_spawn (unlike subprocess) does not close them for us.
    _close_all_but({0, 1, 2, out_w, report_w, life_r, *pass_fds, *(fence[:1] if fence else ()),
                    *(() if err_w is None else (err_w,))})
    for fd in pass_fds:
        os.set_inheritable(fd, True)
    try:
        os.chdir(cwd)
        pid = os.posix_spawn(_executable(argv[0], env.get("PATH", os.defpath)), argv, env,
                             file_actions=[(os.POSIX_SPAWN_DUP2, out_w, 1),
                                           (os.POSIX_SPAWN_DUP2, out_w if err_w is None else err_w, 2)],
                             setsigdef=(*CANCEL_SIGNALS, signal.SIGPIPE, signal.SIGXFSZ))
    except OSError as exc:
        try:
            os.write(report_w, b"%d" % (exc.errno or errno.EIO))
        except BrokenPipeError:
            pass
        return 127
    os.close(out_w)
    if err_w is not None:
        os.close(err_w)
    try:
        os.write(report_w, b"0")
    except BrokenPipeError:  # schedsync died meanwhile: the lifeline below says so
        pass
    os.close(report_w)
    group = os.getpid()
    poller = select.poll()
    poller.register(life_r, select.POLLIN | select.POLLHUP)
    try:
        pidfd = os.pidfd_open(pid)
        poller.register(pidfd, select.POLLIN)
    except (AttributeError, OSError):  # not Linux >= 5.3: poll the exit
        pidfd = None
    # schedsync stops a job at its deadline itself; this backstop is for a schedsync that
    # cannot (stopped, hung): the hard timeout holds whatever happens to it.
    backstop = deadline + KILL_GRACE + 1
    lease_r, stop_by = fence if fence else (None, float("inf"))
    if lease_r is not None:
        poller.register(lease_r, select.POLLIN | select.POLLHUP)
    pending = b""
    while (code := _exit_code(pid)) is None:
        now = time.monotonic()
        left = backstop - now
        if left <= 0:
            _signal_group(group, signal.SIGKILL)
        if now >= stop_by:  # no renewal confirmed in time: the lease may lapse, stop the job
            _stop_group(pid, group, FENCE_GRACE)
            stop_by = float("inf")
        wait = min(left, stop_by - now, 0.05 if pidfd is None else left)
        ready = poller.poll(max(0.0, wait) * 1000)
        if any(fd == life_r for fd, _ in ready):  # EOF: schedsync is gone, stop the job
            _stop_group(pid, group, KILL_GRACE)
        if lease_r is not None and any(fd == lease_r for fd, _ in ready):
            try:
                data = os.read(lease_r, 4096)
            except OSError:
                data = b""
            if not data:  # schedsync closed it (done, or gone: the lifeline says which)
                poller.unregister(lease_r)
                lease_r = None
            pending += data
            if b"\n" in pending:
                lines, _, pending = pending.rpartition(b"\n")
                stop_by = max(stop_by if stop_by != float("inf") else 0.0,
                              float(lines.rsplit(b"\n", 1)[-1]))
    _signal_group(group, signal.SIGTERM)  # leftovers of the job would hold its lock and pipe
    if code >= 0:
        return code
    if -code in (signal.SIGQUIT, signal.SIGILL, signal.SIGABRT, signal.SIGFPE, signal.SIGSEGV,
                 signal.SIGBUS, signal.SIGSYS, signal.SIGTRAP, signal.SIGXCPU, signal.SIGXFSZ):
        import resource  # no core file of the keeper: the job's own core is the one that counts

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(-code, signal.SIG_DFL)
    os.kill(group, -code)  # end the way the job ended, so schedsync reads the same status
    return 128 - code


def _stop_group(pid: int, group: int, grace: float) -> None:
    """The keeper stops the job's group: SIGTERM, then SIGKILL after ``grace`` seconds."""
    _signal_group(group, signal.SIGTERM)
    end = time.monotonic() + grace
    while _exit_code(pid) is None and time.monotonic() < end:
        time.sleep(0.02)
    _signal_group(group, signal.SIGKILL)  # whatever is left of the group, us included


def _pump(proc, fd: int, output: Output, deadline: float, held=None, err: int | None = None) -> bool | None:
    """Copy output until the command exits; False if the deadline passed first, None if
    ``held()`` said the lock may be lost (checked at least every half second). ``err``: the
    job's stderr, when it is a pipe of its own."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    if err is not None:
        poller.register(err, select.POLLIN | select.POLLHUP)
    try:  # readable once the child has exited: no sleep between the pipe's EOF and the exit
        pidfd = os.pidfd_open(proc.pid)
        poller.register(pidfd, select.POLLIN)
    except (AttributeError, OSError):  # not Linux >= 5.3
        pidfd = None
    open_pipe, nap = True, 0.001
    try:
        while True:
            # WNOWAIT: see the exit without reaping, so the group id cannot be reused yet.
            # First: a job that has ended is over, even if we see it late (we were stopped,
            # say): its exit is its result, not a timeout or a fence noticed afterwards.
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if held is not None and not held():
                return None
            if open_pipe or pidfd is not None:
                for ready, _ in poller.poll(min(left, 0.5) * 1000):
                    if ready == err:
                        data = os.read(err, 65536)
                        if data:
                            output.feed_err(data)
                        else:
                            poller.unregister(err)
                            err = None
                        continue
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
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _stop(proc, fd: int, output: Output, grace: float = KILL_GRACE, err: int | None = None) -> None:
    _signal_group(proc.pid, signal.SIGTERM)
    end = time.monotonic() + grace
    while time.monotonic() < end:
        _drain(fd, output, 0.05)
        if err is not None:
            _drain(err, output, 0, err=True)
        if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            break
    _signal_group(proc.pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _drain(fd: int, output: Output, wait: float, err: bool = False) -> None:
    while select.select([fd], [], [], wait)[0]:
        try:
            data = os.read(fd, 65536)
        except OSError:
            return
        if not data:
            return
        if err:
            output.feed_err(data)
        else:
            output.feed(data)


def _last_line(output: Output) -> str:
    text = output.held().rstrip()
    return text.rsplit("\n", 1)[-1][:200] if text else ""

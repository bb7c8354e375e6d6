"""A real crontab line under the real cron daemon (Debian's ``cron``).

One cron minute, two jobs: ``tick`` succeeds and must print nothing (so cron
mails nothing), ``boom`` exits 3 and must print its own output and the one-line
``error:`` summary. Each crontab line redirects schedsync's stdout and stderr to
files, and writes its exit code, so the test reads exactly what cron would mail.

Needs root (to install root's crontab and start the daemon). Skipped when not
root, or when cron is not installed and ``CI`` is unset; under CI a missing cron
fails, since ``.ci/run`` installs it. Root's previous crontab is restored and a
daemon the test started is stopped, so the machine is left as found. Runs of
this test on one machine take turns (a lock file): they share root's crontab.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CRON = shutil.which("cron") or next(
    (p for p in ("/usr/sbin/cron", "/sbin/cron") if os.access(p, os.X_OK)), None)
CRONTAB = shutil.which("crontab") or ("/usr/bin/crontab" if os.access("/usr/bin/crontab", os.X_OK)
                                      else None)
TURNS = Path("/run/lock") if Path("/run/lock").is_dir() else Path("/tmp")
BEGIN, END = "# BEGIN schedsync e2e test", "# END schedsync e2e test"
# Seconds past the next minute boundary before giving up. Cron may load the crontab
# only at the following minute's check, and a loaded machine may take a while to
# start two Python processes: the poll ends as soon as both ran, so a generous
# bound costs nothing when all is well.
AFTER_THE_MINUTE = 140
SPOOL = Path("/var/spool/cron/crontabs")  # Debian's; cron polls its mtime


def _skip_or_fail() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: installs root's crontab and starts the cron daemon")
    if CRON and CRONTAB:
        return
    missing = "cron" if not CRON else "crontab"
    if os.environ.get("CI"):
        pytest.fail(f"`{missing}` is not installed, and CI must run this test: "
                    "install it in .ci/run (apt-get install -y --no-install-recommends cron)")
    pytest.skip(f"`{missing}` is not installed (apt-get install cron)")


def _cron_pids() -> set[int]:
    """Live processes named cron (the daemon, and its children while they start jobs)."""
    pids = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue  # it ended while we looked
            name, state = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2]
            if name == "cron" and state != "Z":  # a zombie left to a pid 1 that never reaps
                pids.add(int(entry.name))
    return pids


def _crontab(*args: str, text: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CRONTAB, *args], input=text, capture_output=True, text=True, timeout=30)


def _without_our_block(text: str) -> str:
    """Root's crontab less a block a killed earlier run of this test left behind."""
    kept, inside = [], False
    for line in text.splitlines(keepends=True):
        if line.strip() == BEGIN:
            inside = True
        elif line.strip() == END:
            inside = False
        elif not inside:
            kept.append(line)
    return "".join(kept)


@pytest.fixture
def cron():
    """Installs crontab text for root under a running cron daemon; undoes both afterwards."""
    _skip_or_fail()
    with open(TURNS / "schedsync-cron-e2e.lock", "w") as turn:
        fcntl.flock(turn, fcntl.LOCK_EX)  # another run of this test would swap root's crontab
        listed = _crontab("-l")
        previous = _without_our_block(listed.stdout) if listed.returncode == 0 else None
        started: set[int] = set()

        def install(block: str) -> None:
            text = (previous or "") + ("" if not previous or previous.endswith("\n") else "\n")
            before = _spool_mtime()
            result = _crontab("-", text=text + f"{BEGIN}\n{block}{END}\n")
            assert result.returncode == 0, result.stderr
            _make_cron_notice(before)
            # A daemon started now reads the crontab as it starts: nothing to notice.
            started.update(_start_daemon_if_needed())

        try:
            yield install
        finally:
            if previous is not None:
                _crontab("-", text=previous)
            else:
                _crontab("-r")
            for pid in started:
                _stop(pid)


def _spool_mtime() -> int:
    """The latest whole-second mtime cron can have recorded for root's crontab."""
    seen = 0
    for path in (SPOOL / "root", SPOOL):
        try:
            seen = max(seen, int(path.stat().st_mtime))
        except FileNotFoundError:
            pass
    return seen


def _make_cron_notice(before: int) -> None:
    """Give the new crontab an mtime no earlier check of cron can have recorded.

    Debian's cron reloads a crontab when its spool folder's (and the file's) mtime
    differs from what it recorded at its last check, in whole seconds: a crontab
    installed in the same second as a check (or as the daemon's start) keeps the
    recorded mtime and is missed. Every mtime cron has seen is at most ``before``
    (taken before installing), so a later second is new to it. It is also this
    second, not an old one: cron compares the newest of the spool's and
    /etc/crontab's mtimes. It must not lie in the future (this cron then passes
    the file over for a minute), so when ``before`` is this very second, wait for
    the next one. The content is in place by then.
    """
    target = max(before + 1, int(time.time()))
    while time.time() < target:
        time.sleep(0.05)
    for path in (SPOOL / "root", SPOOL):
        try:
            os.utime(path, (target, target))
        except FileNotFoundError:
            pass  # another cron's layout: it only loses this safeguard


def _start_daemon_if_needed() -> set[int]:
    """Starts cron if no daemon runs; returns the pids of what it started, to stop later."""
    if _cron_pids():
        return set()
    before = _cron_pids()
    subprocess.run([CRON], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True, timeout=30)  # it forks into the background
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        started = _cron_pids() - before
        if started:
            return started
        time.sleep(0.05)
    pytest.fail(f"started {CRON}, but no cron daemon is running")


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while pid in _cron_pids() and time.monotonic() < deadline:
        time.sleep(0.05)


def _cron_line(schedsync: list[str], config: Path, job: str, out: Path) -> str:
    """``* * * * *`` running one job, its stdout, stderr and exit code kept in files under ``out``."""
    argv = " ".join(shlex.quote(a) for a in [*schedsync, "-c", str(config), "run", job])
    o, e, rc = (shlex.quote(str(out / f"{job}.{x}")) for x in ("out", "err", "rc"))
    line = f"* * * * * {argv} >{o} 2>{e}; echo $? >{rc}.tmp && mv {rc}.tmp {rc}"
    assert "%" not in line, "cron turns % into a newline"
    return line + "\n"


def _schedsync() -> list[str]:
    """What a user puts in a crontab: the console script of this venv, else ``python -m``."""
    script = Path(sys.executable).with_name("schedsync")
    return [str(script)] if script.exists() else [sys.executable, "-m", "schedsync"]


def _next_minute(now: float) -> float:
    return (now // 60 + 1) * 60


def test_cron_runs_a_job_silently_and_a_failing_job_with_its_output_and_one_error_line(
        project, cron):
    marker = project.path / "ticked"
    project.write(f"""
        state: schedsync.db
        jobs:
          tick:
            schedule: "* * * * *"
            command: ["touch", {json.dumps(str(marker))}]
          boom:
            schedule: "* * * * *"
            command: "echo boom from the job; echo second line >&2; exit 3"
    """)
    out = project.path / "cron-output"
    out.mkdir()
    env = project.env
    Path(env["HOME"]).mkdir(parents=True, exist_ok=True)  # cron cds to HOME, or runs nothing
    settings = {"MAILTO": "", "HOME": env["HOME"], "XDG_CACHE_HOME": env["XDG_CACHE_HOME"],
                "XDG_STATE_HOME": env["XDG_STATE_HOME"], "PYTHONPATH": env.get("PYTHONPATH", "")}
    for name, value in settings.items():
        assert not set(value) & set("\"\n%"), f"{name}={value!r} cannot go in a crontab"
    block = "".join(f'{name}="{value}"\n' for name, value in settings.items())
    block += "".join(_cron_line(_schedsync(), project.config, job, out) for job in ("tick", "boom"))

    cron(block)
    deadline = _next_minute(time.time()) + AFTER_THE_MINUTE
    done = [out / "tick.rc", out / "boom.rc"]
    while not all(p.exists() for p in done) and time.time() < deadline:
        time.sleep(0.5)
    assert all(p.exists() for p in done), (
        f"cron ran nothing within {AFTER_THE_MINUTE}s of the minute; found {sorted(os.listdir(out))}; "
        f"cron pids {sorted(_cron_pids())}; crontab:\n{_crontab('-l').stdout}"
        "(in a container, pam_loginuid in /etc/pam.d/cron can stop cron from running jobs)")

    def read(name: str) -> str:
        return (out / name).read_text()

    assert (read("tick.rc"), read("tick.out"), read("tick.err")) == ("0\n", "", "")
    assert marker.exists()
    tick = project.history("tick")
    assert ("success", "cron") in [(r["status"], r["trigger"]) for r in tick], tick

    assert read("boom.rc") == "1\n"
    assert read("boom.out") == "boom from the job\nsecond line\n"
    error = read("boom.err")
    assert error.count("\n") == 1 and error.startswith("error: boom: failed"), error
    assert "exit 3" in error and "Traceback" not in error, error
    boom = project.history("boom")
    assert ("failed", "cron", 3) in [(r["status"], r["trigger"], r["exit_code"]) for r in boom], boom

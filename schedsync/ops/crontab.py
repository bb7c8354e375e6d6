"""``schedsync crontab``: one line per scheduled job, ready for ``crontab -``.

Cron runs each line with ``/bin/sh``, a bare environment (HOME, a short PATH,
no $SCHEDSYNC_*), and the crontab file's own rules (``%`` means newline), so
every line names this installation's executable, the config and, when cron
would not find the same one by itself, the state file, all by absolute path.
"""

from __future__ import annotations

import os
import shlex
import sys

from schedsync.config import Config, resolve_state
from schedsync.paths import absolute, is_url

MARK = "# schedsync"
LATE_WATCH = "*/5 * * * *"  # how often the watcher line looks for late jobs
TICK = "* * * * *"  # `schedsync tick`, every minute


def executable() -> str:
    """The command cron should call: this very installation, never another one on PATH."""
    script = sys.argv[0] if sys.argv else ""
    if os.path.basename(script) == "schedsync" and os.path.isfile(script):
        return shlex.quote(os.path.abspath(script))
    beside = os.path.join(os.path.dirname(sys.executable), "schedsync")  # a venv's script
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return shlex.quote(beside)
    return f"{shlex.quote(sys.executable)} -m schedsync"


def command_prefix(config: Config, state: str | None = None) -> tuple[str, bool]:
    """``EXE -c CONFIG [--state STATE]`` as cron must run it (before cron's ``%`` escaping), and
    whether a state URL's password was left out. ``state`` is --state as given (or None).
    Without a jobs.yaml (``exec``), no ``-c`` and always ``--state``."""
    from schedsync.config import NO_REGISTRY

    prefix = executable()
    if config.path != NO_REGISTRY:
        prefix += f" -c {shlex.quote(os.path.join(config.dir, os.path.basename(config.path)))}"
    # Cron has neither --state nor $SCHEDSYNC_STATE nor $XDG_STATE_HOME: pin the state
    # status reads here unless jobs.yaml's own `state:` already names it.
    chosen = resolve_state(state, config)
    hidden = False
    if is_url(chosen):
        # A state URL as it is, minus any password: crontab output is shown and mailed,
        # and cron's schedsync finds the password in ~/.pgpass (or $PGPASSFILE) as libpq does.
        from schedsync.core.redact import strip_password

        shown = strip_password(chosen)
        hidden = shown != chosen
        if config.state is None or chosen != config.state:
            prefix += f" --state {shlex.quote(shown)}"
    else:
        chosen = absolute(chosen)
        if config.state is None or chosen != absolute(config.state):
            prefix += f" --state {shlex.quote(chosen)}"
    return prefix, hidden


def crontab_lines(config: Config, state: str | None = None) -> list[str]:
    """The crontab; ``state`` is --state as given (or None)."""

    config_path = os.path.join(config.dir, os.path.basename(config.path))
    prefix, hidden = command_prefix(config, state)
    prefix = _cron_escape(prefix)
    lines = [
        f"{MARK}: the jobs of {config_path}, from `schedsync crontab`.",
        "# Install with `schedsync crontab | crontab -` (this replaces the user's crontab: merge",
        "# any other lines in). Each line runs one job once; schedsync locks, budgets, retries",
        "# and records it. cron mails only what a failed run prints; exit 75 means skipped.",
    ]
    if hidden:
        lines.append("# The state URL's password is left out: put it in ~/.pgpass of the user whose crontab this is.")
    if config.timezone:
        lines += [f"# Schedules are read in {config.timezone} (cronie honours CRON_TZ; Debian's cron does not).",
                  f"CRON_TZ={config.timezone}"]
    from schedsync.app.tick import needs_tick

    for name, job in config.jobs.items():
        about = f": {job.description}" if job.description else ""
        if job.schedule and job.run_by == "tick":
            lines.append(_comment(f"# {name}{about} ({job.schedule}: started by `schedsync tick`, below)"))
        elif job.schedule:
            if about:
                lines.append(_comment(f"# {name}{about}"))
            lines.append(f"{job.schedule:<13} {prefix} run {name}")
        else:
            lines.append(_comment(f"# {name}{about} (no schedule: run by hand with `schedsync run {name}`)"))
    if any(needs_tick(job) for job in config.jobs.values()):
        lines.append("# The tick: starts what no line above does (run_by: tick jobs, catch-up, backfill,")
        lines.append("# retries later), each as its own run, and exits at once. Needed while any job needs it.")
        lines.append(f"{TICK:<13} {prefix} tick")
    if config.wants("late"):
        lines.append("# Late alerts: a job cron failed to start cannot report itself, so status looks.")
        lines.append(f"{LATE_WATCH:<13} {prefix} status --json --init > /dev/null")
    return lines


def _cron_escape(command: str) -> str:
    return command.replace("%", "\\%")  # cron turns a bare % into a newline


def _comment(text: str) -> str:
    return " ".join(text.split())  # a description must not end the comment line

"""``schedsync crontab``: one line per scheduled job, ready for ``crontab -``."""

from __future__ import annotations

import os
import shlex
import shutil
import sys

from .config import Config

MARK = "# schedsync"


def executable() -> str:
    """The absolute path cron should call: the installed script, else this interpreter."""
    here = shutil.which("schedsync")
    if here:
        return os.path.abspath(here)
    return f"{shlex.quote(sys.executable)} -m schedsync"


def crontab_lines(config: Config, state: str | None = None) -> list[str]:
    config_path = os.path.join(config.dir, os.path.basename(config.path))
    prefix = f"{executable()} -c {shlex.quote(config_path)}"
    if state:
        prefix += f" --state {shlex.quote(os.path.abspath(state))}"
    lines = [f"{MARK}: generated from {config_path}; cron mails only failures (exit 75 = skipped)"]
    if config.timezone:
        lines.append(f"CRON_TZ={config.timezone}")
    for name, job in config.jobs.items():
        if job["schedule"]:
            lines.append(f"{job['schedule']:<13} {prefix} run {name}")
    return lines

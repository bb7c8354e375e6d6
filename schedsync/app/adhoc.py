"""``schedsync exec NAME -- CMD ARGS…``: an ad-hoc command run as a registry job is.

The job is built by ``config.adhoc`` (registry defaults, or the registry job's own
settings when NAME is one) and run by ``app.run.run``: the same lock, admission,
timeout, record, output rules and exit codes. A NAME that is not in the registry
is remembered in the state (its settings, never its command line, which may hold a
secret), so ``status``, ``history`` and ``serve`` show it afterwards.
"""

from __future__ import annotations

import json
import os

from schedsync.config import Config, Job, adhoc
from schedsync.core.records import replace


def build(config: Config | None, name: str, command: list[str], settings: dict) -> tuple[Config, bool]:
    """The registry with NAME runnable, and whether NAME is a registry job (its settings used)."""
    from schedsync.core.errors import ConfigError

    own = config is not None and name in config.jobs
    try:
        return adhoc(config, name, command, settings, os.getcwd()), own
    except ConfigError as exc:  # name the flag, not the jobs.yaml key it stands for
        what = exc.what.replace(f"schedsync exec jobs.{name}.budget", "--budget")
        what = what.replace(f"schedsync exec jobs.{name}.", "--").replace(f"schedsync exec jobs.{name}", "NAME")
        raise ConfigError(f"exec {name}: {what.removeprefix('schedsync exec ')}", exc.fix) from None


def remember(store, config: Config, name: str, command: list[str]) -> None:
    job = config.jobs[name]
    # Its settings only: never the command line (it may hold a secret), env or notify targets.
    kept = replace(job, section=None, into=None, lines={}, env={}, notify=[], ping=None,
                   description=job.description or f"schedsync exec {os.path.basename(command[0])}")
    store.set_adhoc(name, json.dumps(kept.to_dict()))


def with_adhoc(config: Config, store) -> Config:
    """``config`` plus the jobs ``exec`` ran that the registry does not name (the registry wins)."""
    extra = {}
    for name, text in store.adhoc_jobs().items():
        if name not in config.jobs:
            job = Job.from_dict(json.loads(text))
            extra[name] = replace(job, section=["(schedsync exec)"])
    return replace(config, jobs=config.jobs.plus(extra)) if extra else config

"""The typed model of a registry: ``Registry`` (alias ``Config``) and its ``Job`` records."""

from __future__ import annotations

from schedsync.config.checks import _q
from schedsync.config.state import choose_state
from schedsync.core.errors import ConfigError
from schedsync.core.records import dataclass, field

BUILTIN = {
    "timeout": 300.0,
    "jitter": 0.0,
    "overlap": ["skip", 0.0],
    "retries": {"attempts": 3, "initial": 1.0, "max": 60.0, "multiplier": 2.0,
                "jitter": 0.1, "on_exit_codes": []},
    "breaker": {"failures": 5, "reset_after": 600.0, "half_open_runs": 1},
    "grace": 300.0,
    "retention": {"success": 14 * 86400.0, "failed": None},
    "max_wait": 0.0,
    "cost": 1,
    "env": {},
    "notify": [],
    "ping": None,
}


@dataclass
class Job:
    """One job with defaults merged in; strings may still hold ``${VAR}``."""

    name: str
    kind: str  # command | http | python
    schedule: str | None
    description: str
    timeout: float
    jitter: float
    overlap: list  # [mode, wait seconds]
    retries: dict
    breaker: dict  # always has "name"
    grace: float
    retention: dict
    budgets: list[str]
    cost: int
    max_wait: float
    env: dict
    cwd: str
    notify: list
    ping: str | None
    command: list[str] | str | None = None
    http: dict | None = None
    into: dict | None = None
    python: str | None = None
    lines: dict = field(default_factory=dict)  # key path -> line, for ${VAR} errors
    # Where http and python jobs store items: into.db, else the default beside the
    # state in use (paths.default_data); set by Config.job, not cached.
    data_target: str | None = None


@dataclass
class Config:
    path: str  # as the user named it, for messages
    dir: str  # absolute folder of jobs.yaml
    state: str | None  # absolute, or None for the default
    timezone: str | None
    budgets: dict  # name -> [capacity, per_seconds]
    jobs: dict  # name -> Job as a dict (see ``job``)
    defaults: dict | None = None  # BUILTIN merged with `defaults:`, for jobs built later (exec)
    state_in_use: str | None = None  # set by resolve_state: the state this process opens

    def job(self, name: str) -> Job:
        if name not in self.jobs:
            raise unknown_job(name, self)
        job = Job(**self.jobs[name])
        from schedsync import paths

        job.data_target = (job.into or {}).get("db") or paths.default_data(
            self.state_in_use or choose_state(None, self.state))
        return job


def unknown_job(name: str, config: Config) -> ConfigError:
    import difflib

    close = difflib.get_close_matches(name, list(config.jobs), n=1)
    if config.path == NO_REGISTRY:  # the read commands without a jobs.yaml: only `exec` jobs
        return ConfigError(f"no jobs.yaml here, and {_q(name)} is not a job `schedsync exec` ran with "
                           f"this state", f"did you mean {close[0]!r}?" if close else
                           "pass --config PATH, or cd to the folder of jobs.yaml")
    fix = f"did you mean {close[0]!r}?" if close else "see `schedsync list`"
    return ConfigError(f"{config.path}: no job named {_q(name)}", fix)


NO_REGISTRY = "(no jobs.yaml)"


def no_registry(cwd: str) -> Config:
    """An empty registry: what ``exec`` runs with, and the read commands look jobs up in,
    when there is no jobs.yaml (the state's ``exec`` jobs are added by ``app.adhoc``)."""
    return Config(path=NO_REGISTRY, dir=cwd, state=None, timezone=None, budgets={}, jobs={})

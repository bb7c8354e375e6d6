"""The typed model of a registry: ``Registry`` (alias ``Config``) and its ``Job`` records."""

from __future__ import annotations

from schedsync.config.state import choose_state
from schedsync.core.breaker import DEFAULTS as BREAKER_DEFAULTS
from schedsync.core.errors import ConfigError
from schedsync.core.records import dataclass, field, field_names

BUILTIN = {
    "timeout": 300.0,
    "jitter": 0.0,
    "overlap": ["skip", 0.0],
    "retries": {"attempts": 3, "initial": 1.0, "max": 60.0, "multiplier": 2.0,
                "jitter": 0.1, "on_exit_codes": []},
    "breaker": dict(BREAKER_DEFAULTS),  # the core's: one place for both backends
    "grace": 300.0,
    "retention": {"success": 14 * 86400.0, "failed": None},
    "max_wait": 0.0,
    "cost": 1,
    "env": {},
    "notify": [],
    "ping": None,
    "catchup": None,  # {within, runs}: see core.catchup
    "retry_later": None,  # {after, max}
    "run_by": "cron",
    "fails_when": None,  # {stderr, output_matches, exit_codes, shorter_than, longer_than, items_below}
}


@dataclass
class Job:
    """One job with defaults merged in; strings may still hold ``${VAR}``.

    ``section`` is the validated section of its kind (``kind`` names it: the key in
    jobs.yaml, see ``schedsync.kinds``): a command's argv or shell string, an http
    job's request mapping, a python job's ``module:function``.
    """

    name: str
    kind: str
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
    section: object = None
    run_by: str = "cron"  # who starts its scheduled slots: its own crontab line, or `schedsync tick`
    into: dict | None = None
    lines: dict = field(default_factory=dict)  # key path -> line, for ${VAR} errors
    # Where http and python jobs store items: into.db, else the default beside the
    # state in use (paths.default_data); set by Config.job, not cached.
    data_target: str | None = None
    catchup: dict | None = None  # {"within": seconds, "runs": "latest" | "all"}
    retry_later: dict | None = None  # {"after": seconds, "max": n}
    # The concurrency limits the job counts against (``limit:``): name -> N, from the
    # registry's top-level ``limits:`` (at most N runs of the limit at once).
    limits: dict = field(default_factory=dict)
    params: dict | None = None  # {NAME: {"default": text or None, "pattern": regex text or None}}
    after: list | None = None  # [[upstream job, "success" | "failure" | "always"], ...]
    requires: dict | None = None  # {"job": upstream, "within": seconds}
    downstream: dict | None = None  # {on: [jobs]}: what this job's run's end queues (config.chains)
    fails_when: dict | None = None  # failure rules (app.rules)
    fresh: dict | None = None  # http jobs: {"within": seconds, "field": name} (health STALE)

    def wants(self, event: str) -> bool:
        """Does one of the job's ``notify:`` targets take ``event``?"""
        return any(event in target["events"] for target in self.notify)

    def to_dict(self) -> dict:
        """The plain form (the cache's and a remembered ``exec`` job's): jobs.yaml's shape,
        the kind's section under the kind's key."""
        out = {n: getattr(self, n) for n in field_names(self) if n not in ("section", "data_target")}
        out[self.kind] = self.section
        return out

    @classmethod
    def from_dict(cls, plain) -> Job:
        if isinstance(plain, Job):
            return plain
        values = {n: plain[n] for n in field_names(cls) if n in plain}
        values["section"] = plain.get(plain["kind"])
        return cls(**values)


class Jobs:
    """A registry's jobs, name -> ``Job``, in jobs.yaml's order. Built from the plain form
    (the marshal cache's) one job at a time, on first use: a cron tick reads one job."""

    __slots__ = ("_plain", "_made")

    def __init__(self, jobs: dict | None = None):
        self._plain = dict(jobs or {})  # name -> plain dict or Job
        self._made: dict[str, Job] = {}

    def __getitem__(self, name: str) -> Job:
        job = self._made.get(name)
        if job is None:
            job = self._made[name] = Job.from_dict(self._plain[name])
        return job

    def __contains__(self, name) -> bool:
        return name in self._plain

    def __iter__(self):
        return iter(self._plain)

    def __len__(self) -> int:
        return len(self._plain)

    def __eq__(self, other) -> bool:
        return isinstance(other, Jobs) and self.plain() == other.plain()

    def get(self, name: str, default=None):
        return self[name] if name in self._plain else default

    def keys(self):
        return self._plain.keys()

    def values(self) -> list[Job]:
        return [self[name] for name in self._plain]

    def items(self) -> list[tuple[str, Job]]:
        return [(name, self[name]) for name in self._plain]

    def plus(self, jobs: dict) -> Jobs:
        """These jobs and ``jobs`` (name -> Job or plain dict; they win)."""
        out = Jobs({**self._plain, **jobs})
        out._made = {n: j for n, j in self._made.items() if n not in jobs}
        return out

    def plain(self) -> dict:
        return {n: j.to_dict() if isinstance(j, Job) else j for n, j in self._plain.items()}


@dataclass
class Config:
    """A registry: jobs.yaml validated. ``Registry`` is the same class."""

    path: str  # as the user named it, for messages
    dir: str  # absolute folder of jobs.yaml
    state: str | None  # absolute, or None for the default
    timezone: str | None
    budgets: dict  # name -> [capacity, per_seconds]
    jobs: Jobs  # name -> Job
    defaults: dict | None = None  # BUILTIN merged with `defaults:`, for jobs built later (exec)
    log: dict | None = None  # `log:` ({"file": absolute path}): the JSON run log, app.runlog
    state_in_use: str | None = None  # set by resolve_state: the state this process opens
    # The environment variables ``schedule: "${VAR:-...}"`` read -> their value (None: unset).
    environ: dict | None = None
    limits: dict = field(default_factory=dict)  # `limits:`: name -> N runs at once

    def job(self, name: str) -> Job:
        """The job ``name``, its ``data_target`` resolved for the state in use."""
        if name not in self.jobs:
            raise unknown_job(name, self)
        from schedsync import paths
        from schedsync.core.records import replace

        job = self.jobs[name]
        return replace(job, data_target=(job.into or {}).get("db") or paths.default_data(
            self.state_in_use or choose_state(None, self.state)))

    def wants(self, event: str) -> bool:
        """Does any job's ``notify:`` take ``event`` (say ``late``)?"""
        return any(job.wants(event) for job in self.jobs.values())


Registry = Config


def unknown_job(name: str, config: Config) -> ConfigError:
    import difflib

    from schedsync.config.checks import _q  # errors only: not on a cron tick's path

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
    return Config(path=NO_REGISTRY, dir=cwd, state=None, timezone=None, budgets={}, jobs=Jobs())

"""The writes a person or a managed scheduler makes on jobs: trigger, retry, pause, resume and
breaker reset; ``schedsync serve``'s API and dashboard call them, and each keeps an audit
entry in the state (``Store.record_audit``): when, what, which credential (a label such as
``token`` or ``basic:USER``, never the secret), the client's address and an optional reason.

``pause``, ``resume`` and ``reset_breaker`` are also what the CLI's ``pause``, ``resume`` and
``breaker reset`` do (``actor`` None: nothing audited, as before).
"""

from __future__ import annotations

import json

from schedsync.config import Config
from schedsync.core.errors import ConfigError
from schedsync.core.models import RUNNING, AuditEntry


class Actor:
    """Who asks: the credential's label, the client's address, and why (optional, one line)."""

    def __init__(self, who: str, client: str, reason: str | None = None):
        self.who, self.client = who, client
        self.reason = " ".join(reason.split())[:500] if reason else None


class NotFound(ConfigError):
    """A job, run or breaker that is not there (serve: 404)."""


def _audit(store, actor: Actor | None, action: str, job: str | None, **fields) -> int | None:
    if actor is None:
        return None
    return store.record_audit(AuditEntry(None, action, job, actor.who, actor.client,
                                         reason=actor.reason, **fields))


def _job(config: Config, name: str):
    if name not in config.jobs:
        raise NotFound(f"no job named {name!r} in {config.path}", "`schedsync list` shows the jobs")
    return config.jobs[name]


def _params_text(params: dict | None) -> str | None:
    """Params as the audit log keeps them: redacted as the run's record keeps them (a param
    reaches the job as ``SCHEDSYNC_PARAM_<NAME>``, a secret when that name says so, and a
    value equal to a secret of this process's environment is one too)."""
    if not params:
        return None
    import os

    from schedsync.config.params import PREFIX
    from schedsync.core.redact import Secrets, environment_secrets, secret_name

    secrets = Secrets()
    environment_secrets(os.environ, secrets)
    for name, value in params.items():
        if isinstance(value, str) and secret_name(PREFIX + name.upper()):
            secrets.add(value)
    return secrets.redact(json.dumps(params, sort_keys=True, ensure_ascii=False))


def trigger(config: Config, store, name: str, params: dict | None, actor: Actor | None) -> tuple[int, bool]:
    """Queue a run of ``name`` now (``app.trigger``: params checked, an identical queued run
    deduped); (queue id, deduped)."""
    _job(config, name)
    from schedsync.app.trigger import queue_trigger

    item_id, deduped = queue_trigger(config, store, name, params or {}, store.now(),
                                     who=actor.who if actor else None, reason=actor.reason if actor else None)
    _audit(store, actor, "trigger", name, item_id=item_id, params=_params_text(params))
    return item_id, deduped


def retry(config: Config, store, run_id: int, actor: Actor | None) -> tuple[str, int, bool]:
    """Queue a new run of run ``run_id``'s job with that run's params; (job, queue id, deduped)."""
    run = store.run(None, run_id)
    if run is None:
        raise NotFound(f"no run {run_id} (pruned, or never recorded)", "`schedsync history JOB` shows the runs")
    _job(config, run.job)
    if run.status == RUNNING:
        raise ConfigError(f"run {run_id} of {run.job} is still running", "retry it once it has ended")
    from schedsync.app.trigger import queue_trigger
    from schedsync.config.params import decode

    params = decode(run.params)  # as the run kept them (a value equal to a job's secret is redacted)
    if "***" in (run.params or ""):  # redacted: the ledger item it ran from holds the values
        item = next((s for s in store.slots(run.job, 1000) if s.run_id == run_id and s.params), None)
        if item is None:
            raise ConfigError(f"run {run_id} of {run.job} kept its params redacted (a secret), and the"
                              " work item it ran from is gone",
                              f"trigger {run.job} again with its params")
        params = decode(item.params)

    reason = actor.reason if actor and actor.reason else f"retry of run {run_id}"
    item_id, deduped = queue_trigger(config, store, run.job, params, store.now(),
                                     who=actor.who if actor else None, reason=reason)
    _audit(store, actor, "retry", run.job, run_id=run_id, item_id=item_id, params=_params_text(params))
    return run.job, item_id, deduped


def pause(config: Config, store, name: str, actor: Actor | None = None) -> None:
    _job(config, name)
    store.set_paused(name, True, store.now())
    _audit(store, actor, "pause", name)


def resume(config: Config, store, name: str, actor: Actor | None = None) -> None:
    _job(config, name)
    store.set_paused(name, False, store.now())
    _audit(store, actor, "resume", name)


def breaker_of(config: Config, name: str) -> tuple[str, str | None]:
    """(breaker, job) for ``name``: a job (its breaker), else a breaker some job feeds."""
    if name in config.jobs:
        return config.jobs[name].breaker["name"], name
    if any(job.breaker["name"] == name for job in config.jobs.values()):
        return name, None
    raise NotFound(f"no job or breaker named {name!r} in {config.path}",
                   "name a job, or the breaker: a job's breaker.name")


def reset_breaker(config: Config, store, name: str, actor: Actor | None = None) -> tuple[str, str | None]:
    """Close the breaker of job ``name`` (or the breaker ``name``); (breaker, the state it had
    or None when it was closed already)."""
    breaker, job = breaker_of(config, name)
    now = store.now()
    was = store.reset_breaker(breaker, "reset by hand" if actor is None else f"reset by {actor.who}")
    if was and config.log:  # the JSON run log: imported only when jobs.yaml asks for it
        from schedsync.app.runlog import log_reset

        log_reset(config.log, job or breaker, breaker, was, now)
    _audit(store, actor, "breaker_reset", job, breaker=breaker)
    return breaker, was

"""The application layer's "run a job": reap the job's crashed runs, run it
(``app.runner``), and hand the results to the notifiers (``schedsync.notify``). The CLI
calls ``run`` and renders.

Notifier code is imported only by jobs that use ``notify:`` or ``ping:``: every cron
tick of a plain command job pays for each import here.
"""

from __future__ import annotations

import os
import time

from schedsync.app.runner import RunResult, breaker_spec, never_started, run_job, scheduled_slot
from schedsync.config import Config, Job, Secrets, expand
from schedsync.core.errors import ConfigError, StateBusy, StateError
from schedsync.core.models import CRASHED, FAILED, Run


def run(config: Config, name: str, store, *, trigger: str, interactive: bool, environ=os.environ,
        sleep=time.sleep, force_slot: bool = False, item_id: int | None = None,
        full_refresh: bool = False) -> RunResult:
    """``schedsync run JOB``: one run of ``name`` with every protection. The data database
    is the job's ``data_target``, which config resolved from the state in use.

    ``item_id`` (``run JOB --item ID``, as the tick starts work): the ledger's item, whose
    kind is the run's trigger and whose slot the run serves."""
    item = None
    if item_id is not None:
        item = store.item(item_id)
        if item is None or item.job != name:
            raise ConfigError(f"work item {item_id} is not one of {name}'s",
                              "`schedsync tick` starts items; `schedsync status JOB` shows them")
        trigger = item.kind
    # The slot this run serves, known before ${VAR}s are expanded: ${SCHEDSYNC_SLOT} in a list
    # command or an http value is the slot (a command's environment gets it too, from ctx.slot).
    slot = item.slot if item is not None else None
    spec = config.jobs.get(name)
    if item is None and trigger == "cron" and spec is not None and spec.schedule and store.claims_slots \
            and not force_slot:
        slot = scheduled_slot(config, spec, store.now())  # before jitter: the fire cron meant
    if slot is not None:
        environ = {**environ, "SCHEDSYNC_SLOT": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(slot))}
    params = None
    if spec is not None and spec.params or item is not None and item.params:  # params: only then imported
        from schedsync.config.params import param_environ, run_params

        params = run_params(spec.params if spec is not None else None,
                            item.params if item is not None else None) or None
        environ = {**environ, **param_environ(params or {})}  # ${SCHEDSYNC_PARAM_X} in an http job's values
    try:
        job, secrets = expand(config.job(name), config.path, environ)
    except ConfigError as exc:
        failed_start(config, store, name, trigger, exc)
        raise
    reap(config, store, [job.name])
    hooks = {}
    if job.notify or job.ping:  # a job with no notifier imports none of ``schedsync.notify``
        hooks["on_start"] = lambda run: _run_started(store, job, run, secrets)
        hooks["on_finish"] = lambda result: announce(
            config, store, job, result.run, secrets, result.run.finished_at, result.retry,
            opened=bool(result.transition and result.transition[1] == "open"))
    if params is not None:
        hooks["params"] = params
    result = run_job(config, job, secrets, store, trigger=trigger, interactive=interactive,
                     sleep=sleep, item=item, slot=slot, full_refresh=full_refresh, **hooks)
    if result.chained:  # its end queued runs of other jobs (after:): started now, not at the next tick
        from schedsync.app.starter import start_chained

        try:
            start_chained(config, store, result.chained)
        except StateError:
            pass  # queued in the ledger with the run's end: the tick starts them
    if config.log:  # the JSON run log: imported only when jobs.yaml asks for it
        from schedsync.app.runlog import log_run

        log_run(config.log, result.run, result.transition)
    return result


def failed_start(config: Config, store, name: str, trigger: str, exc: ConfigError) -> None:
    """A run that cannot start because of its configuration (say an unset ``${TOKEN}``
    under cron) is recorded as failed with the one-line cause, so status shows FAILING
    and why. It is not evidence for the breaker: nothing reached the upstream."""
    run = never_started(store, name, trigger, FAILED, None, None, str(exc))
    try:
        store.record_skip(run, config.job(name).retention)
    except StateError:
        pass  # the configuration error is the one to show


def broken_registry(config_path: str, state_opt: str | None, name: str, exc: ConfigError) -> None:
    """A cron tick of ``name`` that failed on a broken (or missing) jobs.yaml: record it as a
    failed run, with the one-line error, in the state wherever it can still be found: --state,
    $SCHEDSYNC_STATE, the file's own top-level ``state:`` line, else the default state. Only a
    state that exists, and only for a job it knows (a typo must not invent one); never raises:
    the configuration error is the one to show."""
    from schedsync.paths import default_state, is_url
    from schedsync.store import open_store

    state = state_opt or os.environ.get("SCHEDSYNC_STATE") or _state_line(config_path) or default_state()
    if not is_url(state) and not os.path.isfile(state):
        return
    try:
        store = open_store(state, create=False)  # an empty database stays empty (a URL too)
    except Exception:  # whatever the state's trouble, the config error is shown
        return
    try:
        known = store.job_states([name], recent=1)[name]
        if known.first_seen is not None or known.recent:
            store.record_skip(never_started(store, name, "cron", FAILED, None, None, str(exc)), {})
    except Exception:
        pass
    finally:
        store.close()


def _state_line(config_path: str) -> str | None:
    """The ``state:`` of a jobs.yaml that does not validate (or parse): its top-level line."""
    import re

    try:
        with open(config_path, encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 20)
    except OSError:
        return None
    found = re.search(r"""^state:[ \t]*(["']?)([^"'#\r\n]+?)\1[ \t]*(?:#.*)?$""", text, re.MULTILINE)
    if not found:
        return None
    from schedsync.paths import is_url

    state = found.group(2)
    if is_url(state):
        return state
    return os.path.join(os.path.dirname(os.path.abspath(config_path)), os.path.expanduser(state))


def reap(config: Config, store, names: list[str] | None = None) -> list[Run]:
    """Turn ``running`` rows whose owner is gone into ``crashed`` (and alert). A crash is
    not evidence for the breaker: schedsync died, the job may be fine. On a read-only
    store nothing is recorded, nor by a read command while another process holds a write
    transaction (``StateBusy``): the crashed runs are returned, for showing only."""
    gone = store.liveness.gone(store.running_runs(names))
    crashed = []
    for run in gone:
        if names and run.job not in names:
            continue
        error = f"schedsync (pid {run.pid}) died before the run ended"
        now = store.now()
        known = run.job in config.jobs
        marked = None
        if store.writable:
            spec = breaker_spec(config.job(run.job)) if known else None
            after = None
            if known and config.jobs[run.job].downstream:  # a crash is a failure to the chains
                from schedsync.app.chains import downstream

                after = downstream(config.jobs[run.job], CRASHED) or None
            try:
                marked = store.mark_crashed(run, error, spec, evidence=False, now=now,
                                            **({"after": after} if after else {}))
            except StateBusy:
                pass  # a read command behind a writer: shown now, recorded by a later read
            if marked is False:
                continue  # another process recorded it first
        if not marked:
            run.status, run.finished_at = CRASHED, now
            run.duration_ms = int((now - run.started_at) * 1000)
        run.error = "schedsync died before the run ended"
        if marked and config.log:  # recorded here, so logged once, by this process
            from schedsync.app.runlog import log_run

            log_run(config.log, run)
        if marked and known and (config.jobs[run.job].notify or config.jobs[run.job].ping):
            try:
                _announce_crash(config, store, run, now)
            except StateBusy:
                pass
        crashed.append(run)
    return crashed


def announce(config: Config, store, job: Job, run: Run, secrets: Secrets, now: float,
             retry: dict | None = None, opened: bool | None = None) -> None:
    """Webhooks and the closing ping for a finished run, from its status row after it;
    ``retry``, the retry later it queued (a failure alert says when); ``opened``, whether
    finishing it opened the breaker (None: judged from the breaker's row)."""
    from schedsync.app.report import job_json, run_json, views
    from schedsync.core.models import FAILURES
    from schedsync.notify import after_run

    view = views(config, store, now, [job.name])[0]
    previous = None if run.status in FAILURES else store.failure_streak(job.name, before=run.started_at)
    if opened is None:
        opened = view.breaker.state == "open" and view.breaker.opened_at == now
    queued = retry if retry and not retry.get("superseded") else None
    after_run(store, job, run, secrets, now, job_json(view), run_json(run), previous, opened, queued)


def _announce_crash(config: Config, store, run: Run, now: float) -> None:
    """A run found ``crashed`` (its process died): alert as for any failed run."""
    from schedsync.core.records import replace
    from schedsync.notify import config_unreadable

    try:
        job, secrets = expand(config.job(run.job), config.path)
    except ConfigError as exc:
        config_unreadable(store, run.job, "failure", now, exc.what, run.id)
        return
    if run.finished_at is None:
        run = replace(run, finished_at=now, duration_ms=int((now - run.started_at) * 1000))
    announce(config, store, job, run, secrets, now)


def _run_started(store, job: Job, run: Run, secrets: Secrets) -> None:
    from schedsync.notify import run_started

    run_started(store, job, run, secrets)

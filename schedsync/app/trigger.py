"""``schedsync trigger JOB``: a run asked for now (or at a given time), not by the clock.

It queues an ``api`` item in the slot ledger (``store.enqueue_api``) with the run's params;
``schedsync tick`` (or ``serve``) starts it as ``schedsync run JOB --item ID``, with every
protection a cron-started run has, recorded with trigger ``api``. An identical item (same
job, same params) still waiting to start is not queued twice: its id comes back (dedupe).

``--wait`` waits for that run and exits as ``run`` would (0, 1 or 75). With no tick seen
lately, it starts the item itself at once (``start_item``, as the tick does), so a user
without a tick line still gets the run.

Never imported by a plain ``schedsync run`` (tests/test_architecture.py): the run path
reads a run's params through ``param_environ`` of ``config.params``, which is tiny.
"""

from __future__ import annotations

import sys
import time

from schedsync.config import Config
from schedsync.config.params import MAX_VALUE, encode, param_environ
from schedsync.core.errors import ConfigError, Exit

WAIT_MARGIN = 120.0  # seconds --wait allows beyond the job's timeout (start-up, a tick to come)
POLL = 0.2  # seconds between --wait's looks at the state

__all__ = ["MAX_VALUE", "check_params", "param_environ", "queue_trigger", "start_item", "wait_for"]


def check_params(config: Config, job_name: str, given: dict) -> dict:
    """The params a trigger of ``job_name`` runs with: ``given`` (``{NAME: value}``) checked
    against the job's ``params:`` (declared, at most ``MAX_VALUE`` bytes, matching its
    pattern), then its defaults for those not given. A ``ConfigError`` (exit 2, one line)
    names the first wrong one."""
    import re

    job = config.job(job_name)
    declared = job.params or {}
    for name, value in given.items():
        if name not in declared:
            known = ", ".join(declared) or "none"
            raise ConfigError(f"{job_name} has no param {name!r} (declared: {known})",
                              f"declare it under jobs.{job_name}.params in {config.path}" if not declared
                              else f"use one of {known}")
        if not isinstance(value, str):
            raise ConfigError(f"param {name} of {job_name} must be a string, not {type(value).__name__}",
                              f"pass e.g. --param {name}=1")
        if len(value.encode("utf-8", "surrogatepass")) > MAX_VALUE:
            raise ConfigError(f"param {name} of {job_name} is over {MAX_VALUE} bytes",
                              "pass a shorter value (or a file's path)")
        pattern = declared[name].get("pattern")
        if pattern is not None and re.fullmatch(pattern, value) is None:
            raise ConfigError(f"param {name} of {job_name}: {_shown(value)} does not match {pattern!r}",
                              f"pass a value that matches it (jobs.{job_name}.params.{name}.pattern)")
    out = {name: spec["default"] for name, spec in declared.items() if spec.get("default") is not None}
    out.update(given)
    return out


def _shown(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "…")


def queue_trigger(config: Config, store, job_name: str, params: dict, due_at: float | None,
                  who: str = "cli", reason: str | None = None) -> tuple[int, bool]:
    """Queue a run of ``job_name`` with ``params`` (checked, defaults filled: ``check_params``)
    due at ``due_at`` (None: now): (the item's id, True when an identical item was already
    waiting and nothing was added). ``who`` and ``reason`` say who asked and why (``serve``
    keeps them in its audit log). A ``ConfigError`` (exit 2) for a job not in the registry
    or a wrong param."""
    full = check_params(config, job_name, params)
    return store.enqueue_api(job_name, encode(full) if full else None, store.now() if due_at is None else due_at)


def start_item(config_path: str, state: str, item):
    """Start one queued or claimed item now, detached, exactly as the tick starts its items
    (``app.starter.starter``); the ``Popen``."""
    from schedsync.app.starter import starter

    return starter(config_path, state)(item)


def parse_params(pairs: list[str]) -> dict:
    """``--param NAME=VALUE`` options to ``{NAME: VALUE}``; a ``ConfigError`` for one without
    ``=`` or given twice."""
    out: dict = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq or not name:
            raise ConfigError(f"--param {_shown(pair)} is not NAME=VALUE", "write e.g. --param final_sweep=1")
        if name in out:
            raise ConfigError(f"--param {name} is given twice", "give each param once")
        out[name] = value
    return out


def due_time(config: Config, at: str | None, within: str | None, now: float) -> float | None:
    """``--at TIME`` (ISO 8601; without an offset, in the registry's zone) or ``--in 10m``;
    None for now. A ``ConfigError`` for both, or one that does not parse."""
    if at is not None and within is not None:
        raise ConfigError("trigger takes --at or --in, not both", "drop one of them")
    if within is not None:
        from schedsync.core.durations import parse_duration

        try:
            seconds = parse_duration(within)
        except ValueError as exc:
            raise ConfigError(f"trigger --in {within!r}: {exc}", "write e.g. --in 10m or --in 1h30m") from None
        return now + seconds
    if at is not None:
        from schedsync.core.catchup import parse_time
        from schedsync.core.schedule import zone

        try:
            return parse_time(at, zone(config.timezone))
        except ValueError as exc:
            raise ConfigError(f"trigger --at {at!r}: {exc}",
                              "write e.g. 2026-12-01T06:00 (the registry's zone) or 2026-12-01T05:00Z") from None
    return None


def tick_seen(store, now: float) -> bool:
    """Did a ``schedsync tick`` (or ``serve``) note itself lately, without an error?"""
    from schedsync.app.tick import TICK_LATE

    last = store.last_tick()
    return last is not None and not last.error and now - last.at <= TICK_LATE


def wait_for(store, item_id: int, limit: float, process=None, held=...) -> tuple[int, str]:
    """Wait (at most ``limit`` seconds) for the run of ``item_id``; (its exit code as ``run``
    would give it, a line to print). ``process``: the ``Popen`` that runs it, when we started
    it: its exit code is the answer once it ends. Polls the state otherwise: bounded, and
    fine for a run the tick started, on any host. ``held``: the item's ``reason`` when it
    was queued (a new item: None); another one set since means the tick held it back
    (else: the reason at the first look)."""
    from schedsync.core.models import FAILURES, PARTIAL, RUNNING, SKIPPED, SUCCESS

    end = time.monotonic() + limit
    claimed = False
    while True:
        done = process is not None and process.poll() is not None  # first: then the state is final
        item = store.item(item_id)
        if item is None:
            return (process.returncode if done else Exit.SKIPPED), f"work item {item_id} is gone"
        if held is ...:
            held = item.reason
        if item.state == "ran" and item.run_id is not None:
            run = store.run(item.job, item.run_id)
            if run is not None and run.status != RUNNING:
                line = f"{item.job}: run {run.id} {run.status}" + (f" ({run.reason})" if run.reason else "")
                if run.status in FAILURES and run.error:
                    line += f": {run.error}"
                code = Exit.OK if run.status in (SUCCESS, PARTIAL) else \
                    Exit.FAILED if run.status in FAILURES else Exit.SKIPPED
                return (process.wait() if process is not None else code), line
        elif item.state in (SKIPPED, "missed"):
            return Exit.SKIPPED, f"{item.job}: work item {item_id} {item.state}" + (
                f" ({item.reason})" if item.reason else "")
        elif item.state == "claimed":
            claimed = True
        elif item.state == "queued" and (claimed or done or item.reason is not None and item.reason != held):
            # started and handed back (its run was skipped: locked, paused, a budget, a breaker),
            # or held back by the tick for one of those: the run would only be skipped now
            why = f" ({item.reason})" if item.reason else ""
            return (process.returncode if done else Exit.SKIPPED), (
                f"{item.job}: skipped{why}; work item {item_id} stays queued for `schedsync tick`")
        if done:  # it ended without a finished run (it died, or could not start)
            return process.returncode, f"{item.job}: work item {item_id} is {item.state}"
        if time.monotonic() >= end:
            return Exit.SKIPPED, (f"{item.job}: work item {item_id} is still {item.state} after"
                                  f" {limit:.0f}s of waiting; `schedsync status {item.job}` shows it")
        time.sleep(POLL)


def trigger_cli(config, store, state: str, job_name: str, pairs: list[str], at: str | None,
                within: str | None, wait: bool, reason: str | None, as_json: bool) -> int:
    """``schedsync trigger`` once config and store are open; the exit code."""
    now = store.now()
    params = parse_params(pairs)
    due_at = due_time(config, at, within, now)
    item_id, deduped = queue_trigger(config, store, job_name, params, due_at, "cli", reason)
    seen = tick_seen(store, now)
    if as_json:
        import json

        print(json.dumps({"job": job_name, "item": item_id, "deduped": deduped,
                          "due_at": _iso(due_at if due_at is not None else now)}))
    else:
        print(item_id)
    if not wait:
        if not seen:
            print(f"warning: no `schedsync tick` ran in the last 3 minutes, so item {item_id} waits for one —"
                  f" add the tick line `schedsync crontab` prints, or trigger with --wait to start it now",
                  file=sys.stderr)
        return Exit.OK
    job = config.job(job_name)
    process = None
    delay = max(0.0, (due_at or now) - now)
    if not seen:  # nobody else will start it: we do, when it is due
        if delay:
            time.sleep(delay)
        item = store.item(item_id)
        if item is not None and item.state == "queued":
            from schedsync.app.starter import registry_path

            process = start_item(registry_path(config), state, item)
    code, line = wait_for(store, item_id, delay + job.timeout + job.max_wait + WAIT_MARGIN, process,
                          held=... if deduped else None)  # a new item had no reason: any one is news
    print(line, file=sys.stderr)
    return int(code)


def _iso(t: float) -> str | None:
    from schedsync.core.durations import iso

    return iso(t)


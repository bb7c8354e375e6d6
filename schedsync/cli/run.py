"""``schedsync run JOB`` as cron and a terminal see it: the fast path ``main`` takes
without typer, and the typer command alike. ``report_run`` is the one output step of
``run`` and ``exec`` (``cli.adhoc`` calls it too)."""

from __future__ import annotations

import sys


def run_cli(config_opt: str | None, state_opt: str | None, job_name: str,
            force_slot: bool = False, item: int | None = None, full_refresh: bool = False) -> int:
    """``schedsync run JOB`` as cron and a terminal see it; returns the exit code."""
    from schedsync.app.run import broken_registry, run
    from schedsync.config import load, resolve_config, resolve_state
    from schedsync.core.errors import ConfigError, SchedsyncError, StateUnreachable
    from schedsync.store import open_store

    # A work item is started by the tick, never by a person: cron's rules, whatever the terminal.
    interactive = item is None and (sys.stderr.isatty() or sys.stdout.isatty())
    try:
        try:
            config = load(resolve_config(config_opt))
        except ConfigError as exc:
            if not interactive:  # a cron tick: leave a record where status will look
                broken_registry(resolve_config(config_opt), state_opt, job_name, exc)
            raise
        config.job(job_name)  # an unknown job is a usage error before any state is touched
        state = resolve_state(state_opt, config)
        trigger = "manual" if interactive else "cron"
        try:
            store = open_store(state)
        except StateUnreachable as exc:  # no connection: leave a trace for the next schedsync here
            spool_not_started(config, job_name, state, trigger, exc, force_slot)
            raise
        try:
            result = run(config, job_name, store, trigger=trigger,
                         interactive=interactive, force_slot=force_slot, item_id=item,
                         full_refresh=full_refresh)
        finally:
            store.close()
    except SchedsyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    return report_run(result, job_name, interactive, config, state_opt)


def spool_not_started(config, job_name: str, state: str, trigger: str, exc, force_slot: bool) -> None:
    """Spool a run that got no connection to its state (``store.spool``): the next
    schedsync on this host that reaches the database records it as ``not_started``."""
    import os
    import time

    from schedsync.core.redact import redact_url
    from schedsync.store.spool import write

    job = config.job(job_name)
    slot = None
    if trigger == "cron" and job.schedule and not force_slot:  # the host's clock: the server's is out of reach
        from schedsync.app.runner import scheduled_slot

        slot = scheduled_slot(config, job, time.time())
    write(redact_url(state), job_name, trigger, exc.why, exc.what, host=os.uname().nodename, slot=slot)


def report_run(result, job_name: str, interactive: bool, config=None, state_opt: str | None = None) -> int:
    """What cron mails (nothing on success) and a terminal sees; the exit code (``run``, ``exec``)."""
    from schedsync.app.runner import summary

    if getattr(result, "quiet", False):
        return int(result.exit_code)
    for message in result.messages:
        print(message, file=sys.stderr)
    if result.run.status in ("success", "partial", "skipped"):
        if interactive:
            print(summary(result), file=sys.stderr)
        return int(result.exit_code)
    if result.held_output and not interactive:
        sys.stdout.write(result.held_output if result.held_output.endswith("\n")
                         else result.held_output + "\n")
        sys.stdout.flush()
    print(f"error: {summary(result)} — see `{hint(config, state_opt, interactive)} history {job_name}`",
          file=sys.stderr)
    return int(result.exit_code)


def hint(config, state_opt: str | None, interactive: bool) -> str:
    """How to call schedsync in the hint of a failed run: plain ``schedsync`` on a terminal; in
    cron's mail, the command as the crontab line has it (absolute path, ``-c``, ``--state``),
    since cron's PATH rarely holds a venv's ``schedsync`` and the mail is read elsewhere."""
    if interactive or config is None:
        return "schedsync"
    from schedsync.ops.crontab import command_prefix

    return command_prefix(config, state_opt)[0]

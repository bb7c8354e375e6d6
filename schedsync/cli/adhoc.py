"""``schedsync exec NAME [--timeout D] [--overlap P] [--budget B] -- CMD ARGS…`` as cron runs it.

Like ``run``, an ``exec`` line is paid for on every cron tick, so the plain form is
parsed here without typer (``main`` asks ``plain_exec`` first); anything else
(``--help``, a misspelt option) goes to the typer command, which calls ``exec_cli`` too.
"""

from __future__ import annotations

import sys

GLOBAL = {"-c": "config", "--config": "config", "--state": "state"}
OWN = {"--timeout": "timeout", "--overlap": "overlap", "--budget": "budget"}


def plain_exec(argv: list[str]):
    """(config, state, name, command, settings) for the plain form; None for anything else."""
    options: dict = {"config": None, "state": None}
    args = list(argv)
    while args and args[0].startswith("-"):
        if not _option(args, GLOBAL, options):
            return None
    if len(args) < 2 or args[0] != "exec" or args[1].startswith("-"):
        return None
    name, args = args[1], args[2:]
    settings: dict = {}
    while args and args[0] != "--":
        if not args[0].startswith("--") or not _option(args, OWN, settings, repeat=("budget",)):
            return None
    if len(args) < 2:
        return None  # no command: typer says so, with usage
    return options["config"], options["state"], name, args[1:], settings


def _option(args: list[str], names: dict, into: dict, repeat=()) -> bool:
    flag, eq, value = args.pop(0).partition("=")
    if flag not in names or (not eq and not args):
        return False
    value = value if eq else args.pop(0)
    if not value or value.startswith("-"):
        return False
    key = names[flag]
    if key in repeat:
        into.setdefault(key, []).append(value)
    else:
        into[key] = value
    return True


def exec_cli(config_opt: str | None, state_opt: str | None, name: str, command: list[str],
             settings: dict) -> int:
    """Run ``command`` as job ``name``; prints as ``run`` does and returns the exit code."""
    from schedsync.app import adhoc
    from schedsync.app.run import broken_registry, run
    from schedsync.cli.run import report_run
    from schedsync.config import optional_registry, resolve_config, resolve_state
    from schedsync.core.errors import ConfigError, SchedsyncError
    from schedsync.store import open_store

    interactive = sys.stderr.isatty() or sys.stdout.isatty()
    try:
        try:
            registry = optional_registry(config_opt)
        except ConfigError as exc:
            if not interactive:  # a cron tick: leave a record where status will look
                broken_registry(resolve_config(config_opt), state_opt, name, exc)
            raise
        config, own = adhoc.build(registry, name, command, settings)
        if own and interactive:
            print(f"exec {name}: {name} is a job of {registry.path}: its settings (lock, breaker, budgets, "
                  f"retention) apply, with this command instead of its own", file=sys.stderr)
        store = open_store(resolve_state(state_opt, config))
        try:
            if not own:
                adhoc.remember(store, config, name, command)
            result = run(config, name, store, trigger="manual" if interactive else "cron",
                         interactive=interactive)
        finally:
            store.close()
    except SchedsyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    return report_run(result, name, interactive, config, state_opt)

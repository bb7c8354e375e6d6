"""The ``schedsync`` executable.

Every cron tick pays our start-up, so a plain ``schedsync [-c X] [--state Y] run JOB``
is parsed here and run without importing typer, rich or httpx. Anything else
(help, other commands, unusual options) goes to the typer app in ``cli``.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    plain = _plain_run(argv)
    if plain is None and "exec" in argv:  # a cron line too: spare it typer
        from schedsync.cli.adhoc import exec_cli, plain_exec

        ad_hoc = plain_exec(argv)
        if ad_hoc is not None:
            sys.exit(exec_cli(*ad_hoc))
    if plain is None:
        from schedsync.cli.app import app

        app(args=argv, prog_name="schedsync")
        return
    sys.exit(run_cli(*plain))


def _plain_run(argv: list[str]):
    """(config, state, job) for ``[-c X] [--state Y] run JOB``; None for anything else."""
    options = {"config": None, "state": None}
    names = {"-c": "config", "--config": "config", "--state": "state"}
    args = list(argv)
    while args and args[0].startswith("-"):
        flag = args.pop(0)
        flag, eq, value = flag.partition("=")
        if flag not in names or (not eq and not args):
            return None
        value = value if eq else args.pop(0)
        if not value or value.startswith("-"):
            return None
        options[names[flag]] = value
    if len(args) != 2 or args[0] != "run" or args[1].startswith("-"):
        return None
    return options["config"], options["state"], args[1]


def run_cli(config_opt: str | None, state_opt: str | None, job_name: str) -> int:
    """``schedsync run JOB`` as cron and a terminal see it; returns the exit code."""
    from schedsync.config import load, resolve_config, resolve_state
    from schedsync.core.errors import SchedsyncError
    from schedsync.app.runner import run_job
    from schedsync.store import open_store

    interactive = sys.stderr.isatty() or sys.stdout.isatty()
    try:
        config = load(resolve_config(config_opt))
        config.job(job_name)  # an unknown job is a usage error before any state is touched
        store = open_store(resolve_state(state_opt, config))
        try:
            result = run_job(config, job_name, store, trigger="manual" if interactive else "cron",
                             interactive=interactive)
        finally:
            store.close()
    except SchedsyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    from schedsync.cli.finish import report_run

    return report_run(result, job_name, interactive)


if __name__ == "__main__":  # pragma: no cover
    main()

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
    if plain is None:
        from schedsync.cli.app import app

        app(args=argv, prog_name="schedsync")
        return
    from schedsync.cli.run import run_cli

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


if __name__ == "__main__":  # pragma: no cover
    main()

"""The ``schedsync`` executable.

Every cron tick pays our start-up, so a plain ``schedsync [-c X] [--state Y] run JOB``
is parsed here and run without importing typer, rich or httpx, and so is a plain
``schedsync exec NAME [...] -- CMD`` (``cli.adhoc.plain_exec``). So are the read commands a
monitoring check or a person runs all day (``status``, ``history``, ``logs``, ``list``,
``metrics``, ``validate``) when their command line is a plain one, and ``--version``: typer
costs more than everything these do. Anything else (help, other commands, unusual options,
a usage error) goes to the typer app in ``cli.app``, whose usage errors are printed here in
the house style ``error: <what> — <fix>``.
"""

from __future__ import annotations

import sys

# Read commands the fast path knows: flags, options taking a value, (min, max) positionals.
READ = {
    "status": ({"--json": "as_json", "--check": "check", "-v": "verbose", "--verbose": "verbose",
                "--init": "init"},
               {}, (0, 1)),
    "history": ({"--json": "as_json", "--failed": "failed"}, {"--limit": "limit", "-n": "limit"}, (1, 1)),
    "logs": ({}, {}, (1, 2)),
    "list": ({}, {}, (0, 0)),
    "validate": ({}, {}, (0, 0)),
    "metrics": ({}, {"--textfile": "textfile"}, (0, 0)),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    plain = _plain_run(argv)
    if plain is not None:
        from schedsync.cli.run import run_cli

        sys.exit(run_cli(*plain))
    ticking = _plain_tick(argv)
    if ticking is not None:  # cron's tick line, every minute: spared typer too
        from schedsync.app.tick import tick_cli

        sys.exit(tick_cli(*ticking))
    if "exec" in argv:  # a cron line too: spare it typer
        from schedsync.cli.adhoc import exec_cli, plain_exec

        ad_hoc = plain_exec(argv)
        if ad_hoc is not None:
            sys.exit(exec_cli(*ad_hoc))
    read = _plain_read(argv)
    if read is not None:
        sys.exit(read())
    sys.exit(_typer(argv))


def _globals(argv: list[str]):
    """({config, state}, the rest) for ``[-c X] [--state Y] ...``; None for anything unusual."""
    options = {"config": None, "state": None}
    names = {"-c": "config", "--config": "config", "--state": "state"}
    args = list(argv)
    while args and args[0].startswith("-") and args[0] != "--version":
        flag = args.pop(0)
        flag, eq, value = flag.partition("=")
        if flag not in names or (not eq and not args):
            return None
        value = value if eq else args.pop(0)
        if not value or value.startswith("-"):
            return None
        options[names[flag]] = value
    return options, args


def _plain_run(argv: list[str]):
    """(config, state, job, force_slot, item) for ``[-c X] [--state Y] run [--force-slot] JOB
    [--item ID]``; None for anything else."""
    parsed = _globals(argv)
    if parsed is None:
        return None
    options, args = parsed
    item, force = None, False
    if len(args) == 4 and args[2] == "--item" and _count(args[3]):
        item, args = int(args[3]), args[:2]
    elif len(args) == 3 and "--force-slot" in args[1:]:
        force, args = True, [a for a in args if a != "--force-slot"]
    if len(args) != 2 or args[0] != "run" or args[1].startswith("-"):
        return None
    return options["config"], options["state"], args[1], force, item


def _plain_tick(argv: list[str]):
    """(config, state) for ``[-c X] [--state Y] tick``; None for anything else."""
    parsed = _globals(argv)
    if parsed is None or parsed[1] != ["tick"]:
        return None
    return parsed[0]["config"], parsed[0]["state"]


def _plain_read(argv: list[str]):
    """A function running a plain read command line (or ``--version``), else None: then typer
    parses it, and says what is wrong with it if anything is."""
    parsed = _globals(argv)
    if parsed is None or not parsed[1]:
        return None
    options, args = parsed
    if args == ["--version"]:
        from schedsync.cli.read import version

        return version
    if args[0] not in READ:
        return None
    flags, valued, (least, most) = READ[args[0]]
    given: dict = {}
    positionals: list[str] = []
    rest = args[1:]
    while rest:
        token = rest.pop(0)
        if not token.startswith("-"):
            positionals.append(token)
            continue
        name, eq, value = token.partition("=")
        if name in flags and not eq:
            given[flags[name]] = True
        elif name in valued:
            if not eq:
                if not rest or rest[0].startswith("-"):
                    return None
                value = rest.pop(0)
            if not value:
                return None
            given[valued[name]] = value
        else:
            return None  # --help, --watch, a typo: typer's
    if not least <= len(positionals) <= most:
        return None
    config, state = options["config"], options["state"]
    from schedsync.cli import read

    command = args[0]
    if command == "status":
        return lambda: read.status(config, state, *positionals, **given)
    if command == "history":
        if "limit" in given:
            if not _count(given["limit"]):
                return None
            given["limit"] = int(given["limit"])
        return lambda: read.history(config, state, positionals[0], **given)
    if command == "logs":
        if len(positionals) == 2 and not _count(positionals[1]):
            return None
        return lambda: read.logs(config, state, positionals[0],
                                 int(positionals[1]) if len(positionals) == 2 else None)
    if command == "metrics":
        return lambda: read.metrics(config, state, **given)
    if command == "list":
        return lambda: read.list_jobs(config)
    return lambda: read.validate(config)


def _count(text: str) -> bool:
    """A whole number >= 1 as typer reads one; anything else is typer's to refuse."""
    return text.isascii() and text.isdigit() and int(text) >= 1


def _typer(argv: list[str]) -> int:
    """The typer app, its usage errors in the house style (exit 2)."""
    from schedsync.cli.app import app

    try:  # typer >= 0.26 bundles its own click
        from typer._click import exceptions as click_errors
    except ImportError:  # pragma: no cover - older typer with click beside it
        from click import exceptions as click_errors
    no_args = getattr(click_errors, "NoArgsIsHelpError", ())
    try:
        code = app(args=argv, prog_name="schedsync", standalone_mode=False)
    except no_args as exc:  # a bare group: its help, as click prints it
        exc.show()
        return 2
    except click_errors.UsageError as exc:
        print(usage_error(exc, click_errors), file=sys.stderr)
        return 2
    except click_errors.ClickException as exc:
        print(f"error: {exc.format_message()}", file=sys.stderr)
        return int(exc.exit_code)
    return code if isinstance(code, int) else 0


def usage_error(exc, click_errors) -> str:
    """``error: missing argument 'JOB' — name a job: `schedsync list` shows them``."""
    what = " ".join(exc.format_message().split()).rstrip(".")
    what = what[:1].lower() + what[1:]
    path = exc.ctx.command_path if exc.ctx is not None else "schedsync"
    param = getattr(exc, "param", None)
    if isinstance(exc, click_errors.MissingParameter) and param is not None and param.name == "job":
        fix = f"name a job from jobs.yaml, e.g. `{path} JOB` (`schedsync list` shows them)"
    else:
        fix = f"see `{path} --help`"
    return f"error: {what} — {fix}"


if __name__ == "__main__":  # pragma: no cover
    main()

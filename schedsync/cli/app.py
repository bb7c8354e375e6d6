"""The typer app users see. Each command loads config, opens the store, calls
one function, hands the result to ``render``, and maps errors to exit codes.
(A plain ``schedsync run JOB`` skips typer entirely: see ``main``.)
"""

from __future__ import annotations

import signal
import sys
import time
from contextlib import contextmanager

import typer
from typer.core import TyperCommand

from schedsync.core.errors import ConfigError, SchedsyncError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  rich_markup_mode=None,
                  help="Run cron jobs once, safely: locks, shared budgets, breakers, retries, records.")
breaker_app = typer.Typer(no_args_is_help=True, help="Circuit breakers.")
app.add_typer(breaker_app, name="breaker")
state_app = typer.Typer(no_args_is_help=True, help="The state itself.")
app.add_typer(state_app, name="state")


def _version(value: bool) -> None:
    if value:
        from schedsync.cli.read import version

        raise typer.Exit(version())


@app.callback()
def _options(
    ctx: typer.Context,
    config: str | None = typer.Option(None, "--config", "-c", metavar="PATH",
                                         help="jobs.yaml (else $SCHEDSYNC_CONFIG, else ./jobs.yaml)."),
    state: str | None = typer.Option(None, "--state", metavar="PATH",
                                        help="State file (else $SCHEDSYNC_STATE, else the registry's state:)."),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                 help="Print the version and exit."),
):
    ctx.obj = {"config": config, "state": state}


@contextmanager
def _errors():
    try:
        yield
    except SchedsyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(int(exc.exit_code)) from exc


def _config(ctx: typer.Context):
    from schedsync.config import load, resolve_config

    return load(resolve_config(ctx.obj["config"]))


@contextmanager
def _opened(ctx: typer.Context, write: bool = True, create: bool = False, job: str | None = None):
    """Config and store; ``write=False`` (read commands): a state this user may only read
    opens read-only. Only ``create`` makes a missing state (else: "no state at PATH yet").
    ``job``, a name that must be in the registry, is checked first (a usage error)."""
    from schedsync.config import resolve_state
    from schedsync.store import open_store

    if write:
        config = _config(ctx)
    else:  # read: `exec` jobs need no jobs.yaml
        from schedsync.cli.read import load_config

        config = load_config(ctx.obj["config"], ctx.obj["state"])
    if job is not None:
        config.job(job)
    store = open_store(resolve_state(ctx.obj["state"], config), write=write, create=create)
    try:
        yield config, store
    finally:
        store.close()


@app.command()
def run(ctx: typer.Context, job: str = typer.Argument(..., metavar="JOB", help="Job name from jobs.yaml."),
        force_slot: bool = typer.Option(False, "--force-slot",
                                        help="Run even if another host already ran this scheduled slot."),
        item: int = typer.Option(None, "--item", hidden=True, min=1,
                                 help="The ledger's work item to run (as `schedsync tick` starts it)."),
        full_refresh: bool = typer.Option(False, "--full-refresh",
                                          help="http jobs: ignore since and fetch everything; with "
                                               "into.mode replace, rebuild the table.")):
    """Run one job once, with every protection. Example: schedsync run airdrops"""
    from schedsync.cli.run import run_cli

    raise typer.Exit(run_cli(ctx.obj["config"], ctx.obj["state"], job, force_slot=force_slot, item=item,
                             full_refresh=full_refresh))


@app.command()
def tick(ctx: typer.Context,
         now: str = typer.Option(None, "--now", hidden=True, metavar="ISO",
                                 help="Tick as if it were this instant (tests).")):
    """Start what cron cannot: due catch-up, backfill and retries, and the slots of run_by: tick
    jobs, each as its own detached `schedsync run`; then exit. For one crontab line:
    * * * * * schedsync tick"""
    from schedsync.app.tick import tick_cli

    at = None
    if now is not None:
        from datetime import datetime, timezone

        try:
            parsed = datetime.fromisoformat(now.replace("Z", "+00:00"))
        except ValueError:
            raise typer.BadParameter(f"{now!r} is not an ISO 8601 time", param_hint="--now") from None
        at = (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()
    raise typer.Exit(tick_cli(ctx.obj["config"], ctx.obj["state"], now=at))


@state_app.command("copy")
def state_copy(ctx: typer.Context,
               to: str = typer.Option(..., "--to", metavar="URL",
                                      help="The PostgreSQL state to fill (postgresql://…).")):
    """Copy this SQLite state (history, budgets, breakers, first-seen, pauses) into PostgreSQL.
    Example: schedsync state copy --to postgresql:///schedsync?host=/run/postgresql"""
    from schedsync.config import resolve_state
    from schedsync.core.redact import redact_url
    from schedsync.store.copy import copy_state

    with _errors():
        source = resolve_state(ctx.obj["state"], _config(ctx))
        counts = copy_state(source, to)
    print(f"copied {counts.get('runs', 0)} runs, {counts.get('jobs', 0)} jobs,"
          f" {counts.get('buckets', 0)} budgets, {counts.get('breakers', 0)} breakers"
          f" from {source} to {redact_url(to)}")


@app.command()
def status(
    ctx: typer.Context,
    job: str | None = typer.Argument(None, metavar="[JOB]", help="Show one job in detail."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (see README)."),
    check: bool = typer.Option(False, "--check", help="One line for Nagios (SCHEDSYNC OK|WARNING|CRITICAL - …); "
                               "exit 1 if any job is LATE, STALE, STALLED or FAILING, 3 if the state cannot be read."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="With --check: the table after the line."),
    watch: bool = typer.Option(False, "--watch", help="Refresh every 2 seconds until Ctrl-C."),
    init: bool = typer.Option(False, "--init", help="Create the state if there is none yet, as `run` "
                              "would (the crontab's late-watcher line)."),
):
    """Health of every job. Example: schedsync status --check"""
    from schedsync.cli import read

    if watch:
        with _errors():
            if as_json or check:
                raise ConfigError("--watch shows a live table; it does not combine with "
                                  f"{'--json' if as_json else '--check'}", "drop one of them")
            with _opened(ctx, write=False) as (config, store):
                _watch(config, store, job)
        return
    raise typer.Exit(read.status(ctx.obj["config"], ctx.obj["state"], job, as_json, check, verbose, init))


def _watch(config, store, job, interval: float = 2.0):
    from schedsync.app import report
    from schedsync.app import status as snapshots
    from schedsync.cli import render

    def frame():
        data = snapshots.status(config, store, only=job)
        return render.watch_frame(data, report.worst_first(data["jobs"]), report.display_zone(config))

    # Ctrl-C ends it even when started from a shell that ignores SIGINT for background jobs
    # (an ignored signal is inherited), as `run` takes SIGINT whatever it inherited.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    console = render.console()
    try:
        if not console.is_terminal:  # a pipe gets one snapshot per refresh
            while True:
                console.print(frame())
                console.print()
                time.sleep(interval)
        from rich.live import Live

        with Live(frame(), console=console, refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(interval)
                live.update(frame())
    except KeyboardInterrupt:
        pass


@app.command()
def history(
    ctx: typer.Context,
    job: str = typer.Argument(..., metavar="JOB", help="Job name."),
    limit: int = typer.Option(20, "--limit", "-n", min=1, help="How many runs, newest first."),
    failed: bool = typer.Option(False, "--failed", help="Only failed, timed-out and crashed runs."),
    as_json: bool = typer.Option(False, "--json", help="A JSON list of runs, newest first."),
):
    """Recent runs of one job. Example: schedsync history airdrops --failed"""
    from schedsync.cli import read

    raise typer.Exit(read.history(ctx.obj["config"], ctx.obj["state"], job, limit, failed, as_json))


@app.command()
def logs(
    ctx: typer.Context,
    job: str = typer.Argument(..., metavar="JOB", help="Job name."),
    run_id: int | None = typer.Argument(None, metavar="[RUN_ID]", min=1,
                                           help="A run id from `schedsync history JOB` (default: the last run)."),
):
    """The captured output of a job's last (or given) run, redacted, after a header line.
    Example: schedsync logs quests"""
    from schedsync.cli import read

    raise typer.Exit(read.logs(ctx.obj["config"], ctx.obj["state"], job, run_id))


@app.command("list")
def list_jobs(ctx: typer.Context):
    """The jobs in jobs.yaml. Example: schedsync list"""
    from schedsync.cli import read

    raise typer.Exit(read.list_jobs(ctx.obj["config"]))


@app.command()
def validate(ctx: typer.Context):
    """Check jobs.yaml fully, environment variables included (exit 0 or 2). Example: schedsync validate"""
    from schedsync.cli import read

    raise typer.Exit(read.validate(ctx.obj["config"]))


@app.command()
def pause(ctx: typer.Context, job: str = typer.Argument(..., metavar="JOB", help="Job name.")):
    """Skip a job's runs (recorded as skipped: paused) until resumed. Example: schedsync pause quests"""
    from schedsync.app import control

    with _errors(), _opened(ctx, create=True, job=job) as (config, store):
        control.pause(config, store, job)
    # A job may be paused before its first run; a new state is named, in case its path is a typo.
    made = f" (new state {store.label})" if store.created else ""
    print(f"{job}: paused{made}; its runs are skipped until `schedsync resume {job}`")


@app.command()
def resume(ctx: typer.Context, job: str = typer.Argument(..., metavar="JOB", help="Job name.")):
    """Let a paused job run again. Example: schedsync resume quests"""
    from schedsync.app import control

    with _errors(), _opened(ctx, job=job) as (config, store):
        control.resume(config, store, job)
    print(f"{job}: resumed")


@breaker_app.command("reset")
def breaker_reset(ctx: typer.Context,
                  job: str = typer.Argument(..., metavar="JOB", help="Job whose breaker to close.")):
    """Close a job's breaker by hand. Example: schedsync breaker reset airdrops"""
    from schedsync.app import control

    with _errors(), _opened(ctx, job=job) as (config, store):
        name, was = control.reset_breaker(config, store, job)  # the store's clock
        before = was or "closed"
    print(f"breaker {name}: closed (was {before})")


@app.command()
def backfill(
    ctx: typer.Context,
    job: str = typer.Argument(..., metavar="JOB", help="Job name."),
    start: str | None = typer.Option(None, "--from", metavar="TIME",
                                     help="First slot's time, ISO 8601 (e.g. 2026-12-01T00:00; "
                                          "without an offset, in the registry's zone)."),
    end: str | None = typer.Option(None, "--to", metavar="TIME", help="Last slot's time, ISO 8601."),
    cancel: bool = typer.Option(False, "--cancel", help="Empty the job's backfill queue instead."),
):
    """Queue every slot of a job in a range; `schedsync tick` runs them, oldest first.
    Example: schedsync backfill scrape --from 2026-12-01 --to 2026-12-02"""
    from schedsync.app import later

    with _errors():
        if cancel:
            if start is not None or end is not None:
                raise ConfigError("backfill --cancel takes no --from or --to",
                                  f"`schedsync backfill {job} --cancel` empties the whole queue")
            with _opened(ctx, job=job) as (config, store):
                removed = store.cancel_queued(job, later.BACKFILL)
            print(f"{job}: {removed} queued backfill slot{'' if removed == 1 else 's'} cancelled")
            return
        if start is None or end is None:
            raise ConfigError(f"backfill {job}: needs --from and --to",
                              f"e.g. `schedsync backfill {job} --from 2026-12-01T00:00 --to 2026-12-01T23:59`"
                              f", or --cancel")
        config = _config(ctx)
        slots = later.backfill_range(config, job, start, end, float("inf"))  # usage errors first
        with _opened(ctx, create=True, job=job) as (config, store):
            queued, future = later.backfill(config, store, job, slots)
            from schedsync.app.tick import TICK_LATE

            warning = later.no_tick(config, job, store, store.now(), TICK_LATE) if queued else None
    print(later.backfill_line(config, job, queued, future))
    if warning:
        print(warning, file=sys.stderr)


@app.command()
def trigger(
    ctx: typer.Context,
    job: str = typer.Argument(..., metavar="JOB", help="Job name."),
    at: str | None = typer.Option(None, "--at", metavar="TIME",
                                  help="Run it at this time, ISO 8601 (without an offset, in the registry's zone)."),
    within: str | None = typer.Option(None, "--in", metavar="DURATION", help="Run it after this long, e.g. 10m."),
    param: list[str] = typer.Option([], "--param", metavar="NAME=VALUE",
                                    help="A param the job declares (repeat for more)."),
    wait: bool = typer.Option(False, "--wait", help="Wait for the run and exit as `run` would (0, 1 or 75)."),
    reason: str | None = typer.Option(None, "--reason", metavar="TEXT", help="Why (kept where writes are audited)."),
    as_json: bool = typer.Option(False, "--json", help="Print {job, item, deduped, due_at} as JSON."),
):
    """Queue a run now (or later); `schedsync tick` starts it with every protection. Prints the
    queue id; the same params still queued give the same id. Example: schedsync trigger sweep --param final=1"""
    from schedsync.app.trigger import trigger_cli
    from schedsync.config import resolve_state

    with _errors(), _opened(ctx, create=True, job=job) as (config, store):
        code = trigger_cli(config, store, resolve_state(ctx.obj["state"], config), job, param, at,
                           within, wait, reason, as_json)
    raise typer.Exit(code)


@app.command()
def prune(ctx: typer.Context):
    """Apply the retention policy now. Example: schedsync prune"""
    with _errors(), _opened(ctx) as (config, store):
        policies = {name: (job.retention.get("success"), job.retention.get("failed"))
                    for name, job in config.jobs.items()}
        removed = store.prune_all(policies, store.now())
    print(f"pruned {removed} run{'' if removed == 1 else 's'}")


@app.command()
def metrics(
    ctx: typer.Context,
    textfile: str | None = typer.Option(
        None, "--textfile", metavar="PATH",
        help="Write to PATH atomically (for node_exporter's textfile collector) instead of stdout."),
):
    """Prometheus metrics of jobs, budgets and breakers.
    Example: schedsync metrics --textfile /var/lib/node_exporter/textfile_collector/schedsync.prom"""
    from schedsync.cli import read

    raise typer.Exit(read.metrics(ctx.obj["config"], ctx.obj["state"], textfile))


@app.command()
def crontab(ctx: typer.Context,
            check: bool = typer.Option(False, "--check", help="Compare the installed crontab (crontab -l) with "
                                       "these lines: one line per difference, exit 1 if any, 2 without cron.")):
    """Crontab lines for every scheduled job. Example: schedsync crontab | crontab -"""
    from schedsync.ops.crontab import crontab_lines

    with _errors():
        config = _config(ctx)
        if check:
            raise typer.Exit(_crontab_check(config, ctx.obj["state"]))
        print("\n".join(crontab_lines(config, ctx.obj["state"])))


def _crontab_check(config, state) -> int:
    from schedsync.ops.drift import differences, installed

    found, ours = differences(config, state, installed())
    if not found:
        print(f"crontab: in sync with {config.path} ({ours} line{'' if ours == 1 else 's'} of schedsync's)")
        return 0
    for kind, what, detail in found:
        print(f"{kind}: {what}: {detail}" if kind == "missing" else f"{kind}: {detail}")
    count = f"{len(found)} difference{'' if len(found) == 1 else 's'}"
    print(f"error: the installed crontab differs from `schedsync crontab` ({count}) — install it: "
          "`schedsync crontab | crontab -` (merge in any other lines)", file=sys.stderr)
    return 1



@app.command()
def serve(
    ctx: typer.Context,
    bind: str = typer.Option("127.0.0.1:9178", "--bind", metavar="HOST:PORT",
                             help="Where to listen; not loopback needs $SCHEDSYNC_SERVE_TOKEN or "
                                  "$SCHEDSYNC_SERVE_BASIC (user:password)."),
    allow_host: list[str] = typer.Option([], "--allow-host", metavar="NAME",
                                         help="A host name writes may be addressed to (besides IP addresses and "
                                              "localhost); repeatable."),
):
    """HTTP: /healthz (200 or 503), /metrics, / a dashboard; with a credential set, POST /api/... writes
    (trigger, retry, pause, resume, breaker reset). Example: schedsync serve --bind 127.0.0.1:9178"""
    from schedsync.ops.serve import serve as serve_forever

    with _errors():
        code = serve_forever(ctx.obj["config"], ctx.obj["state"], bind, allow_hosts=allow_host)
    raise typer.Exit(code)


@app.command("exec", context_settings={"ignore_unknown_options": True})
def exec_command(
    ctx: typer.Context,
    name: str = typer.Argument(..., metavar="NAME", help="The name its runs are recorded and locked under."),
    command: list[str] | None = typer.Argument(None, metavar="-- CMD ARGS…", help="The command, after --."),
    timeout: str | None = typer.Option(None, "--timeout", metavar="D", help="Hard timeout, e.g. 30m."),
    overlap: str | None = typer.Option(None, "--overlap", metavar="POLICY", help="skip, allow, replace or 'wait 30s'."),
    budget: list[str] | None = typer.Option(None, "--budget", metavar="B",
                                            help="A budget of jobs.yaml to spend from (repeatable)."),
):
    """Run an ad-hoc command as a job: lock, timeout, record, cron-friendly output, no jobs.yaml entry.
    Example: schedsync exec backup --timeout 2h -- /usr/local/bin/backup.sh --full"""
    from schedsync.cli.adhoc import exec_cli

    if not command:
        with _errors():
            raise ConfigError(f"exec {name}: no command given",
                              f"put it after --, e.g. schedsync exec {name} -- /usr/local/bin/backup.sh")
    settings = {k: v for k, v in (("timeout", timeout), ("overlap", overlap), ("budget", budget))
                if v is not None}
    raise typer.Exit(exec_cli(ctx.obj["config"], ctx.obj["state"], name, command, settings))


@app.command()
def systemd(
    ctx: typer.Context,
    folder: str | None = typer.Option(None, "--dir", metavar="DIR",
                                      help="Write the units into DIR (e.g. /etc/systemd/system) instead of printing."),
    tick: bool = typer.Option(False, "--tick", help="A .timer/.service pair running `schedsync tick` every minute."),
    job: str | None = typer.Option(None, "--job", metavar="NAME",
                                   help="A .timer/.service pair running one job on its schedule."),
    user: str | None = typer.Option(None, "--user", metavar="NAME",
                                    help="User= to run as (default: serve with DynamicUser=yes, timers as root)."),
    bind: str = typer.Option("127.0.0.1:9178", "--bind", metavar="HOST:PORT", help="serve's --bind."),
):
    """systemd units: a hardened one for `serve`, or with --tick/--job a timer pair.
    Example: schedsync systemd --dir /etc/systemd/system --user backup"""
    from schedsync.ops.systemd import check_word, units, write

    with _errors():
        if tick and job:
            raise ConfigError("--tick and --job both given", "pick one: the tick starts every job's due work")
        check_word(user, "--user", r"[a-z_][a-z0-9_-]{0,31}", "a user name such as backup")
        check_word(bind, "--bind", r"[A-Za-z0-9_.:\[\]-]+", "HOST:PORT, e.g. 127.0.0.1:9178")
        made = units(_config(ctx), ctx.obj["state"], tick=tick, job=job, user=user, bind=bind)
        if folder is None:
            print("\n".join(f"### {name}\n{text}" for name, text in made.items()), end="")
            return
        for path in write(made, folder):
            print(f"wrote {path}")
    start = next(name for name in made if not name.endswith(".service") or len(made) == 1)
    print(f"then: systemctl daemon-reload && systemctl enable --now {start}")


@app.command()
def completion(shell: str = typer.Argument(..., metavar="bash|zsh|fish", help="The shell to complete in.")):
    """Print a shell completion script (commands, options, job names). Example: source <(schedsync completion bash)"""
    from schedsync.cli.completion import SHELLS, script

    if shell not in SHELLS:
        with _errors():
            raise ConfigError(f"completion: no script for {shell!r}", f"use one of {', '.join(SHELLS)}")
    sys.stdout.write(script(shell, typer.main.get_command(app)))


class _PlainUsage(TyperCommand):
    """Usage lines as click writes them: typer >= 0.26 braces required arguments
    (``schedsync run [OPTIONS] {JOB}``), which reads as literal braces to type."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        return [piece[1:-1] if piece.startswith("{") and piece.endswith("}") else piece
                for piece in super().collect_usage_pieces(ctx)]


for _group in (app, breaker_app, state_app):
    for _info in _group.registered_commands:
        if _info.cls in (None, TyperCommand):
            _info.cls = _PlainUsage

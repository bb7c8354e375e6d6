"""The read commands (``status``, ``history``, ``logs``, ``list``, ``metrics``, ``validate``)
as plain functions of their options that return an exit code.

Both ways in call these: ``main``'s fast path, which parses a plain command line without
typer (a monitoring check pays start-up every minute), and the typer app, which parses
everything else. Each loads only what it shows: rich only for a table, never for JSON,
metrics, the ``--check`` line or ``logs``.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

from schedsync.core.errors import ConfigError, Exit, SchedsyncError

UNKNOWN = 3  # `status --check`: the state (or jobs.yaml) cannot be read, as Nagios plugins exit
CHECK_NAMES = 10  # jobs named in the --check line; more are counted ("and 3 more")


def version() -> int:
    from schedsync import __version__

    print(f"schedsync {__version__}")
    return 0


def _fail(exc: SchedsyncError) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return int(exc.exit_code)


def load_config(config_opt: str | None, state_opt: str | None = None):
    """The registry. Without one (no -c, no $SCHEDSYNC_CONFIG, no ./jobs.yaml), a state named
    by --state or $SCHEDSYNC_STATE is still read: its ``exec`` jobs need no jobs.yaml."""
    import os

    from schedsync.config import load, no_registry, optional_registry, resolve_config

    config = optional_registry(config_opt)
    if config is None:
        if not (state_opt or os.environ.get("SCHEDSYNC_STATE")):
            return load(resolve_config(config_opt))  # "jobs.yaml: no such file", with the fix
        config = no_registry(os.getcwd())
    return config


@contextmanager
def opened(config, state_opt: str | None, job: str | None = None, init: bool = False):
    """The store, opened for reading: a state this user may only read opens read-only, and a
    missing one is an error (with ``job`` unknown to the registry too, that is the error),
    unless ``init`` (``status --init``) asks to create it as ``run`` would."""
    from schedsync.config import resolve_state
    from schedsync.core.errors import NoState
    from schedsync.store import open_store

    where = resolve_state(state_opt, config)
    try:
        store = open_store(where, write=False)
    except NoState:
        from schedsync.config import NO_REGISTRY

        if job is not None and config.path != NO_REGISTRY:
            config.job(job)  # unknown to jobs.yaml, and no state to hold an `exec` job of it
        if not init:
            raise
        open_store(where, write=True, create=True).close()
        store = open_store(where, write=False)
    try:
        yield store
    finally:
        store.close()


def print_json(data) -> None:
    import json

    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def status(config_opt: str | None, state_opt: str | None, job: str | None = None,
           as_json: bool = False, check: bool = False, verbose: bool = False, init: bool = False) -> int:
    """``status [JOB] [--json] [--check [-v]] [--init]``. With ``--check`` (and not ``--json``)
    the first line is a Nagios plugin's: ``SCHEDSYNC OK|WARNING|CRITICAL|UNKNOWN - …``.
    ``--init`` creates a missing state (the crontab's late-watcher line, which may run before
    any job has)."""
    from schedsync.app import report
    from schedsync.app import status as snapshots

    line_only = check and not as_json
    detail = bool(job) and not as_json and (not check or verbose)
    try:
        config = load_config(config_opt, state_opt)
        with opened(config, state_opt, job, init) as store:
            data = (snapshots.job_detail(config, store, job) if detail
                    else snapshots.status(config, store, only=job))
    except SchedsyncError as exc:
        if not check:
            return _fail(exc)
        if line_only:
            print(f"SCHEDSYNC UNKNOWN - {exc}")
        else:
            print(f"error: {exc}", file=sys.stderr)
        return UNKNOWN
    if as_json:
        print_json(data)
    else:
        if line_only:
            print(check_line(data["jobs"], report.worst_first(data["jobs"])))
        if not check or verbose:
            from schedsync.cli import render

            if detail:
                render.job_detail(data)
            else:
                render.status_table(data, report.worst_first(data["jobs"]))
    if not as_json and not check:
        crontab_warning(config, state_opt)
        if (data.get("tick") or {}).get("warning"):
            print(f"warning: {data['tick']['warning']}", file=sys.stderr)
    if check and any(j["health"] in report.NEEDS_ACTION for j in data["jobs"]):
        return int(Exit.FAILED)
    return 0


def crontab_warning(config, state_opt: str | None) -> None:
    """One line on stderr when this user's crontab runs this registry's jobs otherwise than
    ``schedsync crontab`` prints (the table forms of ``status`` only: ``crontab -l`` is a
    subprocess, and ``--json``/``--check`` are what monitoring runs every minute)."""
    from schedsync.config import NO_REGISTRY

    if config.path == NO_REGISTRY or not any(job.schedule for job in config.jobs.values()):
        return
    from schedsync.ops.drift import warning

    line = warning(config, state_opt)
    if line:
        print(line, file=sys.stderr)


# `status --check` levels: a failure needs someone now; a late, stale or stalled job may yet catch up.
CRITICAL_HEALTH = ("FAILING",)
WARNING_HEALTH = ("LATE", "STALE", "STALLED")


def check_line(jobs: list[dict], worst: list[dict]) -> str:
    """One line in the Nagios plugin form: ``SCHEDSYNC CRITICAL - 2 of 8 jobs: quests FAILING,
    sponsored LATE`` (worst first), ``SCHEDSYNC OK - 8 jobs``."""
    count = f"{len(jobs)} job{'' if len(jobs) == 1 else 's'}"
    bad = [j for j in worst if j["health"] in CRITICAL_HEALTH + WARNING_HEALTH]
    if not bad:
        return f"SCHEDSYNC OK - {count}"
    level = "CRITICAL" if any(j["health"] in CRITICAL_HEALTH for j in bad) else "WARNING"
    named = ", ".join(f"{j['name']} {j['health']}" for j in bad[:CHECK_NAMES])
    more = f" and {len(bad) - CHECK_NAMES} more" if len(bad) > CHECK_NAMES else ""
    return f"SCHEDSYNC {level} - {len(bad)} of {count}: {named}{more}"


def history(config_opt: str | None, state_opt: str | None, job: str, limit: int = 20,
            failed: bool = False, as_json: bool = False) -> int:
    from schedsync.app import status as snapshots
    from schedsync.app.report import display_zone

    try:
        config = load_config(config_opt, state_opt)
        with opened(config, state_opt, job) as store:
            runs = snapshots.history(config, store, job, limit, failed)
    except SchedsyncError as exc:
        return _fail(exc)
    if as_json:
        print_json(runs)
        return 0
    from schedsync.cli import render

    render.history_table(runs, display_zone(config))
    shown = next((run for run in runs if run["output"]), None)  # skips and failed starts have none
    if shown:  # a hint for people, on stderr so a pipe into grep or awk gets the table only
        print(f"a run's output: schedsync logs {job} {shown['id']}", file=sys.stderr)
    return 0


def logs(config_opt: str | None, state_opt: str | None, job: str, run_id: int | None = None) -> int:
    """The captured output of the job's last (or given) run, after a header line. Exit 2 for an
    unknown job, 1 for a run id that does not exist or is another job's."""
    from schedsync.app import status as snapshots
    from schedsync.app.report import display_zone

    try:
        config = load_config(config_opt, state_opt)
        with opened(config, state_opt, job) as store:
            run = snapshots.run_log(config, store, job, run_id)
    except SchedsyncError as exc:
        return _fail(exc)
    header, output = log_header(run, display_zone(config)), run["output"] or ""
    if sys.stdout.isatty():  # shown, not obeyed: a job's output must not drive the terminal
        from schedsync.cli.render import visible

        header, output = visible(header), visible(output)
    sys.stdout.write(header + "\n")
    if output:
        sys.stdout.write(output if output.endswith("\n") else output + "\n")
    else:
        print("(still running: its output is stored when it ends)" if run["status"] == "running"
              else "(no output captured)", file=sys.stderr)
    return 0


def log_header(run: dict, tz=None) -> str:
    """``run 42 of quests: failed (exit 1), started 2026-12-01 11:00:05 CET, took 2.1s, host web1``"""
    from schedsync.core.durations import clock, format_duration, posix

    status = run["status"] + (f" ({run['reason']})" if run["reason"] else "")
    if run["exit_code"] not in (None, 0):
        status += f" (exit {run['exit_code']})"
    started = clock(posix(run["started_at"]), tz) if run["started_at"] else "—"
    took = ("still running" if run["status"] == "running" or run["duration_ms"] is None
            else f"took {format_duration(run['duration_ms'] / 1000)}")
    line = f"run {run['id']} of {run['job']}: {status}, started {started}, {took}, host {run['host']}"
    if run.get("params"):
        from schedsync.cli.render import params_text

        line += f", params {params_text(run['params'])}"
    return line


def list_jobs(config_opt: str | None) -> int:
    try:
        config = load_config(config_opt)
    except SchedsyncError as exc:
        return _fail(exc)
    from schedsync.cli import render

    render.jobs_table(config)
    return 0


def validate(config_opt: str | None) -> int:
    """Every error found in jobs.yaml (and in the ${VAR}s of the jobs that validated),
    one line each, then exit 2; else one ok line."""
    from schedsync.config import ConfigError, ConfigErrors, expand, load, resolve_config

    errors: list = []
    try:
        try:
            config = load(resolve_config(config_opt), every=True)
        except ConfigErrors as exc:
            errors, config = list(exc.errors), exc.config
        for name in config.jobs if config else ():
            try:
                expand(config.job(name), config.path)
            except ConfigError as exc:
                errors.append(exc)
    except SchedsyncError as exc:
        return _fail(exc)
    if errors:
        for exc in errors:
            print(f"error: {exc}", file=sys.stderr)
        return int(errors[0].exit_code)
    print(f"{config.path}: {len(config.jobs)} jobs, {len(config.budgets)} budgets: ok")
    return 0


def metrics(config_opt: str | None, state_opt: str | None, textfile: str | None = None) -> int:
    from schedsync.app.report import display_zone
    from schedsync.app.status import snapshot
    from schedsync.ops.metrics import exposition, running_counts, write_textfile

    try:
        if textfile is not None and not textfile.endswith(".prom"):
            raise ConfigError(f"--textfile {textfile}: node_exporter's textfile collector reads only *.prom files",
                              "name it e.g. schedsync.prom")
        config = load_config(config_opt, state_opt)
        with opened(config, state_opt) as store:
            snap = snapshot(config, store)
            text = exposition(snap.views, snap.budgets, store.counters(), store.slot_counters(),
                              store.run_totals(), running_counts(store, snap.views), tz=display_zone(config))
        if textfile is None:
            sys.stdout.write(text)
            return 0
        try:
            write_textfile(textfile, text)
        except OSError as exc:
            raise SchedsyncError(f"cannot write {textfile}: {exc.strerror or exc}",
                                 "check that its folder exists and is writable by this user") from None
    except SchedsyncError as exc:
        return _fail(exc)
    return 0

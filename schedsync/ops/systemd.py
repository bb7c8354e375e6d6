"""``schedsync systemd``: unit files for those who run schedsync under systemd.

- ``schedsync-serve.service``: ``schedsync serve`` (the dashboard, /healthz, /metrics),
  sandboxed: ``DynamicUser=yes`` (or ``User=`` with ``--user``), ``ProtectSystem=strict``
  with only the state's folder writable, no new privileges, no capabilities, a
  system-call filter. It only reads: nothing of the jobs runs in it.
- ``--tick``: ``schedsync-tick.service`` + ``.timer``, ``schedsync tick`` every minute with
  ``Persistent=true``: systemd as the clock instead of cron's ``* * * * *`` line.
  ``KillMode=process``: the runs tick starts outlive it, as under cron.
- ``--job NAME``: ``schedsync-run-NAME.service`` + ``.timer``, ``schedsync run NAME`` at the
  job's cron schedule turned into ``OnCalendar=`` (in the registry's ``timezone:``), with
  ``Persistent=true``. A schedule that has no exact ``OnCalendar=`` form (cron ORs a
  restricted day of month with a restricted day of week; systemd ANDs them) is refused.

The job services are not sandboxed: the jobs run in them, and a job may write anywhere its
user may. Every command line names this installation, the config and the state by absolute
path, as ``schedsync crontab`` does.
"""

from __future__ import annotations

import os

from schedsync.config import Config, ConfigError
from schedsync.ops.crontab import command_prefix
from schedsync.paths import absolute, is_url

SERVE = "schedsync-serve.service"
TICK = "schedsync-tick"
DAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")
ALIASES = {"@hourly": "*-*-* *:00:00", "@daily": "*-*-* 00:00:00", "@midnight": "*-*-* 00:00:00",
           "@weekly": "Sun *-*-* 00:00:00", "@monthly": "*-*-01 00:00:00", "@yearly": "*-01-01 00:00:00",
           "@annually": "*-01-01 00:00:00"}


def units(config: Config, state: str | None, tick: bool = False, job: str | None = None,
          user: str | None = None, bind: str = "127.0.0.1:9178") -> dict[str, str]:
    """File name -> text: the serve unit, or with ``tick``/``job`` that timer pair."""
    prefix, _ = command_prefix(config, state)
    if any(c in prefix for c in "\n\r\\"):  # a unit file line cannot hold it
        raise ConfigError("the path of jobs.yaml or the state holds a newline or a backslash",
                          "move it to a plain path for systemd")
    prefix = _escape(prefix)
    # Schedules read from the environment (``${VAR}``): the services read jobs.yaml with the
    # same values, as the crontab pins them for cron's runs.
    pinned = "".join(f'Environment="{name}={value.replace("%", "%%")}"\n'  # no $ expansion there
                     for name, value in sorted((config.environ or {}).items())
                     if value is not None and not any(c in value for c in '"\\\n'))
    who = f"User={user}" if user else "DynamicUser=yes"
    header = f"# From `schedsync systemd` for {os.path.join(config.dir, os.path.basename(config.path))}.\n"
    if tick or job:
        if job:
            spec = config.job(job)
            if not spec.schedule:
                raise ConfigError(f"{job} has no schedule, so no timer",
                                  f"add `schedule:` to jobs.{job}, or run it by hand with `schedsync run {job}`")
            calendar = on_calendar(spec.schedule, config.timezone, job)
            name, what, command = f"schedsync-run-{job}", f"schedsync run {job}", f"{prefix} run {job}"
            kill = ""
        else:
            calendar = "*-*-* *:*:00"
            name, what, command = TICK, "schedsync tick (every minute)", f"{prefix} tick"
            kill = "# The runs tick starts outlive it, as under cron.\nKillMode=process\n"
        service = (f"{header}[Unit]\nDescription={what}\n\n[Service]\nType=oneshot\n"
                   + (f"User={user}\n" if user else "") + f"{pinned}ExecStart={command}\n{kill}"
                   "# Each run has its own timeout (jobs.yaml); the job may write where its user may.\n")
        timer = (f"{header}[Unit]\nDescription=Timer for {what}\n\n[Timer]\nOnCalendar={calendar}\n"
                 "# A start missed while the machine was off happens once at boot.\nPersistent=true\n"
                 f"AccuracySec=1s\nUnit={name}.service\n\n[Install]\nWantedBy=timers.target\n")
        return {f"{name}.service": service, f"{name}.timer": timer}
    from schedsync.config import resolve_state

    chosen = resolve_state(state, config, remember=False)
    writable = "" if is_url(chosen) else f"ReadWritePaths={_escape(os.path.dirname(absolute(chosen)))}\n"
    serve = f"""{header}[Unit]
Description=schedsync serve: dashboard, /healthz and /metrics
Wants=network-online.target
After=network-online.target

[Service]
{pinned}ExecStart={prefix} serve --bind {bind}
Restart=on-failure
RestartSec=5s
{who}
# serve only reads the state (SQLite still writes beside it: -wal, -shm).
{writable}CacheDirectory=schedsync
Environment=SCHEDSYNC_CACHE_DIR=%C/schedsync
UMask=0077
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=read-only
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
CapabilityBoundingSet=
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources

[Install]
WantedBy=multi-user.target
"""
    return {SERVE: serve}


def on_calendar(schedule: str, timezone: str | None, job: str = "") -> str:
    """The ``OnCalendar=`` form of a cron schedule; ConfigError when there is none."""
    text = schedule.strip()
    zone = f" {timezone}" if timezone else ""
    if text in ALIASES:
        return ALIASES[text] + zone
    from datetime import datetime

    from cronsim import CronSim, CronSimError

    try:
        cron = CronSim(text, datetime(2000, 1, 1))
    except CronSimError as exc:
        raise ConfigError(f"jobs.{job}.schedule: {text!r} is not a cron expression ({exc})",
                          "fix it (`schedsync validate`)") from exc
    if not cron.day_and:
        raise ConfigError(f"jobs.{job}.schedule: {text!r} has no OnCalendar= form: cron runs it when the day "
                          "of month OR the day of week matches, systemd only when both do",
                          "use `schedsync systemd --tick` (the tick follows cron's rules), or a cron line")
    sets = (cron.minutes, cron.hours, cron.days, cron.months, cron.weekdays)
    if not all(isinstance(v, int) for values in sets for v in values):
        raise ConfigError(f"jobs.{job}.schedule: {text!r} has no OnCalendar= form",
                          "use `schedsync systemd --tick`, or a cron line")
    minute = _field(cron.minutes, 0, 59, pad=True)
    hour = _field(cron.hours, 0, 23, pad=True)
    day = _field(cron.days, 1, 31, pad=True)
    month = _field(cron.months, 1, 12, pad=True)
    weekdays = {d % 7 for d in cron.weekdays}
    week = "" if weekdays == set(range(7)) else ",".join(DAYS[d] for d in sorted(weekdays)) + " "
    return f"{week}*-{month}-{day} {hour}:{minute}:00{zone}"


def _field(values, low: int, high: int, pad: bool) -> str:
    """A set of values as systemd writes them: ``*``, ``START/STEP``, or a list with ``A..B`` runs."""
    ordered = sorted(values)
    if ordered == list(range(low, high + 1)):
        return "*"

    def show(v: int) -> str:
        return f"{v:02d}" if pad else str(v)

    if len(ordered) > 2:
        step = ordered[1] - ordered[0]
        progression = all(b - a == step for a, b in zip(ordered, ordered[1:], strict=False))
        # START/STEP only when STEP divides the field's cycle: systemd 252 skips the first value after
        # a wrap otherwise (``*:00/7`` has no 00:00 after 23:56), so */7 minutes is written as a list.
        if progression and ordered[-1] + step > high and ordered[0] < low + step and (high + 1 - low) % step == 0:
            return f"{show(ordered[0])}/{step}"  # START/STEP: every STEP from START to the end
    runs: list[list[int]] = []  # consecutive values together
    for value in ordered:
        if runs and value == runs[-1][-1] + 1:
            runs[-1].append(value)
        else:
            runs.append([value])
    parts = [f"{show(run[0])}..{show(run[-1])}" if len(run) > 2 else ",".join(map(show, run)) for run in runs]
    return ",".join(parts)


def check_word(value: str | None, option: str, pattern: str, fix: str) -> None:
    """A value pasted into a unit file: one plain word, or a ConfigError (exit 2)."""
    import re

    if value is not None and not re.fullmatch(pattern, value):
        raise ConfigError(f"{option} {value!r} cannot go into a unit file", f"give {fix}")


def _escape(text: str) -> str:
    """A command line for ``ExecStart=``: systemd expands ``%`` specifiers and ``$`` variables."""
    return text.replace("%", "%%").replace("$", "$$")


def write(units_: dict[str, str], folder: str) -> list[str]:
    """Write each unit into ``folder`` (atomically, mode 0644); the paths written."""
    os.makedirs(folder, exist_ok=True)
    written = []
    for name, text in units_.items():
        path = os.path.join(folder, name)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
        written.append(path)
    return written

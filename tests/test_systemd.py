"""``schedsync systemd`` (issue 20 item 8): the units it prints or writes pass
``systemd-analyze verify``, the serve unit is sandboxed, and a job's cron schedule becomes an
``OnCalendar=`` that fires at the very times cron would (``systemd-analyze calendar``)."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import datetime, timezone

import pytest

from schedsync.core.schedule import Schedule
from schedsync.ops.systemd import on_calendar

needs_systemd = pytest.mark.skipif(not shutil.which("systemd-analyze"),
                                   reason="systemd-analyze is missing (.ci/run installs systemd)")

JOBS = """\
    state: state/schedsync.db
    jobs:
      nightly: {command: "true", schedule: "30 2 * * *", description: "the backup"}
      either: {command: "true", schedule: "0 0 1 * 1"}
      manual: {command: "true"}
    """


def verify(folder) -> None:
    """``systemd-analyze verify`` on every unit in ``folder``: exit 0 and not one complaint."""
    files = sorted(str(p) for p in folder.iterdir())
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *files], capture_output=True,
                            text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "SYSTEMD_LOG_LEVEL": "warning"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # unknown keys and bad values are only warnings


def printed(text: str, folder):
    """The units ``schedsync systemd`` printed (each after ``### NAME``), as files in ``folder``."""
    folder.mkdir()
    for chunk in text.split("### ")[1:]:
        name, body = chunk.split("\n", 1)
        (folder / name).write_text(body)
    return folder


@needs_systemd
def test_the_serve_unit_is_hardened_and_verifies(project, tmp_path):
    project.write(JOBS)
    result = project.cli("systemd")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("### schedsync-serve.service\n")
    unit = result.stdout.split("\n", 1)[1]
    lines = unit.splitlines()
    # $SCHEDSYNC_STATE (the fixture's) wins over jobs.yaml's state: its folder is the one writable
    for line in ("DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes", "ProtectHome=read-only",
                 "CapabilityBoundingSet=", f"ReadWritePaths={project.path}", "PrivateTmp=yes"):
        assert line in lines, line
    start = next(line for line in lines if line.startswith("ExecStart="))
    assert start.endswith(f"-c {project.config} --state {project.state} serve --bind 127.0.0.1:9178"), start
    verify(printed(project.cli("systemd", "--tick").stdout + result.stdout, tmp_path / "printed"))
    folder = tmp_path / "units"
    written = project.cli("systemd", "--dir", str(folder), "--user", "backup")
    assert written.returncode == 0, written.stderr
    assert written.stdout.splitlines() == [f"wrote {folder / 'schedsync-serve.service'}",
                                           "then: systemctl daemon-reload && systemctl enable --now "
                                           "schedsync-serve.service"]
    text = (folder / "schedsync-serve.service").read_text()
    assert "User=backup" in text.splitlines() and "DynamicUser" not in text
    verify(folder)


@needs_systemd
def test_the_tick_timer_runs_every_minute_persistently_and_verifies(project, tmp_path):
    project.write(JOBS)
    folder = tmp_path / "units"
    result = project.cli("systemd", "--tick", "--dir", str(folder))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["schedsync-tick.service", "schedsync-tick.timer"]
    timer = (folder / "schedsync-tick.timer").read_text().splitlines()
    assert "OnCalendar=*-*-* *:*:00" in timer and "Persistent=true" in timer and "WantedBy=timers.target" in timer
    service = (folder / "schedsync-tick.service").read_text().splitlines()
    assert "Type=oneshot" in service and "KillMode=process" in service
    assert next(line for line in service if line.startswith("ExecStart=")).endswith(" tick")
    assert "enable --now schedsync-tick.timer" in result.stdout
    verify(folder)


@needs_systemd
def test_a_job_timer_follows_its_schedule_and_verifies(project, tmp_path):
    project.write(JOBS.replace("state: state/schedsync.db", "state: state/schedsync.db\n    timezone: Europe/Berlin"))
    folder = tmp_path / "units"
    result = project.cli("systemd", "--job", "nightly", "--user", "backup", "--dir", str(folder))
    assert result.returncode == 0, result.stderr
    timer = (folder / "schedsync-run-nightly.timer").read_text().splitlines()
    assert "OnCalendar=*-*-* 02:30:00 Europe/Berlin" in timer and "Persistent=true" in timer
    service = (folder / "schedsync-run-nightly.service").read_text().splitlines()
    assert "User=backup" in service
    assert next(line for line in service if line.startswith("ExecStart=")).endswith(" run nightly")
    verify(folder)


@pytest.mark.parametrize(("job", "args", "error"), [
    ("either", [], "error: jobs.either.schedule: '0 0 1 * 1' has no OnCalendar= form: cron runs it when"),
    ("manual", [], "error: manual has no schedule, so no timer — add `schedule:`"),
    ("nightly", ["--tick"], "error: --tick and --job both given — pick one"),
    ("nightly", ["--user", "root\nExecStartPre=/bin/evil"], "error: --user 'root\\nExecStartPre=/bin/evil' cannot"),
    ("nope", [], "no job named 'nope'"),
])
def test_what_cannot_become_a_unit_is_one_line_exit_2(project, job, args, error):
    project.write(JOBS)
    result = project.cli("systemd", "--job", job, *args)
    assert result.returncode == 2, result.stdout
    assert error in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == ""


@needs_systemd
def test_a_schedule_from_the_environment_is_converted_and_pinned_in_the_units(project, tmp_path):
    project.write("""\
        jobs:
          sync: {command: "true", schedule: "${SYNC_SCHEDULE:-0 * * * *}"}
        """)
    folder = tmp_path / "units"
    env = {"SYNC_SCHEDULE": "*/20 * * * *"}
    assert project.cli("systemd", "--job", "sync", "--dir", str(folder), env=env).returncode == 0
    assert project.cli("systemd", "--dir", str(folder), env=env).returncode == 0
    assert "OnCalendar=*-*-* *:00/20:00" in (folder / "schedsync-run-sync.timer").read_text().splitlines()
    for unit in ("schedsync-run-sync.service", "schedsync-serve.service"):
        assert 'Environment="SYNC_SCHEDULE=*/20 * * * *"' in (folder / unit).read_text().splitlines()
    verify(folder)


SCHEDULES = ["*/15 9-17 * jan-mar mon-fri", "0 3 * * *", "*/5 * * * *", "30 2 1 * *", "0 0 * * 0,6",
             "5,10,11,12 * * * *", "0 */2 * * *", "7 1-23/2 * * *", "@weekly", "@monthly", "@hourly",
             "0 12 * * 7", "15 4 29 2 *", "0 0 1-7 * *", "*/7 * * * *"]


@needs_systemd
@pytest.mark.parametrize("base", ["2026-12-31 23:50:00", "2027-02-28 22:50:00", "2027-03-01 08:59:30", None])
def test_on_calendar_fires_when_cron_would(base):
    """Each conversion's next 8 elapses per ``systemd-analyze calendar`` are cron's next 8 fires, from fixed
    times just before midnight, a month's end and an hour's end (where systemd 252 mis-wraps a ``/7``) and now."""
    start = datetime.strptime(base, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc) if base \
        else datetime.now(timezone.utc)
    converted = [on_calendar(expr, "UTC") for expr in SCHEDULES]
    at = [f"--base-time={base} UTC"] if base else []
    result = subprocess.run(["systemd-analyze", "calendar", "--iterations=8", *at, *converted], capture_output=True,
                            text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "TZ": "UTC"})
    assert result.returncode == 0, result.stderr
    blocks = [b for b in result.stdout.split("\n\n") if "Normalized form" in b]
    assert len(blocks) == len(SCHEDULES)
    for expr, block in zip(SCHEDULES, blocks, strict=True):
        systemd = [datetime.strptime(m, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
                   for m in re.findall(r"(?:Next elapse|Iter\. #\d+): \w{3} (\S+ \S+) UTC", block)]
        assert len(systemd) == 8, block
        cron = Schedule(expr, timezone.utc)
        # from the base time; from "now", just before systemd's first (its "now" is the call's own)
        t, fires = (start.timestamp() if base else systemd[0] - 1), []
        for _ in range(8):
            t = cron.next_after(t)
            fires.append(t)
        assert fires == systemd, (expr, block)
        assert cron.next_after(start.timestamp() - 1) <= systemd[0]  # systemd skipped no fire of cron's

"""`schedsync crontab`: lines cron can run as they are, read back and executed."""

from __future__ import annotations

import json
import os
import shlex
import subprocess

from conftest import ROOT

JOBS = """
    state: state/schedsync.db
    jobs:
      hourly:
        description: Pull the hourly feed
        schedule: "0 * * * *"
        command: ["true"]
      nightly:
        schedule: "@daily"
        command: "echo nightly"
      by-hand:
        command: ["true"]
"""


def entries(text: str) -> list[tuple[str, list[str]]]:
    """(schedule, command argv) for every job line; comments and VAR=value lines skipped."""
    out = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#") or _is_env(line):
            continue
        fields = line.split()
        count = 1 if fields[0].startswith("@") else 5
        schedule = " ".join(fields[:count])
        command = line.split(None, count)[count]
        out.append((schedule, shlex.split(command.replace("\\%", "%"))))
    return out


def _is_env(line: str) -> bool:
    name, eq, _ = line.partition("=")
    return bool(eq) and name.strip().isidentifier()


UNSET = {"SCHEDSYNC_STATE": ""}  # as if the variable were not set (the project fixture sets it)


def cron_env(project) -> dict:
    """What cron gives a job: HOME, LOGNAME, SHELL, a short PATH, nothing of ours."""
    return {"HOME": project.env["HOME"], "LOGNAME": "cron", "SHELL": "/bin/sh", "PATH": "/usr/bin:/bin"}


def test_each_scheduled_job_gets_one_line_with_five_fields_or_an_alias(project):
    project.write(JOBS)
    result = project.cli("crontab")
    assert result.returncode == 0 and result.stderr == ""
    lines = entries(result.stdout)
    assert [schedule for schedule, _ in lines] == ["0 * * * *", "@daily"]
    for schedule, _ in lines:
        assert len(schedule.split()) in (1, 5)


def test_lines_name_the_executable_and_config_by_absolute_path(project):
    project.write(JOBS)
    (_, argv), _ = entries(project.cli("crontab", env=UNSET).stdout)
    assert os.path.isabs(argv[0]) and os.access(argv[0], os.X_OK)
    assert argv[1:] == ["-c", str(project.config), "run", "hourly"]


def test_a_job_without_a_schedule_is_only_mentioned(project):
    project.write(JOBS)
    out = project.cli("crontab").stdout
    assert "# by-hand (no schedule: run by hand with `schedsync run by-hand`)" in out.splitlines()
    assert all(argv[-1] != "by-hand" for _, argv in entries(out))


def test_a_description_becomes_a_comment_above_its_line(project):
    project.write(JOBS)
    lines = project.cli("crontab").stdout.splitlines()
    index = lines.index("# hourly: Pull the hourly feed")
    assert lines[index + 1].startswith("0 * * * *")


def test_a_generated_line_runs_under_sh_as_cron_would_and_leaves_a_record(project, tmp_path):
    project.write(JOBS)
    out = project.cli("crontab", env=UNSET).stdout  # the registry's own state: no --state
    line = next(ln for ln in out.splitlines() if ln.startswith("0 * * * *"))
    command = line.split(None, 5)[5]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(["/bin/sh", "-c", command], cwd=elsewhere, env=cron_env(project),
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")  # cron mails nothing
    listed = project.cli("--state", str(project.path / "state" / "schedsync.db"), "history", "hourly", "--json")
    run, = json.loads(listed.stdout)
    assert run["status"] == "success" and run["trigger"] == "cron"


def test_cron_tz_is_set_when_the_registry_names_a_timezone(project):
    project.write("    timezone: Europe/Berlin" + JOBS)
    lines = project.cli("crontab").stdout.splitlines()
    assert "CRON_TZ=Europe/Berlin" in lines
    assert lines.index("CRON_TZ=Europe/Berlin") < lines.index(next(ln for ln in lines if ln.startswith("0 * * * *")))


def test_no_cron_tz_without_a_timezone(project):
    project.write(JOBS)
    assert "CRON_TZ" not in project.cli("crontab").stdout


def test_state_given_on_the_command_line_is_pinned_in_every_line(project):
    project.write(JOBS)
    out = project.cli("--state", "elsewhere.db", "crontab").stdout
    for _, argv in entries(out):
        assert argv[3:5] == ["--state", str(project.path / "elsewhere.db")]


def test_a_line_with_pinned_state_runs_under_sh_and_records_there(project, tmp_path):
    project.write(JOBS)
    line = next(ln for ln in project.cli("crontab").stdout.splitlines() if ln.startswith("@daily"))
    result = subprocess.run(["/bin/sh", "-c", line.split(None, 1)[1]], cwd=tmp_path, env=cron_env(project),
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    run, = project.history("nightly")  # $SCHEDSYNC_STATE, which the line pinned
    assert run["status"] == "success"


def test_state_from_the_environment_is_pinned_since_cron_does_not_have_it(project, tmp_path):
    project.write(JOBS)
    out = project.cli("crontab", env={"SCHEDSYNC_STATE": str(tmp_path / "env.db")}).stdout
    for _, argv in entries(out):
        assert argv[3:5] == ["--state", str(tmp_path / "env.db")]


def test_the_default_state_is_pinned_when_the_registry_names_none(project):
    project.write(JOBS.replace("    state: state/schedsync.db\n", ""))
    (_, argv), _ = entries(project.cli("crontab", env=UNSET).stdout)
    assert argv[3] == "--state"
    assert argv[4] == os.path.join(project.env["XDG_STATE_HOME"], "schedsync", "state.db")


def test_percent_signs_in_paths_are_escaped_for_cron(home, tmp_path):
    from conftest import Project

    folder = tmp_path / "100%real"
    folder.mkdir()
    project = Project(folder, home)
    project.write(JOBS)
    out = project.cli("crontab").stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("0 * * * *"))
    assert "100\\%real" in line and "100%real" not in line.replace("\\%", "")
    (_, argv), _ = entries(out)
    assert argv[2] == str(folder / "jobs.yaml")


def test_a_watcher_line_is_added_when_a_job_wants_late_alerts(project):
    project.write(JOBS.replace('command: ["true"]\n      nightly', 'command: ["true"]\n'
                               '        notify: [{url: "http://127.0.0.1:9/hook", events: [late]}]\n'
                               '      nightly', 1))
    out = project.cli("crontab", env=UNSET).stdout
    watcher = [argv for schedule, argv in entries(out) if "status" in argv]
    assert watcher == [[*entries(out)[0][1][:3], "status", "--json", "--init", ">", "/dev/null"]]
    line = next(ln for ln in out.splitlines() if "status --json" in ln)
    assert line.split()[0] == "*/5"
    # Before any job ran there is no state: the watcher creates it (and records when it first
    # saw each job, so a job cron never starts turns LATE) instead of mailing an error.
    assert not project.state.exists()
    command = line.split(None, 5)[5]
    ran = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=60,
                         env={**project.env, "PATH": "/usr/bin:/bin"}, cwd="/")
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "", "")
    assert project.state.exists()
    assert project.cli("status", "--json").returncode == 0


def test_status_creates_a_missing_state_only_when_asked_with_init(project):
    project.write(JOBS)
    plain = project.cli("status", "--json")
    assert plain.returncode == 1 and "no state at" in plain.stderr and not project.state.exists()
    for args in (("status", "--init"), ("status", "--json", "--init")):  # typer, then the fast path
        project.state.unlink(missing_ok=True)
        result = project.cli(*args)
        assert result.returncode == 0, result.stderr
        assert project.state.exists()


def test_no_watcher_line_without_late_alerts(project):
    project.write(JOBS)
    assert all("status" not in argv for _, argv in entries(project.cli("crontab").stdout))


def test_a_broken_registry_exits_2_and_prints_no_crontab(project):
    project.write(JOBS.replace('"0 * * * *"', '"61 * * * *"'))
    result = project.cli("crontab")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"error: {project.config}:")
    assert "jobs.hourly.schedule" in result.stderr


def test_the_shipped_crontab_example_matches_the_shipped_registry():
    import yaml

    registry = yaml.safe_load((ROOT / "jobs.yaml").read_text())
    scheduled = {name: job["schedule"] for name, job in registry["jobs"].items() if "schedule" in job}
    text = (ROOT / "crontab.example").read_text()
    assert text.startswith("# ")
    lines = entries(text)
    assert {argv[-1]: schedule for schedule, argv in lines if "run" in argv} == scheduled
    for _, argv in lines:
        assert os.path.isabs(argv[0]) and argv[1] == "-c" and os.path.isabs(argv[2])
        assert argv[2].endswith("/jobs.yaml")
    assert "<" not in text and "TODO" not in text  # no placeholders to fill in

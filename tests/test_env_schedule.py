"""``schedule: "${VAR:-default}"``: expanded when jobs.yaml is read, validated after, and
printed expanded by ``crontab`` (issue 20 item 6)."""

from __future__ import annotations

JOBS = """\
    jobs:
      sync:
        schedule: "${SYNC_SCHEDULE:-0 * * * *}"
        command: "true"
    """


def _crontab_line(project, env=None) -> str:
    result = project.cli("crontab", env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_default_stands_in_when_the_variable_is_unset(project):
    project.write(JOBS)
    out = _crontab_line(project)
    assert any(line.startswith("0 * * * * ") and line.endswith(" run sync") for line in out.splitlines()), out
    assert "SYNC_SCHEDULE=" not in out  # nothing to pin: cron's runs get the same default


def test_the_variable_wins_and_crontab_pins_it_for_crons_own_runs(project):
    project.write(JOBS)
    out = _crontab_line(project, {"SYNC_SCHEDULE": "*/5 * * * *"})
    lines = out.splitlines()
    assert "SYNC_SCHEDULE='*/5 * * * *'" in lines
    assert any(line.startswith("*/5 * * * * ") and line.endswith(" run sync") for line in lines), out
    # status and list read it too; the cache does not keep an old expansion
    listed = project.cli("list", env={"SYNC_SCHEDULE": "*/7 * * * *"})
    assert listed.returncode == 0 and "*/7 * * * *" in listed.stdout, listed.stderr
    listed = project.cli("list", env={"SYNC_SCHEDULE": "*/5 * * * *"})
    assert "*/5 * * * *" in listed.stdout and "*/7" not in listed.stdout


def test_an_invalid_expanded_schedule_names_the_variable_its_value_and_the_line(project):
    project.write(JOBS)
    result = project.cli("validate", env={"SYNC_SCHEDULE": "61 * * * *"})
    assert result.returncode == 2
    assert result.stderr.startswith(
        f'error: {project.config}:3 jobs.sync.schedule: "${{SYNC_SCHEDULE:-0 * * * *}}" expanded to "61 * * * *"'
        " (SYNC_SCHEDULE='61 * * * *') is not a cron expression: minute 61 is out of range"), result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_an_unset_variable_without_default_is_an_error_with_a_fix(project):
    project.write("""\
        jobs:
          sync:
            schedule: "${SYNC_SCHEDULE}"
            command: "true"
        """)
    result = project.cli("crontab")
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {project.config}:3 jobs.sync.schedule: environment variable "
                                    "SYNC_SCHEDULE is not set — export SYNC_SCHEDULE"), result.stderr
    assert project.cli("crontab", env={"SYNC_SCHEDULE": "@daily"}).returncode == 0


def test_only_the_two_braced_forms_are_expanded(project):
    project.write("""\
        jobs:
          sync:
            schedule: "$SYNC_SCHEDULE"
            command: "true"
        """)
    result = project.cli("validate", env={"SYNC_SCHEDULE": "@daily"})
    assert result.returncode == 2
    assert "only ${VAR} and ${VAR:-default} are expanded" in result.stderr

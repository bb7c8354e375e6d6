"""jobs.yaml: every mistake is one line naming file:line and the key path, exit 2."""

from __future__ import annotations

import os
import textwrap

import pytest

from schedsync.config import expand, load, parse
from schedsync.core.errors import ConfigError

GOOD = """\
state: state/schedsync.db
defaults:
  timeout: 5m
  retries: {attempts: 3, initial: 1s}
budgets:
  tweet-lookup: 15/15m
  airdrops-api: {capacity: 60, per: 1h}
jobs:
  airdrops:
    schedule: "0 * * * *"
    budget: airdrops-api
    retries: {attempts: 5}
    http:
      url: "${API}/v1/airdrops"
      headers: {Authorization: "Bearer ${AIRDROPS_TOKEN}"}
      items: data
      next: links.next
    into: {table: airdrops, pk: id}
  validate-entries:
    schedule: "*/3 * * * *"
    budget: [tweet-lookup, airdrops-api]
    overlap: wait 30s
    command: ["python", "scripts/validate.py", "--batch", "50"]
  points:
    schedule: "@daily"
    python: "myapp.sync:points"
"""


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(textwrap.dedent(text), "jobs.yaml", "/srv/sync")
    assert caught.value.exit_code == 2
    return str(caught.value)


def test_a_good_registry_merges_defaults_key_by_key():
    config = parse(GOOD, "jobs.yaml", "/srv/sync")
    airdrops = config.job("airdrops")
    assert airdrops.retries["attempts"] == 5 and airdrops.retries["initial"] == 1.0
    assert airdrops.retries["multiplier"] == 2.0  # built-in default under both
    assert airdrops.timeout == 300.0
    assert config.budgets == {"tweet-lookup": [15.0, 900.0], "airdrops-api": [60.0, 3600.0]}
    assert config.state == "/srv/sync/state/schedsync.db"
    entries = config.job("validate-entries")
    assert entries.budgets == ["tweet-lookup", "airdrops-api"]
    assert entries.overlap == ["wait", 30.0]
    assert entries.cwd == "/srv/sync"
    assert config.job("points").kind == "python"


def test_an_unknown_key_names_its_line_and_suggests_the_right_one():
    message = error_of("""\
        jobs:
          a:
            command: "true"
            timout: 5m
        """)
    assert message == "jobs.yaml:4 jobs.a.timout: unknown key — did you mean 'timeout'?"


def test_a_duplicate_key_is_an_error():
    message = error_of("""\
        jobs:
          a:
            command: "true"
          a:
            command: "false"
        """)
    assert message == "jobs.yaml:4 jobs.a: duplicate key — keep one of them"


def test_a_bad_duration_names_the_key_path():
    message = error_of("""\
        defaults:
          timeout: 5 minutes
        jobs:
          a: {command: "true"}
        """)
    assert message.startswith("jobs.yaml:2 defaults.timeout: '5 minutes' is not a duration")


def test_a_bad_cron_expression_says_why():
    message = error_of("""\
        jobs:
          a:
            schedule: "61 * * * *"
            command: "true"
        """)
    assert message.startswith('jobs.yaml:3 jobs.a.schedule: "61 * * * *" is not a cron expression: '
                              "minute 61 is out of range 0-59 —")


def test_an_unquoted_cron_expression_gets_a_quoting_hint():
    message = error_of("""\
        jobs:
          a:
            schedule: */5 * * * *
            command: "true"
        """)
    assert message.startswith("jobs.yaml:3: schedule: unquoted cron expression */5 * * * *")
    assert message.endswith('quote it: schedule: "*/5 * * * *"')


def test_a_job_name_must_be_lowercase_and_simple():
    message = error_of("""\
        jobs:
          Bad Name:
            command: "true"
        """)
    assert message.startswith("jobs.yaml:2 jobs.Bad Name: 'Bad Name' is not a valid name")


def test_a_job_needs_exactly_one_kind():
    assert "has none of command, http, python" in error_of("jobs:\n  a: {schedule: '@hourly'}\n")
    assert "has command and python; pick one of" in error_of(
        "jobs:\n  a: {command: 'true', python: 'm:f'}\n")


def test_a_budget_must_be_defined_before_a_job_names_it():
    message = error_of("""\
        budgets:
          one: 10/1m
        jobs:
          a: {command: "true", budget: two}
        """)
    assert message == "jobs.yaml:4 jobs.a.budget: no budget named 'two' — define it under `budgets:` (one)"


def test_an_http_job_needs_a_primary_key():
    message = error_of("""\
        jobs:
          a:
            http: {url: "https://example.test/x"}
            into: {table: t}
        """)
    assert message.startswith("jobs.yaml:4 jobs.a.into.pk: is required")


def test_invalid_yaml_names_the_line():
    message = error_of("jobs:\n  a: [1, 2\n")
    assert message.startswith("jobs.yaml:3: not valid YAML")


def test_an_empty_file_says_what_to_add():
    assert error_of("") == "jobs.yaml: the file is empty — add a `jobs:` mapping (see the README)"


def test_variables_come_from_the_environment_with_defaults():
    config = parse(GOOD, "jobs.yaml", "/srv/sync")
    job, secrets = expand(config.job("airdrops"), "jobs.yaml",
                          {"API": "https://api.test", "AIRDROPS_TOKEN": "s3cr3t-token"})
    assert job.section["url"] == "https://api.test/v1/airdrops"
    assert job.section["headers"]["Authorization"] == "Bearer s3cr3t-token"
    assert secrets.redact("auth s3cr3t-token here") == "auth *** here"
    assert secrets.redact("https://api.test") == "https://api.test"  # a base URL is no secret

    text = 'jobs:\n  a:\n    command: ["echo", "${GREETING:-hello}"]\n'
    job, _ = expand(parse(text, "jobs.yaml", "/x").job("a"), "jobs.yaml", {})
    assert job.section == ["echo", "hello"]


def test_a_missing_variable_is_one_line_naming_it():
    config = parse(GOOD, "jobs.yaml", "/srv/sync")
    with pytest.raises(ConfigError) as caught:
        expand(config.job("airdrops"), "jobs.yaml", {"API": "https://api.test"})
    assert str(caught.value).startswith(
        "jobs.yaml:15 jobs.airdrops.http.headers.Authorization: environment variable "
        "AIRDROPS_TOKEN is not set — export AIRDROPS_TOKEN")


def test_secrets_are_values_in_headers_queries_userinfo_or_with_secret_names():
    text = """\
        jobs:
          a:
            http:
              url: "https://${USER_NAME}:${PW}@host.test/v1?key=${QUERY_VAL}&plain=${PLAIN}"
            into: {table: t, pk: id}
          b:
            command: ["echo", "${MY_API_KEY}", "${WHO}", "${API_TOKEN}"]
        """
    config = parse(textwrap.dedent(text), "jobs.yaml", "/x")
    env = {"USER_NAME": "alice", "PW": "hunter22", "QUERY_VAL": "qv-1234", "PLAIN": "plain",
           "MY_API_KEY": "k-5678", "WHO": "world", "API_TOKEN": "abc"}
    _, secrets = expand(config.job("a"), "jobs.yaml", env)
    assert {"alice", "hunter22", "qv-1234", "plain"} <= secrets.values
    _, secrets = expand(config.job("b"), "jobs.yaml", env)
    assert "k-5678" in secrets.values and "world" not in secrets.values
    assert "abc" not in secrets.values  # values under 4 characters are excepted


def test_the_cache_is_used_until_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("SCHEDSYNC_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "jobs.yaml"
    path.write_text('jobs:\n  a: {command: "true"}\n')
    assert list(load(path).jobs) == ["a"]
    assert len(os.listdir(tmp_path / "cache")) == 1
    path.write_text('jobs:\n  a: {command: "true"}\n  bb: {command: "true"}\n')
    assert list(load(path).jobs) == ["a", "bb"]


def test_a_large_registry_is_read_from_its_cache_in_one_piece(tmp_path, monkeypatch):
    """Every tick of a 500-job registry reads its cache: ``marshal.load(file)`` reads it piece
    by piece through the file object, some 10x slower than ``loads`` of the whole file."""
    import marshal
    import time

    monkeypatch.setenv("SCHEDSYNC_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "jobs.yaml"
    path.write_text("jobs:\n" + "".join(f'  job{i}: {{command: ["true"], schedule: "{i % 60} 3 * * *"}}\n'
                                        for i in range(500)))
    assert len(load(path).jobs) == 500  # parsed, then cached
    cache = tmp_path / "cache" / os.listdir(tmp_path / "cache")[0]

    def cpu(read) -> float:  # the least of 5: steady on a loaded machine
        took = []
        for _ in range(5):
            start = time.process_time()
            read()
            took.append(time.process_time() - start)
        return min(took)

    def whole() -> None:
        with open(cache, "rb") as f:
            marshal.loads(f.read())

    assert len(load(path).jobs) == 500
    assert cpu(lambda: load(path)) < 3 * cpu(whole) + 0.002


# --- the same through the real CLI ---------------------------------------------------


def test_validate_exits_0_for_a_good_file_and_2_for_a_bad_one(project):
    project.write('jobs:\n  a: {command: "true", schedule: "@hourly"}\n')
    result = project.cli("validate")
    assert (result.returncode, result.stderr) == (0, "")
    assert "1 jobs, 0 budgets: ok" in result.stdout

    project.write('jobs:\n  a: {command: "true", schedule: "0 0 31 2 *"}\n')
    result = project.cli("validate")
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {project.config}:2 jobs.a.schedule:")
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_validate_reports_a_missing_environment_variable(project):
    project.write('jobs:\n  a: {command: ["echo", "${NOT_SET_ANYWHERE}"]}\n')
    result = project.cli("validate")
    assert result.returncode == 2
    assert "environment variable NOT_SET_ANYWHERE is not set" in result.stderr


def test_running_an_unknown_job_suggests_the_closest_name(project):
    project.write('jobs:\n  validate-entries: {command: "true"}\n')
    result = project.cli("run", "validate-entrie")
    assert result.returncode == 2
    assert result.stderr == (f"error: {project.config}: no job named 'validate-entrie' — "
                             "did you mean 'validate-entries'?\n")
    assert not project.state.exists()  # nothing ran, nothing was created


def test_a_config_error_runs_nothing(project):
    project.write('jobs:\n  a: {command: ["touch", "ran"], retries: {attempts: 0}}\n')
    result = project.cli("run", "a")
    assert result.returncode == 2
    assert "jobs.a.retries.attempts: 0 must be a whole number of 1 or more" in result.stderr
    assert not (project.path / "ran").exists()


def test_a_missing_config_file_says_how_to_point_at_one(project):
    result = project.cli("run", "a")
    assert result.returncode == 2
    assert result.stderr == (f"error: {project.config}: no such file — pass --config PATH, "
                             "set SCHEDSYNC_CONFIG, or cd to the folder of jobs.yaml\n")


def test_list_shows_every_job(project):
    project.write(GOOD)
    result = project.cli("list")
    assert result.returncode == 0
    for name in ("airdrops", "validate-entries", "points"):
        assert name in result.stdout


def test_a_cost_above_the_budget_capacity_is_a_config_error():
    message = error_of("""\
        budgets:
          small: 2/1h
        jobs:
          a: {command: "true", budget: small, cost: 3}
        """)
    assert message == ("jobs.yaml:4 jobs.a.cost: cost 3 is more than budget 'small' can ever hold (2)"
                       " — lower the cost or raise the capacity")


@pytest.mark.parametrize("text, expected", [
    ('jobs:\n  a: {command: "true", budget: [[1]]}\n', "jobs.yaml:2 jobs.a.budget: no budget named [1]"),
    ('jobs:\n  a: {command: "true", timeout: .inf}\n', "jobs.yaml:2 jobs.a.timeout: inf is not a duration"),
    ('jobs:\n  a: {command: "true", jitter: .nan}\n', "jobs.yaml:2 jobs.a.jitter: nan is not a duration"),
    ('jobs:\n  a: {command: !!python/name:os.system x}\n', "jobs.yaml:2: not valid YAML"),
    ('jobs:\n  a:\n    http: {url: "http://h.test/", next: {cursor: 5, param: x}}\n    into: {table: t, pk: id}\n',
     "jobs.yaml:3 jobs.a.http.next: {'cursor': 5, 'param': 'x'} is not a pagination rule"),
    ('jobs:\n  a:\n    http: {url: "http://h.test/"}\n    into: {table: t, pk: id, db: 5}\n',
     "jobs.yaml:4 jobs.a.into.db: 5 is not a file path"),
    ('budgets: {tiny: 0.5/1m}\njobs:\n  a:\n    budget: tiny\n'
     '    http: {url: "http://h.test/"}\n    into: {table: t, pk: id}\n',
     "jobs.yaml:4 jobs.a.budget: budget 'tiny' holds less than the 1 token a request costs"),
    ('jobs:\n  a:\n    http: {url: "http://h.test/", allow_hosts: h.test}\n    into: {table: t, pk: id}\n',
     "jobs.yaml:3 jobs.a.http.allow_hosts: 'h.test' is not a list of hosts — list host names or addresses"),
    ('jobs:\n  a:\n    http: {url: "http://h.test/", allow_hosts: ["https://h.test:8443/"]}\n'
     '    into: {table: t, pk: id}\n',
     "jobs.yaml:3 jobs.a.http.allow_hosts: 'https://h.test:8443/' is not a host name or address"),
    ('jobs:\n  a:\n    http: {url: "http://h.test/", allow_hosts: [5, null]}\n    into: {table: t, pk: id}\n',
     "jobs.yaml:3 jobs.a.http.allow_hosts: 5 is not a host name or address"),
])
def test_odd_shapes_are_one_line_config_errors(text, expected):
    assert error_of(text).startswith(expected)


def test_a_misspelt_key_of_retries_breaker_or_retention_is_one_error_not_two(project):
    project.write("""
        jobs:
          a:
            command: ["true"]
            retries: {atempts: 3}
            breaker: {reset_afer: 10m}
            retention: {sucess: 14d}
    """)
    result = project.cli("validate")
    assert result.returncode == 2
    assert [line.split(": unknown key")[0] for line in result.stderr.splitlines()] == [
        f"error: {project.config}:5 jobs.a.retries.atempts",
        f"error: {project.config}:6 jobs.a.breaker.reset_afer",
        f"error: {project.config}:7 jobs.a.retention.sucess",
    ]


def test_allow_hosts_are_kept_as_compared():
    config = parse('jobs:\n  a:\n'
                   '    http: {url: "http://h.test/", allow_hosts: [API.Example.com., "[FE80::1]", 10.0.0.7]}\n'
                   '    into: {table: t, pk: id}\n', "jobs.yaml", "/srv/sync")
    assert config.job("a").section["allow_hosts"] == ["api.example.com", "fe80::1", "10.0.0.7"]

"""``fails_when:``, failure rules, through the real CLI: a run that exits 0 but meets a
rule is ``failed`` (its error names the rule; the breaker and alerts count it), a run
that took longer than ``longer_than`` is ``partial``, and a catastrophic
``output_matches`` pattern cannot hang the run past its timeout."""

from __future__ import annotations

import time

from test_http import job_yaml, serve_next_links, upstream  # noqa: F401  (the fixture)


def last(project, job: str) -> dict:
    return project.history(job)[0]


def test_stderr_fails_a_job_that_exits_0_with_a_warning_and_feeds_the_breaker(project):
    project.write("""\
        jobs:
          warns:
            command: ["sh", "-c", "echo fine; echo; echo \\"warning: token $TOKEN expires soon\\" >&2; exit 0"]
            env: {TOKEN: "${API_TOKEN}"}
            fails_when: {stderr: true}
            breaker: {failures: 1, reset_after: 1h}
          quiet:
            command: ["sh", "-c", "echo fine"]
            fails_when: {stderr: true}
        """)
    secret = "s3cr3t-t0ken-value"
    result = project.cli("run", "warns", env={"API_TOKEN": secret})
    assert result.returncode == 1
    run = last(project, "warns")
    assert (run["status"], run["exit_code"]) == ("failed", 0)
    assert run["error"].startswith("fails_when.stderr: the job wrote to stderr: warning: token ")
    assert secret not in run["error"] and secret not in result.stderr and secret not in result.stdout
    assert "fails_when.stderr" in result.stderr  # cron mails the one line
    # the breaker counted it as any failure: the next run is skipped
    again = project.cli("run", "warns", env={"API_TOKEN": secret})
    assert again.returncode == 75 and last(project, "warns")["reason"] == "breaker_open"
    ok = project.cli("run", "quiet")
    assert ok.returncode == 0 and last(project, "quiet")["status"] == "success"


def test_output_matches_fails_a_run_whose_output_matches(project):
    project.write("""\
        jobs:
          sync:
            command: ["sh", "-c", "echo synced 3 rows; echo 'ERROR: 2 rows rejected'; exit 0"]
            fails_when: {output_matches: "^ERROR:"}
          clean:
            command: ["sh", "-c", "echo 'no ERROR: here'"]
            fails_when: {output_matches: "^ERROR:"}
        """)
    assert project.cli("run", "sync").returncode == 1
    assert last(project, "sync")["error"] == "fails_when.output_matches: the output matches '^ERROR:'"
    assert project.cli("run", "clean").returncode == 0  # ^ anchors at a line's start, not inside one


def test_a_catastrophic_pattern_on_1_mib_of_output_ends_within_the_run_timeout(project):
    project.write("""\
        jobs:
          big:
            command: ["python3", "-c", "import sys; sys.stdout.write('a' * (1 << 20) + '!')"]
            timeout: 8s
            fails_when: {output_matches: "(a+)+$"}
        """)
    began = time.monotonic()
    result = project.cli("run", "big", timeout=120)
    took = time.monotonic() - began
    assert result.returncode == 1, result.stderr
    run = last(project, "big")
    assert run["status"] == "failed"
    assert run["error"].startswith("fails_when.output_matches: matching '(a+)+$' against the output did not end")
    assert took < 8 + 30, took  # the timeout plus generous slack for a loaded machine: never hung


def test_a_bad_regex_is_refused_at_validate(project):
    project.write("""\
        jobs:
          a:
            command: ["true"]
            fails_when: {output_matches: "(unclosed"}
        """)
    result = project.cli("validate")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "jobs.yaml:4 jobs.a.fails_when.output_matches: '(unclosed' is not a regular expression" in line


def test_shorter_than_fails_a_run_that_ended_too_soon(project):
    project.write("""\
        jobs:
          backup:
            command: ["true"]
            fails_when: {shorter_than: 1m}
        """)
    assert project.cli("run", "backup").returncode == 1
    error = last(project, "backup")["error"]
    assert error.startswith("fails_when.shorter_than: the run took ") and error.endswith("less than 1m")


def test_exit_codes_lists_the_codes_that_fail_and_others_count_as_success(project):
    project.write("""\
        jobs:
          grep:
            command: ["sh", "-c", "exit $(cat code)"]
            fails_when: {exit_codes: [2, 3]}
        """)
    (project.path / "code").write_text("3")
    assert project.cli("run", "grep").returncode == 1
    run = last(project, "grep")
    assert (run["status"], run["exit_code"]) == ("failed", 3)
    assert run["error"].startswith("fails_when.exit_codes: exit 3 is listed")
    (project.path / "code").write_text("1")  # grep's "no match": not listed, not a failure
    assert project.cli("run", "grep").returncode == 0
    run = last(project, "grep")
    assert (run["status"], run["exit_code"], run["error"]) == ("success", 1, None)
    (project.path / "code").write_text("0")
    assert project.cli("run", "grep").returncode == 0
    project.write("""\
        jobs:
          missing:
            command: ["./no-such-program"]
            fails_when: {exit_codes: [2]}
        """)
    assert project.cli("run", "missing").returncode == 1  # could not start: still a failure
    assert last(project, "missing")["error"].startswith("command not found")


def test_longer_than_does_not_stop_the_job_and_makes_the_run_partial(project):
    project.write("""\
        jobs:
          slow:
            command: ["sh", "-c", "sleep 1.5; echo done > done.txt"]
            fails_when: {longer_than: 1s}
        """)
    result = project.cli("run", "slow")
    assert result.returncode == 0, result.stderr
    assert (project.path / "done.txt").read_text() == "done\n"  # it ran to its end
    run = last(project, "slow")
    assert run["status"] == "partial"
    assert run["error"].startswith("fails_when.longer_than: the run took 1")
    assert run["error"].endswith("more than 1.0s"), run["error"]
    assert result.stderr == f"slow: partial: {run['error']}\n"  # cron mails the warning


def test_items_below_fails_an_http_run_that_stored_too_few(project, upstream):  # noqa: F811
    serve_next_links(upstream, [{"id": 1}, {"id": 2}])
    http = """\
      url: "{base}/items"
      items: data
      next: links.next"""
    env = {"NO_PROXY": "*", "no_proxy": "*", "HTTP_PROXY": "", "HTTPS_PROXY": "", "http_proxy": "",
           "https_proxy": ""}
    project.write(job_yaml(upstream, http, extra="    fails_when: {items_below: 3}"))
    assert project.cli("run", "items", env=env).returncode == 1
    run = last(project, "items")
    assert (run["status"], run["items_processed"]) == ("failed", 2)
    assert run["error"] == "fails_when.items_below: 2 items stored, fewer than 3"
    project.write(job_yaml(upstream, http, extra="    fails_when: {items_below: 2}"))
    assert project.cli("run", "items", env=env).returncode == 0
    assert last(project, "items")["status"] == "success"


def test_rules_that_do_not_fit_the_job_kind_are_refused(project, upstream):  # noqa: F811
    project.write(job_yaml(upstream, '      url: "{base}/items"', extra="    fails_when: {stderr: true}"))
    result = project.cli("validate")
    assert result.returncode == 2 and "only a command job has a stderr" in result.stderr
    project.write("""\
        jobs:
          a:
            command: ["true"]
            fails_when: {items_below: 1}
        """)
    result = project.cli("validate")
    assert result.returncode == 2 and "a command job stores no items" in result.stderr

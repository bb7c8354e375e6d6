"""Integration defects found reviewing the issue 18/19 merge (91f6ace..082fce2): each test
shows where two branches meet."""

from __future__ import annotations

import json

import pytest

from conftest import Project
from test_serve import Served
from test_serve_writes import TOKEN, bearer, post, wait_for_run

SECRET = "zz-param-secret-0123456789"


def test_a_secret_param_given_to_serve_is_not_shown_by_the_audit_log(project: Project):
    """t1's params are secrets by name (SCHEDSYNC_PARAM_API_TOKEN: the run's record shows
    ***), but t2's audit entry of the same trigger kept them raw, and `status JOB` (and
    /job/NAME) print the audit entries."""
    project.write("""
        state: schedsync.db
        jobs:
          pull:
            params: {api_token: {}}
            command: ["sh", "-c", "true"]
    """)
    assert project.cli("status", "--init").returncode in (0, 1)  # a state for serve to write in
    server = Served(project, env={"SCHEDSYNC_SERVE_TOKEN": TOKEN})
    try:
        code, _, body = post(server, "/api/jobs/pull/trigger", {"params": {"api_token": SECRET}}, bearer())
        assert code == 202, body
        (run,) = wait_for_run(project, "pull")
        assert SECRET not in json.dumps(run)  # the run's own record redacts it
        shown = project.cli("status", "pull", "--json").stdout + project.cli("status", "pull").stdout
        status, _, page = server.get("/job/pull")
        assert SECRET not in shown, shown
        assert SECRET not in page
    finally:
        server.stop()

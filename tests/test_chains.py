"""Chains (``after:``) and upstreams (``requires:``) through the real CLI: the end of A's
run queues B's ``after`` item in the transaction that records it, and the process that
finished A starts B at once (no tick); a ``requires:`` job is skipped
``upstream_not_ready`` (exit 75) unless its upstream succeeded lately; links to unknown
jobs and cycles are refused at validate."""

from __future__ import annotations

import os
import signal
import time

from faketime import pinned
from schedsync.store import open_store
from test_tick import wait_for


def runs_of(project, job: str, n: int, timeout: float = 60) -> list[dict]:
    """The job's runs, oldest first, once ``n`` have finished (chained runs are detached)."""
    def done():
        runs = project.history(job)
        return runs if len(runs) >= n and all(r["status"] != "running" for r in runs) else None
    return list(reversed(wait_for(done, timeout, f"{n} finished runs of {job}")))


def items(project, job: str, state: str | None = None) -> list:
    store = open_store(state or str(project.state), write=False)
    try:
        return store.slots(job, 100)
    finally:
        store.close()


CHAIN = """\
jobs:
  a:
    command: ["sh", "-c", "echo a >> order.txt; test ! -e fail"]
  b:
    command: ["sh", "-c", "echo b >> order.txt"]
    after: [{job: a, on: success}]
  c:
    command: ["sh", "-c", "echo c >> order.txt"]
    after: [{job: a, on: failure}]
"""


def test_a_success_starts_its_after_job_at_once_with_parent_set(project):
    project.write(CHAIN)
    result = project.cli("run", "a")
    assert result.returncode == 0, result.stderr
    [a] = runs_of(project, "a", 1)
    [b] = runs_of(project, "b", 1)  # no tick ran: the process that finished a started b
    assert (b["status"], b["trigger"], b["parent"]) == ("success", "after", a["id"])
    assert a["parent"] is None
    assert project.history("c") == [] and items(project, "c") == []
    [item] = items(project, "b")
    assert (item.kind, item.state, item.parent, item.run_id) == ("after", "ran", a["id"], b["id"])
    table = project.cli("history", "b", env={"COLUMNS": "200"})
    assert f"after run {a['id']}" in table.stdout
    assert (project.path / "order.txt").read_text().split() == ["a", "b"]


def test_a_failure_starts_the_on_failure_job_and_not_the_on_success_one(project):
    project.write(CHAIN)
    (project.path / "fail").touch()
    assert project.cli("run", "a").returncode == 1
    [a] = runs_of(project, "a", 1)
    [c] = runs_of(project, "c", 1)
    assert (c["status"], c["trigger"], c["parent"]) == ("success", "after", a["id"])
    # b's item would have been queued in the transaction that recorded a's end: there is none
    assert items(project, "b") == [] and project.history("b") == []


def test_a_chain_survives_the_upstream_process_dying_right_after_its_end(project):
    project.write(CHAIN)
    # The run's end is recorded, then it waits before starting b: killed there, nothing of
    # b would be left if b were queued by anything but the step that recorded a's end.
    proc = project.start("run", "a", env={"SCHEDSYNC_TEST_CHAIN_PAUSE": "120"})
    try:
        [a] = wait_for(lambda: [r for r in project.history("a") if r["status"] == "success"], 60, "a's end")
        [item] = items(project, "b")
        assert (item.kind, item.state, item.parent) == ("after", "queued", a["id"])
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    assert project.history("b") == []
    assert project.cli("tick").returncode == 0  # the fallback starts it
    [b] = runs_of(project, "b", 1)
    assert (b["status"], b["trigger"], b["parent"]) == ("success", "after", a["id"])
    assert items(project, "c") == []


def test_a_skipped_run_starts_no_chain(project):
    project.write(CHAIN)
    assert project.cli("pause", "a").returncode == 0
    assert project.cli("run", "a").returncode == 75
    assert [r["reason"] for r in project.history("a")] == ["paused"]
    assert items(project, "b") == [] and items(project, "c") == []


def test_a_requires_job_runs_only_after_a_recent_success(project):
    project.write("""\
        jobs:
          a:
            command: ["sh", "-c", "test ! -e fail"]
          b:
            command: ["true"]
            requires: {job: a, within: 1h}
        """)
    never = project.cli("run", "b")
    assert never.returncode == 75, never.stderr
    [skip] = project.history("b")
    assert (skip["status"], skip["reason"]) == ("skipped", "upstream_not_ready")
    assert "a never ran" in skip["error"]

    (project.path / "fail").touch()
    assert project.cli("run", "a").returncode == 1
    [failed] = project.history("a")
    assert project.cli("run", "b").returncode == 75
    error = project.history("b")[0]["error"]
    assert f"(run {failed['id']}) failed at {failed['finished_at']}" in error, error

    (project.path / "fail").unlink()
    assert project.cli("run", "a").returncode == 0
    ok = project.history("a")[0]
    assert project.cli("run", "b").returncode == 0
    assert project.history("b")[0]["status"] == "success"

    # too old: b's clock three hours on (libfaketime), a's success is outside the window
    late = project.cli("run", "b", env=pinned(project.env, time.time() + 3 * 3600))
    assert late.returncode == 75, late.stderr
    skipped = project.history("b")[0]
    assert skipped["reason"] == "upstream_not_ready"
    assert f"(run {ok['id']}) succeeded at {ok['finished_at']}" in skipped["error"]
    assert " ago" in skipped["error"], skipped["error"]


def test_a_cycle_is_refused_at_validate_with_the_cycle_spelled_out(project):
    project.write("""\
        jobs:
          a:
            command: ["true"]
            after: [{job: c}]
          b:
            command: ["true"]
            after: [{job: a, on: always}]
          c:
            command: ["true"]
            requires: {job: b, within: 1h}
        """)
    result = project.cli("validate")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and "jobs.yaml:" in line and "→" in line, line
    cycle = line.split("each other: ")[1].split(" — ")[0]
    names = cycle.split(" → ")
    assert names[0] == names[-1] and sorted(names[:-1]) == ["a", "b", "c"], line
    assert cycle in ("a → b → c → a", "b → c → a → b", "c → a → b → c")
    run = project.cli("run", "a")
    assert run.returncode == 2 and "Traceback" not in run.stderr


def test_a_job_waiting_on_itself_is_a_cycle(project):
    project.write("""\
        jobs:
          a:
            command: ["true"]
            after: [a]
        """)
    result = project.cli("validate")
    assert result.returncode == 2 and "a → a" in result.stderr, result.stderr


def test_an_unknown_job_in_after_or_requires_is_refused(project):
    project.write("""\
        jobs:
          a:
            command: ["true"]
          b:
            command: ["true"]
            after: [{job: aa, on: success}]
        """)
    result = project.cli("validate")
    assert result.returncode == 2
    assert "jobs.yaml:6 jobs.b.after[0].job: no job named 'aa'" in result.stderr, result.stderr
    assert "did you mean 'a'?" in result.stderr
    project.write("""\
        jobs:
          a:
            command: ["true"]
          b:
            command: ["true"]
            requires: {job: x, within: 1h}
        """)
    result = project.cli("validate")
    assert result.returncode == 2 and "jobs.b.requires.job: no job named 'x'" in result.stderr, result.stderr
    project.write("""\
        jobs:
          a:
            command: ["true"]
          b:
            command: ["true"]
            after: [{job: a, on: sometimes}]
        """)
    result = project.cli("validate")
    assert result.returncode == 2 and "jobs.b.after[0].on: 'sometimes' is not one of" in result.stderr


def test_a_killed_upstream_once_reaped_queues_its_on_failure_job(project):
    project.write("""\
        jobs:
          a:
            command: ["sh", "-c", "echo started > started.txt; sleep 60"]
          b:
            command: ["true"]
            after: [{job: a, on: failure}]
          ok:
            command: ["true"]
            after: [{job: a, on: success}]
        """)
    proc = project.start("run", "a")
    try:
        wait_for(lambda: (project.path / "started.txt").exists(), 30, "a to start")
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # schedsync dies mid-run: its keeper ends the job
        proc.communicate(timeout=30)
    assert project.cli("tick").returncode == 0  # reaps a: crashed, a failure to the chains
    [a] = runs_of(project, "a", 1)
    assert a["status"] == "crashed"
    [item] = items(project, "b")  # queued in the step that marked a crashed
    assert (item.kind, item.parent) == ("after", a["id"])
    wait_for(lambda: project.cli("tick").returncode == 0 and project.history("b"), 30, "a tick to start b")
    [b] = runs_of(project, "b", 1)
    assert (b["status"], b["trigger"], b["parent"]) == ("success", "after", a["id"])
    assert items(project, "ok") == []


def test_a_chain_on_postgresql_is_queued_with_the_end_and_runs_with_its_parent(project, pg_url):
    project.env["SCHEDSYNC_STATE"] = pg_url
    project.write(CHAIN)
    assert project.cli("run", "a").returncode == 0
    [a] = runs_of(project, "a", 1)
    [b] = runs_of(project, "b", 1)
    assert (b["status"], b["trigger"], b["parent"]) == ("success", "after", a["id"])
    [item] = items(project, "b", pg_url)
    assert (item.kind, item.parent, item.run_id) == ("after", a["id"], b["id"])
    assert items(project, "c", pg_url) == []

    # The store's end of a run is the one step that queues: a run finished through it
    # (no process left to start anything) leaves the item queued, once, for the tick.
    from schedsync.store.base import BreakerSpec

    store = open_store(pg_url)
    try:
        spec = BreakerSpec("a", {"failures": 5, "reset_after": 600.0, "half_open_runs": 1})
        admitted = store.admit_run("a", "manual", spec, 60.0, [], {}, 0)
        run = admitted.run
        run.status, run.finished_at, run.duration_ms = "failed", store.now(), 5
        store.finish_run(run, spec, True, False, 60.0, {}, after=["c"])
        store.finish_run(run, spec, True, False, 60.0, {}, after=["c"])  # sent twice: one item
        [queued] = store.slots("c", 10)
        assert (queued.kind, queued.state, queued.parent) == ("after", "queued", run.id)
        # a run found crashed (reaped) queues its on: failure jobs in the step that marks it
        crashed = store.admit_run("a", "manual", spec, 60.0, [], {}, 0).run
        assert store.mark_crashed(crashed, "schedsync died", spec, False, after=["b"])
        assert not store.mark_crashed(crashed, "schedsync died", spec, False, after=["b"])
        assert [(i.kind, i.parent) for i in store.slots("b", 10) if i.state == "queued"] == [("after", crashed.id)]
    finally:
        store.close()
    assert project.cli("tick").returncode == 0
    [c] = runs_of(project, "c", 1)
    assert (c["trigger"], c["parent"]) == ("after", run.id)


def test_a_plain_run_imports_nothing_of_chains_or_rules(project):
    """Every cron tick of a job without after/requires/fails_when pays for nothing of them,
    even in a registry whose other jobs have them (the second run: from the config cache)."""
    import subprocess
    import sys

    project.write("""\
        jobs:
          plain:
            command: ["true"]
          up:
            command: ["true"]
          down:
            command: ["true"]
            after: [up]
            requires: {job: up, within: 1h}
            fails_when: {stderr: true, output_matches: "x"}
        """)
    probe = ("import runpy, sys\n"
             "sys.argv = ['schedsync', '-c', sys.argv[1], 'run', 'plain']\n"
             "try:\n    runpy.run_module('schedsync', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print(sorted(m for m in sys.modules if m.startswith('schedsync.') or m == 'subprocess'))\n")
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", probe, str(project.config)], capture_output=True, text=True,
                             env=project.env, cwd=project.path, timeout=60)
    assert "schedsync.app.runner" in out.stdout, out.stderr
    for module in ("schedsync.app.chains", "schedsync.app.rules", "schedsync.app.starter",
                   "schedsync.config.chains", "schedsync.app.tick", "'subprocess'"):
        assert module not in out.stdout, module

"""``log: {file: PATH}``: the JSON run log, written by real ``schedsync run`` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

SECRET = "Zx9-log-s3cret-Qw7"

JOBS = """
    log: {file: logs/runs.jsonl}
    jobs:
      chatty:
        overlap: allow
        breaker: {failures: 500}  # 50 failures must not open it: every run runs
        env: {MY_TOKEN: "${API_TOKEN}"}
        command: >-
          echo "starting with $MY_TOKEN"; head -c 6000 /dev/zero | tr "\\0" y; echo;
          echo "token $MY_TOKEN"; exit 3
      fine:
        command: ["true"]
"""


def lines_of(path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_fifty_concurrent_runs_append_fifty_whole_json_lines_without_the_secret(project):
    project.write(JOBS)
    (project.path / "logs").mkdir()
    assert project.cli("run", "--force-slot", "fine").returncode == 0  # the state exists before the crowd
    log = project.path / "logs" / "runs.jsonl"
    log.unlink()
    procs = [project.start("run", "chatty", env={"API_TOKEN": SECRET}) for _ in range(50)]
    try:
        for proc in procs:
            proc.communicate(timeout=240)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [proc.returncode for proc in procs] == [1] * 50
    raw = log.read_bytes()
    assert SECRET.encode() not in raw
    records = lines_of(log)
    assert len(records) == 50
    assert min(len(line) for line in raw.splitlines()) > 4096  # over PIPE_BUF: the output is in each
    assert {r["event"] for r in records} == {"run"}
    assert sorted(r["id"] for r in records) == sorted(r["id"] for r in project.history("chatty"))
    assert {(r["job"], r["status"], r["exit_code"]) for r in records} == {("chatty", "failed", 3)}
    assert all(r["error"] == "exit 3: token ***" for r in records)
    # history --json's RUN object, and nothing more than the event's name
    [newest] = [r for r in records if r["id"] == project.history("chatty", 1)[0]["id"]]
    assert {k: v for k, v in newest.items() if k != "event"} == project.history("chatty", 1)[0]


def test_a_breaker_transition_is_a_line_of_its_own(project):
    project.write("""
        log: {file: runs.jsonl}
        jobs:
          broken:
            command: "exit 2"
            breaker: {failures: 2, reset_after: 10m}
    """)
    for _ in range(3):
        project.cli("run", "--force-slot", "broken")
    records = lines_of(project.path / "runs.jsonl")
    assert [(r["event"], r.get("status"), r.get("to")) for r in records] == [
        ("run", "failed", None), ("run", "failed", None), ("breaker", None, "open"), ("run", "skipped", None)]
    opened = records[2]
    assert (opened["breaker"], opened["from"], opened["job"], opened["run_id"], opened["failures"]) == \
        ("broken", "closed", "broken", records[1]["id"], 2)
    assert opened["opens_until"].endswith("Z")
    assert project.cli("breaker", "reset", "broken").returncode == 0
    closed = lines_of(project.path / "runs.jsonl")[4]
    assert {k: closed[k] for k in ("event", "breaker", "from", "to", "job", "reason")} == {
        "event": "breaker", "breaker": "broken", "from": "open", "to": "closed", "job": "broken",
        "reason": "reset by hand"}
    assert project.cli("breaker", "reset", "broken").returncode == 0  # closed already: no line
    assert len(lines_of(project.path / "runs.jsonl")) == 5


def test_the_file_is_reopened_for_each_run_so_logrotate_can_rename_it(project):
    project.write(JOBS)
    assert project.cli("run", "--force-slot", "fine").returncode == 0  # creates logs/? no: the folder must exist
    log = project.path / "logs" / "runs.jsonl"
    (project.path / "logs").mkdir(exist_ok=True)
    assert project.cli("run", "--force-slot", "fine").returncode == 0
    log.rename(log.with_suffix(".jsonl.1"))  # what logrotate does (no copytruncate)
    assert project.cli("run", "--force-slot", "fine").returncode == 0
    assert len(lines_of(log.with_suffix(".jsonl.1"))) == 1 and len(lines_of(log)) == 1


def test_a_log_that_cannot_be_written_warns_and_leaves_the_result_alone(project):
    project.write(JOBS)  # logs/ does not exist
    result = project.cli("run", "--force-slot", "fine")
    assert result.returncode == 0
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("warning: cannot append to the run log ") and " — " in result.stderr
    assert project.history("fine")[0]["status"] == "success"


def test_without_log_the_run_path_imports_no_log_code(project):
    project.write(JOBS.replace("log: {file: logs/runs.jsonl}", ""))
    probe = ("import runpy, sys\n"
             "sys.argv = ['schedsync', '-c', sys.argv[1], 'run', 'fine']\n"
             "try:\n    runpy.run_module('schedsync', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print(sorted(m for m in sys.modules if m.startswith('schedsync.app.')))\n")
    out = subprocess.run([sys.executable, "-c", probe, str(project.config)], capture_output=True, text=True,
                         env=project.env, cwd=project.path, timeout=60)
    assert "schedsync.app.run" in out.stdout, out.stderr
    assert "runlog" not in out.stdout and "report" not in out.stdout


def test_log_is_validated_with_its_line(project):
    project.write("""
        jobs:
          fine:
            command: ["true"]
        log: {fille: x.jsonl}
    """)
    result = project.cli("validate")
    assert result.returncode == 2
    assert "jobs.yaml:5 log.fille: unknown key" in result.stderr, result.stderr
    project.write("""
        jobs:
          fine:
            command: ["true"]
        log: /var/log/x.jsonl
    """)
    result = project.cli("run", "--force-slot", "fine")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "jobs.yaml:5 log: must be a mapping with a `file:` key" in \
        result.stderr and "Traceback" not in result.stderr


BIG_WRITER = """
import sys
from schedsync.app.runlog import append
path, me = sys.argv[1], sys.argv[2]
for i in range(20):
    append(path, [{"event": "run", "writer": me, "i": i, "pad": me * 70000}])
"""


def test_lines_far_over_pipe_buf_from_many_processes_never_interleave(tmp_path, home):
    # PIPE_BUF (4 KiB) bounds atomic writes to pipes; a regular file opened O_APPEND takes
    # each write(2) whole. Eight real processes, twenty 70 KB lines each.
    path = tmp_path / "big.jsonl"
    writers = [subprocess.Popen([sys.executable, "-c", BIG_WRITER, str(path), chr(ord("a") + n)], env=home)
               for n in range(8)]
    deadline = time.monotonic() + 120
    for proc in writers:
        proc.wait(timeout=max(1, deadline - time.monotonic()))
    assert [proc.returncode for proc in writers] == [0] * 8
    records = lines_of(path)
    assert len(records) == 160
    for record in records:
        assert record["pad"] == record["writer"] * 70000
    assert os.stat(path).st_mode & 0o777 == 0o640

"""`schedsync run` of command jobs, through the real CLI in real processes."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import sqlite3
import subprocess
import time

import pytest


def wait_for(predicate, timeout=10.0, step=0.05):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(step)
    return False


def processes_with(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(pid))
            except OSError:
                pass
    return found


def read_terminal(leader: int) -> bytes:
    """Everything written to a pseudo-terminal until its last writer closes it."""
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the other side is closed
            return seen
        if not chunk:
            return seen
        seen += chunk


def test_a_successful_run_under_cron_prints_nothing_and_is_recorded(project):
    project.write('jobs:\n  hello: {command: ["echo", "hello from the job"]}\n')
    result = project.cli("run", "hello")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    [run] = project.history("hello")
    assert run["status"] == "success" and run["trigger"] == "cron"
    assert run["exit_code"] == 0 and run["attempts"] == 1 and run["pid"] > 0
    assert run["started_at"].endswith("Z") and run["duration_ms"] >= 0
    assert "hello from the job" in project.cli("history", "hello", "--json").stdout


def test_a_failed_run_under_cron_shows_the_held_output_and_one_error_line(project):
    project.write('jobs:\n  broken: {command: "echo working; echo oops >&2; exit 3"}\n')
    result = project.cli("run", "broken")
    assert result.returncode == 1
    assert result.stdout == "working\noops\n"
    assert result.stderr.startswith("error: broken: failed in ")
    assert re.search(r": exit 3: oops — see `[^`]+ -c [^`]+ history broken`$", result.stderr.rstrip())
    assert len(result.stderr.splitlines()) == 1
    [run] = project.history("broken")
    assert (run["status"], run["exit_code"], run["error"]) == ("failed", 3, "exit 3: oops")


def test_a_list_command_runs_without_a_shell(project):
    project.write('jobs:\n  literal: {command: ["sh", "-c", "echo \\"$0\\" > out", "$HOME;rm"]}\n')
    assert project.cli("run", "literal").returncode == 0
    assert (project.path / "out").read_text() == "$HOME;rm\n"


def test_a_command_that_does_not_exist_fails_with_exit_1(project):
    project.write('jobs:\n  ghost: {command: ["no-such-program-here"]}\n')
    result = project.cli("run", "ghost")
    assert result.returncode == 1
    assert "command not found: no-such-program-here" in result.stderr
    assert project.history("ghost")[0]["exit_code"] == 127


def test_env_and_cwd_reach_the_command(project):
    (project.path / "work").mkdir()
    project.write("""\
        jobs:
          where:
            command: 'echo "$GREETING from $(pwd)" > out'
            cwd: work
            env: {GREETING: "${WHO:-hi}"}
        """)
    assert project.cli("run", "where", env={"WHO": "hey"}).returncode == 0
    assert (project.path / "work" / "out").read_text() == f"hey from {project.path / 'work'}\n"


def test_a_second_run_is_skipped_while_the_first_holds_the_lock(project):
    project.write('jobs:\n  slow: {command: "touch started; sleep 3"}\n')
    first = project.start("run", "slow")
    assert wait_for(lambda: (project.path / "started").exists())
    second = project.cli("run", "slow")
    assert (second.returncode, second.stdout, second.stderr) == (75, "", "")
    assert first.wait(20) == 0
    runs = project.history("slow")
    assert [r["status"] for r in runs] == ["skipped", "success"]  # newest first
    assert runs[0]["reason"] == "locked" and "still going" in runs[0]["error"]


def test_overlap_wait_runs_once_the_lock_is_free(project):
    project.write('jobs:\n  queued: {command: "echo x >> ran; sleep 1", overlap: wait 10s}\n')
    first = project.start("run", "queued")
    assert wait_for(lambda: (project.path / "ran").exists())
    second = project.cli("run", "queued")
    assert second.returncode == 0 and first.wait(10) == 0
    assert (project.path / "ran").read_text() == "x\nx\n"


def test_overlap_allow_takes_no_lock(project):
    project.write('jobs:\n  free: {command: "echo x >> ran; sleep 1", overlap: allow}\n')
    procs = [project.start("run", "free") for _ in range(3)]
    assert [p.wait(20) for p in procs] == [0, 0, 0]
    assert [r["status"] for r in project.history("free")] == ["success"] * 3


def test_kill_9_of_schedsync_takes_its_job_along_and_records_a_crash(project):
    # The job counts how many copies of itself run at once in a shared file.
    project.write("""\
        jobs:
          guarded:
            command: 'echo $$ >> copies; sleep 6; echo done >> finished'
        """)
    first = project.start("run", "guarded")
    assert wait_for(lambda: (project.path / "copies").exists())
    first.send_signal(signal.SIGKILL)
    first.wait()
    # The job dies with schedsync, well before its own 6 s: its lock is free and no copy
    # outlives it (the bound leaves room for a loaded machine; `finished` proves the kill).
    job = int((project.path / "copies").read_text())
    assert wait_for(lambda: not os.path.exists(f"/proc/{job}"), timeout=5)
    started = time.time()
    second = project.cli("run", "guarded")
    assert second.returncode == 0, second.stderr
    assert time.time() - started < 12  # the second copy ran its 6 s; it did not wait for the first
    assert len((project.path / "copies").read_text().split()) == 2
    assert (project.path / "finished").read_text().split() == ["done"]
    runs = project.history("guarded")
    assert [r["status"] for r in runs] == ["success", "crashed"]
    assert "died before the run ended" in runs[-1]["error"]


def test_a_killed_run_with_no_survivor_is_crashed_and_the_next_run_proceeds(project):
    project.write('jobs:\n  doomed: {command: ["sleep", "30"]}\n')
    first = project.start("run", "doomed")
    assert wait_for(lambda: any(r["status"] == "running" for r in project.history("doomed")))
    sleeper = [p for p in processes_with("sleep\x0030") if p != first.pid]
    first.send_signal(signal.SIGKILL)
    first.wait()
    for pid in sleeper:
        os.kill(pid, signal.SIGKILL)
    project.write('jobs:\n  doomed: {command: ["true"]}\n')
    assert project.cli("run", "doomed").returncode == 0
    assert [r["status"] for r in project.history("doomed")] == ["success", "crashed"]


def test_a_timeout_kills_the_whole_process_group(project):
    marker = f"sleep-marker-{os.getpid()}"
    sleeper = f'python3 -c "import time; time.sleep(60)" {marker}'
    project.write(f"""\
        jobs:
          hung:
            timeout: 1s
            command: '{sleeper} & {sleeper}; wait'
        """)
    started = time.time()
    result = project.cli("run", "hung")
    assert result.returncode == 1, result.stderr
    assert time.time() - started < 8
    assert "timed out after 1.0s" in result.stderr
    assert wait_for(lambda: not processes_with(marker), timeout=5), "job processes survived"
    [run] = project.history("hung")
    assert run["status"] == "timeout" and run["attempts"] == 1


def test_a_command_ignoring_sigterm_is_killed_after_the_grace(project):
    project.write("""\
        jobs:
          stubborn:
            timeout: 1s
            command: 'trap "" TERM; sleep 30'
        """)
    started = time.time()
    assert project.cli("run", "stubborn").returncode == 1
    assert 5 <= time.time() - started < 15
    assert project.history("stubborn")[0]["status"] == "timeout"


def test_sigterm_to_schedsync_stops_the_job_and_records_it_cancelled(project):
    project.write('jobs:\n  long: {command: "touch started; sleep 29.917"}\n')
    proc = project.start("run", "long")
    assert wait_for(lambda: (project.path / "started").exists())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 1
    [run] = project.history("long")
    assert (run["status"], run["reason"], run["error"]) == ("failed", "cancelled", "cancelled by SIGTERM")
    # The lock is free again: the next run of the job starts (75 would mean it is held).
    # The job's processes hold the lock until they die, moments after schedsync exits,
    # so wait for exactly that, then run a quick command that waits on nothing else.
    assert wait_for(lambda: not processes_with("29.917"), timeout=15), "the job outlived the cancel"
    project.write('jobs:\n  long: {command: "true"}\n')
    again = project.cli("run", "long")
    assert again.returncode == 0, again.stderr
    assert project.history("long")[0]["status"] == "success"


def test_a_secret_echoed_by_the_job_appears_nowhere(project):
    secret = "sk-live-0123456789abcdef"
    project.write("""\
        jobs:
          leaky:
            command: ["sh", "-c", "echo token is $T; echo $T >&2; exit 1"]
            env: {T: "${SYNC_TOKEN}"}
        """)
    result = project.cli("run", "leaky", env={"SYNC_TOKEN": secret})
    assert result.returncode == 1
    assert "token is ***" in result.stdout
    assert secret not in result.stdout + result.stderr
    history = project.cli("history", "leaky", "--json").stdout
    assert "token is ***" in history and secret not in history
    status = project.cli("status", "--json").stdout
    assert secret not in status
    for path in project.path.iterdir():
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_on_a_terminal_output_streams_live_and_a_summary_is_printed(project):
    project.write('jobs:\n  hello: {command: ["echo", "live line"]}\n')
    leader, follower = pty.openpty()
    proc = subprocess.Popen(project.argv("run", "hello"), stdin=follower, stdout=follower,
                            stderr=follower, env=project.env, cwd=project.path)
    os.close(follower)
    output = read_terminal(leader)
    assert proc.wait(10) == 0
    text = output.decode()
    assert "live line" in text and "hello: success in" in text
    assert project.history("hello")[0]["trigger"] == "manual"


def test_fifty_processes_at_once_are_all_recorded(project):
    jobs = "\n".join(f"  job{i}: {{command: [\"true\"]}}" for i in range(10))
    project.write(f"jobs:\n{jobs}\n")
    procs = [project.start("run", f"job{i % 10}") for i in range(50)]
    results = [(p.wait(120), p.stderr.read()) for p in procs]
    assert all(code in (0, 75) for code, _ in results), results
    assert not any("locked" in err or "Traceback" in err for _, err in results)
    total = sum(len(project.history(f"job{i}")) for i in range(10))
    assert total == 50


def test_a_paused_job_is_skipped_and_recorded(project):
    project.write('jobs:\n  quiet: {command: ["touch", "ran"]}\n')
    assert project.cli("pause", "quiet").returncode == 0
    result = project.cli("run", "quiet")
    assert (result.returncode, result.stderr) == (75, "")
    assert not (project.path / "ran").exists()
    assert project.history("quiet")[0]["reason"] == "paused"
    assert project.cli("resume", "quiet").returncode == 0
    assert project.cli("run", "quiet").returncode == 0


def test_the_state_file_is_private_to_the_user(project):
    project.write('jobs:\n  a: {command: ["true"]}\n')
    assert project.cli("run", "a").returncode == 0
    assert project.state.stat().st_mode & 0o077 == 0


def immutable(path, on: bool) -> None:
    if subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True).returncode:
        if os.geteuid() == 0:
            pytest.skip("chattr is not supported on this filesystem")
        path.chmod(0o400 if on else 0o600)


def test_a_read_only_state_file_stops_the_run_before_the_job_starts(project):
    project.write('jobs:\n  a: {command: ["touch", "ran"]}\n')
    assert project.cli("run", "a").returncode == 0
    (project.path / "ran").unlink()
    before = project.state.read_bytes()
    immutable(project.state, True)
    try:
        result = project.cli("run", "a")
    finally:
        immutable(project.state, False)
    assert result.returncode == 1
    assert result.stderr == (f"error: state file {project.state} is read-only — make it (and its "
                             "folder) writable by this user, or pass --state PATH\n")
    assert not (project.path / "ran").exists()
    assert project.state.read_bytes() == before


def test_a_file_that_is_not_a_database_is_left_as_it_was(project):
    project.write('jobs:\n  a: {command: ["touch", "ran"]}\n')
    project.state.write_text("these are my notes, not a database\n" * 100)
    before = project.state.read_bytes()
    result = project.cli("run", "a")
    assert result.returncode == 1
    assert result.stderr == (f"error: state file {project.state} is not a schedsync state database — "
                             "point --state at a schedsync state file, or move this file aside\n")
    assert project.state.read_bytes() == before and not (project.path / "ran").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a private mount namespace (root)")
def test_a_full_disk_is_one_line_and_loses_no_records(project):
    disk = project.path / "disk"
    disk.mkdir()
    project.write('state: disk/schedsync.db\njobs:\n  a: {command: ["true"]}\n')
    script = f"""
        set -e
        mount -t tmpfs -o size=2m tmpfs {disk}
        {' '.join(project.argv('run', 'a'))}
        dd if=/dev/zero of={disk}/filler bs=1k count=4000 2>/dev/null || true
        {' '.join(project.argv('run', 'a'))} && exit 99 || echo "exit=$?" >&2
        rm {disk}/filler
        {' '.join(project.argv('history', 'a', '--json'))}
    """
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True,
                            env={**project.env, "SCHEDSYNC_STATE": f"{disk}/schedsync.db"}, cwd=project.path,
                            timeout=60)
    if "mount:" in result.stderr:
        pytest.skip("tmpfs mounts are not allowed here")
    assert "exit=1" in result.stderr
    assert (f"error: state file {disk}/schedsync.db cannot be written: the disk is full"
            " — free space on that disk") in result.stderr
    assert [r["status"] for r in json.loads(result.stdout)] == ["success"]


def test_the_database_stays_consistent_after_a_kill_mid_write(project):
    project.write('jobs:\n  a: {command: ["true"], overlap: allow}\n')
    for _ in range(5):
        proc = project.start("run", "a")
        time.sleep(0.15)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    db = sqlite3.connect(project.state)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    assert project.cli("run", "a").returncode == 0
    assert all(r["status"] in ("success", "crashed") for r in project.history("a"))


def test_a_variable_in_a_shell_string_is_never_parsed_as_shell_code(project):
    project.write("""\
        jobs:
          quoted:
            command: 'printf "%s\\\\n" "${MY_PASS}" > got.txt; echo "${GREETING:-hi} ${WHO}"'
            env: {WHO: there}
        """)
    value = "s3cr;touch INJECTED;x"
    result = project.cli("run", "quoted", env={"MY_PASS": value})
    assert (result.returncode, result.stderr) == (0, "")
    assert not (project.path / "INJECTED").exists()
    assert (project.path / "got.txt").read_text() == value + "\n"
    assert project.cli("history", "quoted", "--json").stdout.count("hi there") == 1


def test_a_secret_named_env_entry_is_redacted_even_when_it_comes_from_a_variable(project):
    project.write("""\
        jobs:
          leaky:
            command: ["sh", "-c", "echo $API_TOKEN; exit 1"]
            env: {API_TOKEN: "${UPSTREAM_CREDENTIAL_VALUE}"}
        """)
    result = project.cli("run", "leaky", env={"UPSTREAM_CREDENTIAL_VALUE": "tok-998877"})
    assert result.returncode == 1
    assert "tok-998877" not in result.stdout + result.stderr and "***" in result.stdout


def test_a_secret_split_across_reads_of_an_endless_line_is_still_redacted(project):
    secret = "supersecret123456"
    # 8190 bytes, then the secret in two writes with a pause, and no newline until later.
    script = ("import sys, time, os; w = sys.stdout.buffer; s = os.environ['SYNC_TOKEN'];"
              "w.write(b'x' * 8190 + s[:6].encode()); w.flush(); time.sleep(0.3);"
              "w.write(s[6:].encode() + b' end'); w.flush(); sys.exit(1)")
    project.write(f"""\
        jobs:
          long:
            command: ["python3", "-c", "{script}"]
            env: {{SYNC_TOKEN: "${{SYNC_TOKEN}}"}}
        """)
    leader, follower = pty.openpty()
    proc = subprocess.Popen(project.argv("run", "long"), stdin=follower, stdout=follower,
                            stderr=follower, env={**project.env, "SYNC_TOKEN": secret}, cwd=project.path)
    os.close(follower)
    seen = read_terminal(leader)
    assert proc.wait(20) == 1
    text = seen.decode(errors="replace").replace("\r", "").replace("\n", "")
    assert "***" in text and secret[:6] not in text.replace("x" * 8190, "")


def test_a_job_that_ended_while_schedsync_was_stopped_keeps_its_result(tmp_path):
    """A schedsync stopped (SIGSTOP) while its job ran to its end, resumed past the run's
    deadline or with its lease unconfirmed: the job's exit is its result, not a timeout or a
    fence noticed afterwards. (Found by tests/test_cluster_faults.py: a job that wrote its
    last line at 954.48 was recorded "fenced" at 965.38.) The real keeper and job, seen by
    the loop that watches them as a resumed schedsync's would."""
    from schedsync.jobs.command import Output, _pump, _spawn

    keeper, failure = _spawn(["true"], str(tmp_path), dict(os.environ), (), time.monotonic() + 60)
    assert failure is None
    try:
        end = time.monotonic() + 30
        while os.waitid(os.P_PID, keeper.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            assert time.monotonic() < end, "the keeper of `true` did not end"
            time.sleep(0.01)
        output = Output(lambda text: text)
        assert _pump(keeper, keeper.stdout, output, time.monotonic() - 1) is True  # past the deadline
        assert _pump(keeper, keeper.stdout, output, time.monotonic() + 60, held=lambda: False) is True
    finally:
        code = keeper.wait()
        os.close(keeper.stdout)
    assert code == 0

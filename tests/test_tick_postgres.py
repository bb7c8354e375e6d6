"""``schedsync tick`` on PostgreSQL, across simulated hosts (``unshare --uts``: each tick,
and the runs it starts, has its own host name; the database is the test process's
throwaway server on a Unix socket). Ten ticks at once on three hosts start each due
item exactly once cluster-wide (``FOR UPDATE SKIP LOCKED`` and one claimer per job)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from schedsync.store import open_store
from test_tick import finished, iso, minute

needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                reason="simulated hosts need root and unshare")


@pytest.fixture
def pg(project, pg_url):
    """The project, its state the test's fresh PostgreSQL database."""
    project.env["SCHEDSYNC_STATE"] = pg_url
    return project


def on_host(name: str, project, *args: str) -> subprocess.Popen:
    """``schedsync ARGS`` with the host name ``name``: a UTS namespace only, so the runs a
    tick starts outlive it (a PID namespace would end them with the tick)."""
    argv = " ".join(f"'{a}'" for a in project.argv(*args))
    return subprocess.Popen(["unshare", "--uts", "sh", "-c", f"hostname {name} && exec {argv}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, cwd=project.path, env=project.env)


@needs_root
def test_ten_ticks_on_three_hosts_start_each_item_once(pg, pg_url):
    jobs = "jobs:\n" + "".join(
        f"  t{i}:\n    schedule: \"* * * * *\"\n    run_by: tick\n"
        f"    command: [\"sh\", \"-c\", \"echo \\\"$SCHEDSYNC_SLOT\\\" >> t{i}.out\"]\n" for i in range(4))
    jobs += ("  filled:\n    schedule: \"0 * * * *\"\n"
             "    command: [\"sh\", \"-c\", \"echo \\\"$SCHEDSYNC_SLOT\\\" >> filled.out\"]\n")
    pg.config.write_text(jobs)
    t = minute()
    backfill = [t - 3600 * i for i in range(1, 5)]
    store = open_store(pg_url)
    store.enqueue("filled", [{"slot": s, "kind": "backfill", "due_at": s} for s in backfill])
    store.close()
    ticks = [on_host(f"cron{i % 3}", pg, "tick", "--now", iso(t + 5)) for i in range(10)]
    for proc in ticks:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and err == "", err
    hosts = set()
    for i in range(4):
        [run] = finished(pg, f"t{i}", 1)
        assert run["slot"] == iso(t) and run["status"] == "success"
        hosts.add(run["host"])
    for n in range(30):  # the queue drains one item per job at a time, on whichever host ticks
        runs = finished(pg, "filled", 1)
        if len(runs) == len(backfill):
            break
        proc = on_host(f"cron{n % 3}", pg, "tick", "--now", iso(t + 6 + n))
        proc.communicate(timeout=120)
    time.sleep(2)  # a duplicate start would show by now
    runs = pg.history("filled")
    assert [(r["slot"], r["status"]) for r in runs] == [(iso(s), "success") for s in backfill]
    hosts |= {r["host"] for r in runs}
    assert hosts <= {"cron0", "cron1", "cron2"}  # each run on the host whose tick started it
    assert all(len(pg.history(f"t{i}")) == 1 for i in range(4))
    assert sorted((pg.path / "filled.out").read_text().split()) == sorted(iso(s) for s in backfill)

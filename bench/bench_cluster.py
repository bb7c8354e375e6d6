"""A wave of every-minute jobs on several simulated hosts against one PostgreSQL.

    python bench/bench_cluster.py [--hosts 6] [--jobs 100] [--sleep 5] [--mode both|direct|pgbouncer]
                                  [--drive both|cron|tick]

Starts a throwaway PostgreSQL with the default ``max_connections = 100`` (as the
tests do: Debian's binaries, a unix socket) and, for ``pgbouncer``, a real PgBouncer in
``pool_mode = transaction`` in front of it (``tests/pgbouncer.py``). Each simulated host
is ``unshare --uts --pid --fork`` with its own host name (as ``tests/pg_host.py``; needs
root); on each, cron's wave is imitated: ``--jobs`` processes ``schedsync run jNNN``
started at one instant (no terminal: cron-triggered, so each slot runs once across
hosts and the other hosts skip it ``already_ran``). Every job appends its start to
one log with O_APPEND (the truth) and sleeps ``--sleep`` seconds.

Reports, per mode: the wall time of the wave (first start to last exit), the peak
number of server connections (``pg_stat_activity`` polled every 0.2 s), failed runs
(exit 1: no connection, an error), and lost slots (jobs the log shows never started),
and the records (success and already_ran rows; ``failed (not_started)`` rows replayed
from the hosts' spools). The figures depend on the machine; nothing is asserted.

``--drive tick`` runs the same wave the way ``run_by: tick`` does: each host runs one
``schedsync tick``, which claims its share of the due slots (``FOR UPDATE SKIP LOCKED``)
and starts one detached ``schedsync run`` per claimed slot, so the wave costs hosts +
jobs processes instead of hosts × jobs. Its hosts get ``unshare --uts`` only (a pid
namespace would end the detached runs with the tick), and its wall time runs until the
last job's end line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from pgserver import PgServer  # noqa: E402

HOST_SCRIPT = r"""
import os, subprocess, sys, time
config, jobs, start_at = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
time.sleep(max(0.0, start_at - time.time()))
procs = [subprocess.Popen([sys.executable, "-m", "schedsync", "-c", config, "run", f"j{i:03d}"],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
         for i in range(jobs)]
codes = {}
for i, p in enumerate(procs):
    _, err = p.communicate()
    codes[p.returncode] = codes.get(p.returncode, 0) + 1
    if p.returncode not in (0, 75):
        sys.stderr.write(f"j{i:03d}: {err.decode(errors='replace').strip()[:200]}\n")
print(" ".join(f"{k}:{v}" for k, v in sorted(codes.items())), flush=True)
"""


TICK_SCRIPT = r"""
import subprocess, sys, time
config, start_at = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, start_at - time.time()))
p = subprocess.run([sys.executable, "-m", "schedsync", "-c", config, "tick"], stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
if p.returncode:
    sys.stderr.write(p.stderr.decode(errors="replace"))
print(f"{p.returncode}:1", flush=True)
"""


def wave(mode: str, hosts: int, jobs: int, sleep: float, drive: str = "cron") -> dict:
    server = PgServer().start(max_connections=100)
    bouncer = None
    work = Path(tempfile.mkdtemp(prefix="schedsync-cluster-"))
    try:
        db = server.createdb()
        url = server.url(db)
        if mode == "pgbouncer":
            from pgbouncer import PgBouncer

            bouncer = PgBouncer(server, pool_size=20).start()
            url = bouncer.url(db)
        log = work / "truth.log"
        lines = ["jobs:"]
        for i in range(jobs):
            lines.append(f'  j{i:03d}:\n    schedule: "* * * * *"\n    run_by: {drive}\n    command: ["sh", "-c",'
                         f' "echo $(hostname) {i} >> {log}; sleep {sleep}; echo $(hostname) {i} end >> {log}"]')
        config = work / "jobs.yaml"
        config.write_text("\n".join(lines) + "\n")
        script = work / "host.py"
        script.write_text(TICK_SCRIPT if drive == "tick" else HOST_SCRIPT)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDSYNC_")}
        env.update(SCHEDSYNC_STATE=url, PYTHONPATH=str(ROOT), HOME=str(work),
                   XDG_CACHE_HOME=str(work / "cache"))
        # the schema and the config cache, before the wave
        subprocess.run([sys.executable, "-m", "schedsync", "-c", str(config), "run", "--force-slot", "j000"],
                       env={**env, "SCHEDSYNC_STATE": server.url(db)}, check=True, capture_output=True,
                       stdin=subprocess.DEVNULL)
        server.psql(db, "TRUNCATE schedsync.runs, schedsync.slots, schedsync.slot_marks, schedsync.run_counts,"
                        " schedsync.ticks")
        log.unlink(missing_ok=True)
        # the wave starts a little after a minute boundary, so that every host claims the same slot
        now = time.time()
        start_at = now - now % 60 + 60 + 1 if now % 60 > 45 else now + 3
        peak = [0]
        stop = threading.Event()

        def watch():
            while not stop.wait(0.2):
                try:
                    n = int(server.psql(db, "SELECT count(*) FROM pg_stat_activity"
                                            " WHERE backend_type = 'client backend'"))
                    peak[0] = max(peak[0], n)
                except (subprocess.CalledProcessError, ValueError):
                    pass

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        procs = []
        for h in range(hosts):
            henv = {**env, "XDG_STATE_HOME": str(work / f"state-h{h}")}
            spaces = ["--uts"] if drive == "tick" else ["--uts", "--pid", "--fork"]
            args = [str(config), str(start_at)] if drive == "tick" else [str(config), str(jobs), str(start_at)]
            procs.append(subprocess.Popen(
                ["unshare", *spaces, "sh", "-c", f'hostname h{h} && exec "$0" "$@"', sys.executable,
                 str(script), *args], env=henv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        outs = [p.communicate(timeout=1800) for p in procs]
        if drive == "tick":  # the runs are detached: the wave ends with the last end line
            deadline = time.time() + 300 + sleep
            while time.time() < deadline:
                ends = log.read_text().count(" end\n") if log.exists() else 0
                if ends >= jobs:
                    break
                time.sleep(0.2)
        ended = time.time()
        stop.set()
        watcher.join(5)
        codes: dict = {}
        for out, _ in outs:
            for part in out.split():
                k, v = part.split(":")
                codes[int(k)] = codes.get(int(k), 0) + int(v)
        started = ({int(line.split()[1]) for line in log.read_text().splitlines() if not line.endswith(" end")}
                   if log.exists() else set())
        # the hosts' spools, replayed by one more schedsync on each host
        for h in range(hosts):
            subprocess.run(["unshare", "--uts", "--pid", "--fork", "sh", "-c", f'hostname h{h} && exec "$0" "$@"',
                            sys.executable, "-m", "schedsync", "-c", str(config), "status", "--json"],
                           env={**env, "XDG_STATE_HOME": str(work / f"state-h{h}")}, capture_output=True,
                           stdin=subprocess.DEVNULL)
        records = dict(line.split("|") for line in server.psql(
            db, "SELECT coalesce(reason, status), count(*) FROM schedsync.runs GROUP BY 1").split())
        errors = [line for _, err in outs for line in err.splitlines()][:3]
        return {"mode": mode, "drive": drive, "processes": hosts + jobs if drive == "tick" else hosts * jobs,
                "wall_s": round(ended - start_at, 1), "peak_connections": peak[0],
                "exit_codes": codes, "failed": sum(v for k, v in codes.items() if k not in (0, 75)),
                "lost_slots": jobs - len(started), "records": records, "first_errors": errors}
    finally:
        if bouncer:
            bouncer.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=6)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--sleep", type=float, default=5.0, help="seconds each job runs")
    parser.add_argument("--mode", choices=("both", "direct", "pgbouncer"), default="both")
    parser.add_argument("--drive", choices=("both", "cron", "tick"), default="both",
                        help="per-job crontab lines on every host, or one tick per host")
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("unshare"):
        sys.exit("error: simulated hosts need root and unshare — run as root")
    modes = ("pgbouncer", "direct") if args.mode == "both" else (args.mode,)
    drives = ("cron", "tick") if args.drive == "both" else (args.drive,)
    for mode in modes:
        for drive in drives:
            print(json.dumps(wave(mode, args.hosts, args.jobs, args.sleep, drive)), flush=True)


if __name__ == "__main__":
    main()

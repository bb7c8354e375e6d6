"""``schedsync status --json`` on a big state against a small one, and ``prune`` of a big state.

    python bench/bench_status.py [--runs N] [--records N] [--jobs N]

Setup: a jobs.yaml of 200 scheduled command jobs (a few budgets, some shared
breakers), a state file created by the real store (so migrations and indexes
are the shipped ones), then run records written with raw ``executemany``:
1,000,000 in the big state, 1,000 in the small one, spread evenly over the jobs
and over the last 60 days (90% success, 5% failed, 5% skipped, newest last).

Cases, interleaved in a shuffled order each round (the machine is shared and
noisy: only ratios of medians mean anything):

- ``python -c pass``: the interpreter's floor;
- ``status --json`` against the small state and against the big state;
- ``run`` of one job against the big state (its retention pass deletes <= 100 rows).

Reported: big/small (target <= 1.3x) and big/``python -c pass`` (target <= 40x).
Then ``schedsync prune`` of the big state once (on a copy), and the query plans
of the statements ``status`` runs, so a slow one shows why. No assertions.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from schedsync.store import open_store  # noqa: E402  (after the path is set)

DAY = 86400.0
SCHEDULES = ("*/5 * * * *", "0 * * * *", "15 */4 * * *", "30 0 * * *", "*/30 * * * *", "10 */2 * * *")


def registry(jobs: int) -> str:
    lines = ["state: schedsync.db",
             "defaults:",
             "  retention: {success: 14d, failed: forever}",
             "budgets:"]
    lines += [f"  api-{b}: {{capacity: 60, per: 1h}}" for b in range(5)]
    lines.append("jobs:")
    for i in range(jobs):
        lines += [f"  job-{i:03d}:",
                  f"    schedule: \"{SCHEDULES[i % len(SCHEDULES)]}\"",
                  f"    budget: api-{i % 5}",
                  "    command: [\"true\"]"]
        if i % 10 == 0:
            lines.append(f"    breaker: {{name: upstream-{i // 50}}}")
    return "\n".join(lines) + "\n"


def build(folder: Path, jobs: int, records: int) -> Path:
    """A project folder with jobs.yaml and a state holding ``records`` runs."""
    folder.mkdir(parents=True)
    (folder / "jobs.yaml").write_text(registry(jobs))
    state = folder / "schedsync.db"
    open_store(str(state)).close()  # the real schema, migrated
    now = time.time()
    names = [f"job-{i:03d}" for i in range(jobs)]
    per_job = max(1, records // jobs)
    step = 60 * DAY / per_job
    rng = random.Random(7)

    def rows():
        made = 0
        for k in range(per_job):
            started = now - 60 * DAY + k * step
            for name in names:
                if made == records:
                    return
                made += 1
                roll = rng.random()
                newest = k == per_job - 1
                status, reason, code, error = "success", None, 0, None
                if roll < 0.05 and not newest:
                    status, code, error = "failed", 1, "exit 1: upstream said no"
                elif roll < 0.10 and not newest:
                    status, reason, code = "skipped", "locked", None
                took = 0 if status == "skipped" else rng.randint(50, 5000)
                yield (name, status, reason, "cron", started, started + took / 1000, took, 1, 0, 10, 0,
                       code, error, None, "bench", 4242, None, "output tail\n" * 4)

    db = sqlite3.connect(state)
    db.execute("PRAGMA synchronous=OFF")
    with db:
        db.executemany("INSERT INTO jobs (name, first_seen) VALUES (?, ?)",
                       [(n, now - 61 * DAY) for n in names])
        db.executemany(
            "INSERT INTO runs (job, status, reason, trigger, started_at, finished_at, duration_ms,"
            " attempts, requests, items_processed, items_failed, exit_code, error, retry_at, host,"
            " pid, pid_start, output) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows())
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return folder


def timed(argv: list[str], env: dict, cwd: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    took = time.perf_counter() - started
    if result.returncode not in (0, 1, 75):
        sys.exit(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.decode()[-500:]}")
    return took


def plans(state: Path, job: str) -> list[tuple[str, str]]:
    """EXPLAIN QUERY PLAN of every statement ``status`` runs for one job (traced from the store)."""
    store = open_store(str(state))
    statements: list[str] = []
    store.db.set_trace_callback(statements.append)
    try:
        store.job_states([job], recent=20)
        store.failure_streak(job)
        store.breakers([job])
        out = []
        for sql in dict.fromkeys(statements):
            if sql.lstrip().upper().startswith("SELECT"):
                plan = "; ".join(row[3] for row in store.db.execute("EXPLAIN QUERY PLAN " + sql))
                out.append((" ".join(sql.split())[:110], plan))
        return out
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9, help="interleaved rounds (default 9)")
    parser.add_argument("--records", type=int, default=1_000_000, help="runs in the big state")
    parser.add_argument("--small", type=int, default=1_000, help="runs in the small state")
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-status-"))
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDSYNC_")}
        env.update(HOME=str(work / "home"), XDG_CACHE_HOME=str(work / "cache"), PYTHONPATH=str(ROOT))
        started = time.perf_counter()
        big = build(work / "big", args.jobs, args.records)
        small = build(work / "small", args.jobs, args.small)
        size = (big / "schedsync.db").stat().st_size / 2**20
        print(f"setup: {args.jobs} jobs; {args.records:,} runs ({size:.0f} MiB) and {args.small:,} runs,"
              f" in {time.perf_counter() - started:.1f}s")

        schedsync = [sys.executable, "-m", "schedsync"]
        cases = {
            "python -c pass": ([sys.executable, "-c", "pass"], small),
            f"status --json ({args.small:,} runs)": ([*schedsync, "-c", str(small / "jobs.yaml"), "status", "--json"],
                                                     small),
            f"status --json ({args.records:,} runs)": ([*schedsync, "-c", str(big / "jobs.yaml"), "status", "--json"],
                                                       big),
            f"run job-001 ({args.records:,} runs)": ([*schedsync, "-c", str(big / "jobs.yaml"), "run", "job-001"], big),
        }
        for argv, cwd in cases.values():  # warm the config cache and the page cache
            timed(argv, env, cwd)
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):
            order = list(cases)
            random.shuffle(order)
            for name in order:
                argv, cwd = cases[name]
                times[name].append(timed(argv, env, cwd))

        print(f"\nmedian of {args.runs} interleaved runs:")
        medians = {name: statistics.median(values) for name, values in times.items()}
        for name, median in medians.items():
            print(f"  {name:<34} {median * 1000:8.1f} ms   (min {min(times[name]) * 1000:.1f})")
        floor, small_t, big_t = (medians[n] for n in list(cases)[:3])
        print(f"\nstatus big/small:            {big_t / small_t:5.2f}x   (target <= 1.3x)")
        print(f"status big/python -c pass:   {big_t / floor:5.2f}x   (target <= 40x)")

        copy = work / "prune"
        shutil.copytree(big, copy)
        started = time.perf_counter()
        result = subprocess.run([*schedsync, "-c", str(copy / "jobs.yaml"), "prune"], env=env, cwd=copy,
                                capture_output=True, text=True)
        took = time.perf_counter() - started
        left = sqlite3.connect(copy / "schedsync.db").execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        print(f"\nprune of {args.records:,} runs: {took:.2f}s, {result.stdout.strip() or result.stderr.strip()};"
              f" {left:,} left (failures are kept forever)")

        print("\nquery plans of what status reads per job:")
        for sql, plan in plans(big / "schedsync.db", "job-001"):
            print(f"  {sql}\n      -> {plan}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

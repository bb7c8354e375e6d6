"""PostgreSQL state vs SQLite state, side by side on this machine.

    python bench/bench_pg.py [--runs N] [--seconds S] [--status] [--check]

Starts a throwaway PostgreSQL (Debian's binaries, ``initdb`` in a temp dir, a unix
socket only; as in the tests) and measures, interleaved in a shuffled order each
round (the machine is shared and noisy: only ratios of medians mean anything):

- a cron tick: ``schedsync run trivial`` (a command job running ``true``) with
  ``--state`` a SQLite file vs a ``postgresql://`` URL on the unix socket.
  Target: PostgreSQL <= 1.5x SQLite. Also ``python -c pass`` as the floor, and
  the tick of a *scheduled* job on PostgreSQL (it claims its slot: the first
  tick of a minute runs, later ones are ``already_ran`` skips; both pay the
  schedule computation);
- budget acquires per second from one process (``store.spend`` of one token from
  a bucket that never runs dry), PostgreSQL vs SQLite;
- with ``--status``: ``status --json`` over 200 jobs and 1M runs, both backends.

``--check`` exits 1 when the tick ratio misses 1.5x.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

TARGET = 1.5
JOBS = """\
jobs:
  trivial:
    command: ["true"]
  scheduled:
    schedule: "* * * * *"
    command: ["true"]
"""


def schedsync() -> list[str]:
    beside = Path(sys.executable).parent / "schedsync"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "schedsync"]


def timed(argv, env, cwd) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    took = time.perf_counter() - started
    if result.returncode not in (0, 75):
        raise SystemExit(f"{argv}: exit {result.returncode}: {result.stderr.decode()[-500:]}")
    return took


def ticks(url: str, folder: Path, runs: int) -> dict:
    (folder / "jobs.yaml").write_text(JOBS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDSYNC_")}
    env.update(HOME=str(folder), XDG_CACHE_HOME=str(folder / "cache"))
    base = schedsync() + ["-c", str(folder / "jobs.yaml")]
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "sqlite tick": base + ["--state", str(folder / "state.db"), "run", "trivial"],
        "postgresql tick": base + ["--state", url, "run", "trivial"],
        "postgresql scheduled tick": base + ["--state", url, "run", "scheduled"],
    }
    for argv in cases.values():  # warm caches, create and migrate both states
        timed(argv, env, folder)
    times: dict = {name: [] for name in cases}
    for _ in range(runs):
        order = list(cases.items())
        random.shuffle(order)
        for name, argv in order:
            times[name].append(timed(argv, env, folder))
    return {name: statistics.median(values) for name, values in times.items()}


def acquires(url: str, folder: Path, seconds: float) -> dict:
    from schedsync.store import open_store

    out = {}
    for name, target in (("sqlite", str(folder / "acq.db")), ("postgresql", url)):
        store = open_store(target)
        rates = {"api": (1e9, 1.0)}
        count, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            assert store.spend(["api"], rates, 1) is None
            count += 1
        out[name] = count / seconds
        store.close()
    return out


def status_big(server, folder: Path, runs: int = 3) -> dict:
    """status --json with 200 jobs and 1M runs on each backend."""
    from schedsync.store import open_store

    jobs = "jobs:\n" + "".join(f"  job{i:03d}:\n    schedule: '*/5 * * * *'\n    command: ['true']\n"
                               for i in range(200))
    (folder / "big.yaml").write_text(jobs)
    now = time.time()
    sqlite_path = folder / "big.db"
    open_store(str(sqlite_path)).close()
    import sqlite3

    db = sqlite3.connect(sqlite_path)
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO runs (job, status, trigger, started_at, finished_at, duration_ms, host, pid)"
        " VALUES (?, 'success', 'cron', ?, ?, 1000, 'h', 1)",
        ((f"job{i % 200:03d}", now - (1_000_000 - i) * 60, now - (1_000_000 - i) * 60 + 1)
         for i in range(1_000_000)))
    db.execute("COMMIT")
    db.close()
    dbname = server.createdb("big")
    url = server.url(dbname)
    open_store(url).close()
    server.psql(dbname, "INSERT INTO schedsync.runs (job, status, trigger, started_at, finished_at,"
                        " duration_ms, host, pid) SELECT 'job' || lpad((i % 200)::text, 3, '0'),"
                        f" 'success', 'cron', {now} - (1000000 - i) * 60.0,"
                        f" {now} - (1000000 - i) * 60.0 + 1, 1000, 'h', 1"
                        " FROM generate_series(0, 999999) AS i; ANALYZE schedsync.runs")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDSYNC_")}
    env.update(HOME=str(folder), XDG_CACHE_HOME=str(folder / "cache"))
    base = schedsync() + ["-c", str(folder / "big.yaml")]
    cases = {"sqlite status --json": base + ["--state", str(sqlite_path), "status", "--json"],
             "postgresql status --json": base + ["--state", url, "status", "--json"]}
    for argv in cases.values():
        timed(argv, env, folder)
    times: dict = {name: [] for name in cases}
    for _ in range(runs):
        for name, argv in sorted(cases.items(), key=lambda _: random.random()):
            times[name].append(timed(argv, env, folder))
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--status", action="store_true", help="also status --json, 200 jobs x 1M runs")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()

    from pgserver import PgServer

    server = PgServer().start()
    folder = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    try:
        url = server.url(server.createdb("bench"))
        medians = ticks(url, folder, args.runs)
        floor = medians["python -c pass"]
        print(f"cron tick, median of {args.runs} (interleaved):")
        for name, value in medians.items():
            print(f"  {name:<28} {value * 1000:7.1f} ms  {value / floor:5.2f}x python -c pass")
        ratio = medians["postgresql tick"] / medians["sqlite tick"]
        print(f"  postgresql / sqlite tick: {ratio:.2f}x (target <= {TARGET}x)")
        rates = acquires(url, folder, args.seconds)
        print("budget acquires per second, one process:")
        for name, value in rates.items():
            print(f"  {name:<12} {value:9.0f}/s")
        print(f"  postgresql / sqlite: {rates['postgresql'] / rates['sqlite']:.2f}x")
        if args.status:
            big = status_big(server, folder)
            for name, value in big.items():
                print(f"  {name:<28} {value * 1000:7.0f} ms")
            print(f"  postgresql / sqlite status: "
                  f"{big['postgresql status --json'] / big['sqlite status --json']:.2f}x")
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    if args.check and ratio > TARGET:
        sys.exit(1)


if __name__ == "__main__":
    main()

"""The cost of ``schedsync tick`` with 500 jobs and nothing due, against ``python -c pass``.

Cron runs the tick line every minute on every host, so it must cost little when there is
nothing to start: 500 scheduled jobs (one crontab line each, ``run_by: cron``, none of
them due), a warm config cache, a SQLite state whose marks the first (warm-up) tick wrote.

    python bench/bench_tick.py [--runs N] [--pg] [--check]

- SQLite: ``schedsync tick`` and ``python -c pass`` interleaved in a shuffled order each
  round; only the ratio of medians means anything on a shared machine. Target <= 4x.
- ``--pg``: the same registry on a throwaway PostgreSQL (tests/pgserver.py), where the
  figure that matters is round trips: one tick runs in this process with the store's
  query function counted (every ``_fetch`` is one round trip, the connection's opening
  check included). Target: one for the tick itself.

Also the ``run`` path: ``bench/bench_run.py`` measures it (the ledger adds no import).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JOBS = 500
TARGET = 4.0


def registry(state: str) -> str:
    lines = [f"state: {state}", "jobs:"]
    for i in range(JOBS):
        # daily, at a minute of 03:00-11:19 that is never now (the bench moves them off it)
        lines += [f"  job{i}:", f"    schedule: \"{i % 60} {3 + i // 60} * * *\"", "    command: [\"true\"]"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--pg", action="store_true", help="also count PostgreSQL round trips")
    parser.add_argument("--check", action="store_true", help="exit 1 if the SQLite ratio misses 4x")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-tick-") as tmp:
        ratio = sqlite_ratio(Path(tmp), args.runs)
        if args.pg:
            postgres_round_trips(Path(tmp))
    return 1 if args.check and ratio > TARGET else 0


def _env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCHEDSYNC_", "PYTHON"))}
    env.update(HOME=str(tmp / "home"), XDG_CACHE_HOME=str(tmp / "cache"), XDG_STATE_HOME=str(tmp / "xdg"),
               PYTHONPATH=str(ROOT))
    return env


def sqlite_ratio(tmp: Path, runs: int) -> float:
    config = tmp / "jobs.yaml"
    config.write_text(registry(str(tmp / "state.db")))
    env = _env(tmp)
    script = Path(sys.executable).with_name("schedsync")
    tick = [str(script)] if script.exists() else [sys.executable, "-m", "schedsync"]
    cases = {"python -c pass": [sys.executable, "-c", "pass"], "schedsync tick": [*tick, "-c", str(config), "tick"]}

    def spawn(argv) -> float:
        start = time.perf_counter()
        proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
        took = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"bench_tick: {argv} exited {proc.returncode}: {proc.stderr.decode()}")
        return took

    for argv in cases.values():  # .pyc, the config cache, the marks of all 500 jobs
        spawn(argv)
        spawn(argv)
    times: dict = {name: [] for name in cases}
    order = list(cases)
    rng = random.Random(1)
    for _ in range(runs):
        rng.shuffle(order)
        for name in order:
            times[name].append(spawn(cases[name]))
    floor = statistics.median(times["python -c pass"])
    took = statistics.median(times["schedsync tick"])
    print(f"{JOBS} jobs, nothing due, SQLite, {runs} interleaved rounds (medians):")
    print(f"  python -c pass   {floor * 1000:7.1f} ms")
    print(f"  schedsync tick   {took * 1000:7.1f} ms   {took / floor:.2f}x  (target <= {TARGET:g}x)")
    return took / floor


def postgres_round_trips(tmp: Path) -> None:
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from pgserver import PgServer
    from schedsync.app.tick import tick
    from schedsync.config import load
    from schedsync.store.postgres import PostgresStore

    server = PgServer()
    try:
        server.start()
        url = server.url(server.createdb())
        config_path = tmp / "pg-jobs.yaml"
        config_path.write_text(registry(url))
        config = load(str(config_path))
        counted = {"n": 0}
        fetch = PostgresStore._fetch

        def counting(self, sql, args=()):
            counted["n"] += 1
            return fetch(self, sql, args)

        PostgresStore._fetch = counting  # type: ignore[method-assign]
        for label in ("first tick (marks 500 jobs)", "a tick with nothing due", "another"):
            counted["n"] = 0
            store = PostgresStore(url)
            opened = counted["n"]
            started = time.perf_counter()
            tick(config, store, url)
            took = time.perf_counter() - started
            store.close()
            print(f"  PostgreSQL, {label}: {opened} round trip opening, {counted['n'] - opened} for the"
                  f" tick ({took * 1000:.1f} ms in-process)")
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())

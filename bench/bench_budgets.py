"""Benchmark: what budgets cost, in one process and under a cron-style herd.

    python bench/bench_budgets.py [--acquires 20000] [--procs 100] [--rounds 3]

1. Acquire throughput: ``store.spend`` on a real ``SQLiteStore`` in a temp dir
   (one BEGIN IMMEDIATE transaction per acquire, WAL, synchronous=NORMAL), with
   a capacity so large the bucket never empties. Target: >= 20,000 acquires/s.
2. Contention: ``--procs`` ``schedsync run burst`` processes started together
   (Popen all, then wait) against a ``15/1d`` budget, next to as many
   ``python -c pass`` started the same way. The state file and config cache are
   warmed by one run of another job first, so this measures the herd, not the
   first-run schema creation. Reports both wall times and their ratio, and checks
   the outcome (15 exit 0, the rest exit 75).

Figures are printed; nothing is asserted, since times depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from schedsync.store.sqlite import SQLiteStore  # noqa: E402

JOBS = textwrap.dedent("""\
    state: schedsync.db
    budgets:
      upstream: 15/1d
    jobs:
      warmup:
        command: "true"
      burst:
        command: "true"
        budget: upstream
        overlap: allow
""")


def acquire_throughput(acquires: int) -> tuple[float, float, float]:
    """(acquires per wall second, microseconds per acquire, acquires per CPU second).

    The CPU-time figure is what a shared, busy machine distorts least.
    """
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(os.path.join(tmp, "state.db"))
        rates = {"bench": [1e12, 1.0]}
        for _ in range(200):  # warm the page cache and the WAL
            store.spend(["bench"], rates, 1, time.time())
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(acquires):
            if store.spend(["bench"], rates, 1, time.time()) is not None:
                raise SystemExit("a huge bucket denied a token: the benchmark is broken")
        took, cpu = time.perf_counter() - start, time.process_time() - cpu
        store.close()
    return acquires / took, took / acquires * 1e6, acquires / cpu


def schedsync_argv(config: Path) -> list[str]:
    script = Path(sys.executable).with_name("schedsync")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "schedsync"]
    return head + ["-c", str(config)]


def herd(argv: list[str], procs: int, env: dict, cwd: str) -> tuple[float, Counter]:
    start = time.perf_counter()
    running = [subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env, cwd=cwd) for _ in range(procs)]
    codes = Counter(p.wait() for p in running)
    return time.perf_counter() - start, codes


def contention_round(procs: int) -> tuple[float, float, Counter]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = folder / "jobs.yaml"
        config.write_text(JOBS)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDSYNC_")}
        env.update(HOME=str(folder / "home"), XDG_CACHE_HOME=str(folder / "cache"),
                   XDG_STATE_HOME=str(folder / "xdg-state"), PYTHONPATH=str(ROOT))
        base = schedsync_argv(config)
        warm = subprocess.run(base + ["run", "warmup"], env=env, cwd=tmp, capture_output=True)
        if warm.returncode != 0:
            raise SystemExit(f"warm-up run failed: {warm.stderr.decode()}")
        floor, _ = herd([sys.executable, "-c", "pass"], procs, env, tmp)
        wall, codes = herd(base + ["run", "burst"], procs, env, tmp)
    return wall, floor, codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acquires", type=int, default=20_000)
    parser.add_argument("--procs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    print(f"cpus: {os.cpu_count()}  python: {sys.version.split()[0]}"
          f"  load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    rates = [acquire_throughput(args.acquires) for _ in range(args.rounds)]
    best = max(rates)
    print(f"acquire throughput (store.spend on SQLiteStore, {args.acquires} acquires x {args.rounds}):")
    for per_s, us, per_cpu_s in rates:
        print(f"  {per_s:10,.0f} acquires/s  ({us:.1f} us each)  {per_cpu_s:10,.0f} per CPU second")
    cpu_best = max(r[2] for r in rates)
    print(f"  best {best[0]:,.0f}/s, median {statistics.median(r[0] for r in rates):,.0f}/s,"
          f" best per CPU second {cpu_best:,.0f}  (target >= 20,000/s:"
          f" {'met' if best[0] >= 20_000 else 'missed'} in wall time,"
          f" {'met' if cpu_best >= 20_000 else 'missed'} per CPU second)")

    print(f"\ncontention: {args.procs} processes started together, budget 15/1d, overlap: allow")
    walls, floors = [], []
    for i in range(args.rounds):
        wall, floor, codes = contention_round(args.procs)
        walls.append(wall)
        floors.append(floor)
        granted = min(15, args.procs)
        outcome = "ok" if codes == Counter({0: granted, 75: args.procs - granted}) else "UNEXPECTED"
        print(f"  round {i + 1}: schedsync run {wall:6.2f}s   python -c pass {floor:6.2f}s"
              f"   ratio {wall / floor:5.2f}x   exit codes {dict(sorted(codes.items()))} ({outcome})")
    wall, floor = statistics.median(walls), statistics.median(floors)
    print(f"  median: schedsync run {wall:.2f}s, python -c pass {floor:.2f}s, ratio {wall / floor:.2f}x"
          f"  ({wall / args.procs * 1000:.0f} ms of wall time per process)")


if __name__ == "__main__":
    main()

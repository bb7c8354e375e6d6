"""Benchmark: an http job syncing 100,000 items in 100 pages from a local server.

    python bench/bench_http.py [--repeat 3] [--per-page 1000]

Starts scripts/demo_api.py (its /v1/bench endpoint: pages built once and cached,
so the server is not what is measured), then runs, each in its own process:

- ``schedsync run bench``: the real CLI, every protection on (lock, budget
  token per request, breaker, run record, upsert through the SQLite data sink);
- a minimal hand-written httpx + sqlite3 script doing the same sync.

Each ``into.mode`` (``--modes``, default merge,append,replace) is measured the same way
against its own hand-written script: merge upserts on ``id``, append inserts every item
into a table without a key, replace loads a staging table and swaps it in at the end.

Runs are interleaved (schedsync, script, schedsync, …) and the best of ``--repeat``
is kept. It reports items/s for both, their time ratio (target: schedsync <= 1.15x
the script at 100k items) and the peak RSS of each process at 10k, 100k and 300k
items (target for schedsync: flat in the item count, <= 80 MiB). Figures are
printed; nothing is asserted, since times depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BASELINE = textwrap.dedent("""
    import json, sqlite3, sys
    import httpx

    url, db_path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    db = sqlite3.connect(db_path)
    table = "items_staging" if mode == "replace" else "items"
    if mode == "replace":
        db.execute("DROP TABLE IF EXISTS items_staging")
    key = "" if mode == "append" else " PRIMARY KEY"
    db.execute(f"CREATE TABLE IF NOT EXISTS {table} (id INTEGER{key}, name TEXT, chain TEXT,"
               " score INTEGER, reward TEXT, tags TEXT, updated_at TEXT)")
    sql = f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?, ?, ?)"
    if mode != "append":
        sql += (" ON CONFLICT(id) DO UPDATE SET"
                " name=excluded.name, chain=excluded.chain, score=excluded.score,"
                " reward=excluded.reward, tags=excluded.tags, updated_at=excluded.updated_at")
    count = 0
    with httpx.Client() as client:
        while url:
            page = client.get(url, timeout=30).raise_for_status().json()
            db.executemany(sql, [(i["id"], i["name"], i["chain"], i["score"], json.dumps(i["reward"]),
                                  json.dumps(i["tags"]), i["updated_at"]) for i in page["data"]])
            db.commit()
            count += len(page["data"])
            nxt = page["links"]["next"]
            url = str(httpx.URL(url).join(nxt)) if nxt else None
    if mode == "replace":
        db.execute("BEGIN IMMEDIATE")
        db.execute("DROP TABLE IF EXISTS items")
        db.execute("ALTER TABLE items_staging RENAME TO items")
        db.execute("COMMIT")
    print(count)
""")


def start_server() -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "demo_api.py"), "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    banner = server.stdout.readline()
    match = re.search(r"http://[\d.]+:\d+", banner)
    if not match:
        server.kill()
        raise SystemExit(f"the demo API did not start: {banner!r}")
    return server, match.group(0)


CPU = {}  # (name, mode, total) -> best CPU seconds (user + system), steadier than wall time under load


def measured(argv: list[str], cwd: Path, env: dict) -> tuple[float, float, str]:
    """(seconds, peak RSS in MiB, stdout+stderr) of one process, from its own rusage."""
    began = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - began
    out = proc.stdout.read().decode()
    proc.stdout.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:4]} exited {proc.returncode}:\n{out}")
    measured.cpu = usage.ru_utime + usage.ru_stime
    return took, usage.ru_maxrss / 1024, out


def bench_url(base: str, total: int, per_page: int) -> str:
    return f"{base}/v1/bench?page=1&per_page={per_page}&total={total}"


def run_schedsync(base: str, total: int, per_page: int, folder: Path, env: dict, mode: str = "merge"):
    for stale in folder.glob("*.db*"):
        stale.unlink() if stale.is_file() else None
    (folder / "jobs.yaml").write_text(textwrap.dedent(f"""
        state: schedsync.db
        budgets:
          bench-api: 1000/1m
        jobs:
          bench:
            budget: bench-api
            timeout: 10m
            http:
              url: "{bench_url(base, total, per_page)}"
              items: data
              next: links.next
              max_pages: 10000
            into: {{table: items, pk: id, mode: {mode}}}
    """))
    took, rss, out = measured([sys.executable, "-m", "schedsync", "-c", "jobs.yaml", "run", "bench"],
                              folder, env)
    import sqlite3

    db = sqlite3.connect(folder / "data.db")
    stored = db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    db.close()
    if stored != total:
        raise SystemExit(f"schedsync stored {stored} items, expected {total}:\n{out}")
    return took, rss


def run_baseline(base: str, total: int, per_page: int, folder: Path, env: dict, mode: str = "merge"):
    db = folder / "baseline.sqlite"
    if db.exists():
        db.unlink()
    took, rss, out = measured([sys.executable, "-c", BASELINE, bench_url(base, total, per_page), str(db), mode],
                              folder, env)
    if out.strip() != str(total):
        raise SystemExit(f"the baseline synced {out.strip()} items, expected {total}")
    return took, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best time is kept")
    parser.add_argument("--per-page", type=int, default=1000)
    parser.add_argument("--totals", default="10000,100000,300000",
                        help="item counts to sync, comma-separated")
    parser.add_argument("--modes", default="merge,append,replace", help="into.mode values to measure")
    args = parser.parse_args()
    modes = args.modes.split(",")

    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDSYNC_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    server, base = start_server()
    results: dict = {}  # (mode, total) -> {"schedsync": (time, rss), "baseline": (time, rss)}
    try:
        with tempfile.TemporaryDirectory(prefix="schedsync-bench-") as tmp:
            folder = Path(tmp)
            env.update(HOME=tmp, XDG_CACHE_HOME=f"{tmp}/cache", XDG_STATE_HOME=f"{tmp}/state")
            run_baseline(base, 100_000, args.per_page, folder, env)  # warm the server's page cache
            for mode in modes:
                for total in [int(t) for t in args.totals.split(",")]:
                    best = {"schedsync": (float("inf"), 0.0), "baseline": (float("inf"), 0.0)}
                    for _ in range(args.repeat):
                        for name, fn in (("schedsync", run_schedsync), ("baseline", run_baseline)):
                            took, rss = fn(base, total, args.per_page, folder, env, mode)
                            best[name] = (min(best[name][0], took), max(best[name][1], rss))
                            key = (name, mode, total)
                            CPU[key] = min(CPU.get(key, float("inf")), measured.cpu)
                    results[mode, total] = best
    finally:
        server.terminate()
        server.wait()

    print(f"http job sync, {args.per_page} items per page, best of {args.repeat} "
          f"(process start to exit; peak RSS from the process's rusage)")
    print(f"{'mode':>8} {'items':>8} {'pages':>6} {'schedsync':>18} {'httpx+sqlite3':>18} {'time ratio':>11} "
          f"{'RSS schedsync':>14} {'RSS script':>11}")
    for (mode, total), best in results.items():
        (s_time, s_rss), (b_time, b_rss) = best["schedsync"], best["baseline"]
        print(f"{mode:>8} {total:>8,} {total // args.per_page:>6} {total / s_time:>11,.0f} it/s "
              f"{total / b_time:>11,.0f} it/s {s_time / b_time:>10.2f}x "
              f"{s_rss:>10.1f} MiB {b_rss:>7.1f} MiB   CPU ratio "
              f"{CPU['schedsync', mode, total] / CPU['baseline', mode, total]:.2f}x")
    for mode in modes:
        totals = sorted(t for m, t in results if m == mode)
        small, large = results[mode, totals[0]]["schedsync"][1], results[mode, totals[-1]]["schedsync"][1]
        mid = 100_000 if 100_000 in totals else totals[-1]
        ratio = results[mode, mid]["schedsync"][0] / results[mode, mid]["baseline"][0]
        print(f"{mode}: time ratio at {mid:,}: {ratio:.2f}x (target for merge <= 1.15x); RSS flat "
              f"({totals[0]:,} {small:.1f} MiB -> {totals[-1]:,} {large:.1f} MiB) and <= 80 MiB")


if __name__ == "__main__":
    main()

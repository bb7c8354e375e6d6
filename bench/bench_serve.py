"""``schedsync serve`` latency (``/healthz``, ``/``, ``/metrics``) on a big state, next to
``schedsync status --json`` on the same state in the same run.

    python bench/bench_serve.py [--records N] [--jobs N] [--requests N] [--status-runs N]

Setup: the state of ``bench_status.py`` (200 scheduled command jobs, 1,000,000 run
records over 60 days, written with raw ``executemany`` into the real schema). One
``schedsync serve`` on a free loopback port; after a warm-up, rounds in a shuffled
order: one request to each endpoint (a new connection each, as a probe or a scraper
makes) and, every ``requests / status-runs`` rounds, one ``status --json`` process.

Reported: p50 and p99 of each endpoint and of ``status --json`` (ms), and each
endpoint's p50 as a ratio of ``status --json``'s (a request skips the interpreter's
start-up and the imports, so it should be well under 1x). No assertions.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_status import build  # noqa: E402  (after the path is set)

ENDPOINTS = ("/healthz", "/", "/metrics")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="runs in the state")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--requests", type=int, default=200, help="requests per endpoint")
    parser.add_argument("--status-runs", type=int, default=20, help="`status --json` processes")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        started = time.perf_counter()
        folder = build(Path(tmp) / "big", args.jobs, args.records)
        print(f"built {args.records:,} runs of {args.jobs} jobs in {time.perf_counter() - started:.0f}s")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDSYNC_")}
        env.update(XDG_CACHE_HOME=str(Path(tmp) / "cache"), PYTHONPATH=str(ROOT))
        base = [sys.executable, "-m", "schedsync", "-c", str(folder / "jobs.yaml")]
        server = subprocess.Popen([*base, "serve", "--bind", "127.0.0.1:0"], env=env, cwd=folder,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  stdin=subprocess.DEVNULL)
        try:
            line = server.stderr.readline()
            match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
            if not match:
                sys.exit(f"serve did not start: {line}{server.stderr.read()}")
            url = f"http://127.0.0.1:{match.group(1)}"
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

            def get(path: str) -> float:
                t = time.perf_counter()
                try:
                    with opener.open(url + path, timeout=120) as reply:
                        reply.read()
                except urllib.error.HTTPError as exc:  # 503 from /healthz is an answer too
                    exc.read()
                return time.perf_counter() - t

            def status() -> float:
                t = time.perf_counter()
                result = subprocess.run([*base, "status", "--json"], env=env, cwd=folder,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        stdin=subprocess.DEVNULL)
                took = time.perf_counter() - t
                if result.returncode != 0:
                    sys.exit(f"status --json failed: {result.stderr.decode()[-500:]}")
                return took

            for path in ENDPOINTS * 3:
                get(path)  # warm: page cache, config cache, templates
            status()
            times: dict[str, list[float]] = {p: [] for p in ENDPOINTS}
            times["status --json"] = []
            every = max(1, args.requests // args.status_runs)
            rng = random.Random(11)
            for i in range(args.requests):
                order = list(ENDPOINTS)
                rng.shuffle(order)
                for path in order:
                    times[path].append(get(path))
                if i % every == 0 and len(times["status --json"]) < args.status_runs:
                    times["status --json"].append(status())
        finally:
            server.terminate()
            server.wait(timeout=30)

    reference = percentile(times["status --json"], 0.5)
    print(f"\n{args.jobs} jobs, {args.records:,} runs; {args.requests} requests per endpoint, "
          f"{len(times['status --json'])} status processes")
    print(f"{'case':<16}{'p50 ms':>10}{'p99 ms':>10}{'p50 / status --json':>22}")
    for case, values in times.items():
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        print(f"{case:<16}{p50 * 1000:>10.1f}{p99 * 1000:>10.1f}{p50 / reference:>21.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

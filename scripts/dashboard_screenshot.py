"""Make docs/dashboard.png: a demo registry and state, ``schedsync serve`` over them, and a
screenshot of the dashboard by headless Chromium (Debian's ``chromium``).

    python scripts/dashboard_screenshot.py [--out docs/dashboard.png] [--width 1400]

The state is written through the real store: a day of runs per job, with one job
failing (its breaker open), one late (cron stopped starting it), one running now.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from schedsync.core.schedule import Schedule, local_zone  # noqa: E402  (after the path is set)
from schedsync.store import BreakerSpec, open_store  # noqa: E402

NO_BREAKER = BreakerSpec("(demo)", {"name": "(demo)", "failures": 10**9, "reset_after": 60.0,
                                    "half_open_runs": 1})
QUESTS = BreakerSpec("quests", {"name": "quests", "failures": 3, "reset_after": 1800.0,
                                "half_open_runs": 1})
# The running run's owner: a process that admits it through the store, then lives on.
SLEEPER = """
import sys, time
from schedsync.store import BreakerSpec, open_store
store = open_store(sys.argv[1])
spec = BreakerSpec("(demo)", {"name": "(demo)", "failures": 10**9, "reset_after": 60.0, "half_open_runs": 1})
store.admit_run("airdrops", "cron", spec, 60.0, [], {}, 0, now=time.time() - 40)
store.close()
print("ready", flush=True)
time.sleep(300)
"""

REGISTRY = """\
state: schedsync.db
budgets:
  airdrops-api: {capacity: 60, per: 1h}
  quests-api: 30/1h
jobs:
  airdrops:
    description: Live airdrops, updated since the last sync
    schedule: "0 * * * *"
    budget: airdrops-api
    command: ["true"]
  airdrops-upcoming:
    schedule: "15 */4 * * *"
    budget: airdrops-api
    command: ["true"]
  quests:
    description: Quests, hourly
    schedule: "30 * * * *"
    budget: quests-api
    breaker: {failures: 3, reset_after: 30m}
    command: ["true"]
  sponsored:
    schedule: "*/5 * * * *"
    grace: 2m
    command: ["true"]
  points:
    schedule: "0 3 * * *"
    command: ["true"]
  yield:
    schedule: "10 */2 * * *"
    command: ["true"]
  backup:
    description: Nightly database dump
    command: ["true"]
"""


def add(store, job: str, status: str, started: float, took_ms: int, error: str | None = None,
        breaker: BreakerSpec = NO_BREAKER, now: float | None = None) -> None:
    run = store.admit_run(job, "cron", NO_BREAKER, 60.0, [], {}, 0, now=started).run
    run.status, run.finished_at, run.duration_ms = status, started + took_ms / 1000, took_ms
    run.exit_code = 0 if status == "success" else 1
    run.error = error
    run.attempts, run.requests = 1, 3 if status == "success" else 1
    store.finish_run(run, breaker, breaker is not NO_BREAKER, False, 60.0, {},
                     now=run.finished_at if now is None else now)


def demo_state(folder: Path) -> None:
    (folder / "jobs.yaml").write_text(REGISTRY)
    store = open_store(str(folder / "schedsync.db"))
    rng = random.Random(3)
    now = time.time()
    tz = local_zone()

    def fires(expr: str, n: int, before: float = now) -> list[float]:
        return sorted(Schedule(expr, tz).previous_fires(before, n))

    store.see_jobs(["airdrops", "airdrops-upcoming", "quests", "sponsored", "points", "yield",
                    "backup"], now - 5 * 86400)
    for t in fires("0 * * * *", 20):
        add(store, "airdrops", "success", t + 2, rng.randint(3000, 9000))
    for t in fires("10 */2 * * *", 20):
        add(store, "yield", "success", t + 2, rng.randint(800, 2500))
    for t in fires("0 3 * * *", 14):
        add(store, "points", "success", t + 2, rng.randint(20_000, 40_000))
    for t in fires("15 */4 * * *", 12):
        add(store, "airdrops-upcoming", "success", t + 2, rng.randint(1000, 4000))
    for k in range(14, 0, -1):
        add(store, "backup", "success", now - k * 86400 - 5000, rng.randint(60_000, 90_000))
    quests = fires("30 * * * *", 20)
    for t in quests[:-3]:
        add(store, "quests", "success", t + 2, rng.randint(2000, 5000))
    for k, t in enumerate(quests[-3:]):
        # the third failure opens the breaker, as if 20 minutes ago: it stays open 10 more
        add(store, "quests", "failed", t + 2, rng.randint(200, 600),
            "HTTP 503 from api.example.com after 3 attempts", breaker=QUESTS,
            now=now - 1200 if k == 2 else None)
    # cron stopped starting sponsored 40 minutes ago: LATE
    for t in fires("*/5 * * * *", 20, now - 2400):
        add(store, "sponsored", "success", t + 2, rng.randint(400, 1500))
    store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "dashboard.png"))
    parser.add_argument("--width", type=int, default=1500)
    parser.add_argument("--height", type=int, default=405)
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        sys.exit("error: chromium is not installed — apt-get install -y --no-install-recommends chromium")
    with tempfile.TemporaryDirectory(prefix="schedsync-shot-") as tmp:
        folder = Path(tmp)
        demo_state(folder)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDSYNC_")}
        env.update(XDG_CACHE_HOME=str(folder / "cache"), PYTHONPATH=str(ROOT))
        sleeper = subprocess.Popen([sys.executable, "-c", SLEEPER, str(folder / "schedsync.db")],
                                   env=env, stdout=subprocess.PIPE, text=True)
        sleeper.stdout.readline()  # its running run is recorded
        server = subprocess.Popen([sys.executable, "-m", "schedsync", "-c", str(folder / "jobs.yaml"),
                                   "serve", "--bind", "127.0.0.1:0"], env=env, cwd=folder,
                                  stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        try:
            match = re.search(r"http://127\.0\.0\.1:(\d+)/", server.stderr.readline())
            if not match:
                sys.exit(f"error: serve did not start: {server.stderr.read()}")
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-proxy-server",
                            "--hide-scrollbars", f"--user-data-dir={folder / 'profile'}",
                            f"--window-size={args.width},{args.height}", f"--screenshot={args.out}",
                            f"http://127.0.0.1:{match.group(1)}/"],
                           check=True, capture_output=True, timeout=120)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
            sleeper.kill()
            sleeper.wait()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

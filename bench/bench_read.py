"""Start-up of the read commands (``status``, ``history``, ``logs``, ``list``, ``metrics``,
``validate``, ``--help``) against ``python -c pass``.

    python bench/bench_read.py [--runs N] [--jobs N] [--records N] [--python PATH] [--check]

A monitoring check runs ``status --check`` or ``metrics --textfile`` every minute,
and a person types ``status`` and ``history`` all day: each pays schedsync's
start-up. This times each read command on a realistic state: ``--jobs`` command
jobs (default 30, a few budgets, some shared breakers) and ``--records`` runs
(default 30,000: about a month of a busy host, 90% success, 5% failed, 5%
skipped, a few jobs failing now), written with raw ``executemany`` into a state
the real store created (so migrations and indexes are the shipped ones).

As in ``bench_run.py``: the cases run interleaved in a shuffled order each round
(the machine is shared and noisy, so only the ratio of medians means anything);
``python -c pass`` runs from the same interpreter in the same rounds; stdout is a
pipe and stdin is not a TTY, as under a monitoring agent; peak RSS comes from
``/usr/bin/time -f %M`` in separate interleaved rounds (a child forked from this
process would inherit its RSS high-water mark).

The figure users get needs a regular install: by default the bench makes a temp
venv and ``pip install``s this checkout into it (not editable: setuptools' import
hook would load pathlib, re and enum into every interpreter, ``python -c pass``
included). ``--python PATH`` uses that interpreter's install instead (say, a venv
with another typer release); the bench says when it sees an editable one.

Target: every command <= 8x ``python -c pass``. ``--check`` exits 1 if one misses.
Then ``-X importtime`` of each command lists the heavy modules it loads.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_RATIO = 8.0
TIME = "/usr/bin/time"
HEAVY = ("typer", "click", "rich", "pydantic", "pydantic_core", "pygments", "httpx", "yaml",
         "cronsim", "tenacity", "sqlite_utils", "shellingham")
DAY = 86400.0
SCHEDULES = ("*/5 * * * *", "0 * * * *", "15 */4 * * *", "30 0 * * *", "*/30 * * * *", "10 */2 * * *")


def registry(jobs: int) -> str:
    lines = ["state: schedsync.db",
             "defaults:",
             "  retention: {success: 14d, failed: forever}",
             "budgets:"]
    lines += [f"  api-{b}: {{capacity: 60, per: 1h}}" for b in range(4)]
    lines.append("jobs:")
    for i in range(jobs):
        lines += [f"  job-{i:03d}:",
                  f"    description: bench job {i}",
                  f"    schedule: \"{SCHEDULES[i % len(SCHEDULES)]}\"",
                  f"    budget: api-{i % 4}",
                  "    command: [\"true\"]"]
        if i % 10 == 0:
            lines.append(f"    breaker: {{name: upstream-{i // 10}}}")
    return "\n".join(lines) + "\n"


def build(folder: Path, jobs: int, records: int, python: str) -> Path:
    """jobs.yaml and a state holding ``records`` runs; the schema comes from the installed store."""
    folder.mkdir(parents=True)
    (folder / "jobs.yaml").write_text(registry(jobs))
    state = folder / "schedsync.db"
    subprocess.run([python, "-c", "import sys; from schedsync.store import open_store; "
                    "open_store(sys.argv[1]).close()", str(state)], check=True)
    now = time.time()
    names = [f"job-{i:03d}" for i in range(jobs)]
    per_job = max(1, records // jobs)
    rng = random.Random(7)

    def rows():
        made = 0
        for k in range(per_job):
            for j, name in enumerate(names):
                if made == records:
                    return
                made += 1
                started = now - 30 * DAY + k * (30 * DAY / per_job) + j
                roll = rng.random()
                newest = k == per_job - 1
                status, reason, code, error = "success", None, 0, None
                if (roll < 0.05 and not newest) or (newest and j % 9 == 4):  # a few failing now
                    status, code, error = "failed", 1, "exit 1: upstream said no"
                elif roll < 0.10 and not newest:
                    status, reason, code = "skipped", "locked", None
                took = 0 if status == "skipped" else rng.randint(50, 5000)
                yield (name, status, reason, "cron", started, started + took / 1000, took, 1, 0, 10, 0,
                       code, error, None, "bench", 4242, None, "fetched page\n" * 20)

    db = sqlite3.connect(state)
    db.execute("PRAGMA synchronous=OFF")
    with db:
        db.executemany("INSERT OR IGNORE INTO jobs (name, first_seen) VALUES (?, ?)",
                       [(n, now - 31 * DAY) for n in names])
        db.executemany(
            "INSERT INTO runs (job, status, reason, trigger, started_at, finished_at, duration_ms,"
            " attempts, requests, items_processed, items_failed, exit_code, error, retry_at, host,"
            " pid, pid_start, output) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows())
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return folder


def install(venv: Path) -> str:
    """A temp venv with this checkout installed the way users install it (not editable)."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT)],
                   check=True, stderr=subprocess.DEVNULL)
    return python


class Bench:
    def __init__(self, python: str, project: Path, work: Path):
        self.python = python
        self.project = project
        self.work = work
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SCHEDSYNC_", "PYTHON"))}
        env.update(HOME=str(work / "home"), XDG_CACHE_HOME=str(work / "xdg-cache"),
                   XDG_STATE_HOME=str(work / "xdg-state"), SCHEDSYNC_CACHE_DIR=str(work / "cache"),
                   COLUMNS="160")
        self.env = env
        script = Path(python).with_name("schedsync")
        exe = [str(script)] if script.exists() else [python, "-m", "schedsync"]
        cli = [*exe, "-c", str(project / "jobs.yaml")]
        self.cases = {
            "python -c pass": [python, "-c", "pass"],
            "status": [*cli, "status"],
            "status --json": [*cli, "status", "--json"],
            "status --check": [*cli, "status", "--check"],
            "status JOB": [*cli, "status", "job-004"],
            "history JOB": [*cli, "history", "job-004"],
            "history JOB --json": [*cli, "history", "job-004", "--json"],
            "logs JOB": [*cli, "logs", "job-004"],
            "list": [*cli, "list"],
            "metrics": [*cli, "metrics"],
            "validate": [*cli, "validate"],
            "--help": [*exe, "--help"],
            "status --help": [*exe, "status", "--help"],
        }
        self.missing: dict[str, str] = {}
        self.rss_tool = TIME if os.access(TIME, os.X_OK) else None

    def _spawn(self, argv: list[str], prefix: list[str] = (), **extra):
        return subprocess.run([*prefix, *argv], env=dict(self.env, **extra), cwd=self.project,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)

    def warm_up(self) -> None:
        """Compile every .pyc, fill the config cache and the page cache; drop what does not run."""
        for name, argv in list(self.cases.items()):
            proc = self._spawn(argv)
            if proc.returncode not in (0, 1):  # --check exits 1: some jobs are failing
                self.missing[name] = (proc.stderr.strip().splitlines() or ["?"])[-1][:100]
                del self.cases[name]

    def measure(self, runs: int, rss_runs: int):
        times = {name: [] for name in self.cases}
        rss = {name: [] for name in self.cases}
        order = list(self.cases)
        rng = random.Random(1)
        for i in range(runs):
            rng.shuffle(order)
            for name in order:
                start = time.perf_counter()
                self._spawn(self.cases[name])
                times[name].append(time.perf_counter() - start)
            if self.rss_tool and i < rss_runs:
                rng.shuffle(order)
                for name in order:
                    out = self.work / "rss"
                    self._spawn(self.cases[name], prefix=[self.rss_tool, "-f", "%M", "-o", str(out)])
                    rss[name].append(int(out.read_text().split()[-1]) / 1024)
        return times, rss

    def heavy(self, name: str) -> tuple[list[str], int]:
        """Heavy top-level packages the command imports, and how many modules beyond python -c pass."""
        def modules(argv):
            proc = self._spawn(argv, PYTHONPROFILEIMPORTTIME="1")
            return {line.split("|")[-1].strip() for line in proc.stderr.splitlines()
                    if line.startswith("import time:") and "[us]" not in line}
        base = modules(self.cases["python -c pass"])
        found = modules(self.cases[name])
        return sorted({m.split(".")[0] for m in found} & set(HEAVY)), len(found - base)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="interleaved rounds (default 15)")
    parser.add_argument("--rss-runs", type=int, default=3, help="rounds that also measure peak RSS (default 3)")
    parser.add_argument("--jobs", type=int, default=30, help="jobs in the registry (default 30)")
    parser.add_argument("--records", type=int, default=30_000, help="runs in the state (default 30,000)")
    parser.add_argument("--python", help="use this interpreter's schedsync instead of a fresh temp venv")
    parser.add_argument("--check", action="store_true", help=f"exit 1 if a command is over {TARGET_RATIO:g}x")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-read-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        python = args.python or install(work / "venv")
        installed = time.perf_counter() - started
        project = build(work / "project", args.jobs, args.records, python)
        bench = Bench(python, project, work)
        editable = subprocess.run([python, "-c", "import sys; print(sorted(sys.modules))"],
                                  capture_output=True, text=True, env=bench.env).stdout.count("__editable__")
        bench.warm_up()
        times, rss = bench.measure(args.runs, args.rss_runs)
        heavy = {name: bench.heavy(name) for name in bench.cases if name != "python -c pass"}

    base = statistics.median(times["python -c pass"])
    print(f"schedsync read commands: {args.runs} interleaved rounds, {args.jobs} jobs, {args.records:,} runs; "
          f"{python} (Python {sys.version.split()[0]}"
          + (f", installed in {installed:.0f}s" if not args.python else "")
          + f"), load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'case':20} {'median':>9} {'p25-p75 ms':>14} {'ratio':>7} {'max RSS':>9}"
          "  heavy imports (modules beyond python -c pass)")
    missed = []
    for name, samples in times.items():
        q = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
        ratio = statistics.median(samples) / base
        peak = f"{max(rss[name]):.1f} MiB" if rss[name] else "n/a"
        imports = ""
        if name in heavy:
            names, count = heavy[name]
            imports = f"  {', '.join(names) or 'none'} ({count})"
            if ratio > TARGET_RATIO:
                missed.append(name)
        print(f"{name:20} {statistics.median(samples) * 1000:6.1f} ms "
              f"{q[0] * 1000:6.1f}-{q[2] * 1000:<6.1f} {ratio:6.2f}x {peak:>9}{imports}")
    for name, why in bench.missing.items():
        print(f"{name:20} not measured: {why}")
    print(f"target: every command <= {TARGET_RATIO:g}x python -c pass: "
          + ("ok" if not missed else "MISSED by " + ", ".join(missed)))
    if editable:
        print("note: this schedsync is an editable install: setuptools' finder loads pathlib, re, enum… "
              "into every interpreter, python -c pass included, so these ratios are lower than users get")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())

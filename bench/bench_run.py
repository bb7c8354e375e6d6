"""The cost of one cron tick: ``schedsync run trivial`` against ``python -c pass``.

Every cron line pays schedsync's start-up, so this measures what a tick costs on
top of starting the same interpreter: a command job running ``true``, in a temp
folder with its own jobs.yaml, state and config cache.

    python bench/bench_run.py [--runs N] [--check]

Cases, run interleaved in a shuffled order each round (the machine is shared and
noisy, so only the ratio of medians means anything, never a time on its own):

- ``python -c pass``: the floor, the same interpreter and venv as schedsync;
- ``schedsync run trivial (warm)``: the console script, config cache warm;
- ``schedsync run trivial (cold)``: the config cache removed before each run
  (PyYAML and cronsim parse and validate jobs.yaml);
- ``python -m schedsync run trivial``: warm, through runpy.

Each run claims its scheduled slot in the ledger, as a cron-started run does; the ledger
is emptied (untimed) after each, so every run claims a fresh slot.

``--other PYTHON`` adds another install's ``schedsync`` (the one beside that interpreter,
importing its own installed package, say the previous version's) and that interpreter's
``python -c pass``, timed in the same rounds: a before/after from one run, each ratio
against its own interpreter.

Peak RSS comes from ``/usr/bin/time -f %M`` in separate interleaved runs: a child
forked from this (Python) process would report at least this process's own RSS,
since Linux carries the parent's high-water mark across fork and exec.

Then a few runs with ``-X importtime`` list which modules the warm hot path
imports and what they cost, and whether any heavy dependency (typer, rich,
httpx, yaml, cronsim, tenacity, sqlite_utils) came in. Targets: warm ratio <= 3.5x,
peak RSS <= 30 MiB. ``--check`` exits 1 when either is missed.

Measure a regular install for the figure users get: an editable one (``pip
install -e``) loads setuptools' import hook, with pathlib, re and enum, into every
interpreter, ``python -c pass`` included, which flatters the ratio (the bench
says when it sees one). The console script is ``bin/schedsync`` as it is, not pip's
entry-point stub, which imports ``re`` (docs/design.md, Start-up).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_RATIO = 3.5
TARGET_RSS_MIB = 30.0
HEAVY = ("typer", "click", "rich", "httpx", "httpcore", "h11", "anyio", "yaml", "cronsim",
         "tenacity", "sqlite_utils", "pygments")
TIME = "/usr/bin/time"
OTHER_PASS = "python -c pass (other)"
OTHER_WARM = "other: run trivial (warm)"

JOBS_YAML = """\
state: state/schedsync.db
jobs:
  trivial:
    schedule: "* * * * *"
    command: ["true"]
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="interleaved rounds (default 30)")
    parser.add_argument("--import-runs", type=int, default=7,
                        help="runs under -X importtime for the import table (default 7)")
    parser.add_argument("--other", metavar="PYTHON",
                        help="also time the schedsync installed beside this interpreter (e.g. a previous version)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the warm ratio or the peak RSS misses its target")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        bench = Bench(Path(tmp), args.other)
        bench.warm_up()
        times, rss = bench.measure(args.runs)
        imports = bench.imports(args.import_runs)
        cold_heavy = bench.heavy_modules(cold=True)
    return report(bench, args.runs, times, rss, imports, cold_heavy, args.check)


class Bench:
    def __init__(self, tmp: Path, other: str | None = None):
        self.tmp = tmp
        (tmp / "project").mkdir()
        self.config = tmp / "project" / "jobs.yaml"
        self.config.write_text(JOBS_YAML)
        self.configs = [self.config]
        self.warm_cache = tmp / "cache-warm"
        self.cold_cache = tmp / "cache-cold"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SCHEDSYNC_", "PYTHON"))}
        # The checkout under test, whatever is installed; python -c pass gets the same path.
        env.update(HOME=str(tmp / "home"), XDG_CACHE_HOME=str(tmp / "xdg-cache"),
                   XDG_STATE_HOME=str(tmp / "xdg-state"), PYTHONPATH=str(ROOT))
        self.env = env
        script = Path(sys.executable).with_name("schedsync")
        self.script = str(script) if script.exists() else None
        run = ["-c", str(self.config), "run", "trivial"]
        module = [sys.executable, "-m", "schedsync", *run]
        self.cases = {
            "python -c pass": ([sys.executable, "-c", "pass"], None),
            "schedsync run trivial (warm)": ([self.script, *run] if self.script else module,
                                             self.warm_cache),
            "schedsync run trivial (cold)": ([self.script, *run] if self.script else module,
                                             self.cold_cache),
            "python -m schedsync run (warm)": (module, self.warm_cache),
        }
        self.case_env: dict[str, dict] = {}  # per case: variables to set (None: unset)
        if other:
            other_script = Path(other).with_name("schedsync")
            if not other_script.exists():
                sys.exit(f"bench_run: no schedsync script beside {other}")
            (tmp / "other").mkdir()
            other_config = tmp / "other" / "jobs.yaml"
            other_config.write_text(JOBS_YAML)
            self.configs.append(other_config)
            self.cases[OTHER_PASS] = ([other, "-c", "pass"], None)
            self.cases[OTHER_WARM] = ([str(other_script), "-c", str(other_config), "run", "trivial"],
                                      tmp / "cache-other")
            for name in (OTHER_PASS, OTHER_WARM):  # its own installed package, not this checkout
                self.case_env[name] = {"PYTHONPATH": None}
        self.rss_tool = TIME if os.access(TIME, os.X_OK) else None
        self.cpu: dict[str, list[float]] = {name: [] for name in self.cases}
        self.last_cpu = 0.0

    def _env(self, cache: Path | None, name: str | None = None, **extra) -> dict:
        env = dict(self.env, **extra)
        if cache is not None:
            env["SCHEDSYNC_CACHE_DIR"] = str(cache)
        for key, value in self.case_env.get(name, {}).items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def _spawn(self, name: str, prefix: list[str] = (), **extra) -> float:
        argv, cache = self.cases[name]
        if cache == self.cold_cache:
            shutil.rmtree(cache, ignore_errors=True)
        env = self._env(cache, name, **extra)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        # stdin/stdout/stderr are not a TTY, as under cron: trigger cron, output held back.
        # cwd: the temp folder, as ``-m`` puts the current folder first on sys.path (another
        # checkout's schedsync there would be the one measured)
        proc = subprocess.run([*prefix, *argv], env=env, stdin=subprocess.DEVNULL, cwd=self.tmp,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        took = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        # CPU time of the process and what it waited for (the keeper, the job): steadier
        # than wall time on a loaded machine, though blind to waits on the disk.
        self.last_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        if proc.returncode != 0:
            sys.exit(f"bench_run: {name} exited {proc.returncode}:\n{proc.stderr.decode()}")
        self._forget_slots()
        return took

    def _forget_slots(self) -> None:
        """Untimed: empty the slot ledger, so the next run claims its slot afresh as cron's
        would (many runs in one minute would otherwise be already_ran skips)."""
        import sqlite3

        for config in self.configs:
            state = config.parent / "state" / "schedsync.db"
            if state.exists():
                db = sqlite3.connect(state)
                try:
                    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'slots'").fetchone():
                        db.execute("DELETE FROM slots")
                        db.commit()
                finally:
                    db.close()

    def warm_up(self) -> None:
        """Compile every .pyc and fill the warm config cache before anything is timed."""
        for name in self.cases:
            self._spawn(name)

    def measure(self, runs: int):
        times = {name: [] for name in self.cases}
        rss = {name: [] for name in self.cases}

        order = list(self.cases)
        rng = random.Random(1)
        for _ in range(runs):
            rng.shuffle(order)
            for name in order:
                times[name].append(self._spawn(name))
                self.cpu[name].append(self.last_cpu)
            if self.rss_tool:
                rng.shuffle(order)
                for name in order:
                    rss[name].append(self._rss(name))
        return times, rss

    def _rss(self, name: str) -> float:
        out = self.tmp / "rss"
        self._spawn(name, prefix=[self.rss_tool, "-f", "%M", "-o", str(out)])
        return int(out.read_text().split()[-1]) / 1024  # KiB -> MiB

    def _importtime(self, name: str) -> list[tuple[int, str, int, int]]:
        """(depth, module, self us, cumulative us) per import, in the order -X importtime prints."""
        argv, cache = self.cases[name]
        if cache == self.cold_cache:
            shutil.rmtree(cache, ignore_errors=True)
        self._forget_slots()
        proc = subprocess.run(argv, env=self._env(cache, name, PYTHONPROFILEIMPORTTIME="1"), cwd=self.tmp,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        rows = []
        for line in proc.stderr.splitlines():
            if not line.startswith("import time:") or "[us]" in line:
                continue
            own, cumulative, module = line[len("import time:"):].split("|")
            depth = (len(module) - len(module.lstrip()) - 1) // 2
            rows.append((depth, module.strip(), int(own), int(cumulative)))
        return rows

    def heavy_modules(self, cold: bool = False) -> list[str]:
        rows = self._importtime("schedsync run trivial (cold)" if cold
                                else "schedsync run trivial (warm)")
        return sorted({m.split(".")[0] for _, m, _, _ in rows} & set(HEAVY))

    def imports(self, runs: int) -> dict:
        """Median import costs on the warm path: schedsync's modules and what they pull in."""
        samples: dict[str, list[int]] = {}
        parents: dict[str, str] = {}
        selfs: dict[str, list[int]] = {}
        modules: set[str] = set()
        heavy: set[str] = set()
        for _ in range(runs):
            rows = self._importtime("schedsync run trivial (warm)")
            modules.update(m for _, m, _, _ in rows)
            heavy.update({m.split(".")[0] for _, m, _, _ in rows} & set(HEAVY))
            # -X importtime prints children before their parent, one level deeper.
            pending: list[tuple[int, str]] = []
            for depth, module, own, cumulative in rows:
                while pending and pending[-1][0] > depth:
                    parents[pending.pop()[1]] = module
                pending.append((depth, module))
                samples.setdefault(module, []).append(cumulative)
                selfs.setdefault(module, []).append(own)
        base = {m for _, m, _, _ in self._importtime("python -c pass")}
        median = {m: statistics.median(v) / 1000 for m, v in samples.items()}
        own = {m: statistics.median(v) / 1000 for m, v in selfs.items()}
        ours = [m for m in median if m == "schedsync" or m.startswith("schedsync.")]
        # Imported by one of ours at module level, or inside a function (then it has no parent).
        pulled = [m for m in median if m not in ours and m not in base
                  and parents.get(m, "schedsync").startswith("schedsync")]
        return {"ours": ours, "pulled": pulled, "median": median, "self": own,
                "parents": parents, "extra": len(modules - base), "heavy": sorted(heavy),
                "editable": sorted(m for m in base if m.startswith("__editable__"))}


def report(bench: Bench, runs: int, times, rss, imports, cold_heavy, check: bool) -> int:
    base = statistics.median(times["python -c pass"])
    print("ratio: median wall time over python -c pass's; CPU: median user + sys time of the process"
          " and the processes it waited for, and its ratio")
    print(f"schedsync run: {runs} interleaved rounds, {sys.executable} "
          f"(Python {sys.version.split()[0]}), load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    cpu = {name: statistics.median(v) for name, v in bench.cpu.items()}
    print(f"{'case':32} {'median':>9} {'p25-p75 ms':>14} {'ratio':>7} {'max RSS':>9} {'CPU':>8} {'ratio':>6}")
    for name, samples in times.items():
        q = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
        peak = f"{max(rss[name]):.1f} MiB" if rss[name] else "n/a"
        floor = OTHER_PASS if name in (OTHER_PASS, OTHER_WARM) else "python -c pass"
        own = statistics.median(times[floor])
        print(f"{name:32} {statistics.median(samples) * 1000:6.1f} ms "
              f"{q[0] * 1000:6.1f}-{q[2] * 1000:<6.1f} {statistics.median(samples) / own:6.2f}x "
              f"{peak:>9} {cpu[name] * 1000:5.1f} ms {cpu[name] / max(cpu[floor], 1e-9):5.2f}x")
    if OTHER_WARM in times:
        print(f"other: {bench.cases[OTHER_WARM][0][0]}, its ratio against its own python -c pass")
    warm = "schedsync run trivial (warm)"
    ratio = statistics.median(times[warm]) / base
    peak = max(rss[warm]) if rss[warm] else None
    ok_ratio = ratio <= TARGET_RATIO
    ok_rss = peak is None or peak <= TARGET_RSS_MIB
    print(f"target: warm ratio <= {TARGET_RATIO:g}x: {ratio:.2f}x {'ok' if ok_ratio else 'MISSED'}; "
          f"peak RSS <= {TARGET_RSS_MIB:g} MiB: "
          + (f"{peak:.1f} MiB {'ok' if ok_rss else 'MISSED'}" if peak is not None
             else f"not measured ({TIME} missing: apt-get install time)"))
    if not bench.script:
        print(f"note: no console script beside {sys.executable}; the warm and cold cases used -m")
    if imports["editable"]:
        print("note: schedsync is installed editable here: setuptools' finder "
              f"({imports['editable'][0]}) imports pathlib, re, enum, urllib.parse… in every "
              "interpreter, python -c pass included, so this ratio is lower than a regular "
              "install's; for the figure users get: python -m venv V && V/bin/pip install . "
              "&& V/bin/python bench/bench_run.py")
    print(f"heavy modules imported: {', '.join(imports['heavy']) or 'none'}")
    print(f"heavy modules imported (cold, parsing jobs.yaml): {', '.join(cold_heavy) or 'none'}")
    median, own = imports["median"], imports["self"]
    print(f"imports on the warm path beyond python -c pass: {imports['extra']} modules; "
          "median ms under -X importtime (inflated by it; compare, don't add):")
    for module in sorted(imports["ours"], key=lambda m: -own[m]):
        print(f"  {module:28} own {own[module]:5.1f}   with imports {median[module]:5.1f}")
    for module in sorted(imports["pulled"], key=lambda m: -median[m])[:12]:
        where = imports["parents"].get(module, "the console script, or a function at run time")
        print(f"  {module:28} {median[module]:5.1f}   (from {where})")
    return 1 if check and not (ok_ratio and ok_rss) else 0


if __name__ == "__main__":
    sys.exit(main())

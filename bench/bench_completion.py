"""Completing a job name: ``schedsync __complete jobs`` (what the bash, zsh and fish
scripts run on every <TAB>) against ``python -c pass``.

    python bench/bench_completion.py [--runs N] [--check]

Cases, interleaved in a shuffled order each round (the machine is shared and noisy: only
the ratio of medians means anything):

- ``python -c pass``: the floor, the same interpreter;
- ``schedsync __complete jobs (warm)``: the console script, the config cache warm (what a
  <TAB> costs once any command has read jobs.yaml): marshal, no YAML;
- ``schedsync __complete jobs (no cache)``: ``SCHEDSYNC_NO_CACHE=1``: libyaml's bounded walk;
- ``bash: _schedsync run <TAB>``: the whole completion in bash (bash started, the script
  sourced, the function run), next to bash sourcing the script without completing.

The target: the warm case well under 100 ms on a quiet machine, i.e. within 2.5x of
``python -c pass``; ``--check`` exits 1 past that ratio.
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
TARGET_RATIO = 2.5
JOBS = "jobs:\n" + "".join(f'  job-{i}: {{command: "true", schedule: "0 * * * *"}}\n' for i in range(50))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--check", action="store_true", help=f"exit 1 past {TARGET_RATIO}x")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="schedsync-bench-completion."))
    try:
        (folder / "jobs.yaml").write_text(JOBS)
        script = shutil.which("schedsync", path=os.path.dirname(sys.executable)) or ""
        exe = [script] if script else [sys.executable, "-m", "schedsync"]
        env = {**os.environ, "XDG_CACHE_HOME": str(folder / "cache"), "PYTHONPATH": str(ROOT)}
        env.pop("SCHEDSYNC_CONFIG", None)
        subprocess.run([*exe, "list"], cwd=folder, env=env, check=True, stdout=subprocess.DEVNULL)
        completion = subprocess.run([*exe, "completion", "bash"], cwd=folder, env=env, check=True,
                                    capture_output=True, text=True).stdout
        (folder / "complete.bash").write_text(completion.replace('"${COMP_WORDS[0]}"', " ".join(exe)))
        source = f"source {folder / 'complete.bash'}"
        cases = {
            "python -c pass": ([sys.executable, "-c", "pass"], {}),
            "schedsync __complete jobs (warm)": ([*exe, "__complete", "jobs"], {}),
            "schedsync __complete jobs (no cache)": ([*exe, "__complete", "jobs"], {"SCHEDSYNC_NO_CACHE": "1"}),
            "bash -c: source the script": (["bash", "--norc", "-c", source], {}),
            "bash -c: source + _schedsync run <TAB>": (
                ["bash", "--norc", "-c", f"{source}; COMP_WORDS=(schedsync run ''); COMP_CWORD=2; _schedsync"], {}),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):
            order = list(cases)
            random.shuffle(order)
            for name in order:
                argv, extra = cases[name]
                start = time.perf_counter()
                subprocess.run(argv, cwd=folder, env={**env, **extra}, stdout=subprocess.DEVNULL, check=True)
                times[name].append(time.perf_counter() - start)
        floor = statistics.median(times["python -c pass"])
        print(f"{'case':<44} {'median':>9} {'ratio':>7}")
        for name, values in times.items():
            median = statistics.median(values)
            print(f"{name:<44} {median * 1000:>7.1f}ms {median / floor:>6.2f}x")
        warm = statistics.median(times["schedsync __complete jobs (warm)"]) / floor
        print(f"target: warm <= {TARGET_RATIO}x python -c pass: {'met' if warm <= TARGET_RATIO else 'MISSED'}")
        return 1 if args.check and warm > TARGET_RATIO else 0
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""jobs.yaml as hostile input: bounded aliases, nesting, size and quoted values;
linear validation; strict names; `validate` lists every error; one home for paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from schedsync import paths
from schedsync.config import (
    ALIAS_NODES,
    MAX_BYTES,
    MAX_DEPTH,
    NAME_MAX,
    ConfigError,
    ConfigErrors,
    load,
    parse,
    resolve_state,
)

MiB = 1024 * 1024


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """The "billion laughs": each level lists the previous one `width` times."""
    out = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        out.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]")
    out.append(f"jobs:\n  x:\n    command: [true]\n    env: {{A: *a{levels - 1}}}")
    return "\n".join(out) + "\n"


def many_jobs(n: int) -> str:
    lines = ["defaults: &d {timeout: 30s}", "jobs:"]
    for i in range(n):
        lines += [f"  job-{i:05d}:", '    schedule: "*/5 * * * *"', f"    command: [echo, '{i}']",
                  "    retries: {attempts: 2}", f"    description: job {i}"]
    return "\n".join(lines) + "\n"


def measured(project, *args: str) -> tuple[subprocess.CompletedProcess, int, float]:
    """The CLI run from a fresh parent, so RUSAGE_CHILDREN is this one child's:
    (result, peak RSS in bytes, CPU seconds)."""
    probe = (
        "import json, resource, subprocess, sys\n"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True, stdin=subprocess.DEVNULL)\n"
        "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(json.dumps([r.returncode, r.stdout, r.stderr, u.ru_maxrss, u.ru_utime + u.ru_stime]))\n")
    out = subprocess.run([sys.executable, "-c", probe, *project.argv(*args)], capture_output=True,
                         text=True, env={**project.env, "SCHEDSYNC_NO_CACHE": "1"}, cwd=project.path,
                         timeout=120, check=True)
    code, stdout, stderr, maxrss_kib, cpu = json.loads(out.stdout)
    return subprocess.CompletedProcess(args, code, stdout, stderr), maxrss_kib * 1024, cpu


def one_line_error(result) -> str:
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize("levels,width", [(9, 9), (7, 10), (30, 2)])
def test_alias_bomb_is_refused_in_bounded_memory_and_time(project, levels, width):
    project.config.write_text(alias_bomb(levels, width))
    result, rss, cpu = measured(project, "validate")
    line = one_line_error(result)
    assert "aliases expand to more than" in line
    assert rss <= 100 * MiB, f"peak RSS {rss / MiB:.1f} MiB"
    assert cpu <= 2.0, f"{cpu:.2f} s of CPU"


def test_ordinary_anchors_and_merges_still_work(project):
    project.write("""\
        x-common: &common
          timeout: 5s
          retries: {attempts: 5}
        x-slow: &slow
          timeout: 9s
          jitter: 2s
        defaults: &defaults
          grace: 1m
        jobs:
          a: &a
            <<: [*common, *slow]
            command: [echo, a]
          b:
            <<: *a
            timeout: 1s
          c:
            <<: *defaults
            env: &env {MODE: fast}
            command: [echo, c]
          d:
            env: *env
            command: [echo, d]
        """)
    config = load(project.config)
    a, b, c, d = (config.job(n) for n in "abcd")
    assert (a.timeout, a.jitter, a.retries["attempts"]) == (5.0, 2.0, 5)  # the first merge wins
    assert (b.timeout, b.jitter, b.section) == (1.0, 2.0, ["echo", "a"])  # own keys win
    assert c.grace == 60.0 and c.env == d.env == {"MODE": "fast"}
    assert a.lines["timeout"] == 2  # a merged key points at the line that wrote it
    assert project.cli("validate").returncode == 0


def test_a_legitimate_registry_that_merges_an_anchor_into_many_jobs_passes(tmp_path):
    lines = ["x-base: &base {timeout: 30s, jitter: 1s, retries: {attempts: 2}, grace: 1m}", "jobs:"]
    for i in range(ALIAS_NODES // 8):
        lines.append(f"  j{i}: {{<<: *base, command: [true]}}")
    config = parse("\n".join(lines) + "\n", "jobs.yaml", str(tmp_path))
    assert len(config.jobs) == ALIAS_NODES // 8


def test_a_merge_that_names_something_else_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="<< takes a mapping"):
        parse("jobs:\n  a: {<<: [1, 2], command: [true]}\n", "jobs.yaml", str(tmp_path))


@pytest.mark.parametrize("text", [
    "jobs:\n  x:\n    command: [true]\n    env: {A: " + "[" * 600 + "]" * 600 + "}\n",
    "jobs:\n  x:\n    command: [true]\n    env: {A: " + "[" * 5000 + "]" * 5000 + "}\n",
    "jobs:\n  x:\n    command: [true]\n    env:\n" + "".join(
        " " * (6 + 2 * i) + f"k{i}:\n" for i in range(200)) + " " * 406 + "v: 1\n",
])
def test_deep_nesting_is_one_line(project, text):
    project.config.write_text(text)
    line = one_line_error(project.cli("validate"))
    assert "nested more than" in line or "not valid YAML" in line
    assert len(line) < 400


def test_nesting_up_to_the_bound_is_fine(tmp_path):
    depth = MAX_DEPTH - 4  # jobs.x.http.body is 4 levels
    text = ("jobs:\n  x:\n    http: {url: 'https://h.test/', body: " + "[" * depth + "]" * depth
            + "}\n    into: {table: t, pk: id}\n")
    assert parse(text, "jobs.yaml", str(tmp_path)).jobs["x"].section["body"]


def test_a_file_over_the_size_bound_is_one_line(project):
    with open(project.config, "w") as f:
        f.write("jobs:\n  x:\n    command: [true]\n")
        chunk = "# " + "x" * 1021 + "\n"
        for _ in range(MAX_BYTES // len(chunk) + 1):
            f.write(chunk)
    result, rss, _ = measured(project, "validate")
    assert "larger than 4 MiB" in one_line_error(result)
    assert rss <= 60 * MiB


def test_a_file_of_millions_of_tiny_values_is_refused_before_any_tree_is_built(project):
    items = (MAX_BYTES - 100) // 2  # 2 million values in 4 MiB: about 1 GB as PyYAML nodes
    project.config.write_text("jobs: {x: {command: [echo]}}\nx-wide: [" + "1," * items + "]\n")
    result, rss, cpu = measured(project, "validate")
    assert "more than 250,000 YAML values" in one_line_error(result)
    assert rss <= 100 * MiB, f"peak RSS {rss / MiB:.1f} MiB"
    assert cpu <= 5.0, f"{cpu:.2f} s of CPU"


def test_error_lines_quote_bounded_values(project):
    huge = "x" * 1_000_000
    project.write(f"""\
        jobs:
          a:
            command: [true]
            overlap: "{huge}"
          {"b" * 1000}:
            command: [true]
          c:
            command: [true]
            env: {{"\\x01\\x1b[31m": 1}}
            unknown{"k" * 1000}: 1
        """)
    result = project.cli("validate")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 3, result.stderr[:2000]
    assert all(len(line) < 600 for line in lines)
    assert "\x1b" not in result.stderr and "\x01" not in result.stderr


def test_a_name_with_a_trailing_newline_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"jobs\.ab\\n: 'ab\\n' is not a valid name"):
        parse('jobs:\n  "ab\\n": {command: [true]}\n', "jobs.yaml", str(tmp_path))
    with pytest.raises(ConfigError, match="is not a valid name"):
        parse('budgets:\n  "b\\n": 1/s\njobs:\n  a: {command: [true]}\n', "jobs.yaml", str(tmp_path))
    with pytest.raises(ConfigError, match="is not a valid name"):
        parse('jobs:\n  a: {command: [true], breaker: {name: "x\\n"}}\n', "jobs.yaml", str(tmp_path))


def test_names_are_bounded_so_lock_files_fit(project, tmp_path):
    ok, long = "n" * NAME_MAX, "n" * (NAME_MAX + 1)
    assert ok in parse(f"jobs:\n  {ok}: {{command: [true]}}\n", "jobs.yaml", str(tmp_path)).jobs
    with pytest.raises(ConfigError, match=f"is {NAME_MAX + 1} characters long"):
        parse(f"jobs:\n  {long}: {{command: [true]}}\n", "jobs.yaml", str(tmp_path))
    with pytest.raises(ConfigError, match="not a usable table name"):
        parse("jobs:\n  a: {http: {url: 'https://h.test/'}, into: {table: " + "t" * 64 + ", pk: id}}\n",
              "jobs.yaml", str(tmp_path))
    # The longest name runs: its lock file and records fit.
    project.write(f"jobs:\n  {ok}:\n    command: [\"true\"]\n")
    result = project.cli("run", ok)
    assert result.returncode == 0, result.stderr
    assert project.history(ok)[0]["status"] == "success"


def test_validation_is_linear(tmp_path):
    def cost(n: int) -> float:
        text = many_jobs(n)
        best = float("inf")
        for _ in range(2):
            start = time.process_time()
            parse(text, "jobs.yaml", str(tmp_path))
            best = min(best, time.process_time() - start)
        return best

    small, large = cost(500), cost(5000)
    # Quadratic was 100x here; linear is about 10x. Loose: the machine is shared.
    assert large / small < 30, (small, large)


def test_validate_lists_every_error_then_exits_2(project):
    project.write("""\
        timezone: Mars/Base
        budgets:
          api: 10/zz
          ok: 5/1m
        jobs:
          first:
            command: [true]
            timout: 5s
          second:
            command: [true]
            overlap: sometimes
            retries: {attempts: 0}
          third:
            command: [true]
            budget: nope
          fine:
            command: "echo ${UNSET_FOR_VALIDATE}"
        """)
    result = project.cli("validate")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert all(line.startswith(f"error: {project.config}:") for line in lines), lines
    wanted = [":1 timezone:", ":3 budgets.api:", ":8 jobs.first.timout: unknown key",
              ":11 jobs.second.overlap:", ":12 jobs.second.retries.attempts:",
              ":15 jobs.third.budget: no budget named 'nope'",
              ":17 jobs.fine.command: environment variable UNSET_FOR_VALIDATE is not set"]
    assert len(lines) == len(wanted), result.stderr
    for line, part in zip(lines, wanted, strict=True):
        assert part in line, (part, line)
    assert result.stdout == ""
    # Every other command still stops at the first error.
    listed = project.cli("list")
    assert listed.returncode == 2 and listed.stderr.splitlines() == [lines[0]]
    with pytest.raises(ConfigErrors) as caught:
        load(project.config, every=True)
    assert len(caught.value.errors) == 6


def test_data_target_is_resolved_in_config(project, tmp_path, monkeypatch):
    project.write("""\
        jobs:
          plain: {python: "m:f"}
          own: {http: {url: "https://h.test/"}, into: {table: t, pk: id, db: data/own.db}}
        """)
    monkeypatch.delenv("SCHEDSYNC_STATE", raising=False)
    config = load(project.config)
    assert config.job("own").data_target == str(project.path / "data" / "own.db")
    state = resolve_state(str(tmp_path / "elsewhere" / "s.db"), config)
    assert state == str(tmp_path / "elsewhere" / "s.db")
    assert config.job("plain").data_target == str(tmp_path / "elsewhere" / "data.db")
    fresh = load(project.config)  # no state chosen yet: the default state's folder
    assert fresh.job("plain").data_target == paths.default_data(paths.default_state())
    url = "postgresql://sched@db.test/schedsync"
    assert resolve_state(url, fresh) == url
    assert fresh.job("plain").data_target == url  # the same database holds the tables


def test_a_postgresql_state_in_the_registry_is_left_as_it_is(tmp_path):
    url = "postgresql://sched@db.test:5432/schedsync"
    config = parse(f"state: {url}\njobs:\n  a: {{command: [true]}}\n  b: {{http: {{url: "
                   f"'https://h.test/'}}, into: {{table: t, pk: id, db: '{url}2'}}}}\n",
                   "jobs.yaml", str(tmp_path))
    assert config.state == url
    assert resolve_state(None, config) == url and config.job("a").data_target == url
    assert config.job("b").data_target == url + "2"


def test_paths_are_one_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "st"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "ca"))
    monkeypatch.delenv("SCHEDSYNC_CACHE_DIR", raising=False)
    assert paths.default_state() == str(tmp_path / "st" / "schedsync" / "state.db")
    assert paths.cache_dir() == str(tmp_path / "ca" / "schedsync")
    monkeypatch.setenv("SCHEDSYNC_CACHE_DIR", str(tmp_path / "c2"))
    assert paths.cache_dir() == str(tmp_path / "c2")
    assert paths.default_data("rel/state.db") == os.path.abspath("rel/data.db")
    assert paths.absolute("postgresql://h/db") == "postgresql://h/db"


@pytest.mark.parametrize("how, args", [
    ("-c", ("run", "x")), ("-c", ("validate",)), ("-c", ("status",)), ("-c", ("list",)),
    ("env", ("run", "x")), ("cwd", ("status",)),
])
def test_a_fifo_or_device_as_jobs_yaml_is_refused_without_blocking(project, how, args):
    # Nothing ever writes to the FIFO: reading it would block forever, so the timeout
    # turns a regression into a failure instead of a hung suite.
    fifo = project.path / "jobs.yaml"
    os.mkfifo(fifo)
    argv = [sys.executable, "-m", "schedsync", *args]
    env = {**project.env, "SCHEDSYNC_NO_CACHE": "1"}
    if how == "-c":
        argv[3:3] = ["-c", str(fifo)]
    elif how == "env":
        env["SCHEDSYNC_CONFIG"] = str(fifo)
    try:
        result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                env=env, cwd=project.path, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"schedsync {' '.join(args)} blocked on a FIFO jobs.yaml")
    line = one_line_error(result)
    assert "jobs.yaml" in line and "not a regular file" in line, line


def test_a_character_device_as_jobs_yaml_is_refused(project):
    result = subprocess.run([sys.executable, "-m", "schedsync", "-c", "/dev/zero", "validate"],
                            capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            env=project.env, cwd=project.path, timeout=60)
    assert "/dev/zero: not a regular file" in one_line_error(result)

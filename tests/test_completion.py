"""``schedsync completion bash|zsh|fish`` (issue 20 item 7): the scripts, sourced in the real
shells, complete commands, options and the job names of the active jobs.yaml through
``schedsync __complete jobs``, which stays off the run stack, typer and the validator."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

JOBS = """\
    jobs:
      alpha: {command: "true", schedule: "0 * * * *"}
      beta: {command: "true"}
      gamma.x: {command: "true"}
    """


@pytest.fixture
def shell_env(project, tmp_path):
    """``schedsync`` on PATH (this checkout), the project's env, and the three scripts."""
    project.write(JOBS)
    (project.path / "other.yaml").write_text('jobs:\n  other-one: {command: "true"}\n')
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "schedsync"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m schedsync "$@"\n')
    wrapper.chmod(0o755)
    env = {**project.env, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("SCHEDSYNC_CONFIG", None)
    for shell in ("bash", "zsh", "fish"):
        result = subprocess.run([str(wrapper), "completion", shell], capture_output=True, text=True,
                                env=env, cwd=project.path, timeout=60)
        assert result.returncode == 0, result.stderr
        (tmp_path / f"complete.{shell}").write_text(result.stdout)
    return env, tmp_path


def bash_complete(shell_env, cwd, *words: str, extra_env=None) -> list[str]:
    env, folder = shell_env
    quoted = " ".join(f"'{w}'" for w in words)
    program = (f"source {folder / 'complete.bash'}\n"
               f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}\n"
               "_schedsync\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], capture_output=True, text=True,
                            env={**env, **(extra_env or {})}, cwd=cwd, timeout=60)
    assert result.returncode == 0 and not result.stderr, result.stderr
    return [line for line in result.stdout.splitlines() if line]


def test_bash_registers_the_function(shell_env, project):
    env, folder = shell_env
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c",
                             f"source {folder / 'complete.bash'} && complete -p schedsync"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.stdout.strip() == "complete -F _schedsync schedsync", result.stderr


def test_bash_completes_commands_options_and_job_names(shell_env, project):
    cwd = project.path
    assert bash_complete(shell_env, cwd, "schedsync", "st") == ["state", "status"]
    assert bash_complete(shell_env, cwd, "schedsync", "status", "--j") == ["--json"]
    assert bash_complete(shell_env, cwd, "schedsync", "run", "") == ["alpha", "beta", "gamma.x"]
    assert bash_complete(shell_env, cwd, "schedsync", "history", "--json", "g") == ["gamma.x"]
    assert bash_complete(shell_env, cwd, "schedsync", "breaker", "reset", "b") == ["beta"]
    assert bash_complete(shell_env, cwd, "schedsync", "breaker", "") == ["reset", "--help"]
    assert "alpha" not in bash_complete(shell_env, cwd, "schedsync", "logs", "alpha", "")  # a run id next
    assert bash_complete(shell_env, cwd, "schedsync", "list", "") == ["--help"]  # list takes no job
    assert bash_complete(shell_env, cwd, "schedsync", "systemd", "--job", "a") == ["alpha"]
    assert bash_complete(shell_env, cwd, "schedsync", "completion", "") == ["bash", "zsh", "fish", "--help"]


def test_bash_reads_the_jobs_yaml_that_config_names(shell_env, project):
    cwd = project.path
    assert bash_complete(shell_env, cwd, "schedsync", "-c", "other.yaml", "run", "") == ["other-one"]
    assert bash_complete(shell_env, cwd, "schedsync", "--config=other.yaml", "status", "") == ["other-one"]
    elsewhere = project.path.parent
    assert bash_complete(shell_env, elsewhere, "schedsync", "run", "",
                         extra_env={"SCHEDSYNC_CONFIG": str(project.path / "other.yaml")}) == ["other-one"]
    assert bash_complete(shell_env, elsewhere, "schedsync", "run", "") == []  # no jobs.yaml here: quiet


def test_job_names_take_the_cache_path_without_yaml_or_the_config_package(shell_env, project):
    env, _ = shell_env
    assert project.cli("list").returncode == 0  # writes the validated cache
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "schedsync", "__complete", "jobs"],
                            capture_output=True, text=True, env=env, cwd=project.path, timeout=60)
    assert result.stdout.split() == ["alpha", "beta", "gamma.x"]
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "schedsync.cli.completion" in imported
    assert not {"yaml", "typer", "rich", "schedsync.config", "schedsync.app.runner"} & imported
    # Without a cache: the bounded walk, still no typer nor the validator.
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "schedsync", "__complete", "jobs"],
                            capture_output=True, text=True, env={**env, "SCHEDSYNC_NO_CACHE": "1"},
                            cwd=project.path, timeout=60)
    assert result.stdout.split() == ["alpha", "beta", "gamma.x"]
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert not {"typer", "rich", "schedsync.config.validate", "schedsync.app.runner"} & imported


def test_a_hostile_jobs_yaml_completes_nothing_and_quietly(shell_env, project):
    env, _ = shell_env
    laughs = ['a0: &a0 ["lol"]'] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    project.config.write_text("\n".join(laughs) + "\njobs: {x: *a9}\n")
    result = subprocess.run([sys.executable, "-m", "schedsync", "__complete", "jobs"], capture_output=True,
                            text=True, env={**env, "SCHEDSYNC_NO_CACHE": "1"}, cwd=project.path, timeout=60)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""


def test_an_unknown_shell_is_one_line_exit_2(project):
    project.write(JOBS)
    result = project.cli("completion", "tcsh")
    assert result.returncode == 2
    assert result.stderr == "error: completion: no script for 'tcsh' — use one of bash, zsh, fish\n"


@pytest.mark.skipif(not shutil.which("zsh"), reason="zsh is not installed (.ci/run installs it)")
def test_zsh_completes_job_names_and_commands(shell_env, project):
    env, folder = shell_env

    def complete(*words: str) -> list[str]:
        quoted = " ".join(f"'{w}'" for w in words)
        program = (f"source {folder / 'complete.zsh'}\n"
                   "reply=(); compadd() { [[ $1 == -- ]] && shift; reply+=(\"$@\") }\n"
                   f"words=({quoted}); CURRENT={len(words)}\n"
                   "_schedsync; print -l -- $reply\n")
        result = subprocess.run(["zsh", "-f", "-c", program], capture_output=True, text=True, env=env,
                                cwd=project.path, timeout=60)
        assert result.returncode == 0 and not result.stderr, result.stderr
        return [line for line in result.stdout.splitlines() if line]

    assert complete("schedsync", "run", "") == ["alpha", "beta", "gamma.x"]
    assert complete("schedsync", "-c", "other.yaml", "pause", "") == ["other-one"]
    assert "status" in complete("schedsync", "") and "--json" in complete("schedsync", "status", "-")
    parsed = subprocess.run(["zsh", "-n", str(folder / "complete.zsh")], capture_output=True, timeout=60)
    assert parsed.returncode == 0


@pytest.mark.skipif(not shutil.which("fish"), reason="fish is not installed (.ci/run installs it)")
def test_fish_completes_job_names_and_commands(shell_env, project):
    env, folder = shell_env

    def complete(line: str) -> list[str]:
        result = subprocess.run(["fish", "--no-config", "-c", f"source {folder / 'complete.fish'}; "
                                 f"complete -C '{line}'"], capture_output=True, text=True,
                                env=env, cwd=project.path, timeout=60)
        assert result.returncode == 0, result.stderr
        return [entry.split("\t")[0] for entry in result.stdout.splitlines()]

    assert complete("schedsync run ") == ["alpha", "beta", "gamma.x"]
    assert complete("schedsync -c other.yaml status ") == ["other-one"]
    assert {"run", "status", "crontab"} <= set(complete("schedsync "))
    assert "--json" in complete("schedsync status --")

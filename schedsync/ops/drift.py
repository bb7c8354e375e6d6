"""Crontab drift: does the installed crontab (``crontab -l``) hold what ``schedsync crontab``
prints? ``schedsync crontab --check`` lists each difference; ``status`` warns in one line.

Only schedsync's own lines for this registry are compared: a line is one of them when it
calls schedsync (a ``schedsync`` executable, or ``-m schedsync``) with ``-c`` naming this
jobs.yaml. Every other line of the crontab (other programs, other registries, variables,
comments) is left alone. Lines are compared by their schedule and their command's words
(as ``/bin/sh`` splits them), so spacing and quoting style do not count as drift.
"""

from __future__ import annotations

import os
import shlex
import subprocess

from schedsync.config import Config
from schedsync.core.errors import ConfigError, SchedsyncError

READ_TIMEOUT = 10  # seconds for `crontab -l`


class NoCron(SchedsyncError):
    """No ``crontab`` command here (cron is not installed): there is nothing to compare."""

    exit_code = 2


def installed() -> str:
    """This user's crontab as ``crontab -l`` prints it ("" when the user has none)."""
    try:
        result = subprocess.run(["crontab", "-l"], capture_output=True, text=True, errors="replace",
                                timeout=READ_TIMEOUT, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise NoCron("there is no `crontab` command here, so no installed crontab to compare",
                     "install cron (e.g. apt-get install cron), or put crontab on PATH") from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"cannot read the installed crontab: {exc}", "try `crontab -l` by hand") from None
    if result.returncode != 0:
        if "no crontab for" in result.stderr:
            return ""
        what = " ".join(result.stderr.split())[:200] or f"crontab -l exited {result.returncode}"
        raise ConfigError(f"cannot read the installed crontab: {what}", "try `crontab -l` by hand")
    return result.stdout


def differences(config: Config, state: str | None, text: str) -> tuple[list[tuple[str, str, str]], int]:
    """Each difference between ``text`` (a crontab) and what ``schedsync crontab`` prints for
    ``config``, as (``missing``/``changed``/``extra``, what, one line saying it); and how many
    of schedsync's lines for this registry ``text`` holds."""
    from schedsync.ops.crontab import crontab_lines

    config_path = os.path.join(config.dir, os.path.basename(config.path))
    want = dict(_entries(crontab_lines(config, state), config_path))
    have: dict = {}
    for key, entry in _entries(text.splitlines(), config_path):
        have.setdefault(key, []).append(entry)
    out = []
    tz = config.timezone
    if tz and want and not any(line.replace(" ", "") == f"CRON_TZ={tz}" for line in text.splitlines()):
        out.append(("missing", "CRON_TZ", f"CRON_TZ={tz} (jobs.yaml's schedules are in that zone)"))
    for key, (_, schedule, words, line) in want.items():
        what = _what(key)
        if key not in have:
            out.append(("missing", what, line))
            continue
        number, got_schedule, got_words, got_line = have[key][0]
        if got_schedule != schedule:
            out.append(("changed", what, f"line {number}: {what} runs at `{got_schedule}`, "
                                         f"jobs.yaml says `{schedule}`"))
        elif got_words != words:
            out.append(("changed", what, f"line {number}: `{got_line}`, `schedsync crontab` prints `{line}`"))
    for key, entries in have.items():
        for number, _, _, line in entries[1 if key in want else 0:]:
            why = ("installed twice" if key in want else "a job jobs.yaml does not schedule"
                   if key[0] == "run" else "a line `schedsync crontab` does not print")
            out.append(("extra", _what(key), f"line {number}: {line} ({why})"))
    return out, sum(len(entries) for entries in have.values())


def _what(key: tuple) -> str:
    return key[1] if key[0] == "run" else "the late-alert watcher" if key[0] == "status" else " ".join(key)


def _entries(lines, config_path: str):
    """(key, (line number, schedule, command words, line)) for schedsync's lines of this
    registry; the key is ``("run", JOB)``, ``("status",)`` or the words after the options."""
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#") or _is_variable(line):
            continue
        fields = line.split()
        count = 1 if fields[0].startswith("@") else 5
        if len(fields) <= count:
            continue
        schedule = " ".join(fields[:count])
        try:
            words = shlex.split(line.split(None, count)[count].replace("\\%", "%"))
        except ValueError:
            continue  # not a line schedsync wrote (an unbalanced quote)
        rest = _ours(words, config_path)
        if rest is None:
            continue
        key = ("run", rest[1]) if rest[:1] == ["run"] and len(rest) > 1 else \
            ("status",) if rest[:1] == ["status"] else tuple(rest)
        yield key, (number, schedule, words, line)


def _ours(words: list[str], config_path: str) -> list[str] | None:
    """The words after the global options when ``words`` calls schedsync with ``-c config_path``."""
    for i, word in enumerate(words):
        if word in ("-c", "--config") and i + 1 < len(words):
            value = words[i + 1]
        elif word.startswith("--config="):
            value = word.partition("=")[2]
        else:
            continue
        calls = any(os.path.basename(w) == "schedsync" for w in words[:i])
        if not calls or os.path.abspath(value) != config_path:
            return None
        rest = words[i + (1 if "=" in word else 2):]
        while rest[:1] == ["--state"] and len(rest) > 1:
            rest = rest[2:]
        return rest
    return None


def _is_variable(line: str) -> bool:
    name, eq, _ = line.partition("=")
    return bool(eq) and name.strip().replace("_", "a").isalnum()


def warning(config: Config, state: str | None) -> str | None:
    """``status``'s one line when this user's crontab holds schedsync lines for this registry
    that differ from ``schedsync crontab``; None otherwise, and whenever anything goes wrong
    (no cron, no crontab, another user's crontab installs the jobs)."""
    try:
        found, ours = differences(config, state, installed())
    except SchedsyncError:
        return None
    if not found or not ours:
        return None
    named = ", ".join(f"{what} {kind}" for kind, what, _ in found[:5])
    more = f" and {len(found) - 5} more" if len(found) > 5 else ""
    return (f"warning: the installed crontab differs from `schedsync crontab`: {named}{more}"
            " — see `schedsync crontab --check`")

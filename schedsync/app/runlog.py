"""``log: {file: PATH}``: one JSON line per finished run and per breaker transition,
appended to PATH for a log shipper (Vector, Fluent Bit, Promtail) to ingest.

Imported only when jobs.yaml has ``log:``. Many processes (every cron tick's
``schedsync run``) append to the same file at once, so each line is written by one
``write(2)`` on a descriptor opened with ``O_APPEND``: on a local file system the
kernel moves to the end and writes under the file's lock, so a line never
interleaves with another process's, whatever its length (PIPE_BUF bounds pipes, not
regular files). The file is opened for each line and closed after it, so a
logrotate that renames the file (no ``copytruncate`` needed) is followed at once.

A line that cannot be written never changes the run's result: one ``warning:`` line
goes to stderr (cron mails it).
"""

from __future__ import annotations

import json
import os
import sys

from schedsync.core.durations import iso
from schedsync.core.models import Run

MODE = 0o640  # readable by the group a log shipper runs in (say adm), not by everyone


def run_line(run: Run) -> dict:
    """The RUN object as ``history --json`` gives it, output included (redacted when recorded)."""
    from schedsync.app.report import run_json

    return {"event": "run", **run_json(run, output=True)}


def breaker_line(run: Run, transition) -> dict:
    old, new, breaker = transition
    return {"event": "breaker", "breaker": breaker.name, "from": old, "to": new,
            "at": iso(run.finished_at), "job": run.job, "run_id": run.id,
            "failures": breaker.failures, "opens_until": iso(breaker.opens_until)}


def log_reset(settings: dict, job: str, breaker: str, old: str, now: float) -> None:
    """A breaker closed by hand (``schedsync breaker reset JOB``)."""
    append(settings["file"], [{"event": "breaker", "breaker": breaker, "from": old, "to": "closed",
                               "at": iso(now), "job": job, "run_id": None, "reason": "reset by hand"}])


def log_run(settings: dict, run: Run, transition=None) -> None:
    """Append the run's line (and its breaker transition's) to ``settings["file"]``."""
    lines = [run_line(run)]
    if transition:
        lines.append(breaker_line(run, transition))
    append(settings["file"], lines)


def append(path: str, records: list[dict]) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOCTTY, MODE)
    except OSError as exc:
        _warn(path, exc)
        return
    try:
        for record in records:
            data = (json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)
                    + "\n").encode("utf-8", "replace")
            written = os.write(fd, data)  # one call per line: the whole line or (disk full) less
            if written != len(data):
                raise OSError(0, f"wrote {written} of {len(data)} bytes (disk full?)")
    except OSError as exc:
        _warn(path, exc)
    finally:
        os.close(fd)


def _warn(path: str, exc: OSError) -> None:
    sys.stderr.write(f"warning: cannot append to the run log {path}: {exc.strerror or exc} — "
                     "check that its folder exists and this user can write it\n")

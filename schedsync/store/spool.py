"""This host's spool: a trace of every run that could not reach its PostgreSQL state.

A run that gets no connection (too many clients, a connect timeout, the server down)
writes one small JSON file into ``paths.spool_dir()`` (a temporary file, then a rename:
a reader never sees half of one). The next schedsync on this host that opens that
state replays the files into it (``replay``) and deletes them, so ``status`` and
``history`` show the attempt: ``failed (not_started)``, "not started: too many clients".

- **A run's end too**: a run whose job finished while the database was away (and stayed
  away for ``FINISH_FOR``) spools its end (``write_finish``); the replay records it, over a
  ``crashed`` mark another host's reaper may have put on that run meanwhile.
- **Bounded**: at most ``MAX_ENTRIES`` files of at most ``MAX_BYTES`` each; beyond that a
  run's trace is dropped (its one-line error on stderr still says what happened).
- **Idempotent**: an entry is inserted under a transaction-level advisory lock on its
  key, only if no run of that job with the same host, pid and start exists, so two
  processes replaying the same file (two hosts sharing a home, two ticks at once)
  insert it once.
- **Private**: the folder is created 0700; a folder that is not ours or is writable by
  others is neither written nor replayed (anyone could plant records there).
- **Free when empty**: the ``run`` path lists the folder once (``postgres._spool_pending``); this module
  is imported only when there is something to write or replay.
"""

from __future__ import annotations

import json
import os
import stat
import time

from schedsync.paths import spool_dir

MAX_ENTRIES = 1000
MAX_BYTES = 65536  # a run's end keeps the tail of its output (OUTPUT_KEPT characters)
OUTPUT_KEPT = 16000
SMALL = 4096  # a run that did not start: its few fields
RUN_KEYS = ("id", "job", "status", "trigger", "started_at", "host", "pid", "reason", "finished_at",
            "duration_ms", "attempts", "requests", "items_processed", "items_failed", "exit_code",
            "error", "retry_at", "output", "pid_start", "items_inserted", "items_updated", "items_deleted")
# Keys a run's end gained after VERSION 1 was written (d1: load counts): an entry spooled
# by a schedsync before them is still one of ours (Run's defaults fill them in).
LATER_KEYS = ("items_inserted", "items_updated", "items_deleted")
VERSION = 1
STALE = 3600.0  # seconds after which a temporary file a killed writer left is removed


def _private(folder: str) -> bool:
    try:
        info = os.lstat(folder)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o022


def write(state: str, job: str, trigger: str, why: str, error: str, *, host: str,
          slot: float | None = None, at: float | None = None, folder: str | None = None) -> str | None:
    """Spool a run of ``job`` that could not start because ``state`` (its redacted label)
    gave no connection; the file's path, or None when the spool is full or unusable."""
    at = time.time() if at is None else at
    return _put({"v": VERSION, "kind": "not_started", "state": state, "job": job, "host": host,
                 "pid": os.getpid(), "at": at, "trigger": trigger, "slot": slot,
                 "why": why[:60], "error": error[:300]}, folder, SMALL)


def _put(entry: dict, folder: str | None, limit: int = MAX_BYTES) -> str | None:
    """Write ``entry`` as a new file of the spool, atomically (temp + rename); its path,
    or None when the spool is full, not private, or the entry too big."""
    folder = folder or spool_dir()
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        if not _private(folder) or len(os.listdir(folder)) >= MAX_ENTRIES:
            return None
        data = json.dumps(entry, ensure_ascii=True).encode()
        if len(data) > limit:  # a very long job name or state URL: no trace rather than an unbounded one
            return None
        at = entry["at"]
        name = f"{int(at * 1e6):019d}-{os.getpid()}-{os.urandom(4).hex()}.json"
        tmp = os.path.join(folder, f".{name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        path = os.path.join(folder, name)
        os.rename(tmp, path)
        return path
    except OSError:
        return None


def write_finish(state: str, run, breaker, evidence: bool, trial: bool, lease: float, retention: dict,
                 *, host: str, at: float, folder: str | None = None, later: dict | None = None,
                 after: list | None = None) -> str | None:
    """Spool the end of ``run`` (a ``core.models.Run``), which ``finish_run`` could not
    store: the database was lost at the end of the run and stayed away; ``later``, the
    retry later the run calls for, and ``after``, the chains' items, are queued with the
    end when it is replayed."""
    fields = {k: getattr(run, k) for k in RUN_KEYS}
    fields["output"] = (fields["output"] or "")[-OUTPUT_KEPT:] or None  # the tail, as errors show it
    fields["error"] = (fields["error"] or "")[:300] or None
    return _put({"v": VERSION, "kind": "finish", "state": state, "job": run.job, "host": host,
                 "pid": os.getpid(), "at": at, "run": fields, "breaker": breaker.name,
                 "settings": dict(breaker.settings), "evidence": bool(evidence), "trial": bool(trial),
                 "lease": float(lease), "retention": dict(retention), "later": later,
                 "after": list(after or ())}, folder)


def _read(path: str) -> dict | None:
    """One entry, or None if it is not one of ours (then it is removed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, MAX_BYTES + 1)
    finally:
        os.close(fd)
    try:
        entry = json.loads(data) if len(data) <= MAX_BYTES else None
    except ValueError:
        entry = None
    if not isinstance(entry, dict):
        _remove(path)
        return None
    common: dict = {"state": str, "job": str, "host": str, "pid": int, "at": (int, float)}
    kinds: dict = {"not_started": {"trigger": str, "why": str, "error": str},
                   "finish": {"run": dict, "breaker": str, "settings": dict, "evidence": bool, "trial": bool,
                              "lease": (int, float), "retention": dict}}
    fields = kinds.get(str(entry.get("kind"))) if entry.get("v") == VERSION else None
    if fields is None or not all(isinstance(entry.get(k), t) for k, t in {**common, **fields}.items()) \
            or not (entry.get("slot") is None or isinstance(entry["slot"], (int, float))) \
            or not (entry.get("later") is None or isinstance(entry["later"], dict)) \
            or not (entry.get("after") is None or isinstance(entry["after"], list)
                    and all(isinstance(name, str) for name in entry["after"])) \
            or (entry["kind"] == "finish" and (set(entry["run"]) not in (set(RUN_KEYS),
                                                                         set(RUN_KEYS) - set(LATER_KEYS))
                                               or not isinstance(entry["run"]["id"], int))):
        _remove(path)
        return None
    return entry


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass  # another replayer removed it first


def replay(store, names: list[str], folder: str | None = None) -> int:
    """Insert the spooled entries that belong to ``store`` (its label) and delete their
    files; entries of another state stay. Returns how many this call inserted. A database
    error ends the replay quietly: the files stay for the next schedsync."""
    from schedsync.core.errors import StateError

    folder = folder or spool_dir()
    if not _private(folder):
        return 0
    inserted = 0
    now = time.time()
    try:
        for name in os.listdir(folder):
            if name.startswith(".") and name.endswith(".tmp"):  # a writer killed mid-write
                try:
                    if now - os.lstat(os.path.join(folder, name)).st_mtime > STALE:
                        _remove(os.path.join(folder, name))
                except OSError:
                    pass
    except OSError:
        return 0
    for name in sorted(names)[:MAX_ENTRIES]:
        path = os.path.join(folder, name)
        entry = _read(path)
        if entry is None or entry["state"] != store.label:
            continue
        try:
            if entry["kind"] == "finish":
                inserted += store.finish_spooled(entry)
            else:
                inserted += store.record_spooled(entry)
        except StateError:
            return inserted
        except (TypeError, ValueError):  # fields of the wrong type: not one of ours
            pass
        _remove(path)
    return inserted

"""The overlap modes beyond skip, wait and allow, imported only by the jobs that use them.

- ``overlap: replace``: the new run asks the running one to stop (``Store.request_stop``:
  on its running row on SQLite, on its lease row on PostgreSQL) and, on this host, sends
  its schedsync a SIGTERM (``Liveness.stop``: never to a reused pid); the old schedsync
  stops its job's group as for any cancel (SIGTERM, SIGKILL after the kill grace) and
  records the run ``failed``/``replaced``. On PostgreSQL the holder's heartbeat reads the
  request back with its renewal and stops its own job, whichever host it is on. The new
  run then takes the lock, waiting at most ``STOP_WAIT`` seconds.
- ``overlap: queue``: when the lock is held, the run leaves one ``queue`` item in the
  ledger (at most one waits per job) and exits 75; the holder starts it as soon as it
  ends (``start_waiting``), and ``schedsync tick`` is the fallback.
"""

from __future__ import annotations

import time

from schedsync.jobs.command import KILL_GRACE

# Seconds a replacing run waits for the old one to let go: its stop (SIGTERM, SIGKILL after
# the grace) and its records; on PostgreSQL, a dead holder's lease lapsing (LEASE, 10 s).
STOP_WAIT = KILL_GRACE + 15.0


def replace_holder(store, job, lock, trigger: str) -> tuple[bool, str | None]:
    """Stop the running run of ``job`` and take ``lock``: (True, None), or (False, why not)."""
    host, pid, _ = store.liveness.owner()
    text = f"replaced by a newer run (pid {pid} on {host}, {trigger})"
    end = time.monotonic() + STOP_WAIT
    asked: dict = {}
    while True:
        if not asked:  # the holder may be between its lock and its running row: ask again
            for run in store.request_stop(job.name, text):
                asked[run.id] = run
                store.liveness.stop(run)
        left = end - time.monotonic()
        if lock.acquire(max(0.0, min(0.5, left))):
            return True, None
        if left <= 0.5:
            break
    who = ", ".join(f"run {r.id}, pid {r.pid} on {r.host}" for r in asked.values())
    return False, (f"the running run ({who}) did not stop within {STOP_WAIT:g}s" if who else
                   f"the lock stayed held for {STOP_WAIT:g}s with no running run to stop")


def queue_behind(store, job, trigger: str, slot: float | None) -> str:
    """Leave one ``queue`` item for ``job`` (the one waiting run); the skip's one line."""
    holder = store.running_runs([job.name])
    behind = f"run {holder[0].id} (pid {holder[0].pid} on {holder[0].host})" if holder else "the running run"
    item, created = store.enqueue_waiting(job.name, slot, store.now())
    if not created:
        return f"the lock is held by {behind} and a run is already waiting (work item {item})"
    return f"queued behind {behind} as work item {item}; it starts when that run ends"


def start_waiting(config, store, job) -> None:
    """The holder's last step, once its lock is released: start the job's waiting item now,
    as the tick starts one: ``schedsync run JOB --item ID`` in a new session, stdin from
    /dev/null, this run's output; the state passed in the environment, never on a command
    line others can read (``app.starter``)."""
    import os

    state = config.state_in_use
    if not state:
        return  # the tick starts it
    items = store.claim_due([job.name], 1, f"{os.uname().nodename}:{os.getpid()}")
    if not items:
        return
    from schedsync.app.starter import registry_path, starter

    starter(registry_path(config), state)(items[0])

"""Chains (``after:``) and upstreams (``requires:``), imported only by the jobs that have
them: the plain ``run`` of a job that is part of no chain never loads this module.

The store queues a chain's ``after`` items in the transaction that records the upstream
run's end (``finish_run``, or ``mark_crashed`` for a run found crashed); the process
that finished the run then claims them and starts each as ``schedsync run JOB --item ID``
at once (``app.starter.start_chained``), so a chain needs no tick; the tick starts whatever
is left (that process died first, the downstream job was still running, its breaker open)."""

from __future__ import annotations

from schedsync.core.models import CRASHED, FAILURES, PARTIAL, SKIPPED, SUCCESS


def downstream(job, status: str) -> list[str]:
    """The jobs whose ``after:`` a run of ``job`` ending ``status`` queues: ``success``
    (success or partial), ``failure`` (failed, timeout, crashed) and ``always`` (either);
    a skipped run (it never ran) queues none."""
    down = job.downstream or {}
    if not down or status == SKIPPED:
        return []
    if status in (SUCCESS, PARTIAL):
        outcome = "success"
    elif status in FAILURES or status == CRASHED:
        outcome = "failure"
    else:
        return []
    names = [*down.get(outcome, ()), *down.get("always", ())]
    return list(dict.fromkeys(names))


def upstream_ready(store, job, now: float) -> str | None:
    """None when ``job``'s ``requires:`` upstream's latest finished run (skips aside)
    succeeded within the window; else the one line that says why not."""
    from schedsync.core.durations import format_duration, iso

    req = job.requires
    up, within = req["job"], req["within"]
    last = next((r for r in store.runs(up, 50) if r.status not in ("running", SKIPPED)), None)
    if last is None:
        return f"requires {up} to have succeeded within {format_duration(within)}, and {up} never ran"
    ended = last.finished_at if last.finished_at is not None else last.started_at
    if last.status not in (SUCCESS, PARTIAL):
        return (f"requires {up} to have succeeded within {format_duration(within)}; its last run"
                f" (run {last.id}) {last.status} at {iso(ended)}")
    if now - ended > within:
        return (f"requires {up} to have succeeded within {format_duration(within)}; its last run"
                f" (run {last.id}) succeeded at {iso(ended)}, {format_duration(now - ended)} ago")
    return None

"""Terminal rendering of ``report`` data with rich. Nothing here decides anything."""

from __future__ import annotations

import json
import sys
from datetime import datetime

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .durations import format_duration

HEALTH_STYLE = {"OK": "green", "RUNNING": "cyan", "LATE": "yellow", "STALLED": "magenta",
                "FAILING": "bold red", "PAUSED": "dim", "NEVER": "dim"}
RUN_MARK = {"success": ("●", "green"), "partial": ("◐", "yellow"), "failed": ("✗", "red"),
            "timeout": ("⏱", "red"), "crashed": ("☠", "red"), "skipped": ("·", "dim"),
            "running": ("▶", "cyan")}
BARS = "▁▂▃▄▅▆▇█"


def console() -> Console:
    return Console(highlight=False)


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _when(iso_time: str | None, now: datetime) -> str:
    if not iso_time:
        return "—"
    delta = (now - datetime.fromisoformat(iso_time.replace("Z", "+00:00"))).total_seconds()
    return f"{format_duration(delta)} ago" if delta >= 0 else f"in {format_duration(-delta)}"


def _strip(recent: list[dict]) -> Text:
    text = Text()
    for run in reversed(recent):  # oldest left, newest right, like a sparkline
        mark, style = RUN_MARK.get(run["status"], ("?", ""))
        text.append(mark, style=style)
    return text


def _sparkline(recent: list[dict]) -> str:
    values = [r["duration_ms"] for r in reversed(recent)
              if r["duration_ms"] is not None and r["status"] != "skipped"]
    if not values:
        return ""
    top = max(values) or 1
    return "".join(BARS[min(len(BARS) - 1, int(v / top * (len(BARS) - 1)))] for v in values)


def status_table(report: dict, jobs: list[dict]) -> None:
    console().print(status_renderable(report, jobs))


def status_renderable(report: dict, jobs: list[dict]):
    from rich.console import Group

    now = datetime.fromisoformat(report["generated_at"].replace("Z", "+00:00"))
    levels = {b["name"]: b for b in report["budgets"]}
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("JOB", "HEALTH", "LAST RUN", "TOOK", "NEXT", "BREAKER", "BUDGET", "RECENT", "WHY"):
        table.add_column(column, no_wrap=column != "WHY")
    for job in jobs:
        last = job["last_run"]
        last_text = f"{last['status']} {_when(last['started_at'], now)}" if last else "never"
        took = format_duration(last["duration_ms"] / 1000) if last and last["duration_ms"] is not None else "—"
        breaker = job["breaker"]
        breaker_text = breaker["state"]
        if breaker["state"] == "open" and breaker["opens_until"]:
            breaker_text += f" (half-opens {_when(breaker['opens_until'], now)})"
        budget = ", ".join(f"{levels[b]['tokens']:.0f}/{levels[b]['capacity']:.0f}"
                           for b in job["budgets"]) or "—"
        strip = _strip(job["recent"])
        strip.append(" " + _sparkline(job["recent"]), style="dim")
        table.add_row(job["name"], Text(job["health"], style=HEALTH_STYLE.get(job["health"], "")),
                      last_text, took, _when(job["next_expected"], now) if job["next_expected"] else "—",
                      breaker_text, budget, strip, job["why"])
    if not report["budgets"]:
        return table
    return Group(table, Text("budgets: " + "  ".join(
        f"{b['name']} {b['tokens']:.1f}/{b['capacity']:.0f} per {format_duration(b['per_seconds'])}"
        for b in report["budgets"]), style="dim"))


def job_detail(job: dict, report: dict, transitions: list, runs: list[dict]) -> None:
    out = console()
    now = datetime.fromisoformat(report["generated_at"].replace("Z", "+00:00"))
    out.print(Text.assemble((job["name"], "bold"), "  ",
                            (job["health"], HEALTH_STYLE.get(job["health"], "")), f"  {job['why']}"))
    if job["description"]:
        out.print(job["description"])
    out.print(f"schedule   {job['schedule'] or 'none (run by hand)'}"
              + (f", next {_when(job['next_expected'], now)}" if job["next_expected"] else ""))
    out.print(f"last ok    {_when(job['last_success_at'], now)}")
    breaker = job["breaker"]
    out.print(f"breaker    {breaker['name']}: {breaker['state']}, {breaker['failures']} failures in a row"
              + (f", half-opens {_when(breaker['opens_until'], now)}" if breaker["state"] == "open" else ""))
    for at, old, new, why in transitions:
        out.print(f"           {_when(report_iso(at), now)}: {old} → {new} ({why})", style="dim")
    for b in report["budgets"]:
        if b["name"] in job["budgets"]:
            out.print(f"budget     {b['name']}: {b['tokens']:.1f} of {b['capacity']:.0f} tokens"
                      f" per {format_duration(b['per_seconds'])}")
    last = job["last_run"]
    if last and last["error"]:
        out.print(f"last error {last['error']}", style="red")
    history_table(runs)


def report_iso(t: float) -> str:
    from .report import iso

    return iso(t)


def history_table(runs: list[dict]) -> None:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("ID", "STARTED (UTC)", "STATUS", "TOOK", "TRIES", "REQ", "ITEMS", "EXIT", "TRIGGER", "DETAIL"):
        table.add_column(column, no_wrap=column != "DETAIL")
    for run in runs:
        mark, style = RUN_MARK.get(run["status"], ("?", ""))
        status = run["status"] + (f" ({run['reason']})" if run["reason"] else "")
        items = str(run["items_processed"]) + (f" ({run['items_failed']} failed)" if run["items_failed"] else "")
        detail = run["error"] or ""
        if run["retry_at"]:
            detail += f" (allowed again {run['retry_at']})"
        table.add_row(str(run["id"]), (run["started_at"] or "").replace("T", " ").rstrip("Z"),
                      Text(f"{mark} {status}", style=style),
                      format_duration(run["duration_ms"] / 1000) if run["duration_ms"] is not None else "—",
                      str(run["attempts"]), str(run["requests"]), items,
                      "" if run["exit_code"] is None else str(run["exit_code"]), run["trigger"], detail)
    console().print(table)


def jobs_table(config) -> None:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("JOB", "KIND", "SCHEDULE", "BUDGET", "TIMEOUT", "DESCRIPTION"):
        table.add_column(column)
    for name, spec in config.jobs.items():
        table.add_row(name, spec["kind"], spec["schedule"] or "—", ", ".join(spec["budgets"]) or "—",
                      format_duration(spec["timeout"]), spec["description"])
    console().print(table)

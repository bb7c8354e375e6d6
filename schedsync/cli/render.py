"""Terminal rendering of ``report`` data. Nothing here decides anything.

Tables and lines are built from the small ``Text``, ``Table`` and ``Group`` below. Into a
pipe (no colour) a table that fits unwrapped is laid out here, as rich would lay it out;
anything else (a terminal, wrapping, markup, wide characters) goes through rich. Importing
and laying out with rich costs more than the rest of ``status`` (-X importtime: ~40 ms and
~30 ms of a 30-job table), and a monitoring agent or a script reads a pipe.
"""

from __future__ import annotations

import json
import os
import re
import sys

from schedsync.core.durations import clock, format_duration, posix, relative
from schedsync.core.models import FAILURES

HEALTH_STYLE = {"OK": "green", "RUNNING": "cyan", "LATE": "yellow", "STALE": "yellow", "STALLED": "magenta",
                "FAILING": "bold red", "PAUSED": "dim", "NEVER": "dim"}
RUN_MARK = {"success": ("●", "green"), "partial": ("◐", "yellow"), "failed": ("✗", "red"),
            "timeout": ("⏱", "red"), "crashed": ("☠", "red"), "skipped": ("·", "dim"),
            "running": ("▶", "cyan")}
BARS = "▁▂▃▄▅▆▇█"


WIDE = 1000  # columns when stdout is not a terminal and $COLUMNS is unset: never cut a pipe short
WHY_MIN = 30  # the WHY column needs this much room; narrower, reasons follow the table


def console():
    """A terminal's width; a pipe's $COLUMNS, else wide enough not to cut anything."""
    from rich.console import Console

    wide = not sys.stdout.isatty() and not os.environ.get("COLUMNS")
    return Console(highlight=False, width=WIDE if wide else None)


class Text:
    """Styled text: rich's ``Text`` for what this module uses of it, turned into one when needed."""

    def __init__(self, text: str = "", style: str = ""):
        self.spans: list[tuple[str, str]] = [(text, style)] if text else []

    @classmethod
    def assemble(cls, *parts) -> Text:
        out = cls()
        for part in parts:
            if isinstance(part, Text):
                out.spans += part.spans
            elif isinstance(part, tuple):
                out.append(*part)
            else:
                out.append(part)
        return out

    def append(self, text: str, style: str = "") -> Text:
        if text:
            self.spans.append((text, style))
        return self

    @property
    def plain(self) -> str:
        return "".join(text for text, _ in self.spans)

    def rich(self):
        from rich.text import Text as RichText

        out = RichText()
        for text, style in self.spans:
            out.append(text, style=style or None)
        return out


class Column:
    def __init__(self, header: str, options: dict):
        self.header = header
        self.options = options


class Table:
    """rich's ``Table(box=None, pad_edge=False, header_style="bold")``: columns two spaces apart."""

    def __init__(self):
        self.columns: list[Column] = []
        self.rows: list[list] = []

    def add_column(self, header: str, **options) -> None:
        self.columns.append(Column(header, options))

    def add_row(self, *cells) -> None:
        self.rows.append(list(cells))

    def rich(self):
        from rich.table import Table as RichTable

        table = RichTable(box=None, pad_edge=False, header_style="bold")
        for column in self.columns:
            table.add_column(column.header, **column.options)
        for row in self.rows:
            table.add_row(*(_rich(cell) for cell in row))
        return table


class Group:
    def __init__(self, *parts):
        self.parts = list(parts)

    def rich(self):
        from rich.console import Group as RichGroup

        return RichGroup(*(_rich(part) for part in self.parts))


def _rich(thing):
    return thing.rich() if isinstance(thing, (Text, Table, Group)) else thing


# What a terminal would act on rather than show: C0 controls but tab and newline, DEL, C1.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _caret(match) -> str:
    code = ord(match.group())
    meta, code = ("M-", code - 0x80) if code >= 0x80 else ("", code)
    return meta + ("^?" if code == 0x7F else "^" + chr(code + 64))


def visible(text: str) -> str:
    """``text`` with its control characters shown as ``cat -v`` shows them (ESC is ``^[``,
    DEL ``^?``, U+009B ``M-^[``), so a job's output or a host name cannot retitle, clear or
    write the clipboard of the terminal it is shown on. Tab and newline are kept."""
    return _CONTROL.sub(_caret, text)


def _visible(thing):
    """``thing`` (a Text, str, Table or Group) with ``visible`` text, for a terminal."""
    if isinstance(thing, str):
        return visible(thing)
    if isinstance(thing, Text):
        out = Text()
        out.spans = [(visible(text), style) for text, style in thing.spans]
        return out
    if isinstance(thing, Table):
        out = Table()
        out.columns = thing.columns
        out.rows = [[_visible(cell) for cell in row] for row in thing.rows]
        return out
    if isinstance(thing, Group):
        return Group(*(_visible(part) for part in thing.parts))
    return thing


# What rich would treat as markup or an emoji code in a plain string, or lay out other than
# one cell a character: then rich renders it.
_MARKUP = re.compile(r"\[|:[A-Za-z_+-][\w+-]*:")


def _cells(text: str) -> int | None:
    """The width of ``text`` in terminal cells if every character is one cell wide, else None."""
    if text.isascii():
        return len(text) if text.isprintable() else None
    import unicodedata

    for char in text:
        if not char.isprintable() or unicodedata.combining(char) \
                or unicodedata.east_asian_width(char) in ("W", "F"):
            return None
    return len(text)


def _cell_text(cell) -> str | None:
    """A cell's plain text, or None when only rich can lay it out as rich would."""
    if isinstance(cell, Text):
        return cell.plain
    if _MARKUP.search(cell):
        return None
    return cell


def _plain_width() -> int | None:
    """The width to lay out to without rich, or None: a terminal, or colour forced into a pipe."""
    if sys.stdout.isatty() or os.environ.get("FORCE_COLOR") or os.environ.get("TTY_COMPATIBLE"):
        return None
    columns = os.environ.get("COLUMNS")
    if not columns:
        return WIDE
    return int(columns) if columns.isdigit() and int(columns) > 0 else None


def _widths(table: Table) -> list[int] | None:
    """Each column's width as rich gives it when the table is not squeezed; None if a cell needs
    rich (markup, wide characters, more than one line, or folding past a column's max_width)."""
    widths = []
    for i, column in enumerate(table.columns):
        width = _cells(column.header)
        if width is None or _MARKUP.search(column.header):
            return None
        for row in table.rows:
            text = _cell_text(row[i]) if i < len(row) else ""
            cells = None if text is None or "\n" in text else _cells(text)
            if cells is None:
                return None
            width = max(width, cells)
        if width > column.options.get("max_width", width):
            return None
        widths.append(max(width, column.options.get("min_width") or 0))
    return widths


def _plain_lines(thing, width: int) -> list[str] | None:
    """``thing`` as rich prints it into a pipe ``width`` wide, without the spaces that end a
    table's lines (as ``_print``), or None if only rich can say."""
    if isinstance(thing, Group):
        lines = []
        for part in thing.parts:
            part_lines = _plain_lines(part, width)
            if part_lines is None:
                return None
            lines += part_lines
        return lines
    if isinstance(thing, Table):
        widths = _widths(thing)
        if widths is None or sum(widths) + 2 * (len(widths) - 1) > width:
            return None
        rows = [[c.header for c in thing.columns]] + [[_cell_text(cell) for cell in row] for row in thing.rows]
        return ["  ".join(text.ljust(widths[i]) for i, text in enumerate(row)).rstrip() for row in rows]
    text = _cell_text(thing)
    if text is None or "\n" in text or _cells(text) is None or _cells(text) > width:
        return None
    return [text.rstrip()]


def _emit(things: list) -> None:
    """Print each of ``things`` (a Text, str, Table or Group): without rich when it can be laid
    out as rich would lay it out; else with rich, one print each. Into a pipe, lines end
    without the spaces that pad a table's last column (for grep, awk and diff); on a
    terminal, control characters are shown, not sent (``visible``)."""
    width = _plain_width()
    if width is not None:
        lines = []
        for thing in things:
            part = [""] if thing == "" else _plain_lines(thing, width)
            if part is None:
                break
            lines += part
        else:
            sys.stdout.write("".join(line + "\n" for line in lines))
            return
    out = console()
    for thing in things:
        _print(out, _rich(_visible(thing) if out.is_terminal else thing))


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _when(iso_time: str | None, now: float) -> str:
    """``5m ago``, ``in 3m`` (``durations.relative``), or ``—``."""
    return relative(posix(iso_time), now) if iso_time else "—"


def _clock(iso_time: str | None, tz=None) -> str:
    """``2026-12-01 10:05:02 CET`` (``durations.clock``), or ``—``."""
    return clock(posix(iso_time), tz) if iso_time else "—"


def _strip(recent: list[dict]) -> Text:
    text = Text()
    for run in reversed(recent):  # oldest left, newest right, like a sparkline
        mark, style = RUN_MARK.get(run["status"], ("?", ""))
        text.append(mark, style=style)
    return text


def _sparkline(recent: list[dict]) -> str:
    values = [r["duration_ms"] for r in reversed(recent)
              if r["duration_ms"] is not None and r["status"] not in ("skipped", "running")]
    if not values:
        return ""
    top = max(values) or 1
    return "".join(BARS[min(len(BARS) - 1, int(v / top * (len(BARS) - 1)))] for v in values)


def _recent(recent: list[dict], width: int) -> Text:
    """The last ``width`` runs as marks, then their durations as a sparkline (skips have none)."""
    shown = recent[:width]
    text = _strip(shown)
    spark = _sparkline(shown)
    if spark:
        text.append(" " + spark, style="cyan")
    return text


def status_table(report: dict, jobs: list[dict]) -> None:
    width = _plain_width()
    _emit([status_renderable(report, jobs, width or console().width)])


def _print(out, renderable) -> None:
    """Print; into a pipe without the padding that ends a table's lines, for grep, awk and diff."""
    if out.is_terminal:
        out.print(renderable)
        return
    with out.capture() as captured:
        out.print(renderable)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def watch_frame(report: dict, jobs: list[dict], tz=None):
    out = console()
    title = Text(f"schedsync status at {_clock(report['generated_at'], tz)} (every 2s; Ctrl-C to stop)",
                 style="dim")
    frame = Group(title, status_renderable(report, jobs, out.width))
    return (_visible(frame) if out.is_terminal else frame).rich()


def status_renderable(report: dict, jobs: list[dict], width: int = 160):
    """The status table laid out for ``width`` columns. Wide: every column, reasons in WHY.
    Narrower: reasons for jobs that need a look follow the table. Narrowest (80): TOOK and
    BUDGET make way (budgets are listed below anyway) and the strip shows 6 runs."""
    if not jobs:
        return Text("no jobs in the registry", style="dim")
    now = posix(report["generated_at"])
    levels = {b["name"]: b for b in report["budgets"]}
    strip = 20 if width >= 150 else 12
    for layout in (FULL, NO_WHY, NO_REASON, COMPACT):
        table = _status_table(jobs, now, levels, strip if layout != COMPACT else 6, layout, width)
        if _width(table) <= width:
            break
    parts = [table]
    if "WHY" not in [c.header for c in table.columns]:
        for job in jobs:
            if job["health"] not in ("OK", "NEVER"):
                parts.append(Text.assemble("  ", (job["name"], "bold"), f": {job['why']}"))
    if report["budgets"]:
        parts.append(Text("budgets: " + "  ".join(
            f"{b['name']} {int(b['tokens'])}/{b['capacity']:g} per {format_duration(b['per_seconds'])}"
            for b in report["budgets"]), style="dim"))
    for off in report.get("clock_skew", []):
        side = "ahead of" if off["seconds"] > 0 else "behind"
        parts.append(Text(f"clock: host {off['host']} is {format_duration(abs(off['seconds']))} {side} the"
                          f" state database's clock (noted {_clock(off['noted_at'])}); budgets and"
                          " breakers go by the database's, but fix its time (NTP)", style="yellow"))
    return Group(*parts)


def _width(table: Table) -> int:
    widths = _widths(table)
    if widths is not None:  # rich's measure of a table whose cells all fit their columns
        return sum(widths) + 2 * (len(widths) - 1)
    from rich.console import Console

    return Console(width=10_000).measure(table.rich()).maximum


FULL, NO_WHY, NO_REASON, COMPACT = range(4)  # status layouts, widest first


def _status_table(jobs: list[dict], now: float, levels: dict, strip: int, layout: int,
                  width: int) -> Table:
    compact, why = layout == COMPACT, layout == FULL
    table = Table()
    table.add_column("JOB", overflow="fold", max_width=max(28, width // 5),
                     min_width=min(10, max(len(j["name"]) for j in jobs)))
    for column in ("HEALTH", "LAST RUN") + (() if compact else ("TOOK",)) + ("NEXT", "BREAKER") \
            + (() if compact else ("BUDGET",)) + ("RECENT",):
        table.add_column(column, no_wrap=True)
    if why:
        table.add_column("WHY", overflow="fold", min_width=WHY_MIN)
    for job in jobs:
        last = job["last_run"]
        if last:
            style = RUN_MARK.get(last["status"], ("?", ""))[1]
            status = last["status"] + (f" ({last['reason']})" if last["reason"] and layout < NO_REASON else "")
            last_text = Text.assemble((status, style), f" {_when(last['finished_at'] or last['started_at'], now)}")
            if last.get("host") and last["host"] != os.uname().nodename:  # a shared (PostgreSQL) state
                last_text.append(f" on {last['host']}", style="dim")
        else:
            last_text = Text("never", style="dim")
        row = [job["name"], Text(job["health"], style=HEALTH_STYLE.get(job["health"], "")), last_text]
        if not compact:
            timed = last and last["duration_ms"] is not None and last["status"] not in ("skipped", "running")
            row.append(format_duration(last["duration_ms"] / 1000) if timed else "—")
        row += [_when(job["next_expected"], now), _breaker(job["breaker"], now, compact)]
        if not compact:
            row.append(_budgets(job["budgets"], levels))
        row.append(_recent(job["recent"], strip))
        if why:
            row.append(job["why"])
        table.add_row(*row)
    return table


def _breaker(breaker: dict, now: float, compact: bool = False) -> Text:
    state = breaker["state"]
    if state == "open":
        left = breaker["opens_until"] and not compact
        return Text("open" + (f", {_when(breaker['opens_until'], now).replace('in ', '')} left" if left else ""),
                    style="bold red")
    if state == "half-open":
        return Text(state, style="yellow")
    return Text(state, style="dim")


def _budgets(names: list[str], levels: dict) -> Text:
    text = Text()
    for i, name in enumerate(names):
        if i:
            text.append(", ")
        level = levels[name]
        # whole tokens, rounded down: 23.7 left is 23 requests, never "24"
        text.append(f"{int(level['tokens'])}/{level['capacity']:g}", style="yellow" if level["tokens"] < 1 else "")
    return text if names else Text("—", style="dim")


def job_detail(detail: dict) -> None:
    """``status JOB``: its row, why, schedule, breaker with transitions, budgets, alerts, runs."""
    lines: list = []
    job = detail["jobs"][0]
    now = posix(detail["generated_at"])
    _line(lines, Text.assemble((job["name"], "bold"), "  ",
                            (job["health"], HEALTH_STYLE.get(job["health"], "")), f"  {job['why']}"))
    if job["description"]:
        _line(lines, job["description"])
    paused = " (paused)" if job["paused"] else ""
    _line(lines, f"schedule   {job['schedule'] or 'none (run by hand)'}{paused}"
              + (f", next {_when(job['next_expected'], now)}" if job["next_expected"] else ""))
    streak = job["consecutive_failures"]
    failures = f"{streak} failure{'s' if streak != 1 else ''} in a row"
    if job["last_success_at"]:
        _line(lines, f"last ok    {_when(job['last_success_at'], now)}" + (f"; {failures} since" if streak else ""))
    else:
        _line(lines, "last ok    never" + (f" ({failures})" if streak else ""))
    breaker = job["breaker"]
    _line(lines, Text.assemble("breaker    ", f"{breaker['name']}: ", _breaker(breaker, now),
                            f", {breaker['failures']} failure{'' if breaker['failures'] == 1 else 's'} counted"))
    for event in detail["transitions"]:
        _line(lines, f"           {_when(event['at'], now)}: {event['from']} → {event['to']} ({event['reason']})",
                  style="dim")
    for b in detail["budgets"]:
        if b["name"] in job["budgets"]:
            _line(lines, f"budget     {b['name']}: {int(b['tokens'])} of {b['capacity']:g} tokens"
                      f" per {format_duration(b['per_seconds'])}")
    failed = next((r for r in detail["runs"] if r["status"] in FAILURES), None)
    if failed and failed["error"]:
        _line(lines, Text.assemble("last error ", f"{_when(failed['finished_at'] or failed['started_at'], now)}"
                                f" (run {failed['id']}): ", (failed["error"].strip(), "red")))
    for i, note in enumerate(detail["notifications"]):
        label = "alerts     " if i == 0 else "           "
        result = Text(note["detail"], style="" if note["ok"] else "red")
        _line(lines, Text.assemble(label, f"{_when(note['at'], now)}: {note['event']} → {note['target']}: ",
                                result))
    for i, entry in enumerate(detail.get("audit") or []):
        label = "audit      " if i == 0 else "           "
        what = " ".join([*([f"run {entry['run_id']}"] if entry["run_id"] else []),
                         *([f"queue {entry['item_id']}"] if entry["item_id"] else []),
                         *([f"breaker {entry['breaker']}"] if entry["breaker"] else []),
                         *(f"{k}={v}" for k, v in (entry["params"] or {}).items())])
        _line(lines, Text.assemble(label, f"{_when(entry['at'], now)}: ", (entry["action"], "bold"),
                                   f" by {entry['who']} from {entry['client']}", f" ({what})" if what else "",
                                   f": {entry['reason']}" if entry["reason"] else ""))
    for i, slot in enumerate(detail.get("slots") or []):
        label = "slots      " if i == 0 else "           "
        what = slot["state"] + (f" (run {slot['run_id']})" if slot["run_id"] else "")
        kind = "" if slot["kind"] == "cron" else f" {slot['kind']}" + (
            f" #{slot['retry_number']}" if slot["retry_number"] else "")
        why = f": {slot['reason']}" if slot["reason"] else ""
        at = _clock(slot["slot"]) if slot["slot"] else f"due {_when(slot['due_at'], now)}"
        _line(lines, Text.assemble(label, f"{at}{kind} ", (what, SLOT_STYLE.get(slot["state"], "")), why))
    if detail.get("queued"):
        _line(lines, f"queued     {detail['queued']} item{'s' if detail['queued'] != 1 else ''}"
                  " waiting for `schedsync tick`")
    if detail["runs"]:
        lines += ["", _runs_table(detail["runs"], now)]
    _emit(lines)


SLOT_STYLE = {"ran": "green", "missed": "red", "skipped": "yellow", "queued": "cyan", "claimed": "cyan"}


def _line(lines: list, text, style: str = "") -> None:
    """One line of ``status JOB``; a styled string becomes a Text."""
    lines.append(Text(text, style) if style else text)


def _runs_table(runs: list[dict], now: float) -> Table:
    """Recent runs for ``status JOB``: fewer columns than ``history``, times relative."""
    table = Table()
    for column in ("ID", "STARTED", "STATUS", "TOOK", "EXIT"):
        table.add_column(column, no_wrap=True)
    table.add_column("DETAIL", overflow="fold", min_width=20)
    for run in runs:
        mark, style = RUN_MARK.get(run["status"], ("?", ""))
        status = run["status"] + (f" ({run['reason']})" if run["reason"] else "")
        detail = (run["error"] or "").strip().splitlines()[0] if (run["error"] or "").strip() else ""
        if run["retry_at"]:
            detail += f" ({_again(run)} {_when(run['retry_at'], now)})"
        timed = run["duration_ms"] is not None and run["status"] != "skipped"
        table.add_row(str(run["id"]), _when(run["started_at"], now), Text(f"{mark} {status}", style=style),
                      format_duration(run["duration_ms"] / 1000) if timed else "—",
                      "" if run["exit_code"] is None else str(run["exit_code"]), detail)
    return table


def history_table(runs: list[dict], tz=None) -> None:
    """``history JOB``: times in ``tz`` (the registry's zone; None: the system's), labelled."""
    table = Table()
    for column in ("ID", "STARTED", "STATUS", "TOOK", "TRIES", "REQ", "ITEMS", "EXIT", "TRIGGER", "HOST", "DETAIL"):
        table.add_column(column, no_wrap=column != "DETAIL")
    for run in runs:
        mark, style = RUN_MARK.get(run["status"], ("?", ""))
        status = run["status"] + (f" ({run['reason']})" if run["reason"] else "")
        items = str(run["items_processed"]) + (f" ({run['items_failed']} failed)" if run["items_failed"] else "")
        items += loads(run)
        detail = run["error"] or ""
        if run["retry_at"]:
            detail += f" ({_again(run)} {_clock(run['retry_at'], tz)})"
        table.add_row(str(run["id"]), _clock(run["started_at"], tz),
                      Text(f"{mark} {status}", style=style),
                      format_duration(run["duration_ms"] / 1000) if run["duration_ms"] is not None else "—",
                      str(run["attempts"]), str(run["requests"]), items,
                      "" if run["exit_code"] is None else str(run["exit_code"]), _trigger(run),
                      run["host"] or "", detail)
    _emit([table])


def loads(run: dict) -> str:
    """What an http job's load did, as ``history`` shows it: `` +3 new ~2 updated -1 deleted``."""
    parts = [f"{sign}{run.get(key) or 0} {word}" for sign, key, word in (
        ("+", "items_inserted", "new"), ("~", "items_updated", "updated"), ("-", "items_deleted", "deleted"))
        if run.get(key)]
    return " " + " ".join(parts) if parts else ""


def _again(run: dict) -> str:
    """What a run's ``retry_at`` means: a skip is allowed again then; a failed run's retry
    later (``retry_later``) starts then."""
    return "retry later at" if run["status"] in ("failed", "timeout") else "allowed again"


def _trigger(run: dict) -> str:
    """``retry 2 of run 7``: a retry later shows its place in the chain (``history`` shows it);
    ``after run 7``: a chain's run, started by the end of its upstream run; ``api
    final_sweep=1``: a run with params shows them."""
    shown = run["trigger"]
    if run.get("parent") is not None:
        shown = f"{run['trigger']} run {run['parent']}"
    if run.get("retry_number"):
        shown = f"{run['trigger']} {run['retry_number']} of run {run['retry_of']}"
    if run.get("params"):
        shown += " " + params_text(run["params"])
    return shown


def params_text(params: dict, limit: int = 60) -> str:
    """``final_sweep=1 batch=50``: a run's params, each value cut to ``limit`` characters."""
    return " ".join(f"{name}={value if len(value) <= limit else value[:limit - 1] + '…'}"
                    for name, value in sorted(params.items()))


def jobs_table(config) -> None:
    table = Table()
    for column in ("JOB", "KIND", "SCHEDULE", "BUDGET", "TIMEOUT", "DESCRIPTION"):
        table.add_column(column)
    for name, job in config.jobs.items():
        table.add_row(name, job.kind, job.schedule or "—", ", ".join(job.budgets) or "—",
                      format_duration(job.timeout), job.description)
    _emit([table])

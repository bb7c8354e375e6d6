"""``render`` lays out tables for a pipe without rich when it can: the output must be the
same, byte for byte, as rich's. Real states made by the real CLI; the layout compared
in-process, once through the plain path and once through rich."""

from __future__ import annotations

import json
import time

import pytest

from schedsync.app import report
from schedsync.app import status as snapshots
from schedsync.cli import render
from schedsync.config import load
from schedsync.store import open_store

JOBS = """
    state: schedsync.db
    budgets:
      api: 10/1h
    jobs:
      fine:
        description: Always works, ça va
        schedule: "*/5 * * * *"
        budget: api
        command: ["true"]
      broken:
        schedule: "0 * * * *"
        command: "echo the upstream said no >&2; exit 3"
        breaker: {failures: 2, reset_after: 10m}
      a-job-with-a-rather-long-name-for-a-column:
        command: ["true"]
      marked:
        description: "see [docs] :smile: here"
        command: ["true"]
"""


def both(capsys, monkeypatch, draw, plain_path: bool = True) -> tuple[str, str]:
    with monkeypatch.context() as patch:
        if plain_path:  # the first draw must not need rich
            patch.setattr(render, "console", lambda: pytest.fail("rich was used"))
        draw()
    plain = capsys.readouterr().out
    with monkeypatch.context() as patch:
        patch.setattr(render, "_plain_width", lambda: None)
        draw()
    return plain, capsys.readouterr().out


@pytest.fixture
def busy(project):
    project.write(JOBS)
    for job in ("fine", "broken", "broken", "a-job-with-a-rather-long-name-for-a-column", "marked"):
        project.cli("run", "--force-slot", job)
    project.cli("pause", "marked")
    return project


@pytest.mark.parametrize("columns", [None, "80", "100", "120", "160", "220"])
def test_the_status_table_is_laid_out_as_rich_lays_it_out(busy, capsys, monkeypatch, columns):
    if columns:
        monkeypatch.setenv("COLUMNS", columns)
    else:
        monkeypatch.delenv("COLUMNS", raising=False)
    data = json.loads(busy.cli("status", "--json").stdout)
    plain, rich = both(capsys, monkeypatch, lambda: render.status_table(data, report.worst_first(data["jobs"])),
                       plain_path=columns in (None, "220"))  # narrower: the long name folds
    assert plain == rich
    assert "broken" in plain and "budgets: api" in plain


@pytest.mark.parametrize("columns", [None, "80", "120"])
def test_history_list_and_status_of_one_job_are_laid_out_as_rich_lays_them_out(busy, capsys, monkeypatch, columns):
    if columns:
        monkeypatch.setenv("COLUMNS", columns)
    else:
        monkeypatch.delenv("COLUMNS", raising=False)
    config = load(str(busy.config))
    runs = busy.history("broken")
    plain, rich = both(capsys, monkeypatch, lambda: render.history_table(runs), plain_path=columns != "80")
    assert plain == rich and "failed" in plain
    plain, rich = both(capsys, monkeypatch, lambda: render.jobs_table(config), plain_path=False)  # [docs]
    assert plain == rich and "ça va" in plain
    store = open_store(str(busy.state))
    try:
        detail = snapshots.job_detail(config, store, "broken", time.time())
    finally:
        store.close()
    plain, rich = both(capsys, monkeypatch, lambda: render.job_detail(detail), plain_path=columns != "80")
    assert plain == rich and "last error" in plain


def test_plain_layout_is_used_for_a_pipe_and_leaves_markup_and_terminals_to_rich(busy, monkeypatch):
    table = render.Table()
    table.add_column("A")
    table.add_row("x")
    assert render._plain_lines(table, 80) == ["A", "x"]
    table.add_row("[bold]x[/bold]")
    assert render._plain_lines(table, 80) is None  # rich reads that as markup
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert render._plain_width() is None

"""HTTP jobs: fetch JSON pages from an API and upsert their items into SQLite.

A job with ``http:`` and ``into:`` requests ``http.url`` (``method``,
``headers``, ``params``, ``body`` sent as JSON, ``timeout`` per request, as
curl would), reads the list of items at the dotted path ``http.items`` of the
JSON body (no ``items``: the body itself is the list), and upserts them into
``into.table`` keyed on ``into.pk`` in the data database. Each page is stored
as it arrives, so memory stays flat however many pages there are and a run
cut short keeps what it stored. Nested objects and lists are stored as JSON
text; new keys become new columns. Items that are not JSON objects or lack the
key are counted failed and the run ends ``partial`` (exit 0, one line on stderr).
``into.mode`` ``append`` inserts every item instead; ``replace`` loads a staging table
(``sink.begin_replace`` at the start) and swaps it in only once every page is stored
(``_complete``), so a run that stops early leaves the table as it was. ``into.delete`` and
``into.lineage`` are the sink's (``sink_base.Load``); the run record gets the rows
inserted, updated and deleted. ``run --full-refresh`` (``ctx.full_refresh``) sends no
``since``.
``into.transform`` (a function, imported as python jobs are) and ``into.select``,
``types``, ``nested``, ``columns`` (``store.shape``) shape each page before the sink
writes it; with none set the page goes to the sink as it came.

A page is parsed whole, so its memory is bounded by what it holds: at most
``http.max_values`` JSON values (objects, lists, strings, numbers…, nested ones
included; default 1,000,000, about 100-200 MB once parsed), counted in the raw body
before it is parsed (``json_values``); a page over it, or one nested too deeply for
Python to parse, fails in one line.

Pagination (``http.next``, bounded by ``http.max_pages``, default 1000) is in
``pagination``; requests go through ``transport`` (budget, retries, deadline, redirects,
``http.max_bytes``), items into the data sink (``store.sink``).

Incremental sync (``http.since``)::

    http:
      url: https://api.example.com/v1/airdrops
      since: {param: updated_since}                 # the last complete sync's start time
      # or: since: {param: updated_after, field: updated_at}   # the newest stored value
      # format: iso (default, 2024-05-01T12:00:00Z) or epoch (1714564800)

With ``since``, each run sends query parameter ``param`` so the upstream returns
only what changed. The value is the start time of the last run that completed
its sync (``success``, or ``partial`` only because some items were malformed),
written as ``format`` says; runs that stopped early (rate limited, timed out,
failed) do not count, so nothing they missed is skipped. Using the start rather
than the end re-fetches items changed during that run, and the upsert makes
that harmless. With ``field``, the value is instead the largest value of that
column already stored in ``into.table``, sent as it is stored (use it when the
upstream's clock, not ours, should decide; it suits APIs that return items
oldest first). The first run, or one whose table is still empty, sends nothing
and fetches everything.

Resume (``http.resume: {within: 1h}``): after each stored page but the last, the run saves in
the state where the next page is (``Pages.point``: the cursor or page number, or the next URL
without the configured params; never a secret) with the ``since`` value it sent and when its
page 1 was asked for. A run started within ``within`` of that save goes on from there
(``Pages.resume``) and says so in its log; a completed sync clears the point, and ``since``
then counts from that page 1. The page's write (data database) and the point's (state) are
two statements: after a crash between them one page is fetched twice (at least once).

Freshness (``fresh: {within, field}``): the newest ``field`` value among the items stored
(``core.durations.data_time``) is kept in the state at the run's end as the maximum over
runs (``note_watermark``); ``core.health`` turns it into STALE.

Every request, pages and retries included, spends one token from the job's
budgets; an empty budget stops the run (``partial`` with reason
``rate_limited`` when it stored something, else ``failed``), keeping what it
stored and recording when the budget allows again. Connection errors, timeouts,
429 and 5xx are retried with the job's backoff; ``Retry-After`` (seconds or an
HTTP date) is honoured, and a 429's also empties the shared budgets until then so
sibling jobs back off too; the retry then waits for the first token after that if
it comes before the run's deadline, else the run stops ``rate_limited`` like an
empty budget. Other 4xx fail at once. Each request's timeout is the
smaller of ``http.timeout`` and what is left of the run's; ``hard_deadline`` is
the backstop, so a hanging upstream ends at the run's timeout.

Errors are one line with secrets and credential-looking query values shown as
``***`` (``display``). ``jobs.client.BudgetedClient`` is the same machinery as an
httpx-like client for python jobs (``ctx.http``).
"""

from __future__ import annotations

import json
import re
import time
from collections import deque

import httpx

from schedsync.core.durations import data_time, format_age, format_duration, iso
from schedsync.core.errors import SchedsyncError
from schedsync.core.models import CANCELLED, FAILED, PARTIAL, RATE_LIMITED, SKIPPED, SUCCESS, TIMEOUT
from schedsync.core.outcome import FENCED, Cancelled, DeadlinePassed, Fenced, Outcome
from schedsync.core.redact import redact_url
from schedsync.jobs.common import LiveProgress, hard_deadline
from schedsync.jobs.display import excerpt, keys, kind, response_line, show_url, status_error
from schedsync.jobs.pagination import Pages, check_next_rule, dig
from schedsync.jobs.transport import DEFAULT_MAX_BYTES, BudgetExhausted, Requester, RequestFailed, Transient
from schedsync.store.sink import Counts, SinkError, clashing_keys, key_columns, open_sink

LOG_LINES = 60  # lines of the page log kept in the run record
DEFAULT_MAX_VALUES = 1_000_000  # JSON values in one page (http.max_values)
CHUNK = 1 << 20  # bytes of a page counted at a time without its strings
_STRINGS = re.compile(rb'"[^"]*"')  # a JSON string once its escaped \\ and \" are gone


# --- one sync -----------------------------------------------------------------------------

class PageLog:
    """The last lines of what the sync did, kept (redacted by the runner) in the run record."""

    def __init__(self):
        self.lines: deque[str] = deque(maxlen=LOG_LINES)
        self.dropped = 0

    def __call__(self, line: str) -> None:
        if len(self.lines) == self.lines.maxlen:
            self.dropped += 1
        self.lines.append(f"{time.strftime('%H:%M:%S')} {line}")

    def text(self) -> str | None:
        head = [f"[… {self.dropped} earlier lines not kept …]"] if self.dropped else []
        return "\n".join(head + list(self.lines)) + "\n" if self.lines else None


class Sync:
    """One http job's run: pages in, items upserted, counts kept for the Outcome."""

    def __init__(self, job, ctx):
        self.job = job
        self.ctx = ctx
        self.http = job.section
        self.pk = job.into["pk"]
        self.mode = job.into.get("mode", "merge")
        self.keys = key_columns(self.pk) if self.pk else ()
        self.load = None  # the sink's Load, once the sink is open
        self.log = PageLog()
        self.display = LiveProgress(job.name, ctx.interactive)
        self.requester = Requester(ctx, timeout=self.http["timeout"],
                                   headers={"Accept": "application/json", **self.http["headers"]},
                                   log=self.log,
                                   max_bytes=self.http.get("max_bytes") or DEFAULT_MAX_BYTES,
                                   allow_hosts=self.http.get("allow_hosts"))
        self.sink = None
        self.table = job.into["table"]
        self.pages = 0
        self.processed = 0
        self.failed = 0
        self.inserted = self.updated = self.deleted = 0
        self.complete = False  # every page fetched and stored: a replace may swap its table in
        self.not_objects = 0
        self.without_key = 0
        self.nan_key = 0
        self.clashing = 0  # items with two keys for one column (store.sink_base.column_name)
        self.clash: tuple | None = None  # the first such pair of keys
        self.page = 0  # the number of the last page stored, counted from the sync's page 1
        self.resume = self.http.get("resume")  # {"within": seconds}: save where to go on
        self.row = None  # the stored resume point (store.base.ResumePoint), when resume is on
        self.resumed_from: int | None = None  # the page a resumed sync went on from
        self.began_at: float | None = None  # when this sync's page 1 was asked for
        self.since_sent: str | None = None
        self.unsaved = False  # a next page that could not be saved without a secret
        self.fresh_field = (job.fresh or {}).get("field")
        self.watermark: float | None = None  # the newest fresh.field value stored by this run
        self.nested_key = 0  # items whose key is a list or an object
        self.shaped: dict[str, int] = {}  # why items were not stored (store.shape, the sink's types)
        self.shaper = None
        self.transform = None
        if any(k in job.into for k in ("select", "types", "columns", "nested")):
            from schedsync.store.shape import Shaper

            keep = tuple(f for f in (self.fresh_field, (self.http["since"] or {}).get("field")) if f)
            shaper = Shaper(self.table, self.keys, job.into, keep)
            self.shaper = shaper if shaper.active else None  # e.g. columns: evolve, nested: json

    # -- the loop --

    def run(self) -> None:
        http = self.http
        check_next_rule(http["next"])
        self._load_transform()
        self._open_sink()
        params = dict(http["params"])
        full = getattr(self.ctx, "full_refresh", False)
        point = self._resume_point()  # None on a full refresh (which also clears it)
        since = point["since"] if point is not None else (None if full else self._since())
        self.since_sent = since
        if full and http["since"]:
            self.log("full refresh: since ignored, fetching everything")
        if self.mode == "replace":
            self._call(self.sink.begin_replace, self.table, self.pk)
        if since is not None:
            params[http["since"]["param"]] = since
        pages = Pages(http["next"], http["url"], params, self.ctx.secrets)
        if point is not None:
            target, first = pages.resume(point["url"], point["params"]), point["page"]
        else:
            target, first = pages.first(), 1
            self.began_at = self.ctx.store.now()  # before page 1 is asked for
        self.requester.home = pages.home  # next pages elsewhere get none of its credentials
        for number in range(first, first + http["max_pages"]):
            response = self._fetch(target, pages.withheld)
            data = self._json(response)
            items = self._items(data, response)
            self._store(items)
            self.pages += 1
            self.page = number
            self.display.update(pages=1)
            self.log(f"{response_line(response, self.ctx.secrets)} → HTTP {response.status_code}, "
                     f"{len(items)} items" + (f" (page {number})" if self.resumed_from else ""))
            target = pages.next(data, response, items)
            if target is None:
                if pages.looped:
                    self.log(f"stopped: the next page, {show_url(pages.looped, self.ctx.secrets)}, "
                             "was already fetched in this run")
                self._complete()
                return
            self._save_point(pages, target, number + 1)
        self.log(f"stopped at http.max_pages ({http['max_pages']}) with pages left")
        if self.mode == "replace":
            raise RequestFailed(f"stopped at http.max_pages ({http['max_pages']}) with pages left, so "
                                f"{self.table} was not replaced — raise http.max_pages")
        self._complete()

    def _complete(self) -> None:
        """Every page is stored: a replace swaps its staging table in now."""
        if self.mode == "replace":
            self._call(self.sink.swap, self.table)
            self.log(f"replaced {self.table} with the {self.processed} items of this run")
        self.complete = True

    def _call(self, function, *args):
        try:
            return function(*args)
        except SinkError as exc:
            raise self._store_error(exc) from None

    # -- resuming (http.resume) --

    def _point_key(self) -> str:
        """What a saved point is only valid for: the request and pagination as configured,
        secrets shown as ``***`` (a point saved for other settings is not resumed)."""
        http = self.http
        # params and body too: a trigger's params reach them (${SCHEDSYNC_PARAM_X}), and a
        # point saved for region=eu must not send a region=us run on from eu's page N
        sent = self.ctx.secrets.redact(json.dumps([http["params"], http["body"]], sort_keys=True, default=str))
        return json.dumps([show_url(http["url"], self.ctx.secrets), http["method"], http["items"],
                           http["next"], (http["since"] or {}).get("param"), sent], sort_keys=True)

    def _resume_point(self) -> dict | None:
        """The saved point this run goes on from, or None (page 1); logs why."""
        if not self.resume:
            return None
        store, name = self.ctx.store, self.job.name
        if getattr(self.ctx, "full_refresh", False):
            store.end_resume(name)
            self.log("resume: a full refresh starts from page 1; any saved resume point is cleared")
            return None
        self.row = row = store.resume_point(name)
        if row is None or row.point is None:
            return None
        age = store.now() - row.saved_at
        of_run = f"run {row.run_id}" if row.run_id is not None else "an earlier run"
        if age > self.resume["within"]:
            self.log(f"resume: ignored the point {of_run} saved {format_age(age)} ago, older than "
                     f"http.resume.within ({format_duration(self.resume['within'])}); starting from page 1")
            return None
        try:
            point = json.loads(row.point)
            ok = (isinstance(point, dict) and isinstance(point.get("page"), int) and point["page"] > 1
                  and isinstance(point.get("params"), dict) and point.get("key") == self._point_key())
        except ValueError:
            ok = False
        if not ok:
            self.log(f"resume: ignored the point {of_run} saved: it was saved for other http settings;"
                     " starting from page 1")
            return None
        self.resumed_from = point["page"]
        self.began_at = row.began_at
        self.log(f"resumed from page {point['page']} of {of_run} (saved {format_age(max(age, 0.0))} ago)")
        return point

    def _save_point(self, pages: Pages, target: httpx.URL, number: int) -> None:
        """After page ``number - 1`` is stored: where the sync goes on (one statement)."""
        if not self.resume:
            return
        found = pages.point(target)
        if found is None:
            if not self.unsaved:
                self.log(f"resume: page {number}'s URL carries a secret of its own; not saved"
                         " (a run stopped after this resumes from the last page that could be saved)")
            self.unsaved = True
            return
        url, params = found
        point = json.dumps({"page": number, "since": self.since_sent, "url": url, "params": params,
                            "key": self._point_key()})
        try:
            self.ctx.store.save_resume(self.job.name, self.ctx.run_id, point, self.began_at)
        except SchedsyncError as exc:  # the state went away: the sync goes on, unresumable
            if not self.unsaved:
                self.log(f"resume: could not save where to go on: {self.ctx.secrets.clip(exc, 200)}")
            self.unsaved = True

    def completed(self) -> None:
        """The sync reached its end: the resume point is done with; the watermark is kept."""
        if not self.resume:
            return
        if self.resumed_from is not None:
            self.ctx.store.end_resume(self.job.name, self.ctx.run_id, self.began_at)
        elif self.row is not None or self.pages > 1:
            self.ctx.store.end_resume(self.job.name)

    def note_watermark(self) -> None:
        """Keep the newest ``fresh.field`` value stored (the state keeps the max over runs)."""
        if not self.fresh_field:
            return
        if self.mode == "replace" and not self.complete:
            # The pages went to the staging table, which was not swapped in: readers still
            # see the old table, so its freshness is unchanged.
            self.watermark = None
        stored = self.ctx.store.note_watermark(self.job.name, self.watermark)
        if stored is None and self.watermark is None and self.sink is not None:
            # Nothing known yet (fresh: just added to a job whose table has data): read the table once.
            try:
                self.watermark = data_time(self.sink.max_value(self.table, self.fresh_field))
            except SinkError:
                return
            if self.watermark is not None:
                self.ctx.store.note_watermark(self.job.name, self.watermark)

    def _fetch(self, target: httpx.URL, withheld=()) -> httpx.Response:
        kwargs = {} if self.http["body"] is None else {"json": self.http["body"]}
        try:
            response = self.requester.send(self.http["method"], target, withheld=withheld, **kwargs)
        except Transient as exc:
            until = None
            if exc.response is not None and exc.response.status_code == 429:
                until = exc.until or 0.0
            raise RequestFailed(str(exc), rate_limited_until=until) from exc
        if response.status_code >= 400:
            raise RequestFailed(status_error(response, self.ctx.secrets))
        return response

    def _json(self, response: httpx.Response):
        cap = self.http.get("max_values") or DEFAULT_MAX_VALUES
        if json_values(response.content, cap) > cap:
            raise RequestFailed(f"{response_line(response, self.ctx.secrets)} returned more than "
                                f"{cap:,} JSON values, over http.max_values — ask for smaller pages, "
                                "or raise it")
        try:
            return json.loads(response.content)
        except RecursionError:
            raise RequestFailed(f"{response_line(response, self.ctx.secrets)} returned JSON nested "
                                "too deeply to parse") from None
        except (ValueError, UnicodeDecodeError) as exc:
            kind = response.headers.get("Content-Type", "").split(";")[0].strip() or "no content type"
            body = excerpt(response, self.ctx.secrets)
            raise RequestFailed(f"{response_line(response, self.ctx.secrets)} returned non-JSON "
                                f"({kind}): {body or '(empty body)'}") from exc

    def _items(self, data, response: httpx.Response) -> list:
        path = self.http["items"]
        if path is None:
            if isinstance(data, list):
                return data
            raise RequestFailed(f"{response_line(response, self.ctx.secrets)} returned a JSON "
                                f"{kind(data)}, not a list ({keys(data)}); "
                                "set http.items to the list's dotted path")
        found, value, reached = dig(data, path)
        if not found:
            raise RequestFailed(f"{response_line(response, self.ctx.secrets)} has no `{path}` "
                                f"in its JSON ({keys(reached)})")
        if value is None:
            return []
        if not isinstance(value, list):
            raise RequestFailed(f"`{path}` in the JSON of {response_line(response, self.ctx.secrets)} "
                                f"is a {kind(value)}, not a list")
        return value

    # -- storing --

    def _open_sink(self) -> None:
        try:
            self.sink = open_sink(self.ctx.data_db)
        except SinkError as exc:
            raise self._store_error(exc) from None
        from schedsync.store.sink_base import Load

        into = self.job.into
        lineage = (self.ctx.run_id, Load.now()) if into.get("lineage") else None
        self.load = Load(self.mode, into.get("delete"), lineage)
        if self.shaper is not None and self.shaper.types:
            self.sink.pin(self.table, self.shaper.pinned())

    def _load_transform(self) -> None:
        """into.transform's function, imported as python jobs' are (jobs.yaml's folder first on the path)."""
        target = self.job.into.get("transform")
        if not target:
            return
        import sys

        from schedsync.jobs.python import JobImportError, load_function

        folder = self.ctx.config.dir
        if folder not in sys.path:
            sys.path.insert(0, folder)
        try:
            self.transform = load_function(target)
        except JobImportError as exc:
            raise RequestFailed(f"into.transform: {_one_line(self.ctx.secrets.clip(exc, 200))}") from None

    def _transformed(self, items: list) -> list:
        """The items into.transform returns for this page; what it prints goes to the run's log."""
        from contextlib import redirect_stderr, redirect_stdout

        target = self.job.into["transform"]
        printed = _LogLines(self.log, "transform: ")
        try:
            with redirect_stdout(printed), redirect_stderr(printed):
                result = self.transform(items)
        except (DeadlinePassed, Cancelled, Fenced):
            raise
        except Exception as exc:
            text = _one_line(self.ctx.secrets.clip(exc, 200))
            raise RequestFailed(f"transform {target} raised {type(exc).__name__}"
                                + (f": {text}" if text else "")) from None
        finally:
            printed.close()
        if not isinstance(result, list):
            raise RequestFailed(f"transform {target} returned a {type(result).__name__}, not a list of items")
        for item in result:
            if type(item) is dict and not all(type(key) is str for key in item):
                key = next(key for key in item if type(key) is not str)
                raise RequestFailed(f"transform {target} returned an item with key "
                                    f"{self.ctx.secrets.clip(repr(key), 40)}; keys must be strings")
        return result

    def _shape(self, items: list):
        """The page as into.select/types/nested/columns shape it (store.shape), its failures counted."""
        from schedsync.store.shape import ShapeError

        page = self.shaper.shape(items)
        try:
            self.shaper.apply_contract(page, self.sink.known_columns)
        except ShapeError as exc:
            raise RequestFailed(f"cannot store items into {self.table}: {exc}") from None
        except SinkError as exc:
            raise self._store_error(exc) from None
        for reason in page.failed:
            self._not_stored(reason)
        if page.failed:
            self.log(f"{_count(len(page.failed))} not stored: {page.failed[0]}"
                     + (f" (and {len(page.failed) - 1} more)" if len(page.failed) > 1 else ""))
        if page.discarded:
            keys_ = ", ".join(f"`{self.ctx.secrets.clip(k, 40)}`" for k in list(page.discarded)[:5])
            self.log(f"into.columns is discard: dropped {sum(page.discarded.values())} values of "
                     f"{len(page.discarded)} unknown {'key' if len(page.discarded) == 1 else 'keys'} ({keys_})")
        return page

    def _not_stored(self, reason: str, n: int = 1) -> None:
        """Count ``n`` items not stored for ``reason`` (20 reasons kept, then "other reasons")."""
        if reason not in self.shaped and len(self.shaped) >= 20:
            reason = "other reasons"
        self.shaped[reason] = self.shaped.get(reason, 0) + n

    def _store_error(self, exc: Exception) -> RequestFailed:
        return RequestFailed(f"cannot store items into {self.table} in {redact_url(self.ctx.data_db)}: "
                             f"{self.ctx.secrets.clip(exc, 200)}")

    def _store(self, items: list) -> None:
        if self.transform is not None:
            items = self._transformed(items)
        children = None
        shaped_out = 0
        if self.shaper is not None and items:
            page = self._shape(items)
            shaped_out = len(page.failed)
            items, children = page.rows, page.children
        try:
            counts = self.sink.store_page(self.table, self.pk, items, children, self.load) if items else Counts(0, 0)
        except SinkError as exc:
            raise self._store_error(exc) from None
        except RecursionError:  # a value parsed just within Python's limit, stored from deeper
            raise RequestFailed(f"cannot store items into {self.table}: a value is nested too deeply") from None
        except TypeError as exc:  # JSON cannot hold what into.transform returned (a tuple as a key…)
            if self.transform is None:
                raise
            raise RequestFailed(f"cannot store items into {self.table}: transform {self.job.into['transform']} "
                                f"returned a value that is not JSON ({self.ctx.secrets.clip(exc, 100)})") from None
        stored, failed = counts.stored, counts.failed
        self.inserted += counts.inserted
        self.updated += counts.updated
        self.deleted += counts.deleted
        if failed:
            before = self._tally()
            for item in items:
                if not isinstance(item, dict):
                    self.not_objects += 1
                elif any(item.get(key) is None for key in self.keys):
                    self.without_key += 1
                elif any(item[key] != item[key] for key in self.keys):
                    self.nan_key += 1
                elif any(isinstance(item[key], (list, dict)) for key in self.keys):
                    self.nested_key += 1
                elif pair := clashing_keys(item):
                    self.clashing += 1
                    self.clash = self.clash or pair
            page = tuple(now - then for now, then in zip(self._tally(), before, strict=True))
            if any(page):
                self.log(f"{_count(sum(page))} not stored: {self._describe(page, {})}")
            refused = failed - sum(page)
            if refused > 0:  # the database refused a value for its column's type (PostgreSQL)
                why = self.sink.rejected[0] if self.sink.rejected else "refused by the database"
                self.log(f"{_count(refused)} not stored: {_one_line(self.ctx.secrets.clip(why, 200))}")
                self._not_stored("a value its column's type refused", refused)
        failed += shaped_out
        self.failed += failed
        self.processed += stored
        if self.fresh_field and stored:
            field, newest = self.fresh_field, self.watermark
            for item in items:
                if isinstance(item, dict) and item.get(field) is not None:
                    t = data_time(item[field])
                    if t is not None and (newest is None or t > newest):
                        newest = t
            self.watermark = newest
        self.display.update(items=stored, failed=failed)

    def _since(self) -> str | None:
        rule = self.http["since"]
        if not rule:
            return None
        if rule.get("field"):
            return self._stored_max(rule["field"])
        future: list = []
        run = last_complete_run(self.ctx, future)
        if future:
            self.log(f"since: ignored run {future[0].id}, recorded as started at {iso(future[0].started_at)},"
                     " later than now (the clock stepped back); using the last complete sync before it")
        if run is None:
            return None
        started = run.started_at
        row = self.row
        if row is not None and row.done_run == run.id and row.done_began is not None:
            started = min(started, row.done_began)  # a resumed sync: from when its page 1 was asked for
        if rule.get("format", "iso") == "epoch":
            return str(int(started))
        return iso(started)

    def _stored_max(self, column: str) -> str | None:
        try:
            value = self.sink.max_value(self.table, column)
        except SinkError as exc:
            raise self._store_error(exc) from None
        if value is None:
            self.log(f"since: nothing stored in {self.table}.{column} yet; sending nothing")
        return value

    def close(self) -> None:
        self.display.close()
        self.requester.close()
        if self.sink is not None:
            self.sink.close()

    # -- the result --

    def outcome(self, status: str, **fields) -> Outcome:
        if status == SUCCESS and self.failed:
            status = PARTIAL
            fields.setdefault("error", self._failed_items())
        elif self.failed and fields.get("error"):
            fields["error"] = f"{fields['error']}; {self._failed_items()}"
        log = self.log.text()  # kept in the record, and what cron mails when the run fails
        return Outcome(status, attempts=self.requester.attempts, requests=self.requester.requests,
                       items_processed=self.processed, items_failed=self.failed,
                       items_inserted=self.inserted, items_updated=self.updated,
                       items_deleted=self.deleted, output=log, held=log, **fields)

    def _failed_items(self) -> str:
        return self._describe(self._tally(), self.shaped)

    def _tally(self) -> tuple:
        return self.without_key, self.nan_key, self.clashing, self.nested_key, self.not_objects

    def _describe(self, tally: tuple, shaped: dict) -> str:
        """Why items were not stored: ``tally`` (``_tally``'s counts) and ``shaped`` {reason: n}."""
        without_key, nan_key, clashing, nested_key, not_objects = tally
        keys = "`, `".join(self.keys)
        parts = []
        if without_key:
            parts.append(f"{without_key} {_items_word(without_key)} had no `{keys}`")
        if nan_key:
            parts.append(f"{nan_key} {_items_word(nan_key)} had NaN in `{keys}`")
        if clashing:
            pair = "`, `".join(self.ctx.secrets.clip(key, 40) for key in self.clash or ())
            parts.append(f"{clashing} {_items_word(clashing)} had two keys for one column (`{pair}`)")
        if nested_key:
            parts.append(f"{_count(nested_key)} had a list or an object in `{keys}`")
        for reason, n in shaped.items():
            parts.append(f"{_count(n)} not stored: {self.ctx.secrets.clip(reason, 120)}")
        if not_objects:
            parts.append(f"{not_objects} {_items_word(not_objects)} "
                         f"{'was not a JSON object' if not_objects == 1 else 'were not JSON objects'}")
        return " and ".join(parts)


def run_http(job, ctx) -> Outcome:
    """Sync one http job: every page fetched through the protections and upserted."""
    sync = Sync(job, ctx)
    try:
        try:
            with hard_deadline(ctx.deadline, held=ctx.held if ctx.fence is not None else None), sync.display:
                sync.run()
                sync.completed()
        except DeadlinePassed:
            after = f" (on page {sync.page + 1})" if sync.page else ""
            return sync.outcome(TIMEOUT, error=f"timed out after {format_duration(job.timeout)}{after}")
        except BudgetExhausted as exc:
            sync.log(f"stopped: {exc}")
            if not sync.requester.requests:
                # No request went out: an empty budget is a skip (exit 75), not a failure.
                return sync.outcome(SKIPPED, reason=RATE_LIMITED, error=str(exc), retry_at=exc.retry_at)
            stopped = f"; stopped after {_pages(sync.pages)}" if sync.pages else ""
            return sync.outcome(PARTIAL if sync.processed else FAILED, reason=RATE_LIMITED,
                                error=f"{exc}{stopped}", retry_at=exc.retry_at)
        except RequestFailed as exc:
            sync.log(f"failed: {exc}")
            if exc.rate_limited_until is not None:
                return sync.outcome(PARTIAL if sync.processed else FAILED, reason=RATE_LIMITED,
                                    error=str(exc), retry_at=exc.rate_limited_until or None)
            return sync.outcome(FAILED, error=str(exc))
        except Fenced:
            return sync.outcome(FAILED, reason=CANCELLED, error=FENCED)
        except Cancelled as exc:
            return sync.outcome(FAILED, reason=CANCELLED, error=f"cancelled by {exc}")
        return sync.outcome(SUCCESS)
    finally:
        try:
            sync.note_watermark()
        except SchedsyncError as exc:
            sync.log(f"fresh: could not save the watermark: {ctx.secrets.clip(exc, 200)}")
        finally:
            sync.close()


def json_values(body: bytes, cap: int) -> int:
    """How many values (objects, lists, strings, numbers…) the JSON ``body`` holds at most:
    one more than its ``,``, ``[`` and ``{`` outside strings. Counted in C, fast: first with
    those inside strings too; only a body over ``cap`` that way is counted without them."""
    count = 1 + body.count(b",") + body.count(b"[") + body.count(b"{")
    if count <= cap:
        return count
    if b"\\" in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    count, start = 1, 0
    while start < len(body):  # a slice at a time: re.sub holds a piece per string it removes
        end = start + CHUNK
        if body.count(b'"', start, end) % 2:  # end the slice outside a string
            end = body.find(b'"', end) + 1 or len(body)
        outside = _STRINGS.sub(b"", body[start:end])
        count += outside.count(b",") + outside.count(b"[") + outside.count(b"{")
        start = end
    return count


def last_complete_sync(ctx, skipped_future: list | None = None) -> float | None:
    """Start time of the newest run that synced everything (see ``last_complete_run``)."""
    run = last_complete_run(ctx, skipped_future)
    return None if run is None else run.started_at


def last_complete_run(ctx, skipped_future: list | None = None):
    """The newest run that synced everything (see ``since`` above).

    ``partial`` runs count only when items were malformed, not when the run stopped
    early. If the runs kept by retention do not show one, None: sync everything. A run
    that started later than now is never trusted; it is appended to ``skipped_future``.
    """
    skipped_future = [] if skipped_future is None else skipped_future
    if ctx.last_success_at is None:
        return None
    now = ctx.store.now()
    for run in ctx.store.runs(ctx.job.name, 500):
        if run.status == SUCCESS or (run.status == PARTIAL and run.reason is None):
            if run.started_at > now:
                # Recorded while the clock ran ahead: trusting it would skip every change
                # between the real last sync and now. An older complete sync is safe (the
                # upsert takes a re-sent item again).
                skipped_future.append(run)
                continue
            return run
    return None


class _LogLines:
    """A text stream whose lines go to ``log`` (a PageLog), each cut to 300 characters."""

    def __init__(self, log, prefix: str):
        self.log, self.prefix, self.part = log, prefix, ""

    def write(self, text: str) -> int:
        self.part += text
        if "\n" in self.part:
            *lines, self.part = self.part.split("\n")
            for line in lines:
                self.log(self.prefix + _one_line(line)[:300])
        if len(self.part) > 4096:  # memory stays bounded without a newline
            self.close()
        return len(text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.part:
            self.log(self.prefix + _one_line(self.part)[:300])
            self.part = ""


def _count(n: int) -> str:
    return f"{n} {_items_word(n)}"


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _items_word(n: int) -> str:
    return "item" if n == 1 else "items"


def _pages(n: int) -> str:
    return f"{n} page" if n == 1 else f"{n} pages"

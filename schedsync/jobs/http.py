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

Pagination (``http.next``), bounded by ``http.max_pages`` (default 1000):

- ``next: links.next``: a dotted path to the next page's URL in the body
  (absolute or relative); it stops when that is missing, null or empty.
- ``next: {cursor: meta.cursor, param: after}``: the value at ``cursor`` is
  sent as query parameter ``after`` of the next request; it stops when the
  cursor is missing, null, empty or repeats.
- ``next: {page: page}``: query parameter ``page`` counts up from 1 (or from the
  number in ``params``) until a page has no items.
- ``next: link-header``: the RFC 5988 ``Link: <…>; rel="next"`` header.

When following a next URL, configured ``params`` the URL does not carry are
added to it (an API key in the query survives pagination); those it carries win.

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
``***``. ``BudgetedClient`` is the same machinery as an httpx-like client for
python jobs (``ctx.http``).
"""

from __future__ import annotations

import json
import re
import sqlite3
import ssl
import threading
import time
from collections import deque
from datetime import timezone
from email.utils import parsedate_to_datetime
from functools import lru_cache
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx
from sqlite_utils.db import InvalidColumns

from schedsync import USER_AGENT
from schedsync.core.durations import format_duration, iso
from schedsync.core.models import CANCELLED, FAILED, PARTIAL, RATE_LIMITED, SKIPPED, SUCCESS, TIMEOUT
from schedsync.core.outcome import Cancelled, DeadlinePassed, Outcome
from schedsync.jobs.python import LiveProgress, hard_deadline, one_line, open_data_db
from schedsync.core.retry import RetryAfter

DEFAULT_TIMEOUT = 30.0  # seconds per request when a python job's call names none
EXCERPT = 100  # characters of an upstream body quoted in an error
LOG_LINES = 60  # lines of the page log kept in the run record
# Query parameters whose values are credentials even when they did not come from ${VAR}:
# a name with one of these words (api_key, X-Auth, sig) or these inside it (accessToken).
CREDENTIAL_WORDS = {"key", "token", "secret", "sig", "signature", "pass", "passwd", "password",
                    "auth", "credential", "credentials", "session", "code", "jwt"}
CREDENTIAL_PARTS = ("token", "secret", "apikey", "password")


class Transient(RetryAfter):
    """A failure worth retrying; ``seconds`` is the upstream's Retry-After, if any."""

    def __init__(self, message: str, seconds: float | None = None, *,
                 response: httpx.Response | None = None, error: Exception | None = None,
                 until: float | None = None):
        super().__init__(message, seconds)
        self.response = response
        self.error = error
        self.until = until  # a 429's Retry-After as POSIX seconds


class RequestFailed(Exception):
    """A request failed for good; str() is the one-line error.

    ``rate_limited_until`` is set when the upstream's 429 is why (POSIX seconds, or
    0.0 when it named no time).
    """

    def __init__(self, message: str, rate_limited_until: float | None = None):
        super().__init__(message)
        self.rate_limited_until = rate_limited_until


class BudgetExhausted(Exception):
    """The job's budget has no token for the next request; ``retry_at``: when it will."""

    def __init__(self, message: str, retry_at: float | None):
        super().__init__(message)
        self.retry_at = retry_at


# --- requests through the protections ------------------------------------------------------

class Requester:
    """Sends requests through the job's budgets, retries and deadline.

    ``requests`` counts HTTP requests sent; ``attempts`` is the most tries any
    one request needed. Shared by http jobs and python jobs' ``ctx.http``.
    """

    def __init__(self, ctx, *, timeout: float = DEFAULT_TIMEOUT, headers: dict | None = None,
                 log=None):
        self.ctx = ctx
        self.timeout = timeout
        self.requests = 0
        self.attempts = 0
        self.log = log or (lambda line: None)
        self._reopen_at: float | None = None  # when a 429 we got emptied the budgets until
        # Python jobs may call ctx.http from threads; the store's connection is not for sharing.
        self._lock = threading.RLock()
        self.closed = False  # set when the run ends: threads the job left behind must stop here
        self.client = httpx.Client(headers={"User-Agent": USER_AGENT, **(headers or {})},
                                   follow_redirects=True)

    def close(self) -> None:
        with self._lock:  # waits for a request being admitted; none is admitted after
            self.closed = True
        self.client.close()

    def _check_open(self) -> None:
        if self.closed:
            raise RequestFailed("the run has ended")

    def send(self, method: str, url, *, timeout: float | None = None, **kwargs) -> httpx.Response:
        """The response to one request, after retries; raises Transient when they run out.

        Status codes other than 429 and 5xx are returned as they are: the caller decides.
        """
        from tenacity import retry_if_exception_type

        self._check_open()
        tries = 0
        limit = self.timeout if timeout is None else timeout

        def once() -> httpx.Response:
            nonlocal tries
            with self._lock:
                self._check_open()
                self._spend()
                left = self.ctx.deadline - time.time()
                if left <= 0:
                    raise DeadlinePassed()
                tries += 1
                self.attempts = max(self.attempts, tries)
                self.requests += 1
            try:
                response = self.client.request(method, url, timeout=min(limit, left), **kwargs)
            except httpx.TimeoutException as exc:
                if left <= limit:
                    raise DeadlinePassed() from exc  # the run's timeout cut it, not the upstream's
                raise Transient(describe_httpx_error(exc, self.ctx.secrets, limit), error=exc)
            except httpx.TransportError as exc:
                message = describe_httpx_error(exc, self.ctx.secrets)
                if _is_tls(exc) or isinstance(exc, (httpx.UnsupportedProtocol, httpx.LocalProtocolError)):
                    raise RequestFailed(message) from exc  # retrying cannot fix configuration
                raise Transient(message, error=exc)
            code = response.status_code
            if code == 429 or code >= 500:
                now = time.time()
                seconds = retry_after(response.headers.get("Retry-After"), now)
                if code == 429 and seconds is not None:
                    with self._lock:
                        self._check_open()
                        self._reopen_at = now + seconds
                        self.ctx.block_budgets(self._reopen_at)
                self.log(f"{_request_line(response, self.ctx.secrets)} → HTTP {code}"
                         + (f", Retry-After {seconds:g}s" if seconds is not None else ""))
                raise Transient(status_error(response, self.ctx.secrets), seconds, response=response,
                                until=now + seconds if code == 429 and seconds is not None else None)
            return response

        retrying = self.ctx.retrying(retry_if_exception_type(Transient))
        try:
            response = retrying(once)
        except Transient as exc:
            if tries > 1:
                exc.args = (f"{exc.args[0]} (after {tries} tries)",)
            raise
        self._reopen_at = None
        return response

    def _spend(self) -> None:
        self._check_open()
        while True:
            ready = self.ctx.spend(1)
            if ready is None:
                return
            # After the upstream's own 429 we were told to wait anyway: wait for the
            # budget it emptied to reopen (one token's refill), within the run's deadline.
            if (self._reopen_at is not None and ready < self.ctx.deadline
                    and ready <= self._reopen_at + self._one_token()):
                self.ctx.sleep(max(0.0, ready - time.time()))
                continue
            names = ", ".join(self.ctx.job.budgets)
            when = "" if ready == float("inf") else f" until {iso(ready)}"
            raise BudgetExhausted(f"budget {names} is empty{when}",
                                  None if ready == float("inf") else ready)

    def _one_token(self) -> float:
        rates = [self.ctx.config.budgets[name] for name in self.ctx.job.budgets]
        return max((per / capacity for capacity, per in rates), default=0.0) + 0.05


class BudgetedClient:
    """An httpx-like client for python jobs: every request spends budget and retries.

    ``get``/``post``/``put``/``patch``/``delete``/``head``/``request`` take httpx's
    arguments and return an ``httpx.Response`` (after retries, the last one; call
    ``raise_for_status()`` yourself). Raises ``BudgetExhausted`` when the job's
    budget is empty, and httpx's own errors when the network fails for good.
    """

    def __init__(self, ctx, timeout: float = DEFAULT_TIMEOUT):
        self._requester = Requester(ctx, timeout=timeout)

    @property
    def requests(self) -> int:
        return self._requester.requests

    @property
    def attempts(self) -> int:
        return self._requester.attempts

    def request(self, method: str, url, **kwargs) -> httpx.Response:
        if "timeout" in kwargs:  # httpx's forms: a number, None (no limit) or an httpx.Timeout
            timeout = kwargs.pop("timeout")
            if isinstance(timeout, httpx.Timeout):
                timeout = timeout.read
            kwargs["timeout"] = float("inf") if timeout is None else float(timeout)
        try:
            return self._requester.send(method.upper(), url, **kwargs)
        except Transient as exc:
            if exc.response is not None:
                return exc.response
            raise exc.error
        except RequestFailed as exc:
            raise exc.__cause__ or exc

    def get(self, url, **kwargs) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url, **kwargs) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def put(self, url, **kwargs) -> httpx.Response:
        return self.request("PUT", url, **kwargs)

    def patch(self, url, **kwargs) -> httpx.Response:
        return self.request("PATCH", url, **kwargs)

    def delete(self, url, **kwargs) -> httpx.Response:
        return self.request("DELETE", url, **kwargs)

    def head(self, url, **kwargs) -> httpx.Response:
        return self.request("HEAD", url, **kwargs)

    def close(self) -> None:
        self._requester.close()


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - now)


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
        self.http = job.http
        self.pk = job.into["pk"]
        self.keys = [self.pk] if isinstance(self.pk, str) else list(self.pk)
        self.log = PageLog()
        self.display = LiveProgress(job.name, ctx.interactive)
        self.requester = Requester(ctx, timeout=self.http["timeout"],
                                   headers={"Accept": "application/json", **self.http["headers"]},
                                   log=self.log)
        self.db = None
        self.table = None
        self.pages = 0
        self.processed = 0
        self.failed = 0
        self.not_objects = 0
        self.without_key = 0

    # -- the loop --

    def run(self) -> None:
        http = self.http
        check_next_rule(http["next"])
        self._open_table()
        url = http["url"]
        params = dict(http["params"])
        since = self._since()
        if since is not None:
            params[http["since"]["param"]] = since
        base_params = dict(params)
        rule = http["next"]
        if isinstance(rule, dict) and "page" in rule:
            start = params.get(rule["page"], "1")
            params[rule["page"]] = start if str(start).isdigit() else "1"
        seen: set = set()
        for number in range(1, http["max_pages"] + 1):
            response = self._fetch(url, params)
            data = self._json(response)
            items = self._items(data, response)
            self._store(items)
            self.pages = number
            self.display.update(pages=1)
            self.log(f"{_request_line(response, self.ctx.secrets)} → HTTP {response.status_code}, "
                     f"{len(items)} items")
            following = self._next(rule, data, response, items, params, base_params, seen)
            if following is None:
                return
            url, params = following[0] or url, following[1]
        if self._next(rule, data, response, items, params, base_params, set()) is not None:
            self.log(f"stopped at http.max_pages ({http['max_pages']}) with pages left")

    def _fetch(self, url: str, params: dict) -> httpx.Response:
        # Merged by hand: httpx drops a URL's own query when ``params=`` is given.
        try:
            target = httpx.URL(url).copy_merge_params(params) if params else httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            # Never the exception's text: httpx quotes pieces of the URL, secrets included.
            where = "http.url" if url == self.http["url"] else "the next page's URL"
            raise RequestFailed(f"{where} is not valid after expanding variables") from exc
        kwargs = {} if self.http["body"] is None else {"json": self.http["body"]}
        try:
            response = self.requester.send(self.http["method"], target, **kwargs)
        except Transient as exc:
            until = None
            if exc.response is not None and exc.response.status_code == 429:
                until = exc.until or 0.0
            raise RequestFailed(str(exc), rate_limited_until=until) from exc
        if response.status_code >= 400:
            raise RequestFailed(status_error(response, self.ctx.secrets))
        return response

    def _json(self, response: httpx.Response):
        try:
            return json.loads(response.content)
        except (ValueError, UnicodeDecodeError):
            kind = response.headers.get("Content-Type", "").split(";")[0].strip() or "no content type"
            body = _excerpt(response, self.ctx.secrets)
            raise RequestFailed(f"{_request_line(response, self.ctx.secrets)} returned non-JSON "
                                f"({kind}): {body or '(empty body)'}")

    def _items(self, data, response: httpx.Response) -> list:
        path = self.http["items"]
        if path is None:
            if isinstance(data, list):
                return data
            raise RequestFailed(f"{_request_line(response, self.ctx.secrets)} returned a JSON "
                                f"{_kind(data)}, not a list ({_keys(data)}); "
                                "set http.items to the list's dotted path")
        found, value, reached = dig(data, path)
        if not found:
            raise RequestFailed(f"{_request_line(response, self.ctx.secrets)} has no `{path}` "
                                f"in its JSON ({_keys(reached)})")
        if value is None:
            return []
        if not isinstance(value, list):
            raise RequestFailed(f"`{path}` in the JSON of {_request_line(response, self.ctx.secrets)} "
                                f"is a {_kind(value)}, not a list")
        return value

    def _next(self, rule, data, response, items, params, base_params, seen):
        """(url or None for the same one, params) of the next page; None after the last."""
        current = str(response.request.url)
        seen.add(current)
        if rule is None:
            return None
        if rule == "link-header":
            link = response.links.get("next", {}).get("url")
            return self._follow(link, current, base_params, seen)
        if isinstance(rule, str):
            found, link, _ = dig(data, rule)
            if found and link is not None and not isinstance(link, str):
                raise RequestFailed(f"`{rule}` in the JSON of {_request_line(response, self.ctx.secrets)} "
                                    f"is a {_kind(link)}, not a URL")
            return self._follow(link if found else None, current, base_params, seen)
        if "cursor" in rule:
            found, cursor, _ = dig(data, rule["cursor"])
            if not found or cursor in (None, "", False) or isinstance(cursor, (dict, list)):
                return None
            cursor = str(cursor)
            if ("cursor", cursor) in seen:
                return None
            seen.add(("cursor", cursor))
            return None, {**params, rule["param"]: cursor}  # None: the same URL
        if not items:
            return None
        return None, {**params, rule["page"]: str(int(params[rule["page"]]) + 1)}

    @staticmethod
    def _follow(link, current: str, base_params: dict, seen: set):
        if not link:
            return None
        url = urljoin(current, link)
        if url in seen:
            return None
        try:
            carried = httpx.URL(url).params
        except httpx.InvalidURL as exc:
            raise RequestFailed("the next page's URL from the upstream is not valid") from exc
        return url, {k: v for k, v in base_params.items() if k not in carried}

    # -- storing --

    def _open_table(self) -> None:
        try:
            self.db = open_data_db(self.ctx.data_db)
            self.table = self.db.table(self.job.into["table"])
        except (sqlite3.Error, OSError) as exc:
            raise self._store_error(exc) from exc

    def _store_error(self, exc: Exception) -> RequestFailed:
        return RequestFailed(f"cannot store items into {self.job.into['table']} "
                             f"in {self.ctx.data_db}: {one_line(exc, 200)}")

    def _store(self, items: list) -> None:
        good = []
        for item in items:
            if not isinstance(item, dict):
                self.not_objects += 1
            elif any(item.get(key) is None for key in self.keys):
                self.without_key += 1
            else:
                good.append(item)
        failed = len(items) - len(good)
        self.failed += failed
        if good:
            try:
                with _immediate(self.db):
                    self.table.upsert_all(good, pk=self.pk, alter=True)
            except (sqlite3.Error, OSError, InvalidColumns, OverflowError, ValueError) as exc:
                raise self._store_error(exc) from exc
            self.processed += len(good)
        self.display.update(items=len(good), failed=failed)

    def _since(self) -> str | None:
        rule = self.http["since"]
        if not rule:
            return None
        if rule.get("field"):
            return self._stored_max(rule["field"])
        started = last_complete_sync(self.ctx)
        if started is None:
            return None
        if rule.get("format", "iso") == "epoch":
            return str(int(started))
        return iso(started)

    def _stored_max(self, column: str) -> str | None:
        try:
            return self._stored_max_of(column)
        except (sqlite3.Error, OSError) as exc:
            raise self._store_error(exc) from exc

    def _stored_max_of(self, column: str) -> str | None:
        if not self.table.exists():
            return None
        if column not in self.table.columns_dict:
            self.log(f"since: {self.job.into['table']} has no column {column} yet; sending nothing")
            return None
        value = self.db.execute(f"SELECT MAX([{column}]) FROM [{self.table.name}]").fetchone()[0]
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return str(value)

    def close(self) -> None:
        self.display.close()
        self.requester.close()
        if self.db is not None:
            self.db.close()

    # -- the result --

    def outcome(self, status: str, **fields) -> Outcome:
        if status == SUCCESS and self.failed:
            status = PARTIAL
            fields.setdefault("error", self._failed_items())
        elif self.failed and fields.get("error"):
            fields["error"] = f"{fields['error']}; {self._failed_items()}"
        return Outcome(status, attempts=self.requester.attempts, requests=self.requester.requests,
                       items_processed=self.processed, items_failed=self.failed,
                       output=self.log.text(), **fields)

    def _failed_items(self) -> str:
        parts = []
        if self.without_key:
            keys = "`, `".join(self.keys)
            parts.append(f"{self.without_key} {_items_word(self.without_key)} had no `{keys}`")
        if self.not_objects:
            parts.append(f"{self.not_objects} {_items_word(self.not_objects)} "
                         f"{'was not a JSON object' if self.not_objects == 1 else 'were not JSON objects'}")
        return " and ".join(parts)


def run_http(job, ctx) -> Outcome:
    """Sync one http job: every page fetched through the protections and upserted."""
    sync = Sync(job, ctx)
    try:
        try:
            with hard_deadline(ctx.deadline), sync.display:
                sync.run()
        except DeadlinePassed:
            after = f" (on page {sync.pages + 1})" if sync.pages else ""
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
        except Cancelled as exc:
            return sync.outcome(FAILED, reason=CANCELLED, error=f"cancelled by {exc}")
        return sync.outcome(SUCCESS)
    finally:
        sync.close()


def last_complete_sync(ctx) -> float | None:
    """Start time of the newest run that synced everything (see ``since`` above).

    ``partial`` runs count only when items were malformed, not when the run stopped
    early. If the runs kept by retention do not show one, None: sync everything.
    """
    if ctx.last_success_at is None:
        return None
    for run in ctx.store.runs(ctx.job.name, 500):
        if run.status == SUCCESS or (run.status == PARTIAL and run.reason is None):
            return run.started_at
    return None


# --- paths, messages -----------------------------------------------------------------------

def dig(data, path: str):
    """(found, value, deepest container reached) for a dotted path; digits index lists."""
    value = data
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            data, value = value, value[part]
        elif isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            data, value = value, value[int(part)]
        else:
            return False, None, value
    return True, value, data


def show_url(url, secrets) -> str:
    """``url`` fit to show: password, credential-looking query values and secrets as ***."""
    text = str(url)
    try:
        parts = urlsplit(text)
    except ValueError:
        return secrets.redact(text) if secrets else text
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"***@{host}"
    query = "&".join(
        f"{name}=***" if sep and _credential_name(name) else f"{name}{sep}{value}"
        for name, sep, value in (pair.partition("=") for pair in parts.query.split("&") if pair))
    shown = urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    return _redact(shown, secrets)


def _redact(text: str, secrets) -> str:
    """``secrets.redact``, and also each secret as httpx writes it into a URL's query."""
    if not secrets or not text:
        return text
    for value in sorted(secrets.values, key=len, reverse=True):
        form = _query_form(value)
        if form:
            text = text.replace(form, "***")
    return secrets.redact(text)


@lru_cache(maxsize=256)
def _query_form(value: str) -> str | None:
    """``value`` as httpx percent-encodes it in a URL's query (``a b/c`` → ``a%20b/c``)."""
    try:
        form = httpx.URL("http://h/?q=" + value).query.decode("ascii")[2:]
    except (httpx.InvalidURL, UnicodeDecodeError, ValueError):
        return None
    return form if len(form) >= 4 and form != value else None


def _credential_name(name: str) -> bool:
    lowered = name.lower()
    return (any(part in CREDENTIAL_WORDS for part in re.split(r"[_\-.\[\]]+", lowered))
            or any(part in lowered for part in CREDENTIAL_PARTS))


def describe_httpx_error(exc: Exception, secrets=None, timeout: float | None = None) -> str:
    """One line a user can act on for an httpx error (transport or raise_for_status)."""
    if isinstance(exc, httpx.HTTPStatusError):
        return status_error(exc.response, secrets)
    try:
        request = exc.request
    except (AttributeError, RuntimeError):  # httpx raises RuntimeError when none was attached
        request = None
    url = request.url if request is not None else None
    host = (f"{url.host}:{url.port}" if url.port else url.host) if url is not None else "the server"
    what = f"{request.method} {show_url(url, secrets)}" if request is not None else "the request"
    reason = _reason(exc)
    if isinstance(exc, httpx.TimeoutException):
        kind = {httpx.ConnectTimeout: "connecting to", httpx.PoolTimeout: "waiting for a connection to"}
        for cls, words in kind.items():
            if isinstance(exc, cls):
                return f"timed out {words} {host}"
        after = f" after {format_duration(timeout)}" if timeout else ""
        return f"{what} timed out{after} waiting for the response"
    if _is_tls(exc):
        return f"TLS error talking to {host}: {reason}"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect to {host}: {reason}"
    if isinstance(exc, (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)):
        return f"{host} broke off {what}: {reason}"
    if isinstance(exc, httpx.InvalidURL):  # its text quotes the URL, secrets included
        return f"{what} cannot be sent: the URL is not valid"
    if isinstance(exc, httpx.UnsupportedProtocol):
        return f"{what} cannot be sent: {reason}"
    message = f"{what} failed: {type(exc).__name__}: {reason}"
    return _redact(message, secrets)


def status_error(response: httpx.Response, secrets) -> str:
    """``GET URL returned HTTP 404 Not Found: <body excerpt>``."""
    body = _excerpt(response, secrets)
    phrase = f" {response.reason_phrase}" if response.reason_phrase else ""
    line = f"{_request_line(response, secrets)} returned HTTP {response.status_code}{phrase}"
    return f"{line}: {body}" if body else line


def _request_line(response: httpx.Response, secrets) -> str:
    return f"{response.request.method} {show_url(response.request.url, secrets)}"


def _excerpt(response: httpx.Response, secrets) -> str:
    text = _redact(response.content[:4 * EXCERPT].decode("utf-8", "replace"), secrets)
    return one_line(text, EXCERPT)


def _reason(exc: BaseException) -> str:
    text = str(exc) or (str(exc.__cause__) if exc.__cause__ else "") or type(exc).__name__
    return one_line(re.sub(r"\s*\(_ssl\.c:\d+\)", "", text), 200)


def _is_tls(exc: BaseException) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, ssl.SSLError) or "[SSL" in str(exc) or "CERTIFICATE" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _kind(value) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean",
            type(None): "null"}.get(type(value), "number")


def _keys(value) -> str:
    if isinstance(value, dict):
        names = list(value)
        shown = ", ".join(str(n) for n in names[:12]) + (", …" if len(names) > 12 else "")
        return f"keys: {shown}" if names else "an empty object"
    return f"it is a {_kind(value)}"


def _items_word(n: int) -> str:
    return "item" if n == 1 else "items"


def _pages(n: int) -> str:
    return f"{n} page" if n == 1 else f"{n} pages"


class _immediate:
    """One page's write: ``BEGIN IMMEDIATE`` takes the write lock up front (waiting up to the
    busy timeout), so no read lock is upgraded and nothing is held across HTTP requests."""

    def __init__(self, db):
        self.conn = db.conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, exc, tb):
        if kind is None:
            try:
                self.conn.execute("COMMIT")
                return False
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        return False


def check_next_rule(rule) -> None:
    """RequestFailed unless ``rule`` is a pagination rule ``Sync`` can follow."""
    if rule is None or isinstance(rule, str):
        return
    if isinstance(rule, dict):
        if set(rule) == {"cursor", "param"} and all(isinstance(v, str) and v for v in rule.values()):
            return
        if set(rule) == {"page"} and isinstance(rule["page"], str) and rule["page"]:
            return
    raise RequestFailed(f"http.next: {one_line(repr(rule), 80)} is not a pagination rule — use a "
                        "dotted path, {cursor: PATH, param: NAME}, {page: NAME} or link-header")

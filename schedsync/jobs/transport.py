"""Requests through the job's protections: budget, retries, deadline, redirects, size cap.

``Requester.send`` is the one loop every HTTP request of an http job or of a python
job's ``ctx.http`` goes through:

- every request sent, redirect hops and retries included, spends one token from the
  job's budgets (the upstream counts each); an empty budget raises ``BudgetExhausted``;
  the same store transaction records the run's request count so far, so a run killed
  mid-sync is recorded ``crashed`` with every request it sent;
- connection errors, timeouts, 429 and 5xx are retried with the job's backoff;
  ``Retry-After`` is honoured and a 429's also empties the shared budgets until then;
- each request's timeout is the smaller of its own and what is left of the run's;
- redirects are followed here (at most ``MAX_REDIRECTS``), not by httpx, so each hop is
  counted and spent. On a hop to another origin (scheme, host or port), and on an http
  job's next page at another origin than ``http.url``'s (``home``), the request loses
  every header that holds a secret or is named like a credential (``Authorization``,
  ``Cookie``, ``X-Api-Key``, …), every query parameter that holds a secret, and any
  user:password; the run's log says what was dropped;
- such a hop to a link-local address (169.254.0.0/16, fe80::/10: cloud metadata lives
  there), literal or resolved, is refused before any connection; with ``allow_hosts``
  (``http.allow_hosts``) every hop's host must be in it, and one named there is allowed;
- the body is read as a stream and decoded here (gzip, deflate) in bounded steps, so
  at most ``max_bytes`` decoded bytes are ever accepted (``http.max_bytes``, default
  64 MiB); past 16 MiB it is spooled to an unnamed temporary file, so a gzip bomb never
  inflates in memory. Over the cap the request fails in one line.

Everything that goes wrong becomes ``Transient`` (worth a retry), ``RequestFailed``
(one line, for good) or ``BudgetExhausted``; never an httpx traceback.
"""

from __future__ import annotations

import ipaddress
import socket
import tempfile
import threading
import time
import zlib
from datetime import timezone
from email.utils import parsedate_to_datetime

import httpx

from schedsync import USER_AGENT
from schedsync.core.durations import clock
from schedsync.core.errors import SchedsyncError
from schedsync.core.outcome import DeadlinePassed
from schedsync.core.redact import clip, credential_name, printable
from schedsync.core.retry import RetryAfter
from schedsync.jobs.display import describe_httpx_error, is_tls, request_line, response_line, show_url, status_error

DEFAULT_TIMEOUT = 30.0  # seconds per request when a python job's call names none
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # decoded bytes of one response (http.max_bytes)
MAX_REDIRECTS = 20  # as httpx and browsers
REDIRECTS = (301, 302, 303, 307, 308)
SPOOL = 16 * 1024 * 1024  # decoded bytes kept in memory before spooling to a temporary file
STEP = 1024 * 1024  # most bytes one decompression step may produce
ENCODINGS = "gzip, deflate"  # what we ask for: what we can decode in bounded steps


class Transient(RetryAfter):
    """A failure worth retrying; ``seconds`` is the upstream's Retry-After, if any."""

    def __init__(self, message: str, seconds: float | None = None, *,
                 response: httpx.Response | None = None, error: Exception | None = None,
                 until: float | None = None):
        super().__init__(printable(message), seconds)
        self.response = response
        self.error = error
        self.until = until  # a 429's Retry-After as POSIX seconds


class RequestFailed(Exception):
    """A request failed for good; str() is the one-line error.

    ``rate_limited_until`` is set when the upstream's 429 is why (POSIX seconds, or
    0.0 when it named no time).
    """

    def __init__(self, message: str, rate_limited_until: float | None = None):
        super().__init__(printable(message))
        self.rate_limited_until = rate_limited_until


class BudgetExhausted(Exception):
    """The job's budget has no token for the next request; ``retry_at``: when it will."""

    def __init__(self, message: str, retry_at: float | None):
        super().__init__(message)
        self.retry_at = retry_at


class Requester:
    """Sends requests through the job's budgets, retries and deadline.

    ``requests`` counts HTTP requests sent (redirect hops included); ``attempts`` is the
    most tries any one request needed. Shared by http jobs and python jobs' ``ctx.http``.
    """

    def __init__(self, ctx, *, timeout: float = DEFAULT_TIMEOUT, headers: dict | None = None,
                 log=None, max_bytes: int = DEFAULT_MAX_BYTES, allow_hosts=None):
        self.ctx = ctx
        # The hosts every hop must go to (http.allow_hosts), or None: any.
        self.allow_hosts = None if allow_hosts is None else {_bare(h) for h in allow_hosts}
        # An http job's origin (of http.url): its headers and params are for it alone.
        self.home: tuple | None = None
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.requests = 0
        self.attempts = 0
        self.log = log or (lambda line: None)
        self._reopen_at: float | None = None  # when a 429 we got emptied the budgets until
        # Python jobs may call ctx.http from threads; the store's connection is not for sharing.
        self._lock = threading.RLock()
        self.closed = False  # set when the run ends: threads the job left behind must stop here
        self.client = httpx.Client(headers={"User-Agent": USER_AGENT, "Accept-Encoding": ENCODINGS,
                                            **(headers or {})})

    def close(self) -> None:
        with self._lock:  # waits for a request being admitted; none is admitted after
            self.closed = True
        self.client.close()

    def _check_open(self) -> None:
        if self.closed:
            raise RequestFailed("the run has ended")

    def send(self, method: str, url, *, timeout: float | None = None, follow_redirects: bool = True,
             auth=httpx.USE_CLIENT_DEFAULT, withheld=(), **kwargs) -> httpx.Response:
        """The response to one request, after redirects and retries, its body read.

        Raises Transient when retries run out. Status codes other than 429 and 5xx are
        returned as they are: the caller decides. ``withheld``: query parameters the caller
        left out of ``url`` because it is at another origin than ``home`` (logged with the rest).
        """
        from tenacity import retry_if_exception_type

        self._check_open()
        tries = 0
        failed: list[Transient] = []  # what each try that failed said
        limit = self.timeout if timeout is None else timeout
        secrets = self.ctx.secrets

        def once() -> httpx.Response:
            nonlocal tries
            hops = 0
            request = None
            origin = None  # the first hop's: auth= is sent only there
            while True:
                if request is None:  # checked before a token is spent or a connection made
                    request = self._first(method, url, withheld, kwargs)
                    origin = origin_of(request.url)
                with self._lock:
                    self._check_open()
                    self._spend()
                    left = self.ctx.deadline - time.monotonic()
                    if left <= 0:
                        raise DeadlinePassed()
                    if not hops:
                        tries += 1
                        self.attempts = max(self.attempts, tries)
                    self.requests += 1
                wait = min(limit, left)
                try:
                    request.extensions["timeout"] = httpx.Timeout(wait).as_dict()
                    response = self._exchange(request, auth if origin_of(request.url) == origin else None)
                except httpx.TimeoutException as exc:
                    if left <= limit:
                        raise DeadlinePassed() from exc  # the run's timeout cut it, not the upstream's
                    raise Transient(describe_httpx_error(exc, secrets, limit), error=exc) from exc
                except httpx.TransportError as exc:
                    message = describe_httpx_error(exc, secrets)
                    if is_tls(exc) or isinstance(exc, (httpx.UnsupportedProtocol, httpx.LocalProtocolError)):
                        raise RequestFailed(message) from exc  # retrying cannot fix configuration
                    raise Transient(message, error=exc) from exc
                except httpx.HTTPError as exc:  # anything else httpx raises: one line, for good
                    raise RequestFailed(describe_httpx_error(exc, secrets)) from exc
                if not (follow_redirects and response.status_code in REDIRECTS
                        and "Location" in response.headers):
                    break
                hops += 1
                if hops > MAX_REDIRECTS:
                    raise RequestFailed(f"{request_line(request, secrets)} was redirected more than "
                                        f"{MAX_REDIRECTS} times (a redirect loop?)")
                request = self._redirect(request, response)
            code = response.status_code
            if code == 429 or code >= 500:
                seconds = retry_after(response.headers.get("Retry-After"), time.time())  # a date: ours
                # the pause on the store's clock (PostgreSQL: the server's), which budgets go by
                until = self.ctx.store.now() + seconds if code == 429 and seconds is not None else None
                if until is not None:
                    with self._lock:
                        self._check_open()
                        self._reopen_at = until
                        self._state(self.ctx.block_budgets, self._reopen_at)
                self.log(f"{response_line(response, secrets)} → HTTP {code}"
                         + (f", Retry-After {seconds:g}s" if seconds is not None else ""))
                raise Transient(status_error(response, secrets), seconds, response=response, until=until)
            return response

        def attempt() -> httpx.Response:
            try:
                return once()
            except Transient as exc:
                failed.append(exc)
                raise

        retrying = self.ctx.retrying(retry_if_exception_type(Transient))
        try:
            response = retrying(attempt)
        except Transient as exc:
            if tries > 1:
                exc.args = (f"{exc.args[0]} (after {tries} tries)",)
            raise
        except BudgetExhausted as exc:
            if failed:  # the upstream's error is the cause; the empty budget only ended the retries
                n = len(failed)
                tries_word = "try" if n == 1 else "tries"
                exc.args = (f"{failed[-1]} (after {n} {tries_word}; budget empty before the {_ordinal(n + 1)})",)
            raise
        self._reopen_at = None
        return response

    # -- where a request may go, and what it may carry there --

    def _first(self, method: str, url, withheld, kwargs) -> httpx.Request:
        request = self.client.build_request(method, url, **kwargs)
        foreign = self.home is not None and origin_of(request.url) != self.home
        if foreign:  # an http job's next page at another origin: as a redirect there would be
            headers = httpx.Headers(request.headers)
            new = self._strip(headers, request.url, "next page at another origin", withheld)
            request = httpx.Request(method, new, headers=headers, content=request.content,
                                    extensions=dict(request.extensions))
        self._admit(request, foreign)
        return request

    def _admit(self, request: httpx.Request, foreign: bool) -> None:
        """RequestFailed unless ``request`` may go where it goes; before any connection."""
        host = _bare(request.url.host)
        if self.allow_hosts is not None:
            if host not in self.allow_hosts:
                raise RequestFailed(f"refused {request_line(request, self.ctx.secrets)}: "
                                    f"{printable(host)} is not in http.allow_hosts")
        elif foreign and _link_local(host, request.url.port):
            fix = " — name it in http.allow_hosts to allow it" if self.home is not None else ""
            raise RequestFailed(f"refused {request_line(request, self.ctx.secrets)}: {printable(host)}"
                                f" is a link-local address, where cloud metadata lives{fix}")

    def _strip(self, headers: httpx.Headers, url: httpx.URL, what: str, withheld=()) -> httpx.URL:
        """For a hop to another origin: drop from ``headers`` (in place) every credential
        header, and from ``url`` every query parameter holding a secret and any user:password;
        the URL left, and a log line saying what was dropped."""
        secrets = self.ctx.secrets
        dropped = list(dict.fromkeys(name for name, value in ((n.decode("latin-1"), v.decode("latin-1"))
                                                               for n, v in headers.raw)
                                     if credential_name(name) or secrets.holds(value)))
        for name in dropped:
            headers.pop(name, None)
        pairs = url.params.multi_items()
        params = [(k, v) for k, v in pairs if secrets.holds(k) or secrets.holds(v)]
        if params:
            url = url.copy_with(params=[pair for pair in pairs if pair not in params])
        if url.userinfo:
            url = url.copy_with(username=None, password=None)
            dropped.append("user:password")
        dropped += [f"query {k}" for k in dict.fromkeys([k for k, _ in params] + list(withheld))]
        if dropped:
            self.log(f"{what} {show_url(url, secrets)}: dropped " + ", ".join(dropped))
        return url

    # -- one request, its body read within the cap --

    def _exchange(self, request: httpx.Request, auth) -> httpx.Response:
        response = self.client.send(request, stream=True, auth=auth, follow_redirects=False)
        try:
            response._content = self._body(request, response)  # what response.read() would set
        finally:
            response.close()
        return response

    def _body(self, request: httpx.Request, response: httpx.Response) -> bytes:
        secrets = self.ctx.secrets
        cap = self.max_bytes
        encodings = [e.strip().lower() for e in response.headers.get("Content-Encoding", "").split(",")
                     if e.strip() and e.strip().lower() != "identity"]
        declared = response.headers.get("Content-Length", "")
        if not encodings and declared.isdigit() and int(declared) > cap:
            raise RequestFailed(f"{request_line(request, secrets)} returned {int(declared):,} bytes, "
                                f"over http.max_bytes ({cap:,})")
        if len(encodings) > 1 or (encodings and encodings[0] not in ("gzip", "x-gzip", "deflate")):
            raise RequestFailed(f"{request_line(request, secrets)} returned a body in Content-Encoding "
                                f"{clip(', '.join(encodings), 40)}, which schedsync cannot decode")
        body = _Body(cap)
        try:
            if not encodings:
                for chunk in response.iter_raw():
                    body.add(chunk)
            else:
                inflater = _Inflater(encodings[0])
                for chunk in response.iter_raw():
                    inflater.feed(chunk, body.add)
                inflater.finish(body.add)
            return body.value()
        except _TooLarge:
            raise RequestFailed(f"{request_line(request, secrets)} returned a body over "
                                f"http.max_bytes ({cap:,} bytes decoded)") from None
        except zlib.error as exc:
            raise RequestFailed(f"{request_line(request, secrets)} returned a {encodings[0]} body "
                                f"that cannot be decoded: {clip(exc, 80)}") from None
        except OSError as exc:  # the temporary file: a full disk
            raise RequestFailed(f"cannot hold the body of {request_line(request, secrets)}: "
                                f"{clip(exc, 120)}") from None
        finally:
            body.close()

    def _redirect(self, request: httpx.Request, response: httpx.Response) -> httpx.Request:
        """The next hop's request; to another origin without anything that holds a secret."""
        secrets = self.ctx.secrets
        self.log(f"{response_line(response, secrets)} → HTTP {response.status_code}, "
                 f"redirected")
        try:
            url = request.url.join(response.headers["Location"])
        except (httpx.InvalidURL, UnicodeError, ValueError):
            raise RequestFailed(f"{request_line(request, secrets)} redirected to a URL that is not valid") from None
        if url.scheme not in ("http", "https"):
            raise RequestFailed(f"{request_line(request, secrets)} redirected to a {clip(url.scheme, 20)}: "
                                "URL, which is not http(s)")
        method, code = request.method, response.status_code
        if (code == 303 and method != "HEAD") or (code in (301, 302) and method == "POST"):
            method = "GET"
        headers = httpx.Headers(request.headers)
        for name in ("Host", "Cookie"):  # set again for the new URL and its cookies
            headers.pop(name, None)
        content = None
        if method != request.method:
            for name in ("Content-Length", "Content-Type", "Transfer-Encoding"):
                headers.pop(name, None)
        else:
            try:
                content = request.content
            except httpx.RequestNotRead:
                raise RequestFailed(f"{request_line(request, secrets)} redirected a streamed body, "
                                    "which cannot be sent again") from None
        foreign = origin_of(url) != origin_of(request.url)
        if foreign:
            url = self._strip(headers, url, "redirect to another origin")
        new = httpx.Request(method, url, headers=headers, content=content,
                            extensions=dict(request.extensions))
        self._admit(new, foreign)
        self.client.cookies.set_cookie_header(new)
        return new

    # -- the budget --

    def _spend(self) -> None:
        self._check_open()
        while True:
            # The count as it will be once this request is sent, stored with the token, so
            # a run killed mid-sync is recorded with the requests it made (under self._lock).
            ready = self._state(self.ctx.spend, 1, self.requests + 1)
            if ready is None:
                return
            # After the upstream's own 429 we were told to wait anyway: wait for the
            # budget it emptied to reopen (one token's refill), within the run's deadline.
            wait = ready - self.ctx.store.now()  # ready is on the store's clock
            if (self._reopen_at is not None and wait < self.ctx.deadline - time.monotonic()
                    and ready <= self._reopen_at + self._one_token()):
                self.ctx.sleep(max(0.0, wait))
                continue
            names = ", ".join(self.ctx.job.budgets)
            when = "" if ready == float("inf") else f" until {self._clock(ready)}"
            raise BudgetExhausted(f"budget {names} is empty{when}",
                                  None if ready == float("inf") else ready)

    def _clock(self, t: float) -> str:
        """``10:42:00 CET``, as every time a person reads (``durations.clock``)."""
        from schedsync.core.schedule import zone

        return clock(t, zone(self.ctx.config.timezone), time.time())

    @staticmethod
    def _state(operation, *args):
        """A budget operation on the state; a state that cannot be written fails the request.
        The store translates its driver's errors into ``StateError`` (a ``SchedsyncError``)."""
        try:
            return operation(*args)
        except (SchedsyncError, OSError) as exc:
            raise RequestFailed(f"cannot spend a budget token: {clip(exc, 200)}") from None

    def _one_token(self) -> float:
        rates = [self.ctx.config.budgets[name] for name in self.ctx.job.budgets]
        return max((per / capacity for capacity, per in rates), default=0.0) + 0.05


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


def _bare(host: str) -> str:
    """A host as compared with http.allow_hosts: lower case, no brackets or trailing dot."""
    return host.strip().strip("[]").rstrip(".").lower()


METADATA = (ipaddress.ip_address("fd00:ec2::254"),)  # AWS's IPv6 metadata address (not link-local)


def _link_local(host: str, port: int | None) -> bool:
    """Whether ``host`` is, or resolves to, a link-local or metadata address.

    Literal forms (``169.254.169.254``, ``2852039166``, ``[fe80::1%eth0]``, ``[::ffff:…]``)
    are read without any lookup; a name is resolved (a name that does not resolve is left to
    the connection to report)."""
    try:
        found = [ipaddress.ip_address(host.split("%")[0])]
    except ValueError:
        try:
            found = [ipaddress.ip_address(socket.inet_aton(host))]  # 2852039166, 0xa9.254.43518
        except (OSError, UnicodeError, ValueError):
            try:
                infos = socket.getaddrinfo(host, port or 443, proto=socket.IPPROTO_TCP)
            except (OSError, UnicodeError, ValueError):
                return False
            found = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    for address in found:
        address = getattr(address, "ipv4_mapped", None) or address
        if address.is_link_local or address in METADATA:
            return True
    return False


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def origin_of(url: httpx.URL) -> tuple:
    port = url.port or {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host, port


class _TooLarge(Exception):
    pass


class _Body:
    """Decoded bytes of one response: in memory up to ``SPOOL``, then in a temporary file."""

    def __init__(self, cap: int):
        self.cap = cap
        self.size = 0
        self.parts: list[bytes] = []
        self.file = None

    def add(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        if self.size > self.cap:
            raise _TooLarge()
        if self.file is None and self.size > SPOOL:
            self.file = tempfile.TemporaryFile(prefix="schedsync-body-")  # noqa: SIM115 - closed by close()
            self.file.writelines(self.parts)
            self.parts = []
        if self.file is not None:
            self.file.write(data)
        else:
            self.parts.append(data)

    def value(self) -> bytes:
        if self.file is None:
            return self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
        self.file.seek(0)
        return self.file.read()

    def close(self) -> None:
        self.parts = []
        if self.file is not None:
            self.file.close()
            self.file = None


class _Inflater:
    """gzip or deflate (zlib-wrapped or raw), decoded at most ``STEP`` bytes at a time."""

    def __init__(self, encoding: str):
        self.deflate = encoding == "deflate"
        self.decoder = zlib.decompressobj(zlib.MAX_WBITS if self.deflate else 16 + zlib.MAX_WBITS)
        self.started = False

    def feed(self, data: bytes, out) -> None:
        if not data:
            return
        if self.deflate and not self.started:
            self.started = True
            try:
                self._run(data, out)
                return
            except zlib.error:  # a raw deflate stream, as some servers send
                self.decoder = zlib.decompressobj(-zlib.MAX_WBITS)
        self._run(data, out)

    def _run(self, data: bytes, out) -> None:
        self.started = True
        while data and not self.decoder.eof:
            out(self.decoder.decompress(data, STEP))
            data = self.decoder.unconsumed_tail

    def finish(self, out) -> None:
        if self.started and not self.decoder.eof:  # an empty body (HEAD, 204) is no stream at all
            out(self.decoder.flush())
            if not self.decoder.eof:
                raise zlib.error("the compressed body ends early")

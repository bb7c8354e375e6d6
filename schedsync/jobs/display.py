"""What of a request or a response is fit to show: URLs without credentials, one-line errors.

Every line built here is redacted whole (``Secrets``) and only then cut, and holds no
control characters: upstream bodies, exception texts and URLs are hostile input.
"""

from __future__ import annotations

import re
import ssl
from urllib.parse import urlsplit, urlunsplit

import httpx

from schedsync.core.durations import format_duration
from schedsync.core.redact import clip, credential_name, printable

EXCERPT = 100  # characters of an upstream body quoted in an error
WINDOW = 64 * 1024  # bytes of a body read to quote from


def show_url(url, secrets) -> str:
    """``url`` fit to show: password, credential-looking query values and secrets as ***."""
    text = str(url)
    try:
        parts = urlsplit(text)
    except ValueError:
        return printable(secrets.redact(text) if secrets else text)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"***@{host}"
    query = "&".join(
        f"{name}=***" if sep and credential_name(name) else f"{name}{sep}{value}"
        for name, sep, value in (pair.partition("=") for pair in parts.query.split("&") if pair))
    shown = urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    return printable(secrets.redact(shown) if secrets else shown)


def request_line(request: httpx.Request, secrets) -> str:
    """``GET https://host/path?key=***``."""
    return f"{request.method} {show_url(request.url, secrets)}"


def response_line(response: httpx.Response, secrets) -> str:
    return request_line(response.request, secrets)


def status_error(response: httpx.Response, secrets) -> str:
    """``GET URL returned HTTP 404 Not Found: <body excerpt>``."""
    body = excerpt(response, secrets)
    phrase = f" {printable(response.reason_phrase)}" if response.reason_phrase else ""
    line = f"{response_line(response, secrets)} returned HTTP {response.status_code}{phrase}"
    return f"{line}: {body}" if body else line


def excerpt(response: httpx.Response, secrets) -> str:
    """The start of the body on one line: redacted over a window, then cut to ``EXCERPT``."""
    try:
        content = response.content
    except httpx.ResponseNotRead:
        return ""
    text = content[:WINDOW].decode("utf-8", "replace")
    if secrets:
        text = secrets.redact(text)
        if len(content) > WINDOW:  # a secret cut by the window's end is not whole: drop that tail
            text = text[:max(0, len(text) - secrets.longest)]
    return clip(text, EXCERPT)


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
    host = printable(secrets.redact(host) if secrets else host)
    what = request_line(request, secrets) if request is not None else "the request"
    why = reason(exc, secrets)
    if isinstance(exc, httpx.TimeoutException):
        kind = {httpx.ConnectTimeout: "connecting to", httpx.PoolTimeout: "waiting for a connection to"}
        for cls, words in kind.items():
            if isinstance(exc, cls):
                return f"timed out {words} {host}"
        after = f" after {format_duration(timeout)}" if timeout else ""
        return f"{what} timed out{after} waiting for the response"
    if is_tls(exc):
        return f"TLS error talking to {host}: {why}"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect to {host}: {why}"
    if isinstance(exc, (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)):
        return f"{host} broke off {what}: {why}"
    if isinstance(exc, httpx.InvalidURL):  # its text quotes the URL, secrets included
        return f"{what} cannot be sent: the URL is not valid"
    if isinstance(exc, httpx.UnsupportedProtocol):
        return f"{what} cannot be sent: {why}"
    if isinstance(exc, httpx.TooManyRedirects):
        return f"{what} was redirected too many times"
    if isinstance(exc, httpx.DecodingError):
        return f"{what} returned a body that cannot be decoded: {why}"
    return f"{what} failed: {type(exc).__name__}: {why}"


def reason(exc: BaseException, secrets=None) -> str:
    """The exception's text, redacted whole, then on one line and cut."""
    text = str(exc) or (str(exc.__cause__) if exc.__cause__ else "") or type(exc).__name__
    text = re.sub(r"\s*\(_ssl\.c:\d+\)", "", text)
    return clip(secrets.redact(text) if secrets else text, 200)


def is_tls(exc: BaseException) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, ssl.SSLError) or "[SSL" in str(exc) or "CERTIFICATE" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def kind(value) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean",
            type(None): "null"}.get(type(value), "number")


def keys(value) -> str:
    if isinstance(value, dict):
        names = list(value)
        shown = ", ".join(printable(str(n))[:40] for n in names[:12]) + (", …" if len(names) > 12 else "")
        return f"keys: {shown}" if names else "an empty object"
    return f"it is a {kind(value)}"

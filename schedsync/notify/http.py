"""One HTTP attempt for the notifiers that speak HTTP (webhook, ping): urllib, imported
on first send, within ``TIMEOUT``; the outcome in a few words, secrets redacted."""

from __future__ import annotations

import json

from schedsync import USER_AGENT
from schedsync.notify.base import TIMEOUT


def request(url: str, body: dict | None, secrets) -> tuple[bool, str]:
    """POST ``body`` as JSON (or GET when None); (ok, what happened)."""
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    headers = {"User-Agent": USER_AGENT}
    if data is not None:
        headers["Content-Type"] = "application/json"
    try:
        request = urllib.request.Request(url, data=data, headers=headers,
                                         method="GET" if data is None else "POST")
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            response.read(65536)
            return True, f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}" + (f" {exc.reason}" if exc.reason else "")
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):  # socket.timeout too
            return False, f"timed out after {TIMEOUT:g}s"
        if isinstance(reason, ConnectionRefusedError):
            return False, "connection refused"
        return False, secrets.redact(str(getattr(reason, "strerror", None) or reason))
    except TimeoutError:
        return False, f"timed out after {TIMEOUT:g}s"
    except (ValueError, OSError) as exc:
        return False, secrets.redact(str(exc)) or type(exc).__name__

"""``ctx.http`` for python jobs: an httpx-like client over ``transport.Requester``."""

from __future__ import annotations

import httpx

from schedsync.jobs.transport import DEFAULT_TIMEOUT, Requester, RequestFailed, Transient


class BudgetedClient:
    """An httpx-like client for python jobs: every request spends budget and retries.

    ``get``/``post``/``put``/``patch``/``delete``/``head``/``request`` take httpx's
    arguments and return an ``httpx.Response`` (after retries, the last one; call
    ``raise_for_status()`` yourself). Redirects are followed (``follow_redirects=False``
    to not), each hop spending a token, with secrets kept from other origins; bodies are
    capped at 64 MiB decoded. Raises ``BudgetExhausted`` when the job's budget is empty,
    and httpx's own errors when the network fails for good.
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
            raise exc.error from None  # httpx's own error, as the docstring says
        except RequestFailed as exc:
            raise (exc.__cause__ or exc) from None

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

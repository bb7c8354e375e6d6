"""``ping: URL`` (healthchecks.io style): GET ``URL/start`` when a run starts, ``URL``
when it succeeds (or is partial), ``URL/fail`` when it fails. Skipped runs ping nothing."""

from __future__ import annotations

from schedsync.core.models import PARTIAL, SUCCESS
from schedsync.notify.base import Finished, Message, Notifier
from schedsync.notify.http import request


class Ping(Notifier):
    def run_started(self, job, run) -> list[Message]:
        return [Message(self, "ping:start", _url(job.ping, "start"))] if job.ping else []

    def run_finished(self, job, done: Finished) -> list[Message]:
        if not job.ping:
            return []
        if done.run.status in (SUCCESS, PARTIAL):
            return [Message(self, "ping:success", _url(job.ping, ""))]
        return [Message(self, "ping:fail", _url(job.ping, "fail"))]

    def send(self, target: str, body: dict | None, secrets) -> tuple[bool, str]:
        return request(target, None, secrets)


def _url(base: str, suffix: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(base)
    path = parts.path.rstrip("/") + (f"/{suffix}" if suffix else "")
    return urlunsplit(parts._replace(path=path or "/"))


NOTIFIER = Ping()

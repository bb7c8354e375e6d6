"""``notify: [URL]`` / ``{url: URL}``: a JSON POST per event (``events`` defaults to
``[failure, recovery]``; ``after_failures`` to 1; ``repeat`` re-sends ``failure``)."""

from __future__ import annotations

from schedsync.notify.base import Notifier, payload
from schedsync.notify.http import request


class Webhook(Notifier):
    KEY = "url"

    def body(self, event, target, entry, run, now, previous_streak=None, finished=None, retry=None) -> dict:
        return payload(event, entry, run, now, previous_streak, retry)

    def send(self, target: str, body: dict | None, secrets) -> tuple[bool, str]:
        return request(target, body, secrets)


NOTIFIER = Webhook()

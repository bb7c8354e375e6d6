"""``notify:``: a JSON POST per event to each URL (``events`` defaults to
``[failure, recovery]``; ``after_failures`` to 1). The only notifier that sends ``late``."""

from __future__ import annotations

from schedsync.notify.base import Finished, Message, Notifier, due, payload
from schedsync.notify.http import request


class Webhook(Notifier):
    def run_finished(self, job, done: Finished) -> list[Message]:
        return [Message(self, event, target["url"],
                        payload(event, done.entry, done.run_entry, done.now, done.previous_streak,
                                done.retry))
                for target in job.notify
                for event in due(target["events"], target["after_failures"], done)]

    def wants_late(self, job) -> bool:
        return job.wants("late")

    def late(self, job, entry: dict, now: float) -> list[Message]:
        body = payload("late", entry, entry["last_run"], now)
        return [Message(self, "late", target["url"], body) for target in job.notify if "late" in target["events"]]

    def send(self, target: str, body: dict | None, secrets) -> tuple[bool, str]:
        return request(target, body, secrets)


NOTIFIER = Webhook()

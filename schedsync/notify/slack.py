"""``notify: [{slack: URL}]``: Slack's incoming-webhook JSON (Mattermost and Rocket.Chat
take it too): ``text`` for notifications and clients that show nothing else, ``blocks``
for Slack, one coloured ``attachments`` entry for Mattermost and Rocket.Chat. It names
the job, its health and why, the run's error, and links ``SERVE_URL/job/NAME`` when a
top-level ``serve_url:`` is set. The URL is a credential: only ``https://host/…`` is
shown or recorded, and the whole URL is one of the job's secrets."""

from __future__ import annotations

from schedsync.notify.base import Notifier, text
from schedsync.notify.http import request
from schedsync.store.liveness import HOST

COLOURS = {"failure": "#d40e0d", "breaker_open": "#d40e0d", "late": "#e8a33d", "recovery": "#2eb67d"}
TITLES = {"failure": "failed", "recovery": "recovered", "breaker_open": "breaker open", "late": "late"}


def escape(value: str) -> str:
    """Slack's three control characters in message text."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def link(target: dict, job: str) -> str | None:
    """``serve_url`` + ``/job/NAME``, when the registry sets ``serve_url:``."""
    from urllib.parse import quote

    base = target.get("serve_url")
    return f"{base.rstrip('/')}/job/{quote(job, safe='')}" if base else None


class Slack(Notifier):
    KEY = "slack"

    def body(self, event, target, entry, run, now, previous_streak=None, finished=None, retry=None) -> dict:
        name = entry["name"]
        line = text(event, entry, run, previous_streak, retry)
        error = ((run or {}).get("error") or "").strip()[:1500]
        url = link(target, name)
        facts = [("Job", name), ("Health", entry["health"]), ("Why", entry["why"] or "—"), ("Host", HOST)]
        blocks: list[dict] = [
            {"type": "header", "text": {"type": "plain_text", "text": f"{name} {TITLES[event]}"[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": escape(line)},
             "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{escape(str(v))}"} for k, v in facts]},
        ]
        if error:
            blocks.append({"type": "section", "text": {"type": "mrkdwn",
                                                        "text": f"*Error*\n```{escape(error)}```"}})
        if url:
            blocks.append({"type": "section", "text": {"type": "mrkdwn",
                                                        "text": f"<{url}|Open {escape(name)} in schedsync>"}})
        attachment = {"color": COLOURS[event], "fallback": line, "title": f"{name} {TITLES[event]}",
                      "text": line, "fields": [{"title": k, "value": str(v), "short": True} for k, v in facts]}
        if error:
            attachment["fields"].append({"title": "Error", "value": error, "short": False})
        if url:
            attachment["title_link"] = url
        return {"text": escape(line) + (f" <{url}|{escape(name)}>" if url else ""), "blocks": blocks,
                "attachments": [attachment]}

    def send(self, target: str, body: dict | None, secrets) -> tuple[bool, str]:
        return request(target, body, secrets)


NOTIFIER = Slack()

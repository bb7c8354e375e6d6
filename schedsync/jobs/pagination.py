"""Pagination rules of http jobs (``http.next``) and the dotted paths they read.

- ``next: links.next``: a dotted path to the next page's URL in the body (absolute or
  relative); it stops when that is missing, null or empty.
- ``next: {cursor: meta.cursor, param: after}``: the cursor is sent as query parameter
  ``after``; it stops when the cursor is missing, null, empty or repeats.
- ``next: {page: page}``: query parameter ``page`` counts up from 1 (or from the number
  in ``params``) until a page has no items.
- ``next: link-header``: the RFC 5988 ``Link: <…>; rel="next"`` header.

Following a next URL, configured ``params`` it does not carry are added (an API key in
the query survives pagination); those it carries win. A next URL at another origin than
``http.url``'s gets none that is named like a credential or holds a secret (``withheld``
names them; the transport drops the rest of what such a hop must not carry). Loops are caught on the URL each
page is actually requested at, after merging params: a next page whose URL was
already requested in this run ends the sync.
"""

from __future__ import annotations

from urllib.parse import urljoin

import httpx

from schedsync.core.redact import clip, credential_name
from schedsync.jobs.display import kind, response_line
from schedsync.jobs.transport import RequestFailed, origin_of


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


def check_next_rule(rule) -> None:
    """RequestFailed unless ``rule`` is a pagination rule ``Pages`` can follow."""
    if rule is None or isinstance(rule, str):
        return
    if isinstance(rule, dict):
        if set(rule) == {"cursor", "param"} and all(isinstance(v, str) and v for v in rule.values()):
            return
        if set(rule) == {"page"} and isinstance(rule["page"], str) and rule["page"]:
            return
    raise RequestFailed(f"http.next: {clip(repr(rule), 80)} is not a pagination rule — use a "
                        "dotted path, {cursor: PATH, param: NAME}, {page: NAME} or link-header")


def merged_url(url, params: dict) -> httpx.URL:
    """``url`` with ``params`` merged into its query (httpx drops a URL's own query when
    ``params=`` is given, so it is merged by hand)."""
    return httpx.URL(url).copy_merge_params(params) if params else httpx.URL(url)


class Pages:
    """Where each page of one sync is: ``first()``, then ``next(...)`` until None.

    ``requested`` holds every URL asked for (as ``merged_url`` gives it); a next page
    whose URL is in it is a loop and ends the sync (``looped`` says so).
    """

    def __init__(self, rule, url: str, params: dict, secrets):
        check_next_rule(rule)
        self.rule = rule
        self.secrets = secrets
        self.url = url
        self.base_params = dict(params)
        self.params = dict(params)
        if isinstance(rule, dict) and "page" in rule:
            start = self.params.get(rule["page"], "1")
            self.params[rule["page"]] = start if str(start).isdigit() else "1"
        self.requested: set[str] = set()
        self.cursors: set[str] = set()
        self.looped: str | None = None
        self.home: tuple | None = None  # http.url's origin
        self.withheld: list[str] = []  # params not added to the next URL: it is at another origin

    def target(self, url: str, params: dict, first: bool) -> httpx.URL:
        try:
            return merged_url(url, params)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            # Never the exception's text: httpx quotes pieces of the URL, secrets included.
            where = "http.url" if first else "the next page's URL"
            raise RequestFailed(f"{where} is not valid after expanding variables") from exc

    def first(self) -> httpx.URL:
        target = self.target(self.url, self.params, True)
        self.home = origin_of(target)
        self.requested.add(str(target))
        return target

    def resume(self, url: str | None, params: dict) -> httpx.URL:
        """The first page of a resumed sync: ``url`` (a next link saved without the configured
        params, which are added back as for any next link; None: ``http.url``) with the
        pagination ``params`` saved (a cursor, a page number) over the configured ones."""
        home = self.target(self.url, self.params, True)
        self.home = origin_of(home)
        if url is None:
            self.params = {**self.params, **params}
        else:
            following = self._follow(url, str(home))
            if following is None:
                raise RequestFailed("the saved resume point has no URL")
            self.url, self.params = following
        target = self.target(self.url, self.params, False)
        self.requested.add(str(target))
        return target

    def point(self, target: httpx.URL) -> tuple[str | None, dict] | None:
        """How to find ``target`` (the next page) again without any secret: (None, the
        pagination params) for a cursor or page rule, (the URL without the configured params,
        {}) for a next link; None when that would need a secret (a link carrying one of its own)."""
        rule = self.rule
        holds = self.secrets.holds if self.secrets else (lambda text: False)
        if isinstance(rule, dict):
            name = rule.get("param") or rule.get("page")
            value = self.params.get(name)
            if value is None or holds(str(value)):
                return None
            return None, {name: str(value)}
        kept = [(k, v) for k, v in target.params.multi_items()
                if not (k in self.base_params and self.base_params[k] == v)]
        if any(credential_name(k) or holds(k) or holds(v) for k, v in kept):
            return None
        bare = target.copy_with(query=None)
        if bare.userinfo or holds(str(bare)):
            return None
        return str(bare.copy_with(params=kept) if kept else bare), {}

    def next(self, data, response: httpx.Response, items: list) -> httpx.URL | None:
        """The URL of the next page, or None after the last (or on a loop)."""
        self.withheld = []
        following = self._following(data, response, items)
        if following is None:
            return None
        url, params = following
        target = self.target(url or self.url, params, False)
        if str(target) in self.requested:
            self.looped = str(target)
            return None
        self.url, self.params = url or self.url, params
        self.requested.add(str(target))
        return target

    def _following(self, data, response, items):
        rule = self.rule
        current = str(response.request.url)
        if rule is None:
            return None
        if rule == "link-header":
            return self._follow(response.links.get("next", {}).get("url"), current)
        if isinstance(rule, str):
            found, link, _ = dig(data, rule)
            if found and link is not None and not isinstance(link, str):
                raise RequestFailed(f"`{rule}` in the JSON of {response_line(response, self.secrets)} "
                                    f"is a {kind(link)}, not a URL")
            return self._follow(link if found else None, current)
        if "cursor" in rule:
            found, cursor, _ = dig(data, rule["cursor"])
            if not found or cursor in (None, "", False) or isinstance(cursor, (dict, list)):
                return None
            cursor = str(cursor)
            if cursor in self.cursors:
                return None
            self.cursors.add(cursor)
            return None, {**self.params, rule["param"]: cursor}  # None: the same URL
        if not items:
            return None
        return None, {**self.params, rule["page"]: str(int(self.params[rule["page"]]) + 1)}

    def _follow(self, link, current: str):
        if not link:
            return None
        url = urljoin(current, link)
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise RequestFailed("the next page's URL from the upstream is not valid") from exc
        added = {k: v for k, v in self.base_params.items() if k not in parsed.params}
        if origin_of(parsed) != self.home:
            holds = self.secrets.holds if self.secrets else (lambda text: False)
            self.withheld = [k for k, v in added.items() if credential_name(k) or holds(k) or holds(v)]
        return url, {k: v for k, v in added.items() if k not in self.withheld}

"""``http:`` with ``into:``: a paginated sync of an API into a table, one budget token
per request."""

from __future__ import annotations

import os
import re

from schedsync.config.checks import TABLE_MAX, _duration, _is_url, _known, _q, _url, _whole
from schedsync.kinds import JobKind

HTTP_KEYS = ("url", "method", "headers", "params", "body", "items", "next", "max_pages",
             "timeout", "since", "max_bytes", "max_values", "allow_hosts", "resume")
INTO_KEYS = ("table", "pk", "db", "mode", "delete", "lineage", "columns", "select", "types", "nested", "transform")
# store.sink_base's and store.shape's values (kept here too: validating a jobs.yaml imports no sink code)
MODES = ("merge", "append", "replace")
CONTRACTS = ("evolve", "freeze", "discard")
TYPES = ("integer", "real", "text", "json", "timestamp")
NESTED = ("json", "tables")


class Http(JobKind):
    key = "http"
    runner = "http:run_http"
    spends_at_start = False  # one token per request, taken as it goes
    needs_last_success = True  # http.since
    secret_places = ("headers", "params", "body")
    secret_urls = ("url",)

    def validate(self, spec: dict, path: str, doc, folder: str) -> dict:
        section, into = _http(spec[self.key], f"{path}.{self.key}", doc), _into(spec, path, doc, folder)
        if section["since"] and into["mode"] == "replace":  # each run would keep only what changed
            raise doc.error(f"{path}.{self.key}.since", "cannot go with into.mode: replace, which rebuilds "
                            "the table from each run's items", "remove since:, or use mode: merge")
        if section.get("resume") and into["mode"] == "replace":  # the staging table starts afresh each run
            raise doc.error(f"{path}.{self.key}.resume", "cannot go with into.mode: replace, whose table is "
                            "rebuilt from page 1 by each run", "remove resume:, or use mode: merge")
        return {"section": section, "into": into, "fresh": _fresh(spec, section, path, doc)}


KIND = Http()


def _into(spec: dict, path: str, doc, folder: str) -> dict:
    into = spec.get("into")
    if not isinstance(into, dict):
        raise doc.error(f"{path}.into" if "into" in spec else path,
                        "an http job needs `into: {table: NAME, pk: KEY}`")
    _known(into, INTO_KEYS, f"{path}.into", doc)
    if not isinstance(into.get("table"), str) or not into["table"]:
        raise doc.error(f"{path}.into.table", "is required: the table to upsert into")
    table = into["table"]
    if len(table.encode()) > TABLE_MAX or any(c < " " for c in table):
        raise doc.error(f"{path}.into.table", f"{_q(table)} is not a usable table name",
                        f"use at most {TABLE_MAX} bytes and no control characters")
    mode = into.get("mode", "merge")
    if mode not in MODES:
        raise doc.error(f"{path}.into.mode", f"{_q(mode)} is not a write mode", "use merge, append or replace")
    pk = into.get("pk")
    if pk is None and mode != "merge":
        pass  # append and replace load without a key
    elif not (isinstance(pk, str) and pk) and not (
            isinstance(pk, list) and pk and all(isinstance(p, str) for p in pk)):
        raise doc.error(f"{path}.into.pk", "is required: the item key (or list of keys) to upsert on"
                        if pk is None else f"{_q(pk)} is not a key name or a list of them")
    db = into.get("db")
    if db is not None and (not isinstance(db, str) or not db):
        raise doc.error(f"{path}.into.db", f"{_q(db)} is not a file path")
    if db and not _is_url(db):
        db = os.path.join(folder, os.path.expanduser(db))
    lineage = into.get("lineage", False)
    if not isinstance(lineage, bool):
        raise doc.error(f"{path}.into.lineage", f"{_q(lineage)} is not true or false")
    delete = _delete(into, mode, pk, path, doc) if "delete" in into else None
    shape = _shape(into, f"{path}.into", doc)
    if shape.get("nested") == "tables" and mode != "merge":  # child rows are replaced with their parent's
        raise doc.error(f"{path}.into.nested", f"tables works with mode: merge only, not {mode}",
                        "remove nested:, or use mode: merge")
    return {"table": into["table"], "pk": pk, "db": db or None, "mode": mode, "delete": delete,
            "lineage": lineage, **shape}


def _delete(into: dict, mode: str, pk, path: str, doc) -> dict:
    """into.delete: {field: NAME, equals: VALUE, soft: BOOL}, merge mode with a pk only."""
    where = f"{path}.into.delete"
    rule = into["delete"]
    if not isinstance(rule, dict) or not isinstance(rule.get("field"), str) or not rule["field"] \
            or "equals" not in rule:
        raise doc.error(where, "must be {field: NAME, equals: VALUE} with optional soft: true",
                        "e.g. delete: {field: is_deleted, equals: true}")
    _known(rule, ("field", "equals", "soft"), where, doc)
    if mode != "merge":
        raise doc.error(where, f"works with mode: merge only, not {mode}",
                        "remove delete:, or use mode: merge")
    if isinstance(rule["equals"], (dict, list)) or rule["equals"] is None:
        raise doc.error(f"{where}.equals", f"{_q(rule['equals'])} is not a plain value",
                        "use a string, a number or true/false")
    soft = rule.get("soft", False)
    if not isinstance(soft, bool):
        raise doc.error(f"{where}.soft", f"{_q(soft)} is not true or false")
    return {"field": rule["field"], "equals": rule["equals"], "soft": soft}


def _shape(into: dict, path: str, doc) -> dict:
    """into.columns, select, types, nested and transform (see store.shape and docs/jobs-yaml.md)."""
    out: dict = {}
    for key, allowed in (("columns", CONTRACTS), ("nested", NESTED)):
        if key in into:
            if into[key] not in allowed:
                raise doc.error(f"{path}.{key}", f"{_q(into[key])} is not one of {', '.join(allowed)}")
            out[key] = into[key]
    chosen: dict[str, str] = {}
    if "select" in into:
        select = into["select"]
        if not isinstance(select, list) or not select:
            raise doc.error(f"{path}.select", f"{_q(select)} is not a list of keys",
                            "e.g. select: [id, name, owner.login]")
        for i, item in enumerate(select):
            if not isinstance(item, str) or not all(item.split(".")):
                raise doc.error(f"{path}.select[{i}]", f"{_q(item)} is not a key or dotted path",
                                "write e.g. owner.login (parts separated by single dots)")
            column = "__".join(item.split("."))
            if column.lower() in chosen:
                raise doc.error(f"{path}.select[{i}]",
                                f"{_q(item)} is stored in column {column}, as {_q(chosen[column.lower()])} is",
                                "list each key once")
            chosen[column.lower()] = item
        out["select"] = list(select)
    if "types" in into:
        types = into["types"]
        if not isinstance(types, dict) or not types:
            raise doc.error(f"{path}.types", f"{_q(types)} is not a mapping of column: type",
                            f"e.g. types: {{amount: real}}; types are {', '.join(TYPES)}")
        pk = into.get("pk") if isinstance(into.get("pk"), list) else [into.get("pk")]
        for column, kind in types.items():
            if not isinstance(column, str) or not column:
                raise doc.error(f"{path}.types", f"{_q(column)} is not a column name")
            if kind not in TYPES:
                raise doc.error(f"{path}.types.{column}", f"{_q(kind)} is not a type",
                                f"use one of {', '.join(TYPES)}")
            if chosen and column.lower() not in chosen and column not in pk:
                raise doc.error(f"{path}.types.{column}", "is not a column into.select keeps",
                                "name a selected column (a dotted path a.b is column a__b)")
        out["types"] = {str(c): k for c, k in types.items()}
    if "transform" in into:
        target = into["transform"]
        if not isinstance(target, str) or not re.match(r"^[\w.]+:\w+$", target):
            raise doc.error(f"{path}.transform", f"{_q(target)} is not module:function",
                            'write e.g. transform: "shaping:clean"')
        out["transform"] = target
    return out


def _http(value, path: str, doc) -> dict:
    if not isinstance(value, dict):
        raise doc.error(path, "must be a mapping with at least `url:`")
    _known(value, HTTP_KEYS, path, doc)
    out = {"url": _url(value.get("url"), f"{path}.url", doc),
           "method": str(value.get("method", "GET")).upper(),
           "headers": value.get("headers") or {}, "params": value.get("params") or {},
           "body": value.get("body"), "items": value.get("items"), "next": value.get("next"),
           "max_pages": value.get("max_pages", 1000), "timeout": 30.0, "since": value.get("since"),
           # decoded bytes per response: 64 MiB holds any sane JSON page, and a gzip bomb stops there
           "max_bytes": value.get("max_bytes", 64 * 1024 * 1024),
           # JSON values per page: what a parsed page's memory grows with (~100-200 bytes each)
           "max_values": value.get("max_values", 1_000_000)}
    if out["method"] not in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"):
        raise doc.error(f"{path}.method", f"{_q(out['method'])} is not an HTTP method")
    for key in ("headers", "params"):
        if not isinstance(out[key], dict):
            raise doc.error(f"{path}.{key}", "must be a mapping of name: value")
        out[key] = {str(k): "" if v is None else str(v) for k, v in out[key].items()}
    if out["items"] is not None and not isinstance(out["items"], str):
        raise doc.error(f"{path}.items", "must be a dotted path such as data or result.items")
    nxt = out["next"]
    ok = (nxt is None or isinstance(nxt, str)
          or (isinstance(nxt, dict) and (set(nxt) in ({"cursor", "param"}, {"page"}))
              and all(isinstance(v, str) and v for v in nxt.values())))
    if not ok:
        raise doc.error(f"{path}.next", f"{_q(nxt)} is not a pagination rule",
                        "use a dotted path, {cursor: PATH, param: NAME}, {page: NAME} or link-header")
    _whole(out["max_pages"], f"{path}.max_pages", doc)
    _whole(out["max_bytes"], f"{path}.max_bytes", doc)
    _whole(out["max_values"], f"{path}.max_values", doc)
    if "allow_hosts" in value:
        out["allow_hosts"] = _hosts(value["allow_hosts"], f"{path}.allow_hosts", doc)
    if "timeout" in value:
        out["timeout"] = _duration(value["timeout"], f"{path}.timeout", doc)
    if "resume" in value:
        resume = value["resume"]
        if not isinstance(resume, dict) or set(resume) != {"within"}:
            raise doc.error(f"{path}.resume", f"{_q(resume)} must be {{within: DURATION}}",
                            "e.g. resume: {within: 1h}")
        within = _duration(resume["within"], f"{path}.resume.within", doc)
        if within <= 0:
            raise doc.error(f"{path}.resume.within", "must be more than 0s")
        out["resume"] = {"within": within}
    since = out["since"]
    if since is not None:
        if not isinstance(since, dict) or "param" not in since:
            raise doc.error(f"{path}.since", "must be {param: NAME} with optional field: and format:",
                            "see the README's incremental sync section")
        _known(since, ("param", "field", "format"), f"{path}.since", doc)
        for key in ("param", "field"):
            if key in since and (not isinstance(since[key], str) or not since[key]):
                raise doc.error(f"{path}.since.{key}", f"{_q(since[key])} must be a name",
                                "e.g. since: {param: updated_since, field: updated_at}")
        if since.get("format", "iso") not in ("iso", "epoch"):
            raise doc.error(f"{path}.since.format", "must be iso or epoch")
    return out


def _fresh(spec: dict, http: dict, path: str, doc) -> dict | None:
    """``fresh: {within: 2h, field: updated_at}``; field defaults to http.since.field."""
    if "fresh" not in spec:
        return None
    value = spec["fresh"]
    where = f"{path}.fresh"
    if not isinstance(value, dict) or "within" not in value:
        raise doc.error(where, "must be {within: DURATION} with optional field: NAME",
                        "e.g. fresh: {within: 2h, field: updated_at}")
    _known(value, ("within", "field"), where, doc)
    within = _duration(value["within"], f"{where}.within", doc)
    if within <= 0:
        raise doc.error(f"{where}.within", "must be more than 0s")
    field = value.get("field", (http.get("since") or {}).get("field"))
    if "field" in value and (not isinstance(field, str) or not field):
        raise doc.error(f"{where}.field", f"{_q(field)} must be a name", "e.g. field: updated_at")
    if not field:
        raise doc.error(where, "needs the items' time field: fresh.field, or http.since.field",
                        "e.g. fresh: {within: 2h, field: updated_at}")
    return {"within": within, "field": field}


def _hosts(value, path: str, doc) -> list[str]:
    """http.allow_hosts: a list of host names or IP addresses (no scheme, port or path)."""
    fix = "list host names or addresses, e.g. [api.example.com, 10.0.0.7]"
    if not isinstance(value, list) or not value:
        raise doc.error(path, f"{_q(value)} is not a list of hosts", fix)
    import ipaddress

    hosts = []
    for host in value:
        bare = host.strip().strip("[]").rstrip(".").lower() if isinstance(host, str) else ""
        try:
            ipaddress.ip_address(bare)
        except ValueError:
            if not re.fullmatch(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?", bare):
                raise doc.error(path, f"{_q(host)} is not a host name or address", fix) from None
        hosts.append(bare)
    return hosts

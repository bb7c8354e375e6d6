"""Validation: the walked jobs.yaml values to a ``Config`` of plain, validated values
(durations in seconds, defaults merged into every job). Every error names the file,
the line and the key path, and carries exit code 2."""

from __future__ import annotations

import os

from schedsync.config.checks import _check_name, _duration, _is_url, _known, _only, _q, _str, _url, _whole
from schedsync.config.model import BUILTIN, Config, Jobs, no_registry
from schedsync.config.walk import ConfigErrors, _Doc, read_tree
from schedsync.core.durations import parse_duration
from schedsync.core.errors import ConfigError
from schedsync.kinds import KEYS
from schedsync.kinds import kind as kind_of

TOP_KEYS = ("state", "timezone", "defaults", "budgets", "log", "jobs")
# Settings that may sit in ``defaults`` and be overridden per job.
SETTINGS = ("timeout", "jitter", "overlap", "retries", "breaker", "grace", "retention",
            "max_wait", "cost", "env", "notify", "ping")
JOB_KEYS = SETTINGS + ("schedule", "description", "budget", "cwd") + KEYS + ("into",)
MERGED = ("retries", "breaker", "retention", "env")  # mappings merged key by key
RETRY_KEYS = ("attempts", "initial", "max", "multiplier", "jitter", "on_exit_codes")
BREAKER_KEYS = ("failures", "reset_after", "half_open_runs", "name")
RETENTION_KEYS = ("success", "failed")
NOTIFY_KEYS = ("url", "events", "after_failures")
EVENTS = ("failure", "recovery", "breaker_open", "late")


def parse(text: str, file: str, folder: str, every: bool = False) -> Config:
    doc = _Doc(file, every)
    raw = read_tree(text, file, doc)
    config = _validate(raw, doc, folder)
    if doc.errors:
        raise ConfigErrors(doc.errors, config)
    return config


def _validate(raw, doc: _Doc, folder: str) -> Config:
    if not isinstance(raw, dict):
        raise doc.error("", "the top level must be a mapping with a `jobs:` key")
    # Top-level `x-NAME:` keys are ignored: a place for YAML anchors (as in Compose files).
    _known({k: v for k, v in raw.items() if not str(k).startswith("x-")}, TOP_KEYS, "", doc)
    state = raw.get("state")
    if state is not None:
        if not isinstance(state, str) or not state:
            doc.fail(doc.error("state", "must be a file path or a postgresql:// URL"))
            state = None
        elif not _is_url(state):
            state = os.path.join(folder, os.path.expanduser(state))
    timezone = raw.get("timezone")
    if timezone is not None:
        try:
            _check_timezone(timezone, doc)
        except ConfigError as exc:
            doc.fail(exc)
            timezone = None

    log = None
    if raw.get("log") is not None:
        try:
            log = _log(raw["log"], folder, doc)
        except ConfigError as exc:
            doc.fail(exc)

    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        doc.fail(doc.error("defaults", "must be a mapping"))
        defaults = {}
    _known(defaults, SETTINGS, "defaults", doc)
    base = {**BUILTIN}
    base = _merge(base, _settings(defaults, "defaults", doc))

    budgets = {}
    raw_budgets = raw.get("budgets") or {}
    if not isinstance(raw_budgets, dict):
        doc.fail(doc.error("budgets", "must be a mapping of name: rate"))
        raw_budgets = {}
    for name, rate in raw_budgets.items():
        try:
            _check_name(name, f"budgets.{name}", doc)
            budgets[name] = _rate(rate, f"budgets.{name}", doc)
        except ConfigError as exc:
            doc.fail(exc)
            budgets[name] = [float("inf"), 1.0]  # known, so jobs naming it add no noise

    raw_jobs = raw.get("jobs")
    if not isinstance(raw_jobs, dict) or not raw_jobs:
        raise doc.error("jobs" if "jobs" in raw else "", "needs a `jobs:` mapping with at least one job")
    jobs = {}
    for name, spec in raw_jobs.items():
        try:
            jobs[name] = _job(str(name), spec, base, budgets, timezone, folder, doc)
        except ConfigError as exc:  # validate goes on with the next job
            doc.fail(exc)
    return Config(path=doc.file, dir=folder, state=state, timezone=timezone,
                  budgets=budgets, jobs=Jobs(jobs), defaults=base, log=log)


def _log(value, folder: str, doc: _Doc) -> dict:
    """``log: {file: PATH}``: PATH relative to jobs.yaml's folder, ``~`` expanded."""
    if isinstance(value, dict):
        _known(value, ("file",), "log", doc)
    if not isinstance(value, dict) or "file" not in value:
        raise doc.error("log", "must be a mapping with a `file:` key", "e.g. log: {file: /var/log/schedsync.jsonl}")
    file = value["file"]
    if not isinstance(file, str) or not file.strip() or "\0" in file:
        raise doc.error("log.file", "must be a file path", "e.g. log: {file: /var/log/schedsync.jsonl}")
    path = os.path.join(folder, os.path.expanduser(file))
    if os.path.isdir(path):
        raise doc.error("log.file", f"{_q(path)} is a folder", "name a file in it, e.g. schedsync.jsonl")
    return {"file": path}


def _job(name, spec, base, budgets, timezone, folder, doc) -> dict:
    path = f"jobs.{name}"
    _check_name(name, path, doc)
    if not isinstance(spec, dict):
        raise doc.error(path, f"must be a mapping with one of {', '.join(KEYS[:-1])} or {KEYS[-1]}")
    _known(spec, JOB_KEYS, path, doc)
    kinds = [k for k in KEYS if k in spec]
    if len(kinds) != 1:
        what = "has none of" if not kinds else f"has {' and '.join(kinds)}; pick one of"
        raise doc.error(path, f"{what} {', '.join(KEYS)}")
    found = kind_of(kinds[0])
    merged = _merge(base, _settings(spec, path, doc))
    job = {
        "name": name, "kind": found.key, "schedule": None,
        "description": _str(spec.get("description", ""), f"{path}.description", doc),
        "budgets": [], "cwd": folder, **merged,
    }
    job["breaker"].setdefault("name", name)
    _check_name(job["breaker"]["name"], f"{path}.breaker.name", doc)

    if "schedule" in spec:
        job["schedule"] = _schedule(spec["schedule"], f"{path}.schedule", timezone, doc)
    budget = spec.get("budget")
    if budget is not None:
        names = budget if isinstance(budget, list) else [budget]
        for b in names:
            if not isinstance(b, str) or b not in budgets:
                where = f"{path}.budget"
                raise doc.error(where, f"no budget named {_q(b)}",
                                f"define it under `budgets:` ({', '.join(budgets) or 'none yet'})")
        job["budgets"] = [str(b) for b in names]
        for b in job["budgets"]:
            if not found.spends_at_start and budgets[b][0] < 1:
                raise doc.error(f"{path}.budget", f"budget {_q(b)} holds less than the 1 token a request costs",
                                "raise its capacity to 1 or more")
            if found.spends_at_start and job["cost"] > budgets[b][0]:
                raise doc.error(f"{path}.cost" if "cost" in spec else f"{path}.budget",
                                f"cost {job['cost']} is more than budget {_q(b)} can ever hold "
                                f"({budgets[b][0]:g})", "lower the cost or raise the capacity")
    if "cwd" in spec:
        job["cwd"] = os.path.join(folder, os.path.expanduser(_str(spec["cwd"], f"{path}.cwd", doc)))

    own = found.validate(spec, path, doc, folder)
    job[found.key] = own.pop("section")  # the plain form: jobs.yaml's shape (Job.to_dict)
    job.update(own)
    job["lines"] = doc.job_lines.get(name, {})  # gathered while walking: linear
    return job


def _settings(spec: dict, path: str, doc: _Doc) -> dict:
    out = {}
    for key in SETTINGS:
        if key not in spec:
            continue
        try:
            out[key] = _setting(key, spec[key], f"{path}.{key}", doc)
        except ConfigError as exc:
            doc.fail(exc)  # validate: report it and go on, the builtin stands in
    return out


def _setting(key: str, value, where: str, doc: _Doc):
    """One setting of ``defaults`` or a job, validated."""
    out: dict = {}
    if key in ("timeout", "jitter", "grace", "max_wait"):
        out[key] = _duration(value, where, doc)
        if key == "timeout" and out[key] <= 0:
            raise doc.error(where, "must be more than 0s")
    elif key == "overlap":
        out[key] = _overlap(value, where, doc)
    elif key == "cost":
        out[key] = _whole(value, where, doc, least=0)
    elif key == "retries":
        out[key] = _retries(value, where, doc)
    elif key == "breaker":
        out[key] = _breaker(value, where, doc)
    elif key == "retention":
        out[key] = _retention(value, where, doc)
    elif key == "env":
        if not isinstance(value, dict):
            raise doc.error(where, "must be a mapping of NAME: value")
        out[key] = {str(k): "" if v is None else str(v) for k, v in value.items()}
    elif key == "notify":
        out[key] = _notify(value, where, doc)
    elif key == "ping":
        out[key] = None if value is None else _url(value, where, doc)
    return out[key]


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = {**base[key], **value} if key in MERGED and base.get(key) is not None else value
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in out.items()}



def _rate(value, path: str, doc: _Doc) -> list:
    if isinstance(value, str) and "/" in value:
        count, _, per = value.partition("/")
        per = per.strip()
        if per and per[0].isalpha():
            per = "1" + per  # "100/s" reads as 100 per 1s
        try:
            capacity, seconds = float(count), parse_duration(per)
        except ValueError as exc:
            raise doc.error(path, f"{_q(value)} is not a rate", "write N/duration, e.g. 15/15m") from exc
    elif isinstance(value, dict):
        _known(value, ("capacity", "per"), path, doc)
        given = value.get("capacity")
        if isinstance(given, bool) or not isinstance(given, (int, float)):
            raise doc.error(f"{path}.capacity", "must be a number of tokens")
        capacity = given
        seconds = _duration(value.get("per"), f"{path}.per", doc)
    else:
        raise doc.error(path, f"{_q(value)} is not a rate", "write N/duration or {capacity: N, per: 1h}")
    if capacity <= 0 or seconds <= 0:
        raise doc.error(path, "capacity and period must be more than 0")
    return [float(capacity), float(seconds)]


def _overlap(value, path: str, doc: _Doc) -> list:
    if value in ("skip", "allow"):
        return [value, 0.0]
    if isinstance(value, str) and value.startswith("wait "):
        return ["wait", _duration(value[5:], path, doc)]
    raise doc.error(path, f"{_q(value)} is not an overlap policy", "use skip, allow or wait 30s")


def _retries(value, path: str, doc: _Doc) -> dict:
    if not isinstance(value, dict):
        raise doc.error(path, "must be a mapping, e.g. {attempts: 3, initial: 1s}")
    _known(value, RETRY_KEYS, path, doc)
    out: dict = {}
    for key, item in _only(value, RETRY_KEYS):
        where = f"{path}.{key}"
        if key == "attempts":
            out[key] = _whole(item, where, doc)
        elif key in ("initial", "max"):
            out[key] = _duration(item, where, doc)
        elif key in ("multiplier", "jitter"):
            if isinstance(item, bool) or not isinstance(item, (int, float)) or item < 0:
                raise doc.error(where, f"{_q(item)} must be a number of 0 or more")
            out[key] = float(item)
        else:
            if not isinstance(item, list) or not all(isinstance(c, int) and not isinstance(c, bool)
                                                     for c in item):
                raise doc.error(where, "must be a list of exit codes, e.g. [75, 111]")
            out[key] = item
    return out


def _breaker(value, path: str, doc: _Doc) -> dict:
    if not isinstance(value, dict):
        raise doc.error(path, "must be a mapping, e.g. {failures: 5, reset_after: 10m}")
    _known(value, BREAKER_KEYS, path, doc)
    out = {}
    for key, item in _only(value, BREAKER_KEYS):
        where = f"{path}.{key}"
        if key == "reset_after":
            out[key] = _duration(item, where, doc)
        elif key == "name":
            _check_name(item, where, doc)
            out[key] = item
        else:
            out[key] = _whole(item, where, doc)
    return out


def _retention(value, path: str, doc: _Doc) -> dict:
    if not isinstance(value, dict):
        raise doc.error(path, "must be a mapping, e.g. {success: 14d, failed: forever}")
    _known(value, RETENTION_KEYS, path, doc)
    return {k: None if v == "forever" else _duration(v, f"{path}.{k}", doc)
            for k, v in _only(value, RETENTION_KEYS)}


def _notify(value, path: str, doc: _Doc) -> list:
    if not isinstance(value, list):
        raise doc.error(path, "must be a list of {url, events}")
    out = []
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        if isinstance(item, str):
            item = {"url": item}
        if not isinstance(item, dict):
            raise doc.error(where, "must be {url: ..., events: [...]}")
        _known(item, NOTIFY_KEYS, where, doc)
        events = item.get("events", ["failure", "recovery"])
        if not isinstance(events, list) or any(e not in EVENTS for e in events):
            raise doc.error(f"{where}.events", f"{_q(events)}: events are {', '.join(EVENTS)}")
        after = _whole(item.get("after_failures", 1), f"{where}.after_failures", doc)
        out.append({"url": _url(item.get("url"), f"{where}.url", doc), "events": events,
                    "after_failures": after})
    return out





def _schedule(value, path: str, timezone, doc: _Doc) -> str:
    if not isinstance(value, str):
        raise doc.error(path, f"{_q(value)} is not a cron expression", 'quote it: "0 * * * *"')
    from schedsync.core.schedule import Schedule

    try:
        Schedule(value, _zone(timezone) if timezone else None)
    except ValueError as exc:
        raise doc.error(path, f'"{value}" is not a cron expression: {exc}',
                        'write 5 fields (minute hour day month weekday) or @hourly/@daily/…') from exc
    return value


def _check_timezone(name, doc: _Doc) -> None:
    try:
        _zone(name)
    except Exception as exc:
        raise doc.error("timezone", f"{_q(name)} is not a known time zone",
                        "use an IANA name such as Europe/Berlin") from exc


def _zone(name: str):
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def adhoc(config: Config | None, name: str, command: list[str], settings: dict, cwd: str) -> Config:
    """``config`` (or an empty registry) with ``name`` as a command job running ``command``:
    what ``schedsync exec`` runs. Built by ``_job`` as a jobs.yaml entry is, from the registry's
    defaults, or, when ``name`` is a registry job, from that job's settings (so it keeps its lock,
    breaker, budgets and retention); ``settings`` (as written in jobs.yaml) override either."""
    doc = _Doc("schedsync exec")
    if config is None:
        config = no_registry(cwd)
    own = config.jobs.get(name)
    base = {k: getattr(own, k) for k in BUILTIN} if own else config.defaults or _merge(BUILTIN, {})
    spec = {"command": list(command), **settings}
    if own and own.budgets and "budget" not in spec:
        spec["budget"] = own.budgets
    if own and own.description:
        spec["description"] = own.description
    job = _job(name, spec, base, config.budgets, config.timezone, cwd, doc)
    job["cwd"] = cwd  # like flock or runitor: the command runs where it was invoked
    if own:
        job["breaker"]["name"] = own.breaker["name"]
    from schedsync.core.records import replace

    return replace(config, jobs=config.jobs.plus({name: job}))

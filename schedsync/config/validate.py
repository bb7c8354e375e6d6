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

TOP_KEYS = ("state", "timezone", "defaults", "budgets", "limits", "log", "jobs", "smtp", "serve_url")
# Settings that may sit in ``defaults`` and be overridden per job.
SETTINGS = ("timeout", "jitter", "overlap", "retries", "breaker", "grace", "retention",
            "max_wait", "cost", "env", "notify", "ping", "run_by", "catchup", "retry_later", "fails_when")
JOB_KEYS = SETTINGS + ("schedule", "description", "budget", "limit", "cwd", "params", "after", "requires") + KEYS + (
    "into", "fresh")
MERGED = ("retries", "breaker", "retention", "env", "catchup", "retry_later")  # merged key by key
RETRY_KEYS = ("attempts", "initial", "max", "multiplier", "jitter", "on_exit_codes")
BREAKER_KEYS = ("failures", "reset_after", "half_open_runs", "name")
RETENTION_KEYS = ("success", "failed")
NOTIFY_KINDS = ("url", "slack", "email")  # the key that says where an entry goes
NOTIFY_KEYS = NOTIFY_KINDS + ("events", "after_failures", "repeat")
SMTP_KEYS = ("host", "port", "starttls", "user", "password", "from", "ca_file", "verify")
RUN_BY = ("cron", "tick")
EVENTS = ("failure", "recovery", "breaker_open", "late")
CATCHUP_KEYS = ("within", "runs")
RETRY_LATER_KEYS = ("after", "max")
PARAM_KEYS = ("default", "pattern")


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
    for key, check in (("smtp", _smtp), ("serve_url", _url)):
        if raw.get(key) is not None:
            try:
                setattr(doc, key, check(raw[key], key, doc))
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

    limits = {}
    raw_limits = raw.get("limits") or {}
    if not isinstance(raw_limits, dict):
        doc.fail(doc.error("limits", "must be a mapping of name: N (runs at once)", "e.g. limits: {heavy: 2}"))
        raw_limits = {}
    for name, most in raw_limits.items():
        try:
            _check_name(name, f"limits.{name}", doc)
            limits[name] = _whole(most, f"limits.{name}", doc, least=1)
        except ConfigError as exc:
            doc.fail(exc)
            limits[str(name)] = 1  # known, so jobs naming it add no noise
    doc.limits = limits

    raw_jobs = raw.get("jobs")
    if not isinstance(raw_jobs, dict) or not raw_jobs:
        raise doc.error("jobs" if "jobs" in raw else "", "needs a `jobs:` mapping with at least one job")
    jobs = {}
    for name, spec in raw_jobs.items():
        try:
            jobs[name] = _job(str(name), spec, base, budgets, timezone, folder, doc)
        except ConfigError as exc:  # validate goes on with the next job
            doc.fail(exc)
    if any(job.get("after") or job.get("requires") for job in jobs.values()):
        from schedsync.config.chains import links

        try:
            links(jobs, doc)
        except ConfigError as exc:
            doc.fail(exc)
    return Config(path=doc.file, dir=folder, state=state, timezone=timezone,
                  budgets=budgets, jobs=Jobs(jobs), defaults=base, environ=dict(doc.environ), log=log,
                  limits=limits)


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
    elif spec.get("run_by") == "tick":
        raise doc.error(f"{path}.run_by", "run_by: tick starts a job's scheduled slots, and this job has no schedule",
                        "add a schedule, or drop run_by")
    _later(job, spec, path, doc)
    if "after" in spec or "requires" in spec:
        from schedsync.config.chains import after, requires

        job["after"] = after(spec.get("after"), f"{path}.after", doc) or None
        job["requires"] = requires(spec.get("requires"), f"{path}.requires", doc)
    rules = job.get("fails_when")
    if rules and rules.get("stderr") and not found.own_stderr:
        raise doc.error(f"{path}.fails_when.stderr", "only a command job has a stderr of its own",
                        "use output_matches for what an http or python job reports")
    if rules and "items_below" in rules and not found.stores_items:
        raise doc.error(f"{path}.fails_when.items_below", "a command job stores no items",
                        "items_below is for http jobs (and python jobs that report items)")
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
    if "limit" in spec:
        job["limits"] = _limit(spec["limit"], f"{path}.limit", doc.limits, doc)
    if "cwd" in spec:
        job["cwd"] = os.path.join(folder, os.path.expanduser(_str(spec["cwd"], f"{path}.cwd", doc)))
    if "params" in spec:
        job["params"] = _params(spec["params"], f"{path}.params", doc)

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
    elif key == "catchup":
        out[key] = _catchup(value, where, doc)
    elif key == "retry_later":
        out[key] = _retry_later(value, where, doc)
    elif key == "fails_when":
        from schedsync.config.chains import fails_when

        out[key] = fails_when(value, where, doc)
    elif key == "run_by":
        if value not in RUN_BY:
            raise doc.error(where, f"must be {' or '.join(RUN_BY)}, not {_q(value)}",
                            "cron: its own crontab line; tick: `schedsync tick` starts its slots")
        out[key] = value
    return out[key]


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        merge = key in MERGED and base.get(key) is not None and value is not None
        out[key] = {**base[key], **value} if merge else value
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


def _limit(value, path: str, limits: dict, doc: _Doc) -> dict:
    """``limit: heavy`` or ``limit: [heavy, api]``: name -> N, from the top-level ``limits:``."""
    names = value if isinstance(value, list) else [value]
    if not names:
        raise doc.error(path, "names no limit", "name one of `limits:`, or drop the key")
    out = {}
    for name in names:
        if not isinstance(name, str) or name not in limits:
            raise doc.error(path, f"no limit named {_q(name)}",
                            f"define it under `limits:` ({', '.join(limits) or 'none yet'}), e.g. limits: {{heavy: 2}}")
        out[name] = limits[name]
    return out


def _overlap(value, path: str, doc: _Doc) -> list:
    if value in ("skip", "allow", "replace", "queue"):
        return [value, 0.0]
    if isinstance(value, str) and value.startswith("wait "):
        return ["wait", _duration(value[5:], path, doc)]
    raise doc.error(path, f"{_q(value)} is not an overlap policy", "use skip, allow, replace, queue or wait 30s")


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
        raise doc.error(path, "must be a list of {url | slack | email, events}")
    out = []
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        if isinstance(item, str):
            item = {"url": item}
        if not isinstance(item, dict):
            raise doc.error(where, "must be {url: ..., events: [...]} (or slack: URL, or email: ADDRESS)")
        _known(item, NOTIFY_KEYS, where, doc)
        kinds = [k for k in NOTIFY_KINDS if k in item]
        if len(kinds) != 1:
            raise doc.error(where, "needs one of url, slack or email" if not kinds else
                            f"has {' and '.join(kinds)}; one target per entry")
        events = item.get("events", ["failure", "recovery"])
        if not isinstance(events, list) or any(e not in EVENTS for e in events):
            raise doc.error(f"{where}.events", f"{_q(events)}: events are {', '.join(EVENTS)}")
        after = _whole(item.get("after_failures", 1), f"{where}.after_failures", doc)
        kind = kinds[0]
        entry: dict = {"events": events, "after_failures": after}
        if kind == "email":
            entry["email"] = _address(item["email"], f"{where}.email", doc)
            if doc.smtp is None:
                raise doc.error(f"{where}.email", "mail needs a top-level `smtp:`",
                                'add smtp: {host: smtp.example.com, from: "schedsync@example.com"}')
            entry["smtp"] = doc.smtp
        else:
            entry[kind] = _url(item[kind], f"{where}.{kind}", doc)
        if kind != "url" and doc.serve_url:
            entry["serve_url"] = doc.serve_url
        if "repeat" in item:
            entry["repeat"] = _duration(item["repeat"], f"{where}.repeat", doc)
            if entry["repeat"] <= 0:
                raise doc.error(f"{where}.repeat", "must be more than 0s", "e.g. repeat: 1h")
        out.append(entry)
    return out


def _address(value, path: str, doc: _Doc) -> str:
    """One mail address, or one ``${VAR}`` (expanded when sent)."""
    from schedsync.config.secrets import VAR

    if isinstance(value, str) and VAR.fullmatch(value):
        return value
    if (not isinstance(value, str) or value.count("@") != 1 or any(c.isspace() or c in ",;<>\"'" for c in value)
            or not all(value.split("@"))):
        raise doc.error(path, f"{_q(value)} is not one mail address", "write it as ops@example.com")
    return value


def _smtp(value, path: str, doc: _Doc) -> dict:
    if not isinstance(value, dict):
        raise doc.error(path, "must be a mapping, e.g. {host: smtp.example.com, from: schedsync@example.com}")
    _known(value, SMTP_KEYS, path, doc)
    out: dict = {"host": _str(value.get("host"), f"{path}.host", doc),
                 "from": _address(value.get("from"), f"{path}.from", doc)}
    if not out["host"]:
        raise doc.error(f"{path}.host", "names the SMTP server", "e.g. host: smtp.example.com")
    for key in ("starttls", "verify"):
        if key in value:
            if not isinstance(value[key], bool):
                raise doc.error(f"{path}.{key}", "must be true or false")
            out[key] = value[key]
    if "port" in value:
        out["port"] = _whole(value["port"], f"{path}.port", doc)
        if not 0 < out["port"] < 65536:
            raise doc.error(f"{path}.port", f"{out['port']} is not a TCP port")
    if "user" in value:
        out["user"] = _str(value["user"], f"{path}.user", doc)
    if "password" in value:
        secret = value["password"]
        from schedsync.config.secrets import VAR

        if not isinstance(secret, str) or not VAR.fullmatch(secret):
            raise doc.error(f"{path}.password", "must be an environment variable, not the password itself",
                            'write password: "${SMTP_PASSWORD}" and export it (jobs.yaml is no place for it)')
        out["password"] = secret
    if "ca_file" in value:
        out["ca_file"] = os.path.join(os.path.dirname(os.path.abspath(doc.file)),
                                      os.path.expanduser(_str(value["ca_file"], f"{path}.ca_file", doc)))
    return out


def _catchup(value, path: str, doc: _Doc) -> dict | None:
    """``catchup: {within: 6h, runs: latest|all}``; ``false`` or null: none (say, to turn off
    the one of ``defaults`` for a job). Completeness is checked per job, after merging."""
    if value is None or value is False:
        return None
    if not isinstance(value, dict):
        raise doc.error(path, "must be a mapping, e.g. {within: 6h, runs: latest}, or false")
    _known(value, CATCHUP_KEYS, path, doc)
    out: dict = {}
    for key, item in _only(value, CATCHUP_KEYS):
        where = f"{path}.{key}"
        if key == "within":
            out[key] = _duration(item, where, doc)
            if out[key] <= 0:
                raise doc.error(where, "must be more than 0s")
        elif item not in ("latest", "all"):
            raise doc.error(where, f"{_q(item)} is not latest or all",
                            "latest runs the newest missed slot, all runs every one, oldest first")
        else:
            out[key] = item
    return out


def _retry_later(value, path: str, doc: _Doc) -> dict | None:
    """``retry_later: {after: 30m, max: 3}``; ``false`` or null: none."""
    if value is None or value is False:
        return None
    if not isinstance(value, dict):
        raise doc.error(path, "must be a mapping, e.g. {after: 30m, max: 3}, or false")
    _known(value, RETRY_LATER_KEYS, path, doc)
    out: dict = {}
    for key, item in _only(value, RETRY_LATER_KEYS):
        where = f"{path}.{key}"
        if key == "after":
            out[key] = _duration(item, where, doc)
            if out[key] <= 0:
                raise doc.error(where, "must be more than 0s")
        else:
            out[key] = _whole(item, where, doc)
    return out


def _params(value, path: str, doc: _Doc) -> dict | None:
    """``params: {final_sweep: {default: "0", pattern: "^[01]$"}}``: what ``schedsync trigger``
    may pass (``--param NAME=VALUE``), as ``SCHEDSYNC_PARAM_<NAME>`` (upper-cased). A name is
    a letter or ``_`` then letters, digits or ``_``; no two may differ only in case. A
    pattern compiles here (and must match the whole default); a default is text of at most
    1 KiB. Null or ``{}``: none."""
    import re

    from schedsync.config.params import MAX_VALUE

    if value is None:
        return None
    if not isinstance(value, dict):
        raise doc.error(path, 'must be a mapping of NAME: {default: "0", pattern: "^[01]$"}')
    out: dict = {}
    upper: dict = {}
    for name, spec in value.items():
        where = f"{path}.{name}"
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", name):
            raise doc.error(where, f"{_q(name)} is not a valid param name",
                            "use letters, digits and _ (not first), at most 64: it becomes SCHEDSYNC_PARAM_NAME")
        if name.upper() in upper:
            raise doc.error(where, f"{name!r} and {upper[name.upper()]!r} are the same variable"
                            f" SCHEDSYNC_PARAM_{name.upper()}", "rename one of them")
        upper[name.upper()] = name
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            raise doc.error(where, 'must be a mapping such as {default: "0", pattern: "^[01]$"}, or null')
        _known(spec, PARAM_KEYS, where, doc)
        default = spec.get("default")
        if isinstance(default, bool):
            default = "true" if default else "false"  # YAML's yes/no: as a shell would read them
        elif isinstance(default, (int, float)):
            default = str(default)
        elif default is not None and not isinstance(default, str):
            raise doc.error(f"{where}.default", "must be text (quote it)")
        if default is not None and len(default.encode("utf-8", "surrogatepass")) > MAX_VALUE:
            raise doc.error(f"{where}.default", f"is over {MAX_VALUE} bytes", "shorten it")
        pattern = spec.get("pattern")
        if pattern is not None:
            if not isinstance(pattern, str):
                raise doc.error(f"{where}.pattern", "must be a regular expression (quote it)")
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise doc.error(f"{where}.pattern", f"is not a valid regular expression: {exc}",
                                "fix it (Python's re syntax; it must match the whole value)") from None
            if default is not None and compiled.fullmatch(default) is None:
                raise doc.error(f"{where}.default", f"{_q(default)} does not match its pattern {_q(pattern)}",
                                "change the default or the pattern")
        out[name] = {"default": default, "pattern": pattern}
    return out or None


def _later(job: dict, spec: dict, path: str, doc: _Doc) -> None:
    """``catchup`` and ``retry_later`` once merged with ``defaults``: complete, with their
    built-in values filled in. Catch-up needs a schedule; one set in ``defaults`` does not
    apply to a job without one (nor does it make that job an error)."""
    from schedsync.core.catchup import LATEST, RETRY_MAX

    catchup = job.get("catchup")
    if catchup is not None:
        where = f"{path}.catchup" if "catchup" in spec else "defaults.catchup"
        if "within" not in catchup:
            raise doc.error(where, "needs within: how old a missed slot may be and still run",
                            "write e.g. catchup: {within: 6h, runs: latest}")
        if job["schedule"] is None:
            if "catchup" in spec:
                raise doc.error(where, "a job without a schedule has no slots to catch up",
                                "give it a schedule, or drop catchup")
            catchup = None
        else:
            catchup = {"within": catchup["within"], "runs": catchup.get("runs", LATEST)}
        job["catchup"] = catchup
    later = job.get("retry_later")
    if later is not None:
        if "after" not in later:
            where = f"{path}.retry_later" if "retry_later" in spec else "defaults.retry_later"
            raise doc.error(where, "needs after: how long after a failed run its retry starts",
                            "write e.g. retry_later: {after: 30m, max: 3}")
        job["retry_later"] = {"after": later["after"], "max": later.get("max", RETRY_MAX)}


def _schedule(value, path: str, timezone, doc: _Doc) -> str:
    if not isinstance(value, str):
        raise doc.error(path, f"{_q(value)} is not a cron expression", 'quote it: "0 * * * *"')
    from schedsync.core.schedule import Schedule

    written, used = value, list[tuple]()
    if "$" in value:
        value, used = _expand_schedule(value, path, doc)
    try:
        Schedule(value, _zone(timezone) if timezone else None)
    except ValueError as exc:
        shown = f'"{value}"'
        if used:  # the value came from the environment: say from where
            names = ", ".join(f"{n}={v!r}" if v is not None else f"{n} unset (its default)" for n, v in used)
            shown = f'"{written}" expanded to "{value}" ({names})'
        raise doc.error(path, f"{shown} is not a cron expression: {exc}",
                        'write 5 fields (minute hour day month weekday) or @hourly/@daily/…') from exc
    return value


def _expand_schedule(value: str, path: str, doc: _Doc) -> tuple[str, list]:
    """``value`` with ``${VAR}`` and ``${VAR:-default}`` replaced from the environment (read
    now: jobs.yaml is read in the environment of the command reading it), and the
    [(name, value or None when the default stood in)] it used. Recorded on ``doc.environ``
    so the cache is only reused while those variables keep their values."""
    from schedsync.config.secrets import VAR

    used: list = []

    def one(match) -> str:
        name, default = match.group(1), match.group(2)
        got = os.environ.get(name)
        doc.environ[name] = got
        if got is None or (got == "" and default is not None):
            if default is None:
                raise doc.error(path, f"environment variable {name} is not set",
                                f"export {name}, or write ${{{name}:-0 * * * *}} with a default")
            used.append((name, None))
            return default
        used.append((name, got))
        return got

    if "$" in VAR.sub("", value):  # $VAR, ${VAR-x}, ${VAR:=x}: shell forms we do not expand
        raise doc.error(path, f'"{value}": only ${{VAR}} and ${{VAR:-default}} are expanded in a schedule',
                        "write ${NAME} or ${NAME:-0 * * * *}")
    return VAR.sub(one, value), used


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
    doc.limits = dict(config.limits)
    if own and own.limits and "limit" not in spec:
        spec["limit"] = list(own.limits)
    if own and own.description:
        spec["description"] = own.description
    job = _job(name, spec, base, config.budgets, config.timezone, cwd, doc)
    job["cwd"] = cwd  # like flock or runitor: the command runs where it was invoked
    if job["overlap"][0] == "queue":  # its waiting run would be started from a jobs.yaml it has not
        raise doc.error(f"jobs.{name}.overlap", "`queue` is not for exec (its waiting run is started from jobs.yaml)",
                        "pass --overlap skip, allow, replace or 'wait 30s'")
    job["catchup"] = job["retry_later"] = None  # the tick runs registry jobs only
    job["after"] = job["requires"] = job["downstream"] = None  # chains link registry jobs only
    if own:
        job["breaker"]["name"] = own.breaker["name"]
    from schedsync.core.records import replace

    return replace(config, jobs=config.jobs.plus({name: job}))

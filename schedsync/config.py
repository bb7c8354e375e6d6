"""Loading and validating ``jobs.yaml``.

``load(path)`` returns a ``Config`` of plain, validated values (durations in
seconds, defaults merged into every job). Every error names the file, the line
and the key path, and carries exit code 2.

The validated form is cached (marshal, keyed on the file's path, size, mtime
and inode) because ``schedsync run`` pays for PyYAML and cronsim on every cron
tick otherwise. ``${VAR}`` is expanded per job at use time, not cached, since
cron's environment is not the shell's.
"""

from __future__ import annotations

import marshal
import os
import re
import stat
from schedsync.core.breaker import DEFAULTS as BREAKER_DEFAULTS
from schedsync.core.records import dataclass, field

from schedsync.core.durations import parse_duration
from schedsync.core.errors import ConfigError
# Secrets live with the rest of redaction; imported here for ``from schedsync.config import Secrets``.
from schedsync.core.redact import SECRET_NAME, Secrets, environment_secrets, in_query_or_userinfo

CACHE_VERSION = 5  # 5: the cache holds `defaults` (exec builds jobs from them)
NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")  # used with fullmatch: `$` would let "ab\n" in
# A job or breaker name becomes a lock file `NAME.lock`, a crontab line and a status
# column; 100 keeps every derived file name far inside NAME_MAX (255) and rows readable.
NAME_MAX = 100
# PostgreSQL cuts identifiers at 63 bytes (NAMEDATALEN - 1), so a longer table name
# would silently become another table there.
TABLE_MAX = 63

# Bounds on jobs.yaml as input (SPEC: Bounds). A registry of 10,000 ordinary jobs is
# about 1.5 MB; the deepest key a job has is 5 levels (jobs.J.http.since.param), and
# 64 leaves room for a nested http.body. Aliases may expand to at most ALIAS_NODES
# nodes beyond the document's own node count: every job merging a `defaults` anchor
# stays far inside it, while a "billion laughs" file stops after a few MB of work.
# MAX_EVENTS bounds the YAML values (parser events) before any tree is built: 4 MiB
# of `1,` is 2 million values, which PyYAML's tree would hold in about 1 GB. 250,000
# fit about 14,000 ordinary jobs (10,000 are 170,000 events) and cost at most about
# 160 MB and 2 s to build.
MAX_BYTES = 4 * 1024 * 1024
MAX_EVENTS = 250_000
MAX_DEPTH = 64
ALIAS_NODES = 100_000
SHOWN = 60  # characters of a value quoted in an error line
MERGE_TAG = "tag:yaml.org,2002:merge"
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

TOP_KEYS = ("state", "timezone", "defaults", "budgets", "jobs")
# Settings that may sit in ``defaults`` and be overridden per job.
SETTINGS = ("timeout", "jitter", "overlap", "retries", "breaker", "grace", "retention",
            "max_wait", "cost", "env", "notify", "ping")
JOB_KEYS = SETTINGS + ("schedule", "description", "budget", "cwd", "command", "http",
                       "into", "python")
MERGED = ("retries", "breaker", "retention", "env")  # mappings merged key by key
RETRY_KEYS = ("attempts", "initial", "max", "multiplier", "jitter", "on_exit_codes")
BREAKER_KEYS = ("failures", "reset_after", "half_open_runs", "name")
RETENTION_KEYS = ("success", "failed")
HTTP_KEYS = ("url", "method", "headers", "params", "body", "items", "next", "max_pages",
             "timeout", "since", "max_bytes", "max_values", "allow_hosts")
INTO_KEYS = ("table", "pk", "db")
NOTIFY_KEYS = ("url", "events", "after_failures")
EVENTS = ("failure", "recovery", "breaker_open", "late")

BUILTIN = {
    "timeout": 300.0,
    "jitter": 0.0,
    "overlap": ["skip", 0.0],
    "retries": {"attempts": 3, "initial": 1.0, "max": 60.0, "multiplier": 2.0,
                "jitter": 0.1, "on_exit_codes": []},
    "breaker": dict(BREAKER_DEFAULTS),
    "grace": 300.0,
    "retention": {"success": 14 * 86400.0, "failed": None},
    "max_wait": 0.0,
    "cost": 1,
    "env": {},
    "notify": [],
    "ping": None,
}


@dataclass
class Job:
    """One job with defaults merged in; strings may still hold ``${VAR}``."""

    name: str
    kind: str  # command | http | python
    schedule: str | None
    description: str
    timeout: float
    jitter: float
    overlap: list  # [mode, wait seconds]
    retries: dict
    breaker: dict  # always has "name"
    grace: float
    retention: dict
    budgets: list[str]
    cost: int
    max_wait: float
    env: dict
    cwd: str
    notify: list
    ping: str | None
    command: list[str] | str | None = None
    http: dict | None = None
    into: dict | None = None
    python: str | None = None
    lines: dict = field(default_factory=dict)  # key path -> line, for ${VAR} errors
    # Where http and python jobs store items: into.db, else the default beside the
    # state in use (paths.default_data); set by Config.job, not cached.
    data_target: str | None = None


@dataclass
class Config:
    path: str  # as the user named it, for messages
    dir: str  # absolute folder of jobs.yaml
    state: str | None  # absolute, or None for the default
    timezone: str | None
    budgets: dict  # name -> [capacity, per_seconds]
    jobs: dict  # name -> Job as a dict (see ``job``)
    defaults: dict | None = None  # BUILTIN merged with `defaults:`, for jobs built later (exec)
    state_in_use: str | None = None  # set by resolve_state: the state this process opens

    def job(self, name: str) -> Job:
        if name not in self.jobs:
            raise unknown_job(name, self)
        job = Job(**self.jobs[name])
        from schedsync import paths

        job.data_target = (job.into or {}).get("db") or paths.default_data(
            self.state_in_use or resolve_state(None, self, remember=False))
        return job


def unknown_job(name: str, config: Config) -> ConfigError:
    import difflib

    close = difflib.get_close_matches(name, list(config.jobs), n=1)
    if config.path == NO_REGISTRY:  # the read commands without a jobs.yaml: only `exec` jobs
        return ConfigError(f"no jobs.yaml here, and {_q(name)} is not a job `schedsync exec` ran with "
                           f"this state", f"did you mean {close[0]!r}?" if close else
                           "pass --config PATH, or cd to the folder of jobs.yaml")
    fix = f"did you mean {close[0]!r}?" if close else "see `schedsync list`"
    return ConfigError(f"{config.path}: no job named {_q(name)}", fix)


# --- loading -------------------------------------------------------------------------

def load(path: str | os.PathLike, every: bool = False) -> Config:
    """The validated config at ``path``, from the cache when the file is unchanged.

    With ``every`` (``schedsync validate``), an invalid file raises ``ConfigErrors``
    holding every error found instead of the first one.
    """
    shown = str(path)
    real = os.path.abspath(path)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise ConfigError(f"{shown}: no such file",
                          "pass --config PATH, set SCHEDSYNC_CONFIG, or cd to the folder of jobs.yaml")
    except OSError as exc:
        raise ConfigError(f"{shown}: cannot read ({exc.strerror})", "check the file's permissions")
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block every cron tick; a device never ends
        raise ConfigError(f"{shown}: not a regular file ({_kind(st.st_mode)})",
                          "point --config or $SCHEDSYNC_CONFIG at the jobs.yaml file itself")
    if st.st_size > MAX_BYTES:
        raise _too_big(shown)
    key = (CACHE_VERSION, real, st.st_size, st.st_mtime_ns, st.st_ino)
    cache = _cache_path(real)
    if cache:
        try:
            with open(cache, "rb") as f:
                cached_key, data = marshal.load(f)
            if tuple(cached_key) == key:
                return Config(path=shown, **data)
        except (OSError, ValueError, EOFError, TypeError):
            pass
    try:
        # O_NONBLOCK: a file swapped for a FIFO since stat reads as empty instead of blocking.
        with open(os.open(real, os.O_RDONLY | os.O_NONBLOCK), encoding="utf-8") as f:
            text = f.read(MAX_BYTES + 1)  # a file that grew since stat
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{shown}: cannot read ({_short(str(exc), 200)})", "check the file")
    if len(text) > MAX_BYTES:
        raise _too_big(shown)
    config = parse(text, shown, os.path.dirname(real), every=every)
    if cache:
        _write_cache(cache, key, config)
    return config


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a file")


def _too_big(shown: str) -> ConfigError:
    return ConfigError(f"{shown}: larger than {MAX_BYTES // (1024 * 1024)} MiB",
                       "a registry this large is not a jobs.yaml; split it or check the file")


def _cache_path(real: str) -> str | None:
    if os.environ.get("SCHEDSYNC_NO_CACHE"):
        return None
    from schedsync import paths

    base = paths.cache_dir()
    # The cached key holds the full path, so a shortened name that collides only misses.
    return os.path.join(base, real.strip("/").replace("/", "%")[-180:] + ".config")


def _write_cache(cache: str, key: tuple, config: Config) -> None:
    data = {k: getattr(config, k) for k in ("dir", "state", "timezone", "budgets", "jobs", "defaults")}
    try:
        os.makedirs(os.path.dirname(cache), mode=0o700, exist_ok=True)
        tmp = f"{cache}.{os.getpid()}"
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            marshal.dump((key, data), f)
        os.replace(tmp, cache)
    except (OSError, ValueError):
        pass  # a cache we cannot write only costs speed


# --- parsing with line numbers ---------------------------------------------------------

class ConfigErrors(ConfigError):
    """Every error ``load(..., every=True)`` found; ``str`` is the first one."""

    def __init__(self, errors: list[ConfigError], config: Config | None = None):
        super().__init__(errors[0].what, errors[0].fix)
        self.errors = errors
        self.config = config  # the jobs that did validate, for validate's ${VAR} check


class _Doc:
    """Parsed YAML values plus the line of every key path, for messages.

    With ``every``, ``fail`` keeps an error and lets validation go on with the next
    key or job; otherwise it raises, so other commands stop at the first error.
    """

    def __init__(self, file: str, every: bool = False):
        self.file = file
        self.lines: dict[str, int] = {}
        self.job_lines: dict[str, dict] = {}  # job name -> its key paths' lines
        self.every = every
        self.errors: list[ConfigError] = []
        self.seen: set[int] = set()  # ids of the nodes visited (the tree is alive)
        self.aliased = 0  # nodes visited again, through an alias or a merge
        self.merged: dict[int, list] = {}  # mapping node id -> its pairs, merges applied

    def error(self, path: str, what: str, fix: str | None = None) -> ConfigError:
        near = path
        while near and near not in self.lines:  # a missing key: point at its parent
            near = near.rsplit(".", 1)[0] if "." in near else ""
        line = self.lines.get(near)
        where = f"{self.file}:{line}" if line else self.file
        path, what = _short(path, 160), _short(what, 300)
        return ConfigError(f"{where} {path}: {what}" if path else f"{where}: {what}",
                           _short(fix, 300) if fix else fix)

    def fail(self, error: ConfigError) -> None:
        if not self.every:
            raise error
        self.errors.append(error)


def _short(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, control characters shown escaped."""
    if len(text) > limit:
        text = text[:limit - 1] + "…"
    if any(c < " " or c == "\x7f" for c in text):
        text = "".join(c if c >= " " and c != "\x7f" else repr(c)[1:-1] for c in text)
    return text


def _q(value) -> str:
    """``repr(value)``, bounded: error lines never quote a whole 6 MB value."""
    if isinstance(value, str) and len(value) > SHOWN:
        return repr(value[:SHOWN]) + "…"
    text = repr(value) if not isinstance(value, (dict, list)) or len(value) <= 20 else (
        f"<a {'mapping' if isinstance(value, dict) else 'list'} of {len(value)} items>")
    return _short(text, SHOWN + 20)


def parse(text: str, file: str, folder: str, every: bool = False) -> Config:
    import yaml

    doc = _Doc(file, every)
    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        events = 0
        for _ in yaml.parse(text, Loader=loader):  # streamed: memory stays flat
            events += 1
            if events > MAX_EVENTS:
                raise ConfigError(f"{file}: more than {MAX_EVENTS:,} YAML values",
                                  "a registry this large is not a jobs.yaml; split it or check the file")
        node = yaml.compose(text, Loader=loader)  # libyaml itself stops at 1,000 levels
        if node is None:
            raise ConfigError(f"{file}: the file is empty", "add a `jobs:` mapping (see the README)")
        raw = _Walk(doc, yaml).value(node, "", 0)  # may meet an unknown tag such as !!python/name
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, text, file)
    config = _validate(raw, doc, folder)
    if doc.errors:
        raise ConfigErrors(doc.errors, config)
    return config


def _yaml_error(exc, text: str, file: str) -> ConfigError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark else None
    where = f"{file}:{line}" if line else file
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    problem = _short(str(problem), 200)
    source = ""
    if line:
        at = 0
        for _ in range(line - 1):  # the line alone, without splitting a 4 MB file
            at = text.find("\n", at) + 1
            if not at:
                break
        if at or line == 1:
            stop = text.find("\n", at)
            source = text[at:stop if stop >= 0 else len(text)]
    if "*" in source and re.search(r":\s*\*", source):
        key = _short(source.split(":", 1)[0].strip(), 60)
        value = _short(source.split(":", 1)[1].strip(), 60)
        return ConfigError(f"{where}: {key}: unquoted cron expression {value} (YAML reads * as an alias)",
                           f'quote it: {key}: "{value}"')
    return ConfigError(f"{where}: not valid YAML ({problem})", "fix the syntax at that line")


class _Walk:
    """YAML nodes to plain values, recording lines, applying ``<<`` merges, bounded.

    Aliases are shared nodes in the composed tree; building values from them is
    what explodes in an alias bomb, so every node reached again counts against
    ``ALIAS_NODES`` (beyond the document's own nodes), and nesting against
    ``MAX_DEPTH``. Each mapping's merged pairs are computed once.
    """

    def __init__(self, doc: _Doc, yaml):
        self.doc, self.yaml = doc, yaml
        self.constructor = yaml.constructor.SafeConstructor()

    def value(self, node, path: str, depth: int, sink=None, cut: int = 0):
        doc, yaml = self.doc, self.yaml
        if depth > MAX_DEPTH:
            raise ConfigError(f"{doc.file}:{node.start_mark.line + 1}: nested more than "
                              f"{MAX_DEPTH} levels deep", "flatten the structure")
        if id(node) in doc.seen:
            doc.aliased += 1
            if doc.aliased > ALIAS_NODES + len(doc.seen):
                raise ConfigError(f"{doc.file}:{node.start_mark.line + 1}: aliases expand to more "
                                  f"than {ALIAS_NODES:,} extra nodes", "use fewer nested aliases")
        else:
            doc.seen.add(id(node))
        line = node.start_mark.line + 1
        doc.lines.setdefault(path, line)
        if sink is not None and len(path) > cut:
            sink.setdefault(path[cut:], line)
        if isinstance(node, yaml.MappingNode):
            out = {}
            for key_node, value_node in self.pairs(node, path, depth):
                key = str(key_node.value)
                sub = f"{path}.{key}" if path else key
                key_line = key_node.start_mark.line + 1
                doc.lines[sub] = key_line
                if key in out:
                    raise doc.error(sub, "duplicate key", "keep one of them")
                child_sink, child_cut = sink, cut
                if path == "jobs" and sink is None:  # each job's own lines, gathered once
                    child_sink, child_cut = doc.job_lines.setdefault(key, {}), len(sub) + 1
                if child_sink is not None and len(sub) > child_cut:
                    child_sink[sub[child_cut:]] = key_line
                out[key] = self.value(value_node, sub, depth + 1, child_sink, child_cut)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.value(item, f"{path}[{i}]", depth + 1, sink, cut)
                    for i, item in enumerate(node.value)]
        return self.constructor.construct_object(node)

    def pairs(self, node, path: str, depth: int) -> list:
        """``node``'s (key, value) nodes, with ``<<:`` merges: own keys win, then
        the merged mappings in order (YAML's merge key)."""
        doc, yaml = self.doc, self.yaml
        done = doc.merged.get(id(node))
        if done is not None:
            return done
        if depth > MAX_DEPTH:
            raise ConfigError(f"{doc.file}:{node.start_mark.line + 1}: merges nested more than "
                              f"{MAX_DEPTH} levels deep", "flatten the structure")
        own, merged = [], []
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise doc.error(path, "keys must be plain names")
            if key_node.tag != MERGE_TAG:
                own.append((key_node, value_node))
                continue
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for source in sources:
                if not isinstance(source, yaml.MappingNode):
                    raise ConfigError(f"{doc.file}:{key_node.start_mark.line + 1}: << takes a "
                                      "mapping or a list of mappings", "write <<: *anchor")
                merged.extend(self.pairs(source, path, depth + 1))
        if merged:
            keys = {str(k.value) for k, _ in own}
            for key_node, value_node in merged:
                key = str(key_node.value)
                if key not in keys:
                    keys.add(key)
                    own.append((key_node, value_node))
                    doc.aliased += 1
            if doc.aliased > ALIAS_NODES + len(doc.seen):
                raise ConfigError(f"{doc.file}:{node.start_mark.line + 1}: merges expand to more "
                                  f"than {ALIAS_NODES:,} extra nodes", "use fewer nested merges")
        doc.merged[id(node)] = own
        return own


# --- validation -----------------------------------------------------------------------

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
                  budgets=budgets, jobs=jobs, defaults=base)


def _job(name, spec, base, budgets, timezone, folder, doc) -> dict:
    path = f"jobs.{name}"
    _check_name(name, path, doc)
    if not isinstance(spec, dict):
        raise doc.error(path, "must be a mapping with one of command, http or python")
    _known(spec, JOB_KEYS, path, doc)
    kinds = [k for k in ("command", "http", "python") if k in spec]
    if len(kinds) != 1:
        what = "has none of" if not kinds else f"has {' and '.join(kinds)}; pick one of"
        raise doc.error(path, f"{what} command, http, python")
    kind = kinds[0]
    merged = _merge(base, _settings(spec, path, doc))
    job = {
        "name": name, "kind": kind, "schedule": None,
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
            if kind == "http" and budgets[b][0] < 1:
                raise doc.error(f"{path}.budget", f"budget {_q(b)} holds less than the 1 token a request costs",
                                "raise its capacity to 1 or more")
            if kind != "http" and job["cost"] > budgets[b][0]:
                raise doc.error(f"{path}.cost" if "cost" in spec else f"{path}.budget",
                                f"cost {job['cost']} is more than budget {_q(b)} can ever hold "
                                f"({budgets[b][0]:g})", "lower the cost or raise the capacity")
    if "cwd" in spec:
        job["cwd"] = os.path.join(folder, os.path.expanduser(_str(spec["cwd"], f"{path}.cwd", doc)))

    if kind == "command":
        command = spec["command"]
        if isinstance(command, list):
            if not command or not all(isinstance(a, (str, int, float)) for a in command):
                raise doc.error(f"{path}.command", "must be a non-empty list of strings, or one shell string")
            job["command"] = [str(a) for a in command]
        elif isinstance(command, str) and command.strip():
            job["command"] = command
        else:
            raise doc.error(f"{path}.command", "must be a list of arguments or a shell string")
        if "into" in spec:
            raise doc.error(f"{path}.into", "only http jobs store into a table")
    elif kind == "python":
        target = spec["python"]
        if not isinstance(target, str) or not re.match(r"^[\w.]+:[\w]+$", target):
            raise doc.error(f"{path}.python", f"{_q(target)} is not module:function",
                            'write e.g. python: "myapp.sync:points"')
        job["python"] = target
        if "into" in spec:
            raise doc.error(f"{path}.into", "only http jobs store into a table")
    else:
        job["http"] = _http(spec["http"], f"{path}.http", doc)
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
        pk = into.get("pk")
        if not (isinstance(pk, str) and pk) and not (
                isinstance(pk, list) and pk and all(isinstance(p, str) for p in pk)):
            raise doc.error(f"{path}.into.pk", "is required: the item key (or list of keys) to upsert on")
        db = into.get("db")
        if db is not None and (not isinstance(db, str) or not db):
            raise doc.error(f"{path}.into.db", f"{_q(db)} is not a file path")
        if db and not _is_url(db):
            db = os.path.join(folder, os.path.expanduser(db))
        job["into"] = {"table": into["table"], "pk": pk, "db": db or None}
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
    out = {}
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


def _known(mapping: dict, allowed, path: str, doc: _Doc) -> None:
    for key in mapping:
        if key not in allowed:
            import difflib

            where = f"{path}.{key}" if path else str(key)
            close = difflib.get_close_matches(str(key), allowed, n=1)
            fix = f"did you mean {close[0]!r}?" if close else f"allowed here: {', '.join(allowed)}"
            doc.fail(doc.error(where, "unknown key", fix))  # unknown keys are otherwise ignored


def _only(mapping: dict, allowed) -> list:
    """The known keys' items: an unknown key has had its one error from ``_known``."""
    return [(key, item) for key, item in mapping.items() if key in allowed]


def _check_name(name, path: str, doc: _Doc) -> None:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise doc.error(path, f"{_q(name)} is not a valid name",
                        "use lowercase letters, digits and _ . - (starting with a letter or digit)")
    if len(name) > NAME_MAX:
        raise doc.error(path, f"{_q(name)} is {len(name)} characters long",
                        f"use at most {NAME_MAX}: the name becomes a lock file name")


def _str(value, path: str, doc: _Doc) -> str:
    if not isinstance(value, str):
        raise doc.error(path, f"{_q(value)} must be a string")
    return value


def _whole(value, path: str, doc: _Doc, least: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise doc.error(path, f"{_q(value)} must be a whole number of {least} or more")
    return value


def _duration(value, path: str, doc: _Doc) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise doc.error(path, str(exc))


def _rate(value, path: str, doc: _Doc) -> list:
    if isinstance(value, str) and "/" in value:
        count, _, per = value.partition("/")
        per = per.strip()
        if per and per[0].isalpha():
            per = "1" + per  # "100/s" reads as 100 per 1s
        try:
            capacity, seconds = float(count), parse_duration(per)
        except ValueError:
            raise doc.error(path, f"{_q(value)} is not a rate", "write N/duration, e.g. 15/15m")
    elif isinstance(value, dict):
        _known(value, ("capacity", "per"), path, doc)
        capacity = value.get("capacity")
        if isinstance(capacity, bool) or not isinstance(capacity, (int, float)):
            raise doc.error(f"{path}.capacity", "must be a number of tokens")
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
    out = {}
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


def _url(value, path: str, doc: _Doc) -> str:
    if not isinstance(value, str) or not re.match(r"^(https?://|\$\{)", value):
        raise doc.error(path, f"{_q(value)} is not an http(s) URL")
    return value


def _http(value, path: str, doc: _Doc) -> dict:
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


def _hosts(value, path: str, doc: _Doc) -> list[str]:
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


def _schedule(value, path: str, timezone, doc: _Doc) -> str:
    if not isinstance(value, str):
        raise doc.error(path, f"{_q(value)} is not a cron expression", 'quote it: "0 * * * *"')
    from schedsync.core.schedule import Schedule

    try:
        Schedule(value, _zone(timezone) if timezone else None)
    except ValueError as exc:
        raise doc.error(path, f'"{value}" is not a cron expression: {exc}',
                        'write 5 fields (minute hour day month weekday) or @hourly/@daily/…')
    return value


def _check_timezone(name, doc: _Doc) -> None:
    try:
        _zone(name)
    except Exception:
        raise doc.error("timezone", f"{_q(name)} is not a known time zone", "use an IANA name such as Europe/Berlin")


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
    base = {k: own[k] for k in BUILTIN} if own else config.defaults or _merge(BUILTIN, {})
    spec = {"command": list(command), **settings}
    if own and own["budgets"] and "budget" not in spec:
        spec["budget"] = own["budgets"]
    if own and own["description"]:
        spec["description"] = own["description"]
    job = _job(name, spec, base, config.budgets, config.timezone, cwd, doc)
    job["cwd"] = cwd  # like flock or runitor: the command runs where it was invoked
    if own:
        job["breaker"]["name"] = own["breaker"]["name"]
    from schedsync.core.records import replace

    return replace(config, jobs={**config.jobs, name: job})


# --- ${VAR} and secrets -----------------------------------------------------------------

# Where every ${VAR} is a secret regardless of its name (SPEC: Secrets).
_SECRET_PLACES = ("http.headers", "http.params", "http.body")


def expand(job: Job, config_path: str, environ=os.environ) -> tuple[Job, Secrets]:
    """``job`` with every ``${VAR}`` replaced from ``environ``, and the secrets it used.

    Every variable of ``environ`` whose name says it is a secret is one too, named in
    jobs.yaml or not: a python job may read it from ``os.environ`` (SPEC: Secrets).
    """
    secrets = Secrets()
    environment_secrets(environ, secrets)

    def sub(value, path):
        if isinstance(value, dict):
            return {k: sub(v, f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [sub(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if not isinstance(value, str) or "${" not in value:
            return value

        def one(match):
            name, default = match.group(1), match.group(2)
            got = environ.get(name)
            if got is None and path == "job.command":
                got = job.env.get(name)  # the job's own env: sets it for sh to expand
            if got is None or (got == "" and default is not None):
                if default is None:
                    line = job.lines.get(path.split(".", 1)[1] if "." in path else path)
                    where = f"{config_path}:{line}" if line else config_path
                    raise ConfigError(
                        f"{where} jobs.{job.name}.{path.split('.', 1)[1]}: environment variable "
                        f"{name} is not set",
                        f"export {name} (cron has its own environment: set it in the crontab) "
                        f"or write ${{{name}:-default}}")
                got = default
            secret_place = (any(path.startswith(f"job.{p}") for p in _SECRET_PLACES)
                            or (path == "job.http.url" and in_query_or_userinfo(value, match.start())))
            if SECRET_NAME.search(name) or secret_place:
                secrets.add(got)
            return got

        return VAR.sub(one, value)

    fields = {}
    for key in ("command", "http", "env", "cwd", "notify", "ping"):
        fields[key] = sub(getattr(job, key), f"job.{key}")
    if isinstance(job.command, str):
        # /bin/sh expands ${VAR} and ${VAR:-default} itself, from the environment the
        # command inherits; pasting values into the text would re-parse them as shell
        # code (a ; in a password runs a command). sub() above still checked and
        # collected them.
        fields["command"] = job.command
    for key, value in fields["env"].items():
        if SECRET_NAME.search(key):
            secrets.add(value)
    from schedsync.core.records import replace

    return replace(job, **fields), secrets


def _is_url(location: str) -> bool:
    from schedsync.paths import is_url

    return is_url(location)


def default_state_path() -> str:
    from schedsync.paths import default_state

    return default_state()


def resolve_state(cli_state: str | None, config: Config | None, remember: bool = True) -> str:
    """--state, else $SCHEDSYNC_STATE, else the registry's ``state:``, else the default.

    A ``postgresql://`` URL is returned untouched. The choice is remembered on
    ``config``, so each job's ``data_target`` (data.db beside a state file, or the
    same database for a URL) follows the state this process opened.
    """
    chosen = (cli_state or os.environ.get("SCHEDSYNC_STATE")
              or (config.state if config else None) or default_state_path())
    if config is not None and remember:
        config.state_in_use = chosen
    return chosen


def resolve_config(cli_config: str | None) -> str:
    return cli_config or os.environ.get("SCHEDSYNC_CONFIG") or "jobs.yaml"


NO_REGISTRY = "(no jobs.yaml)"


def no_registry(cwd: str) -> Config:
    """An empty registry: what ``exec`` runs with, and the read commands look jobs up in,
    when there is no jobs.yaml (the state's ``exec`` jobs are added by ``app.adhoc``)."""
    return Config(path=NO_REGISTRY, dir=cwd, state=None, timezone=None, budgets={}, jobs={})


def optional_registry(cli_config: str | None) -> Config | None:
    """The registry, or None when none was named (no -c, no $SCHEDSYNC_CONFIG) and there is
    no ./jobs.yaml. A registry that was named must exist."""
    path = resolve_config(cli_config)
    named = cli_config or os.environ.get("SCHEDSYNC_CONFIG")
    return load(path) if named or os.path.lexists(path) else None

"""The package's shape, read from its source with ``ast``: no import cycle (imports
inside functions count too), no import from a higher layer (``LAYERS``), no SQL for the state database and no store
transaction outside ``schedsync/store/``, and a ``Store`` port that exposes no
backend detail."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "schedsync"


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Package modules ``name`` imports anywhere in its body (a package import counts as
    its ``__init__``; ``from pkg import mod`` as ``pkg.mod``)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_sees_function_level_imports():
    edges = graph()
    assert "schedsync.notify" in edges["schedsync.app.status"]  # imported inside snapshot()
    assert "schedsync.store.sqlite" in edges["schedsync.store"]  # inside open_store


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_there_is_no_import_cycle_in_the_package():
    assert cycles(graph()) == []


def test_the_runner_does_not_import_alerts_and_alerts_import_nothing_of_the_application():
    edges = graph()
    notify = [name for name in edges if name.startswith("schedsync.notify")]
    assert len(notify) > 3 and not set(notify) & edges["schedsync.app.runner"]
    assert not {m for n in notify for m in edges[n] if m.startswith(("schedsync.app", "schedsync.cli"))}


# The layers, lowest first, read off the code: a module imports only from its own unit or
# from a lower layer. Units in one layer do not import each other. ``notify`` (alerts) is
# called by ``app``; ``ops`` (serve, metrics, crontab, drift) sits on top of ``app``.
LAYERS = [
    ("schedsync", "schedsync.paths", "schedsync.core"),  # the root holds the version only
    ("schedsync.store",),
    ("schedsync.config",),
    ("schedsync.jobs", "schedsync.notify"),
    ("schedsync.app",),
    ("schedsync.ops",),
    ("schedsync.cli",),
    ("schedsync.__main__",),
]


# The job kinds' registry is config's: the validator asks each kind about its section, and
# a kind uses config's checks (it names its runner in ``jobs`` as data, for ``app`` to import).
SAME_UNIT = {"schedsync.kinds": "schedsync.config"}


def unit(name: str) -> tuple[int, str] | None:
    """(layer, unit) of a module: the longest declared unit that is it or holds it."""
    for alias, owner in SAME_UNIT.items():
        if name == alias or name.startswith(alias + "."):
            name = owner + name[len(alias):]
    found = [(len(u), rank, u) for rank, units in enumerate(LAYERS) for u in units
             if name == u or (u != "schedsync" and name.startswith(u + "."))]
    return max(found)[1:] if found else None


def upward(edges: dict[str, set[str]]) -> list[str]:
    out = []
    for name, targets in sorted(edges.items()):
        (rank, own), = [unit(name)]
        for target in sorted(targets):
            their_rank, theirs = unit(target)
            if theirs != own and their_rank >= rank:
                out.append(f"{name} imports {target}")
    return out


def test_every_module_has_a_layer():
    assert [name for name in modules() if unit(name) is None] == []


def test_no_module_imports_from_its_own_layer_or_above():
    assert upward(graph()) == []


def test_nothing_below_ops_imports_from_ops():
    ops = unit("schedsync.ops")[0]
    assert unit("schedsync.app")[0] < ops and unit("schedsync.notify")[0] < unit("schedsync.app")[0]
    offenders = [f"{name} imports {target}" for name, targets in graph().items() if unit(name)[0] < ops
                 for target in targets if unit(target)[1] == "schedsync.ops"]
    assert offenders == []


def test_the_layer_check_finds_an_import_from_above():
    assert upward({"schedsync.app.run": {"schedsync.ops.alerts", "schedsync.core.models"},
                   "schedsync.jobs.http": {"schedsync.notify.base"},
                   "schedsync.notify.base": {"schedsync.notify", "schedsync.store.liveness"}}) == [
        "schedsync.app.run imports schedsync.ops.alerts",
        "schedsync.jobs.http imports schedsync.notify.base"]


STATE_SQL = re.compile(
    r"\b(INSERT\s+(OR\s+\w+\s+)?INTO\s+(runs|jobs|buckets|breakers|breaker_events|notifications|alert_marks)"
    r"|UPDATE\s+(runs|jobs|buckets|breakers)\b|DELETE\s+FROM\s+(runs|jobs|buckets|breakers|notifications)"
    r"|FROM\s+(runs|buckets|breakers|breaker_events|alert_marks)\b)")
BEGIN = re.compile(r"\bBEGIN(\s+(IMMEDIATE|EXCLUSIVE|DEFERRED))?\b")
# The data sink (jobs write synced items to data.db in their own transactions) is not the state.
DATA_SINK = ("schedsync.jobs.",)


def test_no_module_outside_the_store_holds_state_sql_or_a_store_transaction():
    offenders = []
    for name, path in modules().items():
        if name.startswith("schedsync.store"):
            continue
        text = path.read_text()
        for match in STATE_SQL.finditer(text):
            offenders.append(f"{name}: {match.group(0)!r}")
        if not name.startswith(DATA_SINK):
            offenders += [f"{name}: {m.group(0)!r}" for m in BEGIN.finditer(text)]
        if re.search(r"\.transaction\(\)|\bload_(bucket|breaker)\(|\bsave_(bucket|breaker)\(|\.job_lock\(", text):
            offenders.append(f"{name}: uses a removed store method")
    assert offenders == []


def test_the_sql_finder_finds_state_sql():
    assert STATE_SQL.search('db.execute("UPDATE breakers SET state = ?")')
    assert STATE_SQL.search("INSERT INTO runs (job) VALUES (?)")
    assert not STATE_SQL.search("the runs of a job begin at its start")
    assert BEGIN.search('db.execute("BEGIN IMMEDIATE")') and not BEGIN.search("it began")


def test_the_store_port_has_no_path_transaction_or_job_lock():
    from schedsync.store import Store
    from schedsync.store.sqlite import SQLiteStore

    for name in ("path", "transaction", "job_lock"):
        assert not hasattr(Store, name) and not hasattr(SQLiteStore, name), name
    assert issubclass(SQLiteStore, Store) and not SQLiteStore.__abstractmethods__


# A slot ledger row's ``kind`` (core.models.SLOT_KINDS: cron, catchup, backfill, retry, api, after,
# queue) is not a job kind: comparing ``item.kind`` with one of those (or their constants in
# app.later) is fine.
SLOT_KINDS = ("cron", "catchup", "backfill", "retry", "api", "after", "queue")
SLOT_KIND_NAMES = ("CRON", "CATCHUP", "BACKFILL", "RETRY", "API", "AFTER")


def kind_tests(tree: ast.AST, keys: tuple[str, ...]) -> list[str]:
    """Comparisons that test a job kind: a kind's key as a string (``kind == "http"``,
    ``"command" in spec``, ``in ("command", "python")``), or anything against ``.kind`` but a
    ledger row's kind (``item.kind == "catchup"``, ``row.kind in (CATCHUP, BACKFILL)``)."""
    def is_key(node) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in keys
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):  # ("http", "https") is a scheme list
            return bool(node.elts) and all(isinstance(e, ast.Constant) and e.value in keys for e in node.elts)
        return False

    def is_slot_kind(node) -> bool:
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return bool(node.elts) and all(is_slot_kind(e) for e in node.elts)
        return (isinstance(node, ast.Constant) and node.value in SLOT_KINDS) or (
            isinstance(node, ast.Name) and node.id in SLOT_KIND_NAMES)

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if all(is_slot_kind(s) or (isinstance(s, ast.Attribute) and s.attr == "kind") for s in sides) and any(
                    is_slot_kind(s) for s in sides):
                continue  # a ledger row's kind
            if any(is_key(s) or (isinstance(s, ast.Attribute) and s.attr == "kind") for s in sides):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Match) and isinstance(node.subject, ast.Attribute) and node.subject.attr == "kind":
            found.append(f"line {node.lineno}: match on .kind")
    return found


def test_no_job_kind_is_tested_outside_the_kinds_registry():
    from schedsync.kinds import KEYS

    offenders = []
    for name, path in modules().items():
        if name == "schedsync.kinds" or name.startswith("schedsync.kinds."):
            continue
        offenders += [f"{name}: {where}" for where in kind_tests(ast.parse(path.read_text()), KEYS)]
    assert offenders == []


def test_the_kind_test_finder_finds_kind_tests():
    keys = ("command", "http", "python")
    code = ('if job.kind != "command": pass\nif kind == "http": pass\nif "python" in spec: pass\n'
            'if k in ("command", "python"): pass\nif job.kind == other: pass\n'
            'if url.scheme not in ("http", "https"): pass\nif x == "commands": pass\n'
            'if item.kind == "catchup": pass\nif row.kind in (CATCHUP, BACKFILL): pass\n'
            'if item.kind in (CATCHUP, "http"): pass\n')
    assert [f.split(":")[0] for f in kind_tests(ast.parse(code), keys)] == [
        "line 1", "line 2", "line 3", "line 4", "line 5", "line 10"]


DRIVERS = ("sqlite3", "psycopg2", "psycopg")
# DB-API exception names, however reached (``store.sqlite.sqlite3.OperationalError``).
DBAPI_ERRORS = {"Error", "Warning", "OperationalError", "IntegrityError", "DatabaseError", "InterfaceError",
                "ProgrammingError", "DataError", "NotSupportedError", "InternalError"}
# ctx.db's raw-connection escape hatch: python jobs get a sqlite_utils Database (which
# wraps sqlite3 itself) or a psycopg2 connection opened by the sink; neither module is
# imported here, but this is where one would be, should the ctx.db API need it.
DRIVER_ALLOWED = ("schedsync.store", "schedsync.jobs.common")


def dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of attributes on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else None


def driver_offenders(name: str, text: str) -> list[str]:
    """Imports of a database driver, and names of a driver or a DB-API exception, in code."""
    out = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            out += [f"{name}: imports {a.name}" for a in node.names if a.name.split(".")[0] in DRIVERS]
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] in DRIVERS:
            out.append(f"{name}: imports {node.module}")
        elif isinstance(node, (ast.Attribute, ast.Name)) and not isinstance(getattr(node, "ctx", None), ast.Store):
            path = dotted(node)
            if path and (path.split(".")[0] in DRIVERS and "." in path
                         or path.rpartition(".")[2] in DBAPI_ERRORS - {"Error", "Warning"}):
                out.append(f"{name}: names {path}")
    # the outermost chain only: ``psycopg2.errors.X`` is one finding, not three
    return [o for o in out if not any(p != o and p.startswith(o + ".") for p in out)]


def test_no_module_outside_the_store_imports_a_driver_or_names_its_exceptions():
    # The store translates driver errors (by SQLSTATE or sqlite error class) into
    # core.errors types at its port: nothing above it catches a driver exception.
    offenders = []
    for name, path in modules().items():
        if not name.startswith(DRIVER_ALLOWED):
            offenders += driver_offenders(name, path.read_text())
    assert offenders == []


def test_the_driver_finder_finds_imports_and_exception_names():
    assert driver_offenders("m", "import sqlite3\n") == ["m: imports sqlite3"]
    assert driver_offenders("m", "def f():\n    from psycopg2.errors import UniqueViolation\n")
    assert driver_offenders("m", "try:\n    pass\nexcept (OSError, sqlite3.Error):\n    pass\n")
    assert driver_offenders("m", "def f(e):\n    return isinstance(e, psycopg2.errors.UndefinedTable)\n") == [
        "m: names psycopg2.errors.UndefinedTable"]
    assert driver_offenders("m", "try:\n    pass\nexcept store.OperationalError:\n    pass\n")
    assert driver_offenders("m", "x = 1  # OperationalError in a comment\n") == []
    assert driver_offenders("m", "from schedsync.core.errors import StateError\n") == []


# Every cron tick of a plain job goes through these: none imports ``schedsync trigger``'s code
# (``app.trigger``), even lazily; a run reads its params through the tiny ``config.params``.
RUN_PATH = ("schedsync.__main__", "schedsync.cli.main", "schedsync.cli.run", "schedsync.app.run",
            "schedsync.app.runner", "schedsync.jobs.command", "schedsync.config.params")


def test_the_run_path_does_not_import_the_trigger_module():
    edges = graph()
    assert "schedsync.app.tick" in edges["schedsync.app.trigger"]  # the graph sees its lazy imports
    assert [name for name in RUN_PATH if "schedsync.app.trigger" in edges[name]] == []
    assert edges["schedsync.config.params"] == set()  # imports nothing of the package


# --- the import budget of a cron tick ----------------------------------------------------
# `schedsync run JOB` of a plain command job is on every cron tick's start-up path, whose
# budget is 3.5x `python -c pass` (bench/bench_run.py; docs/design.md, Start-up). These are
# the package's modules it may import. A new one must be tiny and needed: add it here, and
# measure with bench/bench_run.py in a regular install.
RUN_PATH_MODULES = {
    "schedsync", "schedsync.app", "schedsync.app.run", "schedsync.app.runner", "schedsync.cli",
    "schedsync.cli.main", "schedsync.cli.run", "schedsync.config", "schedsync.config.load",
    "schedsync.config.model", "schedsync.config.secrets", "schedsync.config.state", "schedsync.core",
    "schedsync.core.breaker", "schedsync.core.budgets", "schedsync.core.cronmatch",
    "schedsync.core.errors", "schedsync.core.models", "schedsync.core.outcome",
    "schedsync.core.records", "schedsync.core.redact", "schedsync.jobs", "schedsync.jobs.command",
    "schedsync.kinds", "schedsync.kinds.command", "schedsync.paths", "schedsync.store",
    "schedsync.store.base", "schedsync.store.liveness", "schedsync.store.lock", "schedsync.store.sqlite",
}
# Never on that path, listed or not: what a job without these features must not pay for
# (names of modules that do not exist yet included), and the costly libraries. The standard
# library's are measured under `-X importtime` (`re` ~3 ms and `enum` ~2 ms of a ~45 ms tick):
# `Pattern` (core) compiles a pattern on first use, `_signal` is `signal` without its enums.
NEVER_ON_THE_RUN_PATH = (
    "schedsync.app.trigger", "schedsync.ops*", "schedsync.*serve*", "schedsync.*trigger*",
    "schedsync.*chain*", "schedsync.*fails*", "schedsync.*failure*", "schedsync.*rules*",
    "schedsync.*limit*", "schedsync.*overlap*", "schedsync.*audit*", "schedsync.*param*",
    "schedsync.notify*", "schedsync.app.tick", "schedsync.app.later", "schedsync.config.validate",
    "schedsync.store.postgres*", "schedsync.store.spool", "schedsync.store.sink*",
    "typer", "click", "rich", "httpx", "httpcore", "anyio", "yaml", "_yaml", "cronsim", "tenacity",
    "sqlite_utils", "jinja2", "psycopg2", "pygments",
    "re", "enum", "contextlib", "typing", "dataclasses", "inspect", "json", "pathlib", "subprocess",
    "logging", "threading", "importlib", "urllib*", "zoneinfo", "calendar", "random", "traceback",
    "tempfile", "shutil", "socket", "ssl", "locale", "argparse", "textwrap", "string", "difflib",
)


def imported(argv: list[str], env: dict, cwd) -> set[str]:
    """The modules ``argv`` (a python process) imports after the interpreter's start-up,
    read from ``-X importtime``; asserts it exits 0."""
    import subprocess

    out = subprocess.run(argv, env={**env, "PYTHONPROFILEIMPORTTIME": "1"}, cwd=cwd, capture_output=True,
                         text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return {line.split("|")[-1].strip() for line in out.stderr.splitlines()
            if line.startswith("import time:") and "[us]" not in line}


def run_path_offenders(modules: set[str]) -> list[str]:
    from fnmatch import fnmatchcase

    never = sorted(m for m in modules if any(fnmatchcase(m, p) for p in NEVER_ON_THE_RUN_PATH))
    unknown = sorted(m for m in modules if m.partition(".")[0] == "schedsync" and m not in RUN_PATH_MODULES)
    return [f"{m}: never on the run path" for m in never] + [f"{m}: not in RUN_PATH_MODULES" for m in unknown
                                                             if m not in never]


def test_a_cron_tick_of_a_plain_command_job_imports_only_its_budget(project):
    import os
    import sys

    from schedsync.core.redact import secret_name

    # A token in the environment, as crontabs often set: a secret of every run (redacted in all
    # its forms) that must not cost a pattern. Only this one: a secret holding a % (kept as an
    # escape in its query form) does cost one, and the machine's own must not decide the test.
    env = {k: v for k, v in project.env.items() if not secret_name(k)}
    env["DEPLOY_TOKEN"] = "tok/en secret+value-1234"

    project.write("""\
        jobs:
          trivial:
            schedule: "* * * * *"
            command: ["true"]
    """)
    # Fills the config cache and creates the state, as every later tick finds them; claims no slot.
    assert project.cli("run", "--force-slot", "trivial").returncode == 0
    # The command cron runs: the installed one under .ci/run; else the checkout's (on PYTHONPATH)
    # under -S, without site-packages, whose editable install's finder would import re, enum and
    # more into every interpreter (and so hide them here).
    if os.environ.get("SCHEDSYNC_TEST_INSTALLED"):
        python, script = [sys.executable], [str(Path(sys.executable).with_name("schedsync"))]
    else:
        python = [sys.executable, "-S"]
        script = [*python, str(PACKAGE.parent / "bin" / "schedsync")]
    base = imported([*python, "-c", "pass"], env, project.path)
    modules = imported([*script, "-c", str(project.config), "run", "trivial"], env, project.path) - base
    assert {"schedsync.core.cronmatch", "schedsync.jobs.command", "sqlite3"} <= modules, sorted(modules)
    offenders = run_path_offenders(modules)
    assert offenders == [], "; ".join(offenders)


def test_the_run_path_check_finds_new_and_forbidden_modules():
    assert run_path_offenders({"schedsync.app.runner", "sqlite3", "collections"}) == []
    assert run_path_offenders({"re", "schedsync.app.trigger", "schedsync.core.chains", "schedsync.core.newthing",
                               "schedsync.ops.serve", "yaml"}) == [
        "re: never on the run path", "schedsync.app.trigger: never on the run path",
        "schedsync.core.chains: never on the run path", "schedsync.ops.serve: never on the run path",
        "yaml: never on the run path", "schedsync.core.newthing: not in RUN_PATH_MODULES"]

"""The YAML walker: jobs.yaml text to plain values with the line of every key path,
within bounds on size, values, nesting and aliases (hostile input stays cheap)."""

from __future__ import annotations

import re

from schedsync.config.checks import _short
from schedsync.core.errors import ConfigError

# Bounds on jobs.yaml as input (SPEC: Bounds). A registry of 10,000 ordinary jobs is
# about 1.5 MB; the deepest key a job has is 5 levels (jobs.J.http.since.param), and
# 64 leaves room for a nested http.body. Aliases may expand to at most ALIAS_NODES
# nodes beyond the document's own node count: every job merging a `defaults` anchor
# stays far inside it, while a "billion laughs" file stops after a few MB of work.
# MAX_EVENTS bounds the YAML values (parser events) before any tree is built: 4 MiB
# of `1,` is 2 million values, which PyYAML's tree would hold in about 1 GB. 250,000
# fit about 14,000 ordinary jobs (10,000 are 170,000 events) and cost at most about
# 160 MB and 2 s to build.
MAX_EVENTS = 250_000
MAX_DEPTH = 64
ALIAS_NODES = 100_000
MERGE_TAG = "tag:yaml.org,2002:merge"


class ConfigErrors(ConfigError):
    """Every error ``load(..., every=True)`` found; ``str`` is the first one."""

    def __init__(self, errors: list[ConfigError], config=None):
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
        self.smtp: dict | None = None  # the top-level `smtp:`, validated: email targets carry it
        self.serve_url: str | None = None  # the top-level `serve_url:`: Slack and mail link to it
        self.environ: dict[str, str | None] = {}  # variables the schedules read -> value (None: unset)
        self.limits: dict[str, int] = {}  # the top-level `limits:`, validated: jobs' `limit:` names them

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


def read_tree(text: str, file: str, doc: _Doc):
    """``text`` as plain values (mappings, lists, scalars), lines recorded on ``doc``."""
    import yaml

    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        for events, _ in enumerate(yaml.parse(text, Loader=loader), 1):  # streamed: memory stays flat
            if events > MAX_EVENTS:
                raise ConfigError(f"{file}: more than {MAX_EVENTS:,} YAML values",
                                  "a registry this large is not a jobs.yaml; split it or check the file")
        node = yaml.compose(text, Loader=loader)  # libyaml itself stops at 1,000 levels
        if node is None:
            raise ConfigError(f"{file}: the file is empty", "add a `jobs:` mapping (see the README)")
        return _Walk(doc, yaml).value(node, "", 0)  # may meet an unknown tag such as !!python/name
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, text, file) from exc

"""Validation of what ties jobs together and judges their runs: ``after:`` (chains),
``requires:`` (an upstream that must have succeeded lately) and ``fails_when:`` (failure
rules). Imported by validation only, never on the path of ``run``."""

from __future__ import annotations

from schedsync.config.checks import _duration, _known, _q, _whole

ON = ("success", "failure", "always")
REQUIRES_KEYS = ("job", "within")
FAILS_WHEN_KEYS = ("stderr", "output_matches", "exit_codes", "shorter_than", "longer_than", "items_below")


def after(value, path: str, doc) -> list:
    """``after: [{job: A, on: success|failure|always}]`` (``on`` defaults to success; a bare
    name is ``{job: NAME}``) as ``[[A, on], ...]``. Whether A exists is checked once every
    job is read (``links``)."""
    if value is None:
        return []
    if not isinstance(value, list):
        value = [value]
    out = []
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        if isinstance(item, str):
            item = {"job": item}
        if not isinstance(item, dict) or "job" not in item:
            raise doc.error(where, "must be {job: NAME, on: success|failure|always}",
                            "e.g. after: [{job: extract, on: success}]")
        _known(item, ("job", "on"), where, doc)
        if not isinstance(item["job"], str) or not item["job"]:
            raise doc.error(f"{where}.job", f"{_q(item['job'])} is not a job name")
        on = item.get("on", "success")
        if on not in ON:
            raise doc.error(f"{where}.on", f"{_q(on)} is not one of {', '.join(ON)}",
                            "success: after a run that succeeded; failure: after one that failed; always: both")
        out.append([item["job"], on])
    return out


def requires(value, path: str, doc) -> dict | None:
    """``requires: {job: A, within: 2h}``."""
    if value is None:
        return None
    if not isinstance(value, dict) or "job" not in value or "within" not in value:
        raise doc.error(path, "must be {job: NAME, within: DURATION}", "e.g. requires: {job: extract, within: 2h}")
    _known(value, REQUIRES_KEYS, path, doc)
    if not isinstance(value["job"], str) or not value["job"]:
        raise doc.error(f"{path}.job", f"{_q(value['job'])} is not a job name")
    within = _duration(value["within"], f"{path}.within", doc)
    if within <= 0:
        raise doc.error(f"{path}.within", "must be more than 0s")
    return {"job": value["job"], "within": within}


def fails_when(value, path: str, doc) -> dict | None:
    """``fails_when: {stderr, output_matches, exit_codes, shorter_than, longer_than,
    items_below}``; the regex is compiled here (a bad one is a config error)."""
    if value is None or value is False:
        return None
    if not isinstance(value, dict):
        raise doc.error(path, "must be a mapping, e.g. {stderr: true, output_matches: \"ERROR\"}")
    _known(value, FAILS_WHEN_KEYS, path, doc)
    out: dict = {}
    for key in FAILS_WHEN_KEYS:
        if key not in value:
            continue
        item, where = value[key], f"{path}.{key}"
        if key == "stderr":
            if not isinstance(item, bool):
                raise doc.error(where, "must be true or false")
            if item:
                out[key] = True
        elif key == "output_matches":
            if not isinstance(item, str) or not item:
                raise doc.error(where, "must be a regular expression (a quoted string)")
            import re

            try:
                re.compile(item, re.MULTILINE)
            except re.error as exc:
                raise doc.error(where, f"{_q(item)} is not a regular expression: {exc}",
                                "check it with python3 -c 'import re; re.compile(r\"...\")'") from None
            out[key] = item
        elif key == "exit_codes":
            if not isinstance(item, list) or not item or not all(
                    isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in item):
                raise doc.error(where, "must be a list of exit codes (0 to 255), e.g. [1, 3]")
            out[key] = sorted(set(item))
        elif key in ("shorter_than", "longer_than"):
            out[key] = _duration(item, where, doc)
            if out[key] <= 0:
                raise doc.error(where, "must be more than 0s")
        else:
            out[key] = _whole(item, where, doc)
    return out or None


def links(jobs: dict, doc) -> None:
    """Once every job is read: each ``after``/``requires`` names a job of the registry, and
    no cycle runs through those edges (``a → b → a``). Sets each upstream job's
    ``downstream`` ({on: [job, ...]}, what its run's end queues)."""
    edges: dict[str, list[str]] = {}  # upstream -> the jobs that wait on it
    for name, job in jobs.items():
        for i, (up, _on) in enumerate(job.get("after") or []):
            if up not in jobs:
                raise doc.error(f"jobs.{name}.after[{i}].job", f"no job named {_q(up)}", _known_fix(up, jobs))
            edges.setdefault(up, []).append(name)
        req = job.get("requires")
        if req is not None:
            if req["job"] not in jobs:
                raise doc.error(f"jobs.{name}.requires.job", f"no job named {_q(req['job'])}",
                                _known_fix(req["job"], jobs))
            edges.setdefault(req["job"], []).append(name)
    cycle = _cycle(edges)
    if cycle:
        last = cycle[-2]  # the edge that closes it: last waits on... its next, cycle[-1]
        key = "after" if any(up == last for up, _ in jobs[cycle[-1]].get("after") or []) else "requires"
        raise doc.error(f"jobs.{cycle[-1]}.{key}", f"a cycle of jobs that wait on each other: {' → '.join(cycle)}",
                        "drop one of its after: or requires: links")
    for name, job in jobs.items():
        for up, on in job.get("after") or []:
            down = jobs[up].setdefault("downstream", {})
            if name not in down.setdefault(on, []):
                down[on].append(name)


def _known_fix(name: str, jobs: dict) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(jobs), n=1)
    return f"did you mean {close[0]!r}?" if close else "name a job of this jobs.yaml"


def _cycle(edges: dict) -> list | None:
    """A cycle as [a, b, ..., a] (each runs before the next), else None; iterative DFS."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(edges):
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted(set(edges.get(root, ()))))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
                continue
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(set(edges.get(nxt, ())))))
    return None

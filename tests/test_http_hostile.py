"""http jobs against hostile upstreams and faults (issue 9): redirects to other origins,
gzip bombs, corrupt bodies, pagination loops, control characters; and the data sink."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import urllib.request
import zlib

import pytest

from test_http import Upstream, job_yaml, one_error_line, reply, rows


@pytest.fixture
def upstream():
    server = Upstream()
    yield server
    server.close()


@pytest.fixture
def other():
    """A second origin: 127.0.0.2 is loopback on Linux too."""
    server = Upstream("127.0.0.2")
    yield server
    server.close()


def measured(project, *args: str, env: dict | None = None):
    """(exit code, stderr, peak RSS MiB, wall seconds, CPU seconds) of one CLI run.

    The run's parent is a small fresh Python, not this test process: a forked child's
    peak RSS starts at its parent's size (the high-water mark survives fork until exec),
    so a pytest worker grown by earlier tests would be measured too."""
    probe = (
        "import json, resource, subprocess, sys, time\n"
        "began = time.perf_counter()\n"
        "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,"
        " stdin=subprocess.DEVNULL)\n"
        "wall = time.perf_counter() - began\n"
        "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(json.dumps([r.returncode, r.stderr.decode('utf-8', 'replace'), u.ru_maxrss, wall,"
        " u.ru_utime + u.ru_stime]))\n")
    out = subprocess.run([sys.executable, "-c", probe, *project.argv(*args)], capture_output=True,
                         text=True, cwd=project.path, env={**project.env, **(env or {})},
                         stdin=subprocess.DEVNULL, timeout=120, check=True)
    code, err, maxrss_kib, wall, cpu = json.loads(out.stdout)
    return code, err, maxrss_kib / 1024, wall, cpu


# --- redirects -------------------------------------------------------------------------------------

def test_a_cross_origin_redirect_never_carries_a_secret(project, upstream, other):
    token, key = "hdr-tok-7Hq2x", "qry-key-99Zp"

    @upstream.route("/start")
    def start(request):  # an upstream that echoes the key into where it sends us
        return reply(302, {}, {"Location": f"{other.base}/land?page=1&sig={request.query['api_key']}"})

    @other.route("/land")
    def land(request):
        return reply(200, {"data": [{"id": 1}]})

    project.write(job_yaml(upstream, """\
      url: "{base}/start"
      headers: {{X-Api-Key: "${{TOKEN}}", Authorization: "Bearer ${{TOKEN}}", Accept-Language: en}}
      params: {{api_key: "${{QKEY}}"}}
      items: data"""))

    result = project.cli("run", "items", env={"TOKEN": token, "QKEY": key})

    assert result.returncode == 0, result.stderr
    [hop] = upstream.hits("/start")
    assert hop.headers["X-Api-Key"] == token and hop.query["api_key"] == key
    [landed] = other.hits("/land")
    assert "X-Api-Key" not in landed.headers and "Authorization" not in landed.headers
    assert landed.headers["Accept-Language"] == "en"  # what holds no secret goes on
    assert key not in landed.raw_path and token not in landed.raw_path
    assert landed.query["page"] == "1"
    [run] = project.history("items")
    assert (run["status"], run["requests"]) == ("success", 2)
    assert "dropped X-Api-Key, Authorization, query sig" in run["output"]
    assert key not in run["output"] and token not in run["output"]


def test_a_same_origin_redirect_keeps_the_headers(project, upstream):
    @upstream.route("/old")
    def old(request):
        return reply(301, {}, {"Location": "/new"})

    @upstream.route("/new")
    def new(request):
        return reply(200, {"data": [{"id": 1}]})

    project.write(job_yaml(upstream, """\
      url: "{base}/old"
      headers: {{X-Api-Key: "${{TOKEN}}"}}
      items: data"""))

    assert project.cli("run", "items", env={"TOKEN": "same-origin-tok"}).returncode == 0
    assert upstream.hits("/new")[0].headers["X-Api-Key"] == "same-origin-tok"


def test_userinfo_holding_a_secret_is_not_sent_to_another_origin(project, upstream, other):
    @upstream.route("/start")
    def start(request):
        return reply(307, {}, {"Location": f"http://bob:pw-Secret-42@127.0.0.2:{other.base.rsplit(':', 1)[1]}/land"})

    @other.route("/land")
    def land(request):
        return reply(200, {"data": [{"id": 1}]})

    project.write(job_yaml(upstream, """\
      url: "http://bob:${{PASS}}@127.0.0.1:{port}/start"
      items: data""".replace("{port}", upstream.base.rsplit(":", 1)[1])))

    result = project.cli("run", "items", env={"PASS": "pw-Secret-42"})

    assert result.returncode == 0, result.stderr
    assert upstream.hits("/start")[0].headers["Authorization"].startswith("Basic ")
    assert "Authorization" not in other.hits("/land")[0].headers


def test_every_redirect_hop_spends_a_budget_token(project, upstream):
    @upstream.route("/old")
    def old(request):
        return reply(302, {}, {"Location": "/new"})

    @upstream.route("/new")
    def new(request):
        return reply(200, {"data": [{"id": 1}]})

    project.write(job_yaml(upstream, """\
      url: "{base}/old"
      items: data""", budgets="budgets:\n  api: {capacity: 1, per: 1h}", extra="    budget: api"))

    result = project.cli("run", "items")

    assert result.returncode == 1, result.stderr
    assert upstream.hits("/new") == []
    [run] = project.history("items")
    assert (run["status"], run["reason"], run["requests"]) == ("failed", "rate_limited", 1)


def test_a_redirect_loop_is_one_line_with_its_requests(project, upstream):
    @upstream.route("/loop")
    def loop(request):
        return reply(302, {}, {"Location": "/loop"})

    project.write(job_yaml(upstream, """\
      url: "{base}/loop"
      items: data"""))

    result = project.cli("run", "items")

    assert result.returncode == 1
    line = one_error_line(result)
    assert "was redirected more than 20 times" in line and "internal error" not in line
    [run] = project.history("items")
    assert (run["status"], run["requests"]) == ("failed", 21)
    assert len(upstream.hits("/loop")) == 21


# --- next links to another origin, link-local addresses, http.allow_hosts ---------------------------

@pytest.fixture
def trap():
    """A loopback HTTP proxy every non-loopback request of the CLI goes to, so that a test of a
    refusal never sends a packet to 169.254.x.x or fe80::, whether or not the refusal works."""
    server = Upstream()
    yield server
    server.close()


def no_packets_out(trap, monkeypatch) -> dict:
    """The CLI's environment: every request but to 127.0.0.1/127.0.0.2 goes to ``trap``
    (httpx reads the proxy variables as urllib does; checked here before the CLI runs)."""
    env = {}
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        env[name] = env[name.upper()] = trap.base
    env["no_proxy"] = env["NO_PROXY"] = "127.0.0.1,127.0.0.2"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert {k: urllib.request.getproxies_environment().get(k) for k in ("http", "https", "all")} == {
        "http": trap.base, "https": trap.base, "all": trap.base}
    return env


@pytest.mark.parametrize("rule", ["links.next", "link-header"])
def test_a_next_link_to_another_origin_is_sent_no_credential(project, upstream, other, rule):
    token, key, password = "hdr-tok-4Kd9q", "qry-key-31Lw", "pw-nxt-88Rt"
    port = other.base.rsplit(":", 1)[1]

    @upstream.route("/items")
    def items(request):  # an upstream that echoes the key into the link, with a user:password
        link = f"http://bob:{password}@127.0.0.2:{port}/more?cursor=c2&sig={request.query['api_key']}"
        if rule == "link-header":
            return reply(200, {"data": [{"id": 1}]}, {"Link": f'<{link}>; rel="next"'})
        return reply(200, {"data": [{"id": 1}], "links": {"next": link}})

    @other.route("/more")
    def more(request):
        return reply(200, {"data": [{"id": 2}], "links": {"next": None}})

    project.write(job_yaml(upstream, f"""\
      url: "{{base}}/items"
      headers: {{{{X-Api-Key: "${{{{TOKEN}}}}", Authorization: "Bearer ${{{{TOKEN}}}}", Accept-Language: en}}}}
      params: {{{{api_key: "${{{{QKEY}}}}", access_token: literal-tok, limit: 50}}}}
      items: data
      next: {rule}"""))

    result = project.cli("run", "items", env={"TOKEN": token, "QKEY": key, "PASS": password})

    assert result.returncode == 0, result.stderr
    [first] = upstream.hits("/items")
    assert first.headers["X-Api-Key"] == token and first.query["api_key"] == key
    [landed] = other.hits("/more")
    assert not {"X-Api-Key", "Authorization"} & set(landed.headers), landed.headers
    assert landed.headers["Accept-Language"] == "en"
    assert (landed.query["cursor"], landed.query["limit"]) == ("c2", "50")
    assert not {"api_key", "access_token", "sig"} & set(landed.query), landed.raw_path
    [run] = project.history("items")
    assert (run["status"], run["requests"], run["items_processed"]) == ("success", 2, 2)
    assert ("dropped X-Api-Key, Authorization, user:password, query sig, query api_key, "
            "query access_token") in run["output"], run["output"]
    for secret in (token, key, password):
        assert secret not in run["output"]


def test_a_next_link_back_to_the_first_origin_keeps_its_credentials(project, upstream):
    @upstream.route("/items")
    def items(request):
        page = int(request.query.get("page", 1))
        nxt = f"{upstream.base}/items?page=2" if page == 1 else None
        return reply(200, {"data": [{"id": page}], "links": {"next": nxt}})

    project.write(job_yaml(upstream, """\
      url: "{base}/items"
      headers: {{X-Api-Key: "${{TOKEN}}"}}
      params: {{api_key: "${{QKEY}}"}}
      items: data
      next: links.next"""))

    result = project.cli("run", "items", env={"TOKEN": "same-tok-1", "QKEY": "same-key-2"})

    assert result.returncode == 0, result.stderr
    assert [(r.headers.get("X-Api-Key"), r.query.get("api_key")) for r in upstream.hits("/items")] == [
        ("same-tok-1", "same-key-2")] * 2


@pytest.mark.parametrize("host", ["169.254.169.254", "[fe80::1]", "2852039166", "[::ffff:169.254.1.1]"])
@pytest.mark.parametrize("how", ["next link", "redirect"])
def test_a_link_local_address_is_refused_before_any_connection(project, upstream, trap, monkeypatch,
                                                                host, how):
    target = f"http://{host}/latest/meta-data/"

    @upstream.route("/items")
    def items(request):
        if how == "redirect":
            return reply(302, {}, {"Location": target})
        return reply(200, {"data": [{"id": 1}], "next": target})

    project.write(job_yaml(upstream, """\
      url: "{base}/items"
      items: data
      next: next"""))

    result = project.cli("run", "items", env=no_packets_out(trap, monkeypatch))

    assert trap.requests == []  # nothing went toward the address, not even through the proxy
    assert result.returncode == 1
    line = one_error_line(result)
    assert f"refused GET http://{host}/latest/meta-data/: " in line, line
    assert "is a link-local address, where cloud metadata lives — name it in http.allow_hosts" in line
    [run] = project.history("items")
    assert (run["status"], run["requests"]) == ("failed", 1)


def test_allow_hosts_can_name_a_link_local_address(project, upstream, trap, monkeypatch):
    @upstream.route("/items")
    def items(request):
        return reply(200, {"data": [{"id": 1}], "next": "http://169.254.169.254/latest/"})

    @trap.route("/latest/")
    def metadata(request):  # reached through the proxy: no packet leaves loopback
        return reply(200, {"data": [{"id": 2}]})

    project.write(job_yaml(upstream, """\
      url: "{base}/items"
      items: data
      next: next
      allow_hosts: [127.0.0.1, 169.254.169.254]"""))

    result = project.cli("run", "items", env=no_packets_out(trap, monkeypatch))

    assert result.returncode == 0, result.stderr
    assert [r.raw_path for r in trap.requests] == ["http://169.254.169.254/latest/"]


@pytest.mark.parametrize("how", ["first request", "redirect", "next link"])
def test_allow_hosts_limits_every_hop(project, upstream, other, how):
    @upstream.route("/items")
    def items(request):
        if how == "redirect":
            return reply(307, {}, {"Location": f"{other.base}/more"})
        return reply(200, {"data": [{"id": 1}], "next": f"{other.base}/more"})

    @other.route("/more")
    def more(request):
        return reply(200, {"data": [{"id": 2}]})

    allowed = "[127.0.0.2]" if how == "first request" else "[localhost, 127.0.0.1]"
    project.write(job_yaml(upstream, f"""\
      url: "{{base}}/items"
      items: data
      next: next
      allow_hosts: {allowed}"""))

    result = project.cli("run", "items")

    assert result.returncode == 1
    refused = upstream.base if how == "first request" else other.base
    assert f"refused GET {refused}/" in one_error_line(result)
    assert "is not in http.allow_hosts" in result.stderr
    assert other.requests == []
    assert len(upstream.requests) == (0 if how == "first request" else 1)
    [run] = project.history("items")
    assert run["requests"] == len(upstream.requests)


# --- bounded bodies ----------------------------------------------------------------------------------

_BOMB = []


def gzip_bomb() -> bytes:
    """About 1 MB of gzip that inflates to 1 GiB of zeros (built once per session)."""
    if not _BOMB:
        packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        block = bytes(1 << 20)
        _BOMB.append(b"".join([packer.compress(block) for _ in range(1024)] + [packer.flush()]))
    return _BOMB[0]


def test_a_gzip_bomb_fails_in_one_line_without_inflating(project, upstream):
    bomb = gzip_bomb()
    assert len(bomb) < 1_100_000

    @upstream.route("/bomb")
    def serve(request):
        return 200, bomb, {"Content-Type": "application/json", "Content-Encoding": "gzip"}

    project.write(job_yaml(upstream, """\
      url: "{base}/bomb"
      items: data"""))

    code, err, rss, wall, cpu = measured(project, "run", "items")

    print(f"gzip bomb: peak RSS {rss:.1f} MiB, {wall:.2f} s wall, {cpu:.2f} s CPU")
    assert code == 1, err
    assert len(err.strip().splitlines()) == 1, err
    assert "over http.max_bytes (67,108,864 bytes decoded)" in err
    assert rss <= 100, rss
    assert cpu <= 2.0 and wall <= 10, (cpu, wall)  # wall has slack for a loaded machine
    [run] = project.history("items")
    assert (run["status"], run["requests"]) == ("failed", 1)


def test_a_page_of_a_million_tiny_items_fails_in_one_line_without_parsing_them(project, upstream):
    page = b'{"data":[' + b",".join(b'{"id":%d}' % i for i in range(600_000)) + b"]}"  # 1.2M values

    @upstream.route("/huge")
    def huge(request):
        return 200, page, {"Content-Type": "application/json"}

    project.write(job_yaml(upstream, """\
      url: "{base}/huge"
      items: data"""))

    code, err, rss, wall, cpu = measured(project, "run", "items")

    print(f"{len(page) / 1e6:.1f} MB page of 600,000 items: peak RSS {rss:.1f} MiB, {wall:.2f} s wall")
    assert code == 1, err
    assert len(err.strip().splitlines()) == 1, err
    assert "returned more than 1,000,000 JSON values, over http.max_values" in err
    assert rss <= 100, rss
    [run] = project.history("items")
    assert (run["status"], run["requests"], run["items_processed"]) == ("failed", 1, 0)


def test_max_values_counts_no_comma_or_bracket_inside_a_string(project, upstream):
    text = "a, [b], {c}, " * 20  # 60 commas and brackets inside one string
    upstream.route("/items")(lambda request: reply(200, {"data": [{"id": 1, "text": text}]}))
    project.write(job_yaml(upstream, """\
      url: "{base}/items"
      items: data
      max_values: 8"""))

    result = project.cli("run", "items")

    assert result.returncode == 0, result.stderr
    assert rows(project, "items")[0]["text"] == text


@pytest.mark.parametrize("depth", [100_000, 2_000])
def test_json_nested_too_deeply_is_a_one_line_failure(project, upstream, depth):
    body = b'{"data": [{"id": 1, "deep": ' + b"[" * depth + b"]" * depth + b"}]}"
    upstream.route("/deep")(lambda request: (200, body, {"Content-Type": "application/json"}))
    project.write(job_yaml(upstream, """\
      url: "{base}/deep"
      items: data"""))

    result = project.cli("run", "items")

    assert result.returncode == 1
    line = one_error_line(result)
    assert "returned JSON nested too deeply to parse" in line, line
    assert "internal error" not in line and "Traceback" not in result.stderr
    [run] = project.history("items")
    assert (run["status"], run["requests"]) == ("failed", 1)


def test_a_body_over_max_bytes_fails_before_it_is_read(project, upstream):
    @upstream.route("/big")
    def big(request):
        return reply(200, {"data": [{"id": i, "pad": "x" * 100} for i in range(100)]})

    project.write(job_yaml(upstream, """\
      url: "{base}/big"
      items: data
      max_bytes: 1000"""))

    result = project.cli("run", "items")

    assert result.returncode == 1
    assert "over http.max_bytes (1,000)" in one_error_line(result)


def test_a_corrupt_gzip_body_is_one_line_not_an_internal_error(project, upstream):
    @upstream.route("/corrupt")
    def corrupt(request):
        return 200, b"\x1f\x8b\x08\x00" + b"not gzip at all" * 10, {"Content-Encoding": "gzip"}

    project.write(job_yaml(upstream, """\
      url: "{base}/corrupt"
      items: data"""))

    result = project.cli("run", "items")

    assert result.returncode == 1
    line = one_error_line(result)
    assert "gzip body that cannot be decoded" in line and "internal error" not in line
    [run] = project.history("items")
    assert (run["status"], run["requests"]) == ("failed", 1)


def test_a_gzip_page_is_decoded(project, upstream):
    body = zlib.compress(json.dumps({"data": [{"id": 1}, {"id": 2}]}).encode())

    @upstream.route("/zipped")
    def zipped(request):
        return 200, body, {"Content-Type": "application/json", "Content-Encoding": "deflate"}

    project.write(job_yaml(upstream, """\
      url: "{base}/zipped"
      items: data"""))

    assert project.cli("run", "items").returncode == 0
    assert [r["id"] for r in rows(project, "items")] == [1, 2]


def test_error_lines_hold_no_control_characters(project, upstream):
    @upstream.route("/nasty")
    def nasty(request):
        return 404, b"nope\x00\x1b[31mred\r\x07 done", {"Content-Type": "text/plain"}

    project.write(job_yaml(upstream, """\
      url: "{base}/nasty"
      items: data"""))

    result = project.cli("run", "items")

    assert result.returncode == 1
    line = one_error_line(result)
    assert "nope" in line and "done" in line
    assert not any(ord(c) < 0x20 or ord(c) == 0x7f for c in line), repr(line)
    [run] = project.history("items")
    assert not any(ord(c) < 0x20 for c in run["error"]), repr(run["error"])


# --- pagination loops ------------------------------------------------------------------------------

def test_a_next_url_that_repeats_is_caught_even_with_params(project, upstream):
    @upstream.route("/items")
    def items(request):
        page = int(request.query.get("page", 1))
        return reply(200, {"data": [{"id": page}], "next": "/items?page=2"})

    project.write(job_yaml(upstream, """\
      url: "{base}/items"
      params: {{limit: 50}}
      items: data
      next: next"""))

    result = project.cli("run", "items")

    assert result.returncode == 0, result.stderr
    assert [(r.query.get("page"), r.query["limit"]) for r in upstream.hits("/items")] == [(None, "50"), ("2", "50")]
    [run] = project.history("items")
    assert (run["status"], run["requests"]) == ("success", 2)
    assert "was already fetched in this run" in run["output"]


# --- the data sink ---------------------------------------------------------------------------------

def test_new_keys_mid_sync_become_columns_and_nested_values_json(project, upstream):
    pages = [[{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
             [{"id": 3, "name": "c", "chain": "base", "reward": {"amount": 5}, "tags": ["x", 1]},
              {"id": 4, "score": 2.5}]]

    @upstream.route("/items")
    def items(request):
        page = int(request.query.get("page", 1))
        return reply(200, {"data": pages[page - 1], "next": "/items?page=2" if page == 1 else None})

    project.write(job_yaml(upstream, """\
      url: "{base}/items"
      items: data
      next: next"""))

    assert project.cli("run", "items").returncode == 0
    stored = rows(project, "items")
    assert [r["id"] for r in stored] == [1, 2, 3, 4]
    assert stored[0]["chain"] is None and stored[2]["chain"] == "base"
    assert json.loads(stored[2]["reward"]) == {"amount": 5} and json.loads(stored[2]["tags"]) == ["x", 1]
    assert stored[3]["score"] == 2.5 and stored[3]["name"] is None  # absent in its page's row: NULL
    assert stored[2]["score"] is None


def test_upsert_updates_changed_rows_and_counts_invalid_items(project, upstream):
    version = {"n": 1}

    @upstream.route("/items")
    def items(request):
        if version["n"] == 1:
            return reply(200, {"data": [{"id": 1, "v": "one"}, {"id": 2, "v": "two"}]})
        return reply(200, {"data": [{"id": 2, "v": "TWO"}, {"v": "no id"}, "not an object", {"id": None}]})

    project.write(job_yaml(upstream, """\
      url: "{base}/items"
      items: data"""))
    assert project.cli("run", "items").returncode == 0
    version["n"] = 2

    result = project.cli("run", "items")

    assert result.returncode == 0
    assert result.stderr == ("items: partial: 3 of 4 items failed (2 items had no `id` and "
                             "1 item was not a JSON object)\n")
    assert [(r["id"], r["v"]) for r in rows(project, "items")] == [(1, "one"), (2, "TWO")]
    last = project.history("items")[0]
    assert (last["items_processed"], last["items_failed"]) == (1, 3)


def test_the_data_database_is_private(project, upstream):
    @upstream.route("/items")
    def items(request):
        return reply(200, {"data": [{"id": 1}]})

    project.write(job_yaml(upstream, """\
      url: "{base}/items"
      items: data"""))
    os.umask(0o022)

    assert project.cli("run", "items").returncode == 0
    for name in ("data.db", "data.db-wal", "data.db-shm"):
        path = project.path / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, name
    assert (project.path / "data.db").exists()


def test_a_full_data_disk_is_one_line_with_the_requests_made(project, upstream):
    import resource

    @upstream.route("/items")
    def items(request):
        page = int(request.query.get("page", 1))
        return reply(200, {"data": [{"id": page * 100 + i, "pad": f"{page}-{i}-" + "x" * 2000}
                                    for i in range(100)],
                           "next": f"/items?page={page + 1}" if page < 5 else None})

    project.write(job_yaml(upstream, """\
      url: "{base}/items"
      items: data
      next: next""", into="{table: items, pk: id, db: data/items.db}"))
    from schedsync.store import open_store

    open_store(str(project.state)).close()  # the state exists before the limit (status creates none)

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))

    result = project.cli("run", "items", preexec_fn=limit)

    assert result.returncode == 1, result.stderr
    line = one_error_line(result)
    assert "cannot store items into items in" in line and "full" in line, line
    assert "internal error" not in line
    [run] = project.history("items")
    assert run["status"] == "failed" and 2 <= run["requests"] <= 5
    assert run["items_processed"] == 100 * (run["requests"] - 1)


# --- secrets ---------------------------------------------------------------------------------------

def python_job(project, code: str) -> None:
    (project.path / "hostile_job.py").write_text(textwrap.dedent(code))
    project.write("""
state: schedsync.db
jobs:
  sync:
    retries: {attempts: 1, initial: 10ms}
    python: "hostile_job:sync"
""")


def test_an_undeclared_secret_named_variable_is_redacted(project):
    python_job(project, """
        import os

        def sync(ctx):
            print("using", os.environ["AIRDROPS_TOKEN"])
            raise RuntimeError("auth failed for " + os.environ["AIRDROPS_TOKEN"])
    """)

    result = project.cli("run", "sync", env={"AIRDROPS_TOKEN": "undeclared-Tok-31337"})

    assert result.returncode == 1
    assert "undeclared-Tok-31337" not in result.stderr + result.stdout
    [run] = project.history("sync")
    assert run["error"] == "RuntimeError: auth failed for ***"
    for path in project.path.rglob("*"):
        if path.is_file():
            assert b"undeclared-Tok-31337" not in path.read_bytes(), path


def test_a_secret_cut_by_the_error_length_is_still_redacted(project):
    python_job(project, """
        import os

        def sync(ctx):
            raise ValueError("x" * 290 + os.environ["API_KEY"] + " tail")
    """)

    result = project.cli("run", "sync", env={"API_KEY": "supersecretvalue-123"})

    assert result.returncode == 1
    [run] = project.history("sync")
    assert "supersec" not in run["error"] and "supersec" not in result.stderr
    assert run["error"].startswith("ValueError: xxx")


@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 20])
def test_json_values_counts_what_is_outside_strings_in_any_slicing(monkeypatch, chunk):
    from schedsync.jobs import http

    monkeypatch.setattr(http, "CHUNK", chunk)
    doc = {"a": "x,[{", "b": [1, 2, {"c": 'q\\",{['}], "d": "\\\\", "e": [[]], "f": '"[,'}
    # the object, its 5 members, 1, 2, the inner object, its string, the inner list, +1 as it is empty
    assert http.json_values(json.dumps(doc).encode(), 0) == 12
    assert http.json_values(b"[1,2,3]", 0) == 4

"""core/redact: the one place for secrets and cutting."""

from __future__ import annotations

import re
from urllib.parse import quote, quote_plus

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schedsync.config import expand, parse
from schedsync.core.redact import Secrets, clip, credential_name, environment_secrets, secret_name


@pytest.mark.parametrize("value", ["a b/c:d@e", "sec/ret-pass-991", "ünï cøde+&=?%41x", "plain-token-123"])
def test_every_form_a_secret_takes_on_the_way_out_is_known(value):
    secrets = Secrets()
    secrets.add(value)
    assert {value, quote(value, safe=""), quote_plus(value)} <= secrets.values
    assert httpx.URL("http://h/?q=" + value).query.decode()[2:] in secrets.values


def test_text_is_redacted_whole_then_cut_without_control_characters():
    secrets = Secrets()
    secrets.add("supersecretvalue")
    text = "x" * 95 + "supersecretvalue\x00\x1b[31m tail"
    assert clip(text, 100).endswith("xsupe…")  # cutting first leaks a piece: why clip() comes last
    shown = secrets.clip(text, 100)
    assert "supe" not in shown and "\x00" not in shown and "\x1b" not in shown


def test_secret_named_environment_variables_are_secrets_declared_or_not(tmp_path):
    config = parse("jobs:\n  a: {command: [\"true\"]}\n", str(tmp_path / "jobs.yaml"), str(tmp_path))
    env = {"AIRDROPS_TOKEN": "tok-12345", "MY_API_KEY": "k-98765", "USE_AUTH": "true",
           "SHORT_PASS": "abc", "HOME": "/home/someone"}
    _, secrets = expand(config.job("a"), config.path, env)
    assert secrets.redact("tok-12345 k-98765 true abc /home/someone") == "*** *** true abc /home/someone"
    again = Secrets()
    environment_secrets(env, again)
    assert "tok-12345" in again.values


# What made a variable's name a secret's before secret_name() (the pattern every run used to compile).
SECRET_NAME_BEFORE = re.compile(r"TOKEN|SECRET|KEY|PASS|AUTH|CRED", re.I)
NAME_PIECES = st.sampled_from(["TOKEN", "token", "Secret", "kEy", "PASS", "auth", "Cred", "KE", "Y", "_", "A",
                               "1", "API", "HOME", "ſ", "K", "ı", "İ", "ß", "é", "TOKEN\n"])


@given(st.lists(NAME_PIECES, max_size=6).map("".join) | st.text(max_size=12))
def test_a_secret_name_is_told_as_the_case_blind_pattern_tells_it(name):
    assert secret_name(name) is bool(SECRET_NAME_BEFORE.search(name)), name


def test_a_secret_name_without_re_as_before():
    for name in ("AIRDROPS_TOKEN", "my_api_key", "PGPASSWORD", "X_Auth", "aws_credentials", "ToKeN",
                 "\u017fECRET", "\u212aEY"):  # the long s and the Kelvin sign: re.I's S and K
        assert secret_name(name), name
    for name in ("HOME", "PATH", "LANG", "SHELL", "TOKE_N", "KE Y", ""):
        assert not secret_name(name), name


def test_credential_names():
    for name in ("api_key", "X-Api-Key", "accessToken", "Authorization", "sig", "Cookie"):
        assert credential_name(name), name
    for name in ("page", "Accept", "limit", "Content-Type", "updated_since"):
        assert not credential_name(name), name


# --- end to end, through the real CLI ---------------------------------------------------

TOKEN = "Kq9w/Zx7&Ünï<Mv3p"  # a '/', an '&' and a '<', and letters beyond ASCII
PIECES = ("Kq9w", "Mv3p")  # neither may be shown, however the token was escaped


def _shown(project, job: str, result) -> str:
    history = project.cli("history", job, "--json")
    logs = project.cli("logs", job)
    return "".join(r.stdout + r.stderr for r in (result, history, logs))


@pytest.mark.parametrize("escaped", [
    r"Kq9w\/Zx7&\u00dcn\u00ef<Mv3p",  # PHP's json_encode: '/' as '\/', non-ASCII as \u
    r"Kq9w/Zx7\u0026\u00DCn\u00EF\u003cMv3p",  # Go's encoding/json (HTML-safe), hex in capitals
    r"\u004bq9w\/Zx7\u0026\u00dcn\u00ef\u003cMv3\u0070",  # any character may be escaped
])
def test_a_secret_echoed_back_json_escaped_in_an_error_body_is_redacted(project, escaped):
    from test_http import Upstream

    upstream = Upstream()
    try:
        @upstream.route("/items")
        def items(request):
            body = '{"error": "token ' + escaped + ' is revoked"}'
            return 401, body.encode(), {"Content-Type": "application/json"}

        project.write(f"""
            jobs:
              sync:
                http:
                  url: "{upstream.base}/items"
                  params: {{key: "${{API_TOKEN}}"}}
                  items: data
                into: {{table: t, pk: id}}
        """)
        result = project.cli("run", "sync", env={"API_TOKEN": TOKEN})
    finally:
        upstream.close()
    assert result.returncode == 1
    assert "returned HTTP 401" in result.stderr and "token *** is revoked" in result.stderr
    shown = _shown(project, "sync", result)
    for piece in PIECES:
        assert piece not in shown, shown


def test_a_secret_a_command_prints_json_escaped_is_redacted(project):
    project.write("""
        jobs:
          dump:
            env: {MY_TOKEN: "${API_TOKEN}"}
            command: ["python3", "-c", "import json, os; print(json.dumps({'t': os.environ['MY_TOKEN']})); exit(1)"]
    """)
    result = project.cli("run", "dump", env={"API_TOKEN": TOKEN})
    assert result.returncode == 1
    assert '{"t": "***"}' in result.stdout
    shown = _shown(project, "dump", result)
    for piece in PIECES:
        assert piece not in shown, shown


def test_each_line_of_a_multi_line_secret_is_a_secret_but_short_lines_are_not(project):
    # The job prints its key's lines one at a time: the last becomes the `exit 1: <line>`
    # error. A 2-character line of the key must not turn every "ab" into ***.
    project.write("""
        jobs:
          key:
            env: {DEPLOY_KEY: "${ML_KEY}"}
            command: 'echo "start ab"; printf "%s\\n" "$DEPLOY_KEY" | head -n 1; """
                  """printf "%s\\n" "$DEPLOY_KEY" | sed -n 2p; exit 1'
    """)
    result = project.cli("run", "key", env={"ML_KEY": "Kq9w-first-line\r\n    Mv3p-second-line\nab\n    \n"})
    assert result.returncode == 1
    [run] = project.history("key")
    assert run["error"].startswith("exit 1:") and run["error"].endswith(" ***")
    assert "start ab" in result.stdout and "start ab" in run["output"]
    shown = _shown(project, "key", result)
    for piece in PIECES:
        assert piece not in shown, shown


def test_multi_line_and_escaped_forms_of_one_secret():
    secrets = Secrets()
    secrets.add("line-one\r\n  line-two  \nxy\n")
    assert secrets.redact("a line-two b xy") == "a *** b xy"
    secrets.add("sl/ash-é")
    assert secrets.redact('{"v": "sl\\/ash-\\u00e9", "w": "sl\\/ash-\\u00E9"}') == '{"v": "***", "w": "***"}'
    assert secrets.redact("sl\\/ash-e") == "sl\\/ash-e"  # another value is not hidden

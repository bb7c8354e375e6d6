"""core/redact: the one place for secrets and cutting."""

from __future__ import annotations

from urllib.parse import quote, quote_plus

import httpx
import pytest

from schedsync.config import expand, parse
from schedsync.core.redact import Secrets, clip, credential_name, environment_secrets


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


def test_credential_names():
    for name in ("api_key", "X-Api-Key", "accessToken", "Authorization", "sig", "Cookie"):
        assert credential_name(name), name
    for name in ("page", "Accept", "limit", "Content-Type", "updated_since"):
        assert not credential_name(name), name

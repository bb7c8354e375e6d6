"""``notify: [{slack: URL}]`` and ``[{email: ADDRESS}]`` with ``repeat:`` (issue 20 item 4):
the real CLI posts to a local HTTP server and mails a real SMTP server on loopback
(aiosmtpd) over STARTTLS with a throwaway self-signed certificate."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

SLACK_PATH = "/services/T000/B000/XXXXSECRETPATH"
NO_PROXY = {"NO_PROXY": "*", "no_proxy": "*", "HTTP_PROXY": "", "HTTPS_PROXY": "",
            "http_proxy": "", "https_proxy": ""}


@pytest.fixture
def slack(httpserver):
    httpserver.expect_request(SLACK_PATH, method="POST").respond_with_data("ok")
    return httpserver


def slack_posts(server) -> list[dict]:
    return [json.loads(request.get_data()) for request, _ in server.log if request.path == SLACK_PATH]


def failing_job(project, notify: str, top: str = "", fail_file: bool = True) -> None:
    """``broken`` fails (printing its API token, a secret) until the file ``ok`` exists."""
    project.write(f"""
        state: schedsync.db
        {top}
        jobs:
          broken:
            schedule: "0 * * * *"
            env: {{API_TOKEN: "${{API_TOKEN}}"}}
            command: "test -f ok || {{ echo line one; echo using $API_TOKEN;
              echo upstream refused $API_TOKEN >&2; exit 3; }}"
            notify: {notify}
    """)


ENV = {"API_TOKEN": "tok-5ecret-value", **NO_PROXY}


def run(project, env=None) -> subprocess.CompletedProcess:
    return project.cli("run", "--force-slot", "broken", env={**ENV, **(env or {})})


# --- Slack ------------------------------------------------------------------------------

def test_slack_gets_the_incoming_webhook_format_with_a_link_and_no_secret(project, slack):
    url = slack.url_for(SLACK_PATH)
    failing_job(project, f'[{{slack: "{url}"}}]', top="serve_url: https://sched.example.com/")
    result = run(project)
    assert result.returncode == 1  # the job's own result
    body, = slack_posts(slack)
    assert set(body) == {"text", "blocks", "attachments"}
    assert body["text"].startswith("broken failed on ")
    assert "<https://sched.example.com/job/broken|broken>" in body["text"]
    shown = json.dumps(body)
    assert "tok-5ecret-value" not in shown and "refused ***" in shown  # the run's error, redacted
    fields = {f["text"].split("\n")[0]: f["text"].split("\n", 1)[1] for f in body["blocks"][1]["fields"]}
    assert fields["*Job*"] == "broken" and fields["*Health*"] == "FAILING" and fields["*Why*"]
    texts = [b["text"]["text"] for b in body["blocks"] if b["type"] == "section"]
    assert any(t.startswith("*Error*") and "upstream refused" in t for t in texts)
    assert any("<https://sched.example.com/job/broken|" in t for t in texts)
    attachment, = body["attachments"]
    assert attachment["title_link"] == "https://sched.example.com/job/broken"
    assert {f["title"] for f in attachment["fields"]} >= {"Job", "Health", "Why", "Error"}
    # The webhook URL is a credential: status and history show only its host.
    status = project.cli("status", "broken", env=ENV)
    history = project.cli("history", "broken", "--json", env=ENV)
    for out in (status.stdout + status.stderr, history.stdout):
        assert "XXXXSECRETPATH" not in out and "tok-5ecret-value" not in out
    assert "http://localhost:" in status.stdout or "http://127.0.0.1:" in status.stdout, status.stdout


def test_a_slack_url_that_fails_never_changes_the_result_nor_shows_the_url(project):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    failing_job(project, f'[{{slack: "http://127.0.0.1:{port}{SLACK_PATH}", events: [failure, recovery]}}]')
    assert run(project).returncode == 1
    (project.path / "ok").touch()
    assert run(project).returncode == 0
    status = project.cli("status", "broken", env=ENV)
    assert "XXXXSECRETPATH" not in status.stdout + status.stderr
    assert "connection refused" in status.stdout, status.stdout


def test_repeat_resends_while_the_job_keeps_failing_and_a_new_streak_sends_at_once(project, slack):
    url = slack.url_for(SLACK_PATH)
    failing_job(project, f'[{{slack: "{url}", repeat: 1h}}]')
    assert run(project).returncode == 1
    assert run(project).returncode == 1  # within the hour: not again
    assert len(slack_posts(slack)) == 1
    # The same target with a short repeat, once it has passed: sent again (the mark is in the state).
    failing_job(project, f'[{{slack: "{url}", repeat: 1s}}]')
    time.sleep(1.2)
    assert run(project).returncode == 1
    posts = slack_posts(slack)
    assert len(posts) == 2 and "(3 failures in a row)" in posts[1]["text"]
    # Back to an hour: a recovery, then a new streak's first failure goes out at once.
    failing_job(project, f'[{{slack: "{url}", repeat: 1h}}]')
    (project.path / "ok").touch()
    assert run(project).returncode == 0
    (project.path / "ok").unlink()
    assert run(project).returncode == 1
    posts = slack_posts(slack)
    assert [p["attachments"][0]["title"] for p in posts] == ["broken failed", "broken failed",
                                                             "broken recovered", "broken failed"]


def test_without_repeat_every_failure_is_sent_as_before(project, slack):
    failing_job(project, f'[{{slack: "{slack.url_for(SLACK_PATH)}"}}]')
    assert run(project).returncode == 1
    assert run(project).returncode == 1
    assert len(slack_posts(slack)) == 2


# --- email over SMTP with STARTTLS --------------------------------------------------------

class _Received:
    def __init__(self):
        self.mails: list[dict] = []

    async def handle_DATA(self, server, session, envelope):
        self.mails.append({"tls": session.ssl is not None, "rcpt": list(envelope.rcpt_tos),
                           "from": envelope.mail_from, "data": envelope.content.decode("utf-8", "replace"),
                           "login": session.auth_data.login if session.auth_data else None})
        return "250 OK"


@pytest.fixture
def smtp_server(tmp_path):
    """aiosmtpd on 127.0.0.1 (a free port), STARTTLS required, AUTH user/pass; a cert made here."""
    import ssl

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = auth_data.login == b"alerts" and auth_data.password == b"smtp-pa55word"
        return AuthResult(success=ok, auth_data=auth_data, handled=False)  # False: aiosmtpd answers 535

    class FreePort(Controller):  # port 0: the kernel picks, then the trigger uses it
        def _trigger_server(self):
            self.port = self.server.sockets[0].getsockname()[1]
            super()._trigger_server()

    handler = _Received()
    controller = FreePort(handler, hostname="127.0.0.1", port=0, require_starttls=True,
                          tls_context=context, authenticator=authenticate, auth_require_tls=True,
                          auth_exclude_mechanism=["LOGIN"],  # smtplib then tries PLAIN only
                          ready_timeout=30)
    controller.start()
    try:
        yield controller.port, cert, handler
    finally:
        controller.stop()


def smtp_top(port: int, ca: str, starttls: str = "true") -> str:
    return (f'smtp: {{host: 127.0.0.1, port: {port}, starttls: {starttls}, user: alerts, '
            f'password: "${{SMTP_PASSWORD}}", from: "schedsync@example.com", ca_file: "{ca}"}}\n'
            "        serve_url: http://sched.example.com")


def test_a_failure_mail_goes_over_starttls_names_the_job_and_holds_the_redacted_tail(project, smtp_server):
    port, cert, received = smtp_server
    failing_job(project, '[{email: ops@example.com}]', top=smtp_top(port, cert))
    env = {"SMTP_PASSWORD": "smtp-pa55word"}
    assert run(project, env).returncode == 1
    mail, = received.mails
    assert mail["tls"] is True and mail["rcpt"] == ["ops@example.com"]
    assert mail["from"] == "schedsync@example.com" and mail["login"] == b"alerts"
    from email import message_from_string

    parsed = message_from_string(mail["data"])
    assert parsed["Subject"].startswith("[schedsync] broken failed on ")
    text = parsed.get_payload(decode=True).decode()
    assert "using ***" in text and "upstream refused ***" in text  # the output tail
    assert "line one" in text and "http://sched.example.com/job/broken" in text
    assert "tok-5ecret-value" not in mail["data"]
    # Recorded as sent, to mailto:..., with no password anywhere.
    status = project.cli("status", "broken", env={**ENV, **env})
    assert "mailto:ops@example.com" in status.stdout and "STARTTLS" in status.stdout, status.stdout
    history = project.cli("history", "broken", "--json", env={**ENV, **env})
    for out in (status.stdout, status.stderr, history.stdout, history.stderr):
        assert "smtp-pa55word" not in out


def test_a_wrong_smtp_password_fails_the_mail_not_the_run_and_is_never_shown(project, smtp_server):
    port, cert, received = smtp_server
    failing_job(project, '[{email: ops@example.com, events: [failure, recovery]}]', top=smtp_top(port, cert))
    (project.path / "ok").touch()
    project.cli("run", "--force-slot", "broken", env={**ENV, "SMTP_PASSWORD": "wrong-pa55"})  # nothing to send yet
    (project.path / "ok").unlink()
    result = run(project, {"SMTP_PASSWORD": "wrong-pa55"})
    assert result.returncode == 1 and not received.mails
    status = project.cli("status", "broken", env=ENV)
    assert "SMTP login refused (535)" in status.stdout, status.stdout
    assert "wrong-pa55" not in status.stdout + status.stderr + result.stderr


def test_an_untrusted_certificate_is_refused_and_said_how_to_trust_it(project, smtp_server):
    port, _, received = smtp_server
    failing_job(project, '[{email: ops@example.com}]',
                top=smtp_top(port, "/etc/ssl/certs/ca-certificates.crt"))
    assert run(project, {"SMTP_PASSWORD": "smtp-pa55word"}).returncode == 1
    assert not received.mails
    status = project.cli("status", "broken", env=ENV)
    assert "TLS: " in status.stdout and "ca_file" in status.stdout, status.stdout


# --- validation ---------------------------------------------------------------------------

@pytest.mark.parametrize(("top", "notify", "error"), [
    ("", "[{email: ops@example.com}]", "jobs.broken.notify[0].email: mail needs a top-level `smtp:`"),
    ("smtp: {host: h, from: a@b, password: hunter2}", "[{email: ops@example.com}]",
     "smtp.password: must be an environment variable, not the password itself"),
    ("", "[{slack: 'https://h/x', url: 'https://h/y'}]", "has url and slack; one target per entry"),
    ("", "[{slack: 'https://h/x', repeat: 0s}]", "repeat: must be more than 0s"),
    ("smtp: {host: h, from: a@b}", "[{email: 'a@b, c@d'}]", "is not one mail address"),
])
def test_notifier_settings_are_validated_with_file_and_line(project, top, notify, error):
    failing_job(project, notify, top=top)
    result = project.cli("validate")
    assert result.returncode == 2, result.stdout
    assert error in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "hunter2" not in result.stderr


def test_late_goes_to_slack_and_mail_once_per_missed_stretch(project, slack, smtp_server):
    """``late`` is sent by ``status`` (a late job cannot report itself), to every kind of entry."""
    from schedsync.store import open_store

    port, cert, received = smtp_server
    project.write(f"""
        state: schedsync.db
        {smtp_top(port, cert)}
        jobs:
          every-minute:
            schedule: "* * * * *"
            grace: 0s
            command: ["true"]
            notify:
              - {{slack: "{slack.url_for(SLACK_PATH)}", events: [late]}}
              - {{email: ops@example.com, events: [late]}}
    """)
    store = open_store(str(project.state))
    try:
        store.see_jobs(["every-minute"], time.time() - 3600)
    finally:
        store.close()
    env = {**NO_PROXY, "SMTP_PASSWORD": "smtp-pa55word"}
    assert project.cli("status", env=env).returncode == 0
    assert project.cli("status", "--json", env=env).returncode == 0
    post, = slack_posts(slack)
    assert post["attachments"][0]["title"] == "every-minute late" and "is late on" in post["text"]
    mail, = received.mails
    assert "Subject: [schedsync] every-minute late on " in mail["data"]

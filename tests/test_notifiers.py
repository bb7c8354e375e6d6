"""The notifier extension point (``schedsync/notify``): a notifier is one module with a
``NOTIFIER``, listed in ``notify.NOTIFIERS``; delivery (redaction, recorded outcomes,
order) is shared. What webhooks and pings send is in test_notify.py."""

from __future__ import annotations

import sys
import textwrap


def test_a_plain_command_job_imports_nothing_of_the_notifiers(project):
    project.write("""
        jobs:
          plain:
            command: ["true"]
    """)
    result = project.cli("run", "plain", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 0
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "schedsync.app.runner" in imported  # the profile is there
    assert not {name for name in imported if name.startswith("schedsync.notify")}


def test_a_new_notifier_is_one_module_and_shares_the_delivery(project, httpserver, monkeypatch):
    """A notifier written outside the package, only listed in the registry, is asked at
    the start and end of a real run; what it is handed is redacted, and its outcomes are
    recorded in order after the built-in ones."""
    httpserver.expect_request("/ping/start").respond_with_data("OK")
    httpserver.expect_request("/ping").respond_with_data("OK")
    (project.path / "memo_notifier.py").write_text(textwrap.dedent("""
        from schedsync.notify.base import Message, Notifier

        SENT = []

        class Memo(Notifier):
            def run_started(self, job, run):
                return [Message(self, "memo:start", "memo://desk", {"token": job.env["API_TOKEN"]})]

            def run_finished(self, job, done):
                return [Message(self, f"memo:{done.run.status}", "memo://desk", None)]

            def send(self, target, body, secrets):
                SENT.append(body)
                return True, "noted"

            def shown(self, target, secrets):
                return target

        NOTIFIER = Memo()
    """))
    project.write(f"""
        jobs:
          noted:
            env: {{API_TOKEN: "${{API_TOKEN}}"}}
            command: ["true"]
            ping: "{httpserver.url_for('/ping')}"
    """)
    import schedsync.notify
    from schedsync.app.run import run
    from schedsync.config import load
    from schedsync.store import open_store

    monkeypatch.syspath_prepend(str(project.path))
    monkeypatch.setattr(schedsync.notify, "NOTIFIERS", (*schedsync.notify.NOTIFIERS, "memo_notifier"))
    monkeypatch.setenv("API_TOKEN", "memo-secret-0815")
    store = open_store(str(project.state))
    try:
        result = run(load(project.config), "noted", store, trigger="manual", interactive=False)
        assert result.run.status == "success"
        notes = [(n.event, n.target, n.ok, n.detail) for n in reversed(store.notifications("noted"))]
    finally:
        store.close()
    memo_notifier = sys.modules.pop("memo_notifier")
    assert memo_notifier.SENT == [{"token": "***"}, None]
    host = httpserver.url_for("/").rstrip("/")
    assert notes == [("ping:start", f"{host}/…", True, "HTTP 200"), ("memo:start", "memo://desk", True, "noted"),
                     ("ping:success", f"{host}/…", True, "HTTP 200"),
                     ("memo:success", "memo://desk", True, "noted")]

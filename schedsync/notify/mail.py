"""``notify: [{email: ADDRESS}]``: one mail per event over SMTP, with the registry's
top-level ``smtp:`` (host, port, ``starttls`` (default on), ``user``, ``password:
"${VAR}"``, ``from``, ``ca_file`` or ``verify: false`` for a server whose certificate the
system does not trust). The subject names the job and the event; the body holds the
status line, the run's error and the tail of its output, redacted like every payload.
smtplib and ssl are imported on first send."""

from __future__ import annotations

from schedsync.notify.base import TIMEOUT, Notifier, text
from schedsync.notify.slack import TITLES, link
from schedsync.store.liveness import HOST

TAIL_LINES = 40
TAIL_CHARS = 4000


def tail(output: str | None) -> str:
    """The end of a run's output, bounded in lines and characters."""
    if not output:
        return ""
    lines = output[-TAIL_CHARS:].splitlines()[-TAIL_LINES:]
    return "\n".join(lines)


class Mail(Notifier):
    KEY = "email"

    def body(self, event, target, entry, run, now, previous_streak=None, finished=None, retry=None) -> dict:
        name = entry["name"]
        streak = entry["consecutive_failures"]
        subject = f"[schedsync] {name} {TITLES[event]} on {HOST}"
        if event == "failure" and streak > 1:
            subject += f" ({streak} in a row)"
        parts = [text(event, entry, run, previous_streak, retry), "",
                 f"Job:     {name}", f"Health:  {entry['health']}", f"Why:     {entry['why'] or '-'}",
                 f"Host:    {HOST}"]
        if run:
            parts.append(f"Run:     #{run['id']} {run['status']}, started {run['started_at']}")
        url = link(target, name)
        if url:
            parts.append(f"Details: {url}")
        error = ((run or {}).get("error") or "").strip()
        if error:
            parts += ["", "Error:", error[:TAIL_CHARS]]
        output = tail(getattr(finished, "output", None))
        if output:
            parts += ["", f"Output (last {TAIL_LINES} lines at most):", output]
        return {"subject": subject, "text": "\n".join(parts) + "\n"}

    def shown(self, target: str, secrets) -> str:
        return secrets.redact(f"mailto:{target}")

    def deliver(self, message, body, secrets) -> tuple[bool, str]:
        return send_mail(message.target, body or {}, (message.options or {}).get("smtp") or {}, secrets)

    def send(self, target: str, body: dict | None, secrets) -> tuple[bool, str]:  # pragma: no cover
        raise NotImplementedError("mail goes through deliver: it needs the smtp settings")


def send_mail(to: str, body: dict, smtp: dict, secrets) -> tuple[bool, str]:
    """One mail through ``smtp`` (expanded settings); (ok, what happened), secrets redacted."""
    import smtplib
    import ssl
    from email.message import EmailMessage
    from email.utils import formatdate, make_msgid

    host, port = smtp.get("host", ""), smtp.get("port")
    starttls = smtp.get("starttls", True)
    try:
        mail = EmailMessage()
        mail["Subject"] = body.get("subject", "[schedsync]")
        mail["From"] = smtp.get("from", "")
        mail["To"] = to
        mail["Date"] = formatdate(localtime=True)
        mail["Message-ID"] = make_msgid(domain="schedsync.invalid")  # no getfqdn(): a DNS lookup
        mail["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
        mail.set_content(body.get("text", ""))
        with smtplib.SMTP(host, port or (587 if starttls else 25), timeout=TIMEOUT) as client:
            client.ehlo()
            if starttls:
                context = ssl.create_default_context(cafile=smtp.get("ca_file"))
                if smtp.get("verify") is False:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                client.starttls(context=context)
                client.ehlo()
            if smtp.get("user"):
                client.login(smtp["user"], smtp.get("password") or "")
            refused = client.send_message(mail)
        if refused:
            return False, secrets.redact(f"SMTP refused {', '.join(refused)}")
        return True, "SMTP 250 accepted" + (" (STARTTLS)" if starttls else "")
    except smtplib.SMTPAuthenticationError as exc:
        return False, f"SMTP login refused ({exc.smtp_code})"
    except smtplib.SMTPNotSupportedError:
        return False, "the SMTP server offers no STARTTLS (or no AUTH)"
    except smtplib.SMTPResponseException as exc:
        said = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        return False, secrets.redact(f"SMTP {exc.smtp_code} {' '.join(said.split())[:200]}")
    except ssl.SSLCertVerificationError as exc:
        return False, secrets.redact(f"TLS: {exc.verify_message or exc.reason}"
                                     " (set smtp.ca_file, or verify: false for a test server)")
    except ssl.SSLError as exc:
        return False, secrets.redact(f"TLS: {exc.reason or exc}")
    except TimeoutError:
        return False, f"timed out after {TIMEOUT:g}s"
    except ConnectionRefusedError:
        return False, "connection refused"
    except (smtplib.SMTPException, OSError, ValueError) as exc:
        return False, secrets.redact(str(getattr(exc, "strerror", None) or exc))[:300] or type(exc).__name__


NOTIFIER = Mail()

"""The outbox provider: every message becomes a file under `.nurture/outbox/`.

The default when no provider key is set, so a newcomer can run Nurture safely:
nothing leaves the machine. Files are named by our message ID, so a retried
send rewrites the same file instead of adding a second one.
"""

from __future__ import annotations

import logging
import uuid
from email.message import EmailMessage
from pathlib import Path

from channels.base import OutgoingEmail, OutgoingSms, SendResult

log = logging.getLogger("nurture.outbox")


class OutboxChannel:
    name = "outbox"
    # Sending the same message ID again rewrites the same file: safe to repeat.
    idempotent = True

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def send_email(self, email: OutgoingEmail) -> SendResult:
        message = EmailMessage()
        message["From"] = f"{email.from_name} <{email.from_email}>"
        message["To"] = email.to
        message["Subject"] = email.subject
        message["X-Nurture-Message-Id"] = email.message_id
        if email.reply_to:
            message["Reply-To"] = email.reply_to
        for name, value in {**email.headers, **_tag_headers(email.tags)}.items():
            message[name] = value
        message.set_content(email.text)
        message.add_alternative(email.html, subtype="html")
        path = self._write(f"{email.message_id}.eml", message.as_bytes())
        log.info("outbox email to=%s subject=%r file=%s", _mask(email.to), email.subject, path)
        return SendResult(self.name, f"outbox-{email.message_id}")

    def send_sms(self, sms: OutgoingSms) -> SendResult:
        lines = [f"To: {sms.to}", f"X-Nurture-Message-Id: {sms.message_id}"]
        lines += [f"{k}: {v}" for k, v in _tag_headers(sms.tags).items()]
        path = self._write(
            f"{sms.message_id}.sms.txt", ("\n".join(lines) + "\n\n" + sms.body).encode()
        )
        log.info("outbox sms to=%s chars=%d file=%s", _mask(sms.to), len(sms.body), path)
        return SendResult(self.name, f"outbox-{sms.message_id}")

    def _write(self, name: str, content: bytes) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / name
        temporary = path.with_suffix(f"{path.suffix}.{uuid.uuid4().hex}.tmp")
        temporary.write_bytes(content)
        temporary.replace(path)  # atomic: a reader never sees half a message
        return path


def _tag_headers(tags: dict[str, str]) -> dict[str, str]:
    return {f"X-Nurture-{key.replace('_', '-').title()}": value for key, value in tags.items()}


def _mask(address: str) -> str:
    """Keep logs free of full addresses and numbers."""
    if "@" in address:
        local, _, domain = address.partition("@")
        return f"{local[:1]}***@{domain}"
    return f"{address[:3]}***{address[-2:]}"

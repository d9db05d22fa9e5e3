"""The channel interface: one small protocol per channel, so providers are interchangeable.

The outbox (files on disk) implements both today; SendGrid and Twilio adapters
plug in behind the same protocols.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

# Seconds a provider call may take; the send activity's own timeout is longer.
PROVIDER_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class OutgoingEmail:
    message_id: str  # ours; providers echo it back in events
    to: str
    from_email: str
    from_name: str
    subject: str
    html: str
    text: str
    headers: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)  # lead, enrollment, step ids
    categories: tuple[str, ...] = ()  # for the provider's per-sequence and per-step stats
    reply_to: str | None = None


@dataclass(frozen=True)
class OutgoingSms:
    message_id: str
    to: str
    body: str
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SendResult:
    provider: str
    provider_message_id: str


class EmailChannel(Protocol):
    # True when sending the same message ID twice delivers it once (the outbox);
    # otherwise an interrupted send's outcome is unknown and is not repeated.
    idempotent: bool

    def send_email(self, email: OutgoingEmail) -> SendResult: ...


class SmsChannel(Protocol):
    idempotent: bool

    def send_sms(self, sms: OutgoingSms) -> SendResult: ...

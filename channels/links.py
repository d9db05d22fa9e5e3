"""Signed tokens in what we send: unsubscribe links and reply-to addresses.

A token names a lead and a channel (unsubscribe), one of our messages (reply) or a
handoff and the rep it was sent to (the answer links in handoff notifications),
signed with NURTURE_SECRET_KEY, so nobody can unsubscribe someone else or pass a
reply off as another lead's.
"""

from __future__ import annotations

from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeSerializer


class BadToken(ValueError):
    pass


@dataclass(frozen=True)
class Links:
    secret_key: str
    public_url: str
    inbound_domain: str | None = None

    def _serializer(self, purpose: str) -> URLSafeSerializer:
        return URLSafeSerializer(self.secret_key, salt=f"nurture-{purpose}")

    def unsubscribe_url(self, lead_id: str, channel: str = "email") -> str:
        token = self._serializer("unsubscribe").dumps({"lead": lead_id, "channel": channel})
        return f"{self.public_url.rstrip('/')}/unsubscribe/{token}"

    def read_unsubscribe(self, token: str) -> tuple[str, str]:
        """(lead id, channel) of a token; BadToken if it was not made by us."""
        try:
            data = self._serializer("unsubscribe").loads(token)
            return data["lead"], data["channel"]
        except (BadSignature, KeyError, TypeError):
            raise BadToken("this unsubscribe link is not valid") from None

    def handoff_url(self, handoff_id: str, rep_id: str, answer: str | None = None) -> str:
        """The answer page of a handoff, for the rep it was sent to (`answer` preselects
        accept, reject or disqualify; the page still asks to confirm: mail scanners
        open links, so a GET never answers)."""
        token = self._serializer("handoff").dumps({"handoff": handoff_id, "rep": rep_id})
        url = f"{self.public_url.rstrip('/')}/handoffs/{handoff_id}?token={token}"
        return f"{url}&answer={answer}" if answer else url

    def read_handoff(self, token: str) -> tuple[str, str]:
        """(handoff id, rep id) of an answer-link token; BadToken if it was not made by us."""
        try:
            data = self._serializer("handoff").loads(token)
            return data["handoff"], data["rep"]
        except (BadSignature, KeyError, TypeError):
            raise BadToken("this answer link is not valid") from None

    def reply_to(self, message_id: str) -> str | None:
        """reply+<signed message id>@<inbound domain>, when an inbound domain is set."""
        if not self.inbound_domain:
            return None
        token = self._serializer("reply").dumps(message_id)
        return f"reply+{token}@{self.inbound_domain}"

    def read_reply(self, address: str) -> str | None:
        """Our message ID from a reply+token address, or None if it is not one of ours."""
        local = address.strip().split("@", 1)[0]
        if not local.startswith("reply+"):
            return None
        try:
            return str(self._serializer("reply").loads(local.removeprefix("reply+")))
        except BadSignature:
            return None

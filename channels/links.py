"""Signed tokens in what we send: unsubscribe links, reply-to addresses and tracked links.

A token names a lead and a channel (unsubscribe), one of our messages (reply), a
handoff and the rep it was sent to (the answer links in handoff notifications) or a
lead (`nt=<lead id>.<mac>` on a link to the website: the tracking snippet joins the
browser to the lead, docs/tracking.md), signed with NURTURE_SECRET_KEY, so nobody can
unsubscribe someone else, pass a reply off as another lead's or have their visits
counted as another lead's.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

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
        """reply+<message id>-<signature>@<inbound domain>, when an inbound domain is set.

        The local part stays within RFC 5321's 64 characters, in lower case hex (some
        servers fold the case of addresses)."""
        if not self.inbound_domain:
            return None
        local = f"reply+{message_id}-{self._reply_mac(message_id)}"
        if len(local) > MAX_LOCAL_PART or not _REPLY_ID.fullmatch(message_id):
            raise ValueError(f"message ID {message_id!r} does not fit a reply address")
        return f"{local}@{self.inbound_domain}"

    def read_reply(self, address: str) -> str | None:
        """Our message ID from a reply+token address, or None if it is not one of ours."""
        local = address.strip().split("@", 1)[0]
        if not local.lower().startswith("reply+"):
            return None
        token = local[len("reply+") :]
        compact = _REPLY_TOKEN.fullmatch(token.lower())
        if compact:
            message_id, mac = compact.groups()
            return message_id if hmac.compare_digest(mac, self._reply_mac(message_id)) else None
        try:  # the longer tokens of emails sent before the compact form
            return str(self._serializer("reply").loads(token))
        except BadSignature:
            return None

    def _reply_mac(self, message_id: str) -> str:
        key = f"nurture-reply:{self.secret_key}".encode()
        return hmac.new(key, message_id.encode(), hashlib.sha256).hexdigest()[:REPLY_MAC_HEX]

    def tracking_token(self, lead_id: str) -> str:
        """`<lead id>.<mac>`: the value of a tracked link's `nt` parameter."""
        return f"{lead_id}.{self._tracking_mac(lead_id)}"

    def tracked_url(self, url: str, lead_id: str) -> str:
        """`url` with the lead's `nt` parameter added (its other parameters and fragment
        kept): a link in a message, which the website's snippet reads."""
        parts = urlsplit(url)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                 if k != TRACKING_PARAMETER]  # fmt: skip
        query.append((TRACKING_PARAMETER, self.tracking_token(lead_id)))
        return urlunsplit(parts._replace(query=urlencode(query)))

    def read_tracking_token(self, token: str) -> str | None:
        """The lead ID of an `nt` value we signed, else None."""
        found = _TRACKING_TOKEN.fullmatch(token.strip().lower())
        if not found:
            return None
        lead_id, mac = found.groups()
        return lead_id if hmac.compare_digest(mac, self._tracking_mac(lead_id)) else None

    def _tracking_mac(self, lead_id: str) -> str:
        key = f"nurture-track:{self.secret_key}".encode()
        return hmac.new(key, lead_id.encode(), hashlib.sha256).hexdigest()[:REPLY_MAC_HEX]


MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1
# 96 bits of HMAC-SHA256: "reply+" + a 32-character message ID + "-" + 24 = 63 characters.
REPLY_MAC_HEX = 24
_REPLY_ID = re.compile(r"[0-9a-f]{1,32}")
_REPLY_TOKEN = re.compile(rf"([0-9a-f]{{1,32}})-([0-9a-f]{{{REPLY_MAC_HEX}}})")
# A tracked link's parameter: `nt=<lead id>.<96 bits of HMAC-SHA256>`.
TRACKING_PARAMETER = "nt"
_TRACKING_TOKEN = re.compile(rf"([0-9a-f]{{1,32}})\.([0-9a-f]{{{REPLY_MAC_HEX}}})")

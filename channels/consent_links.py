"""The double opt-in's confirmation link: `<public URL>/confirm/<token>`.

The token names the lead and its confirmation request, signed with NURTURE_SECRET_KEY as
the unsubscribe links are (channels/links.py), under a salt of its own: nobody can confirm
for someone else, and an unsubscribe token is no confirmation token. Whether the request
is still open (not expired, not replaced by a newer one) is the database's to say.
"""

from __future__ import annotations

from itsdangerous import BadSignature, URLSafeSerializer

from channels.links import BadToken, Links


def _serializer(links: Links) -> URLSafeSerializer:
    return URLSafeSerializer(links.secret_key, salt="nurture-confirm")


def confirm_url(links: Links, lead_id: str, confirmation_id: str) -> str:
    token = _serializer(links).dumps({"lead": lead_id, "request": confirmation_id})
    return f"{links.public_url.rstrip('/')}/confirm/{token}"


def read_confirm(links: Links, token: str) -> tuple[str, str]:
    """(lead id, confirmation request id) of a token; BadToken if it was not made by us."""
    try:
        data = _serializer(links).loads(token)
        return str(data["lead"]), str(data["request"])
    except (BadSignature, KeyError, TypeError):
        raise BadToken("this confirmation link is not valid") from None

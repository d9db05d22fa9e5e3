"""Is an inbound email a person's reply, or a machine answering for them?

An out-of-office or other automatic reply says nothing about the lead's interest: it is
kept apart (`email.auto_reply`), never scored as engagement and never ends a sequence as
a reply would. Recognised by the headers RFC 3834 and common mail servers set, then by
the out-of-office subjects of the shipped languages (English and German).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

AUTO_REPLY = "email.auto_reply"

# Headers whose mere presence marks an automatic answer (Exchange, many autoresponders).
_FLAG_HEADERS = ("X-Autoreply", "X-Autorespond", "X-Autoresponder")
# Precedence values autoresponders set on what they send (not a standard, but common).
_AUTOMATIC_PRECEDENCE = frozenset({"auto_reply", "bulk", "junk"})
_SUBJECTS = re.compile(
    r"^\s*(?:(?:re|aw|wg|fw|fwd)\s*:\s*)*(?:"
    r"out\s+of\s+(?:the\s+)?office|automatic\s+reply|auto(?:matic)?[\s-]*(?:reply|response)"
    r"|away\s+from\s+(?:the\s+)?office|vacation\s+reply"
    r"|abwesenheitsnotiz|automatische\s+antwort|abwesend|nicht\s+im\s+b(?:ü|ue)ro"
    r"|(?:ich\s+bin\s+)?au(?:ß|ss)er\s+haus|urlaubsbenachrichtigung"
    r")",
    re.IGNORECASE,
)


def is_automatic(headers: Mapping[str, str], subject: str) -> str | None:
    """Why the email is an automatic reply (e.g. "Auto-Submitted: auto-replied"), or None
    if a person may have written it. `headers` is read case-insensitively."""
    found = {name.lower(): str(value).strip() for name, value in headers.items()}
    submitted = found.get("auto-submitted", "")
    if submitted and submitted.split(";")[0].strip().lower() != "no":
        return f"Auto-Submitted: {submitted[:60]}"
    for name in _FLAG_HEADERS:
        if name.lower() in found:
            return f"{name}: {found[name.lower()][:60]}"
    precedence = found.get("precedence", "").lower()
    if precedence in _AUTOMATIC_PRECEDENCE:
        return f"Precedence: {precedence}"
    if _SUBJECTS.match(subject or ""):
        return f"subject: {subject.strip()[:60]}"
    return None

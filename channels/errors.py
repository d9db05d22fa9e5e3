"""How a provider's refusal is classified: worth retrying, or final."""

from __future__ import annotations


class ProviderUnavailable(Exception):
    """429 or 5xx: nothing was sent; the activity retries with back-off."""

    def __init__(self, status: int, reason: str):
        self.status, self.reason = status, reason
        super().__init__(f"{status}: {reason}")


class ProviderRejected(Exception):
    """4xx: the provider refused this message for good.

    `consent_reason` is set when the refusal says the lead must not get more on this
    channel: `bad_address` (no such address or number) or `stop` (the number opted
    out at the provider).
    """

    def __init__(self, status: int, reason: str, consent_reason: str | None = None):
        self.status, self.reason, self.consent_reason = status, reason, consent_reason
        super().__init__(f"{status}: {reason}")


def classify(status: int, reason: str, consent_reason: str | None = None) -> Exception:
    if status == 429 or status >= 500:
        return ProviderUnavailable(status, reason)
    return ProviderRejected(status, reason, consent_reason)

"""How a provider's refusal is classified: worth retrying, or final."""

from __future__ import annotations


class ProviderUnavailable(Exception):
    """429 or 5xx: nothing was sent; the activity retries with back-off."""


class ProviderRejected(Exception):
    """4xx: the provider refused this message for good (bad address, ...)."""

    def __init__(self, status: int, reason: str):
        self.status, self.reason = status, reason
        super().__init__(f"{status}: {reason}")


def classify(status: int, reason: str) -> Exception:
    if status == 429 or status >= 500:
        return ProviderUnavailable(f"{status}: {reason}")
    return ProviderRejected(status, reason)

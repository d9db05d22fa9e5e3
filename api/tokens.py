"""Who an API request's bearer token is: NURTURE_API_TOKEN (an admin token: every scope)
or a user's API token with its scopes (services/accounts.py).

A user token's holder is cached for CACHE_SECONDS, so the hot routes (POST /events) do
not read the database on every request; a revoked token or a disabled user is refused
within that time.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.database import HandlerDatabase
from services import accounts
from services.accounts import TokenHolder

CACHE_SECONDS = 30.0
ADMIN = TokenHolder("api-token", accounts.SCOPES)
_bearer = HTTPBearer(auto_error=False)


class BearerTokens:
    def __init__(self, api_token: str, db: HandlerDatabase, sessions):
        self.api_token, self.db, self.sessions = api_token, db, sessions
        self._cache: dict[str, tuple[float, TokenHolder | None]] = {}

    async def holder(self, token: str) -> TokenHolder | None:
        if hmac.compare_digest(token.encode(), self.api_token.encode()):
            return ADMIN
        key = accounts.digest(token)
        cached = self._cache.get(key)
        if cached and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        found = await self.db.run(accounts.token_holder, self.sessions, token)
        if len(self._cache) > 10_000:  # guessed tokens must not grow it without end
            self._cache.clear()
        self._cache[key] = (time.monotonic(), found)
        return found

    async def check(
        self, credentials: HTTPAuthorizationCredentials | None, scope: str
    ) -> TokenHolder:
        """The token's holder, if it has `scope`: else 401 (no or unknown token) or 403."""
        holder = await self.holder(credentials.credentials) if credentials else None
        if holder is None:
            raise HTTPException(401, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
        if scope not in holder.scopes:
            raise HTTPException(403, f"this token does not have the scope {scope!r}")
        return holder

    def requiring(self, scope: str) -> Callable[..., Coroutine[Any, Any, TokenHolder]]:
        """A dependency: the holder of the request's token, which must have `scope`."""

        async def authenticated(
            credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        ) -> TokenHolder:
            return await self.check(credentials, scope)

        return authenticated

"""Who a request is: `Authorization: Bearer <tenant key>`, checked against the ledger's keyed hashes.

401 for a missing, malformed, unknown or revoked key (one message for all, so a caller learns nothing
of which); 403 for a key without the scope the endpoint needs. The key is never logged or stored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from router.api.errors import ApiError
from router.ledger import keys
from router.ledger.db import session_scope
from router.ledger.keys import Principal
from router.settings import Settings

bearer = HTTPBearer(auto_error=False, description="A tenant API key from `pennyroute keys create`.")

UNAUTHORIZED = "missing, malformed, unknown or revoked API key: send `Authorization: Bearer pr_live_...`"


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def require(scope: str) -> Callable[..., Principal]:
    """A dependency that answers with the request's Principal when its key holds `scope`."""

    def check(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> Principal:
        settings = settings_of(request)
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise ApiError(401, UNAUTHORIZED, kind="invalid_request_error", code="invalid_api_key")
        with session_scope(settings) as session:
            principal = keys.authenticate(session, key=credentials.credentials, secret=settings.key_secret())
        if principal is None:
            raise ApiError(401, UNAUTHORIZED, kind="invalid_request_error", code="invalid_api_key")
        if scope not in principal.scopes:
            raise ApiError(
                403,
                f"this key lacks the scope {scope} (it has {', '.join(sorted(principal.scopes)) or 'none'})",
                kind="permission_error",
                code="insufficient_scope",
            )
        request.state.principal = principal
        return principal

    check.__name__ = f"require_{scope.replace(':', '_')}"
    return check

"""Who a request is: `Authorization: Bearer <tenant key>`, checked against the ledger's keyed hashes.

401 for a missing, malformed, unknown or revoked key (one message for all, so a caller learns nothing
of which); 403 for a key without the scope the endpoint needs. The key is never logged or stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from router.api.errors import ApiError
from router.ledger import keys
from router.ledger.db import session_scope
from router.ledger.keys import Principal
from router.settings import Settings

log = logging.getLogger(__name__)

bearer = HTTPBearer(auto_error=False, description="A tenant API key from `pennyroute keys create`.")

# A key found good is trusted for this long by this process without reading the ledger again: a
# status poller's read then costs no key lookup. A revoked key is refused everywhere within this.
TRUST_S = 5.0
# A key in use is checked again in the background once its trust is this old, by one request at a
# time, so that its trust is renewed before it runs out: otherwise every request in flight when it
# ran out would read the ledger at once (a herd that stalls a busy server for a few hundred ms).
RECHECK_S = TRUST_S / 2

UNAUTHORIZED = "missing, malformed, unknown or revoked API key: send `Authorization: Bearer pr_live_...`"


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def require(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that answers with the request's Principal when its key holds `scope`. It runs on
    the event loop: a key trusted lately costs no thread hop and no ledger read; the ledger is read
    on a worker thread."""

    async def check(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> Principal:
        settings = settings_of(request)
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise ApiError(401, UNAUTHORIZED, kind="invalid_request_error", code="invalid_api_key")
        principal = _recent(request, settings, credentials.credentials)
        if principal is not None:
            _recheck_soon(request, settings, credentials.credentials)
        else:
            principal = await run_in_threadpool(_trusted, request, settings, credentials.credentials)
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


def _recent(request: Request, settings: Settings, key: str) -> Principal | None:
    """The key's principal if this process found the key good in the last TRUST_S seconds (the
    cache is keyed by the key's HMAC, never the key), else None."""
    cache: dict[str, tuple[float, Principal]] = request.app.state.trusted_keys
    found = cache.get(keys.key_hash(key, settings.key_secret()))
    return found[1] if found is not None and time.monotonic() - found[0] < TRUST_S else None


def _recheck_soon(request: Request, settings: Settings, key: str) -> None:
    """A trusted key whose trust is RECHECK_S old is read again from the ledger in the background, once
    (a revoked one is then dropped from the cache: refused within TRUST_S, as before)."""
    cache: dict[str, tuple[float, Principal]] = request.app.state.trusted_keys
    digest = keys.key_hash(key, settings.key_secret())
    found = cache.get(digest)
    checking: set[str] = request.app.state.key_checks
    if found is None or time.monotonic() - found[0] < RECHECK_S or digest in checking:
        return
    checking.add(digest)

    async def again() -> None:
        try:
            await run_in_threadpool(_trusted, request, settings, key)
        except Exception as exc:  # the ledger unreachable: the key stays trusted until TRUST_S, then is read in line
            log.warning("re-checking an API key failed (%s)", type(exc).__name__)
        finally:
            checking.discard(digest)

    task = asyncio.get_running_loop().create_task(again())
    request.app.state.background.add(task)  # kept until done (the loop holds only weak references)
    task.add_done_callback(request.app.state.background.discard)


def _trusted(request: Request, settings: Settings, key: str) -> Principal | None:
    """The key's principal, read from the ledger (and kept for TRUST_S), or None."""
    cache: dict[str, tuple[float, Principal]] = request.app.state.trusted_keys
    digest = keys.key_hash(key, settings.key_secret())
    now = time.monotonic()
    with session_scope(settings) as session:
        principal = keys.authenticate(session, key=key, secret=settings.key_secret())
    if principal is None:
        cache.pop(digest, None)
        return None
    if len(cache) > 10_000:  # a bound on memory: forget them all (they are found again in one read)
        cache.clear()
    cache[digest] = (now, principal)
    return principal

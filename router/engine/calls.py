"""Making a round's calls: through the process-wide gate, the shared rate limits and the circuit breakers.

Runs on the I/O loop (router/engine/runtime.py). A call never raises: it gives back its key, the
completion or the ProviderError it ended with, and its latency in seconds, for the caller to record.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Sequence

from router.catalog import Catalog, ModelInfo
from router.engine import runtime
from router.errors import CircuitOpen, ProviderConnectionError, ProviderError, ProviderTimeout
from router.providers.base import ChatRequest, Completion, Provider
from router.providers.limits import SharedLimits
from router.providers.registry import get_provider, shared_limits
from router.settings import Settings

log = logging.getLogger("pennyroute.engine")

CallResult = tuple[int, Completion | ProviderError, float]  # (key, outcome, latency in seconds)


async def call_all(
    catalog: Catalog,
    settings: Settings,
    simulated: bool,
    requests: Sequence[tuple[int, str, ChatRequest]],
) -> list[CallResult]:
    """Make every (key, provider name, request) concurrently; results in the order of `requests`."""
    providers = {
        name: await get_provider(catalog, settings, name, simulated=simulated) for name in {p for _, p, _ in requests}
    }
    gate = runtime.gate(settings.calls_in_flight)
    limits = None if simulated else shared_limits(settings)
    models = models_by_wire_name(catalog)
    return await asyncio.gather(
        *(
            call_one(providers[name], gate, key, request, limits, models.get((name, request.model)))
            for key, name, request in requests
        )
    )


_WIRE_NAMES: weakref.WeakKeyDictionary[Catalog, dict[tuple[str, str], ModelInfo]] = weakref.WeakKeyDictionary()


def models_by_wire_name(catalog: Catalog) -> dict[tuple[str, str], ModelInfo]:
    """(provider, API model name) -> model, built once per catalog."""
    found = _WIRE_NAMES.get(catalog)
    if found is None:
        found = _WIRE_NAMES[catalog] = {(m.provider, m.api_model): m for m in catalog.models.values()}
    return found


async def call_one(
    provider: Provider,
    gate: asyncio.Semaphore,
    key: int,
    request: ChatRequest,
    limits: SharedLimits | None = None,
    model: ModelInfo | None = None,
) -> CallResult:
    """Make one call once the gate lets it through, the provider's breaker allows it and the model's
    shared rate limits have room; then tell the limits how it went. Shared limits that cannot be
    reached are skipped (the provider's own 429s still hold us back)."""
    async with gate:
        if limits is not None:
            try:
                if not limits.known_clean(provider.name):
                    breaker = await limits.breaker(provider.name)
                    if not breaker.allowed:
                        return (
                            key,
                            CircuitOpen(breaker.reason, provider=provider.name, retry_after=breaker.retry_in_s),
                            0.0,
                        )
                if model is not None and (model.rpm or model.tpm):
                    # About 4 characters a token for the prompt, plus the most the answer may take.
                    tokens = (len(request.system) + len(request.prompt)) // 4 + request.output_cap
                    await limits.acquire(model.model_id, rpm=model.rpm, tpm=model.tpm, tokens=tokens)
            except Exception as exc:  # shared limits unreachable: call anyway; the provider's 429s still hold us back
                log.warning("shared rate limits unavailable (%s); calling without them", exc)
        started, sent_at = time.perf_counter(), time.time()
        try:
            result: Completion | ProviderError = await provider.complete(request)
        except ProviderError as exc:
            result = exc
        except Exception as exc:  # a bug or an unmapped client error must fail the item, not the chunk
            result = ProviderError(f"unexpected {type(exc).__name__}: {exc}", provider=provider.name)
        elapsed = time.perf_counter() - started
        if limits is not None and (
            isinstance(result, ProviderError)
            or not limits.known_clean(provider.name)
            or (model is not None and (model.rpm or model.tpm))
        ):
            failing = isinstance(result, ProviderError)
            rate_limited = failing and result.status_code == 429  # type: ignore[union-attr]
            try:
                # A 5xx, a timeout or a broken connection counts against the provider; a 429 slows the model.
                await limits.record(
                    provider.name,
                    failed=failing and result.retryable and not rate_limited,  # type: ignore[union-attr]
                    started=sent_at,
                    unanswered=isinstance(result, (ProviderTimeout, ProviderConnectionError)),
                )
                if model is not None:
                    await limits.observe(
                        model.model_id,
                        rpm=model.rpm,
                        tpm=model.tpm,
                        rate_limited=rate_limited,
                        retry_after=result.retry_after if rate_limited else None,  # type: ignore[union-attr]
                    )
            except Exception as exc:  # the call is made and will be recorded; losing one observation is harmless
                log.warning("shared rate limits unavailable (%s)", exc)
        return key, result, elapsed

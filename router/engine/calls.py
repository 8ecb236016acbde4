"""Making a batch's calls: through the process-wide gate, the shared rate limits and the circuit breakers.

Runs on the I/O loop (router/engine/runtime.py). A call never raises: it gives back its key, the
completion or the ProviderError it ended with, and its latency in seconds, for the caller to record.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque

from router.catalog import Catalog, ModelInfo
from router.engine import runtime
from router.errors import CircuitOpen, ProviderConnectionError, ProviderError, ProviderTimeout
from router.providers.base import ChatRequest, Completion, Provider
from router.providers.limits import FIRST_TRY, SharedLimits
from router.providers.registry import get_provider, shared_limits
from router.settings import Settings

log = logging.getLogger("pennyroute.engine")

CallResult = tuple[int, Completion | ProviderError, float]  # (key, outcome, latency in seconds)


async def call(
    catalog: Catalog,
    settings: Settings,
    simulated: bool,
    key: int,
    provider_name: str,
    request: ChatRequest,
    delay_s: float = 0.0,
    until_breaker_s: float = 0.0,
    priority: int = FIRST_TRY,
    sent: dict[int, float] | None = None,
) -> CallResult:
    """Make one call of a batch (after `delay_s`: a retry's wait), through call_one. Never raises.
    With `sent`, the time.monotonic() it left is put there under its key (a straggler is judged by it).

    With `until_breaker_s` (a retry refused by the provider's open breaker), it first waits up to that
    long for the breaker to let it through (SharedLimits.wait_allowed), holding no slot meanwhile: it
    goes the moment a probe succeeds, or is the probe itself; when the wait runs out it comes back
    refused, unsent."""
    if delay_s > 0:
        await asyncio.sleep(delay_s)
    limits = None if simulated else shared_limits(settings)
    probe = False
    if until_breaker_s > 0 and limits is not None:
        try:
            decision = await limits.wait_allowed(provider_name, until_breaker_s)
        except Exception as exc:  # shared limits unreachable: call anyway, as _breaker_refuses does
            log.warning("shared rate limits unavailable (%s); calling without them", exc)
        else:
            if not decision.allowed:
                return key, CircuitOpen(decision.reason, provider=provider_name, retry_after=decision.retry_in_s), 0.0
            probe = decision.probe
    provider = await get_provider(catalog, settings, provider_name, simulated=simulated)
    info = catalog.providers.get(provider_name)
    try:
        return await call_one(
            provider,
            runtime.gate(settings.calls_in_flight),
            key,
            request,
            limits,
            models_by_wire_name(catalog).get((provider_name, request.model)),
            # No stated max_in_flight: the window starts at the gate's width and is learned (policies/in_flight.py).
            (info.max_in_flight if info is not None else None) or settings.calls_in_flight,
            learned=info is None or info.max_in_flight is None,
            probe=probe,
            priority=priority,
            sent=sent,
        )
    except asyncio.CancelledError:
        if probe and limits is not None:  # interrupted before call_one began: the next call may probe
            await asyncio.shield(limits.release_probe(provider_name))
        raise


# The service times (send to answer, in seconds) of each model's last this many answered calls in
# this process, for policies.hedging to judge stragglers by.
SERVICE_KEPT = 256
_SERVICE: dict[tuple[str, str], deque[float]] = {}


def _service_key(provider: str, request: ChatRequest) -> tuple[str, str]:
    return provider, request.model


def service_times(provider: str, api_model: str) -> tuple[float, ...]:
    """The recent service times of a model's answered calls in this process (from any thread)."""
    kept = _SERVICE.get((provider, api_model))
    return tuple(kept) if kept is not None else ()


def forget_service_times() -> None:
    """Forget every model's service times (a test that needs its own)."""
    _SERVICE.clear()


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
    max_in_flight: int | None = None,
    *,
    learned: bool = False,
    probe: bool = False,
    priority: int = FIRST_TRY,
    sent: dict[int, float] | None = None,
) -> CallResult:
    """Make one call once the provider has a free slot (`max_in_flight`), the gate lets it through,
    the provider's breaker allows it and the model's shared rate limits (configured or learned) have
    room; then tell the limits how it went. Shared limits that cannot be reached are skipped (the
    provider's own 429s still hold us back). A `probe` (it holds the half-open breaker's probe
    claim: SharedLimits.wait_allowed) does not ask the breaker again. A call that holds the probe
    claim, given or won at the breaker, releases it once its outcome is recorded, or if it is not sent."""
    capped = limits is not None and max_in_flight is not None
    if capped:
        await limits.enter(provider.name, max_in_flight, learned=learned, priority=priority)  # type: ignore[union-attr,arg-type]
    started = time.perf_counter()
    result: Completion | ProviderError | None = None
    sent_at: float | None = None
    try:
        async with gate:
            if limits is not None and not probe:
                refused, probe = await _breaker_refuses(limits, provider.name)
                if refused is not None:
                    return key, refused, 0.0
            if limits is not None:
                await _take_limits(limits, request, model)
            sent_at = time.time()
            left = time.monotonic()
            if sent is not None:
                sent[key] = left
            if limits is not None:
                limits.sending(provider.name, +1)
            try:
                result = await provider.complete(request)
                _SERVICE.setdefault(_service_key(provider.name, request), deque(maxlen=SERVICE_KEPT)).append(
                    time.monotonic() - left
                )
            except ProviderError as exc:
                result = exc
            except Exception as exc:  # a bug or an unmapped client error must fail the item, not the chunk
                result = ProviderError(f"unexpected {type(exc).__name__}: {exc}", provider=provider.name)
            finally:
                if limits is not None:
                    limits.sending(provider.name, -1)
        # Out of the gate: telling the breaker and the rate how it went (a Redis round trip after a
        # failure) must not hold a calls-in-flight slot that another call could be using.
        if limits is not None:
            await _observe(limits, provider.name, model, result, sent_at)
    finally:
        # The slot first: `leave` never suspends, so a cancel that lands in the await below (a hedged
        # twin given up) cannot keep the slot taken for good.
        if capped:
            overloaded = isinstance(result, (ProviderTimeout, ProviderConnectionError)) or (
                isinstance(result, ProviderError) and result.status_code in OVERLOAD_STATUSES
            )
            # A call the breaker refused (or an interrupt cancelled) never reached the provider, and a
            # 429 is the model's rate, not the server's load: neither moves the window.
            rate_limited = isinstance(result, ProviderError) and result.status_code == 429
            await limits.leave(  # type: ignore[union-attr]
                provider.name, overloaded=overloaded, called=result is not None and not rate_limited, sent_at=sent_at
            )
        if probe:  # its outcome is recorded (or it was never sent): the next cooldown's probe may go
            try:
                await asyncio.shield(limits.release_probe(provider.name))  # type: ignore[union-attr]
            except Exception as exc:  # the claim expires by itself (PROBE_HOLD_S)
                log.warning("shared rate limits unavailable (%s)", exc)
    assert result is not None  # set by the call (a refused breaker returned above)
    return key, result, time.perf_counter() - started


# A server that answers these is overloaded (Anthropic's 529 says so; a 503 is a busy server): the
# provider's calls-in-flight window narrows. A 429 is a rate limit, handled by the model's rate.
OVERLOAD_STATUSES = frozenset({503, 529})


async def _breaker_refuses(limits: SharedLimits, provider: str) -> tuple[CircuitOpen | None, bool]:
    """(the refusal, or None when the call may go; whether it goes as the half-open breaker's probe)."""
    try:
        if not limits.known_clean(provider):
            breaker = await limits.breaker(provider)
            if not breaker.allowed:
                return CircuitOpen(breaker.reason, provider=provider, retry_after=breaker.retry_in_s), False
            return None, breaker.probe
    except Exception as exc:  # shared limits unreachable: call anyway; the provider's 429s still hold us back
        log.warning("shared rate limits unavailable (%s); calling without them", exc)
    return None, False


async def _take_limits(limits: SharedLimits, request: ChatRequest, model: ModelInfo | None) -> None:
    """Wait for the model's configured limits, or its learned rate if it has one (no await if not)."""
    if model is not None and not model.rpm and not model.tpm:
        await limits.first_calls(model.model_id)
    if model is None or (not model.rpm and not model.tpm and limits.learned_known(model.model_id)):
        return
    try:
        # About 4 characters a token for the prompt (a chat item's whole conversation), plus the most
        # the answer may take.
        tokens = sum(len(m.content) for m in request.conversation()) // 4 + request.output_cap
        await limits.acquire(model.model_id, rpm=model.rpm, tpm=model.tpm, tokens=tokens)
    except Exception as exc:  # shared limits unreachable: call anyway; the provider's 429s still hold us back
        log.warning("shared rate limits unavailable (%s); calling without them", exc)


async def _observe(
    limits: SharedLimits, provider: str, model: ModelInfo | None, result: Completion | ProviderError, sent_at: float
) -> None:
    """Tell the breaker and the model's rate how a call went; nothing to await in the common case."""
    failing = isinstance(result, ProviderError)
    rate_limited = failing and result.status_code == 429  # type: ignore[union-attr]
    limited = model is not None and bool(model.rpm or model.tpm)
    if model is not None and not limited:
        limits.came_back(model.model_id, rate_limited=rate_limited)
    if not failing and limits.known_clean(provider) and not limited:
        if model is not None:
            if limits.learned_known(model.model_id):
                limits.answered(model.model_id)  # the hot path: a note in memory, no await
                return
        else:
            return
    try:
        # A 5xx, a timeout or a broken connection counts against the provider; a 429 slows the model.
        if failing or not limits.known_clean(provider):
            await limits.record(
                provider,
                failed=failing and result.retryable and not rate_limited,  # type: ignore[union-attr]
                started=sent_at,
                unanswered=isinstance(result, (ProviderTimeout, ProviderConnectionError)),
            )
        if model is not None and (not failing or rate_limited):
            await limits.observe(
                model.model_id,
                rpm=model.rpm,
                tpm=model.tpm,
                rate_limited=rate_limited,
                unanswered=limits.sent(provider) if rate_limited else 0,
                retry_after=result.rate_pause_s if rate_limited else None,  # type: ignore[union-attr]
            )
    except Exception as exc:  # the call is made and will be recorded; losing one observation is harmless
        log.warning("shared rate limits unavailable (%s)", exc)

"""Provider instances per process: built inside the I/O loop on first use, then shared by every chunk."""

from __future__ import annotations

import os

from router.catalog import Catalog, ProviderInfo
from router.providers.anthropic import AnthropicProvider
from router.providers.base import Provider
from router.providers.gemini import GeminiProvider
from router.providers.http import build_client
from router.providers.limits import SharedLimits
from router.providers.mistral import MistralProvider
from router.providers.openai import OpenAIProvider
from router.providers.sandbox import SandboxProvider
from router.settings import Settings

# Connections per provider and process: one per call in flight (settings.calls_in_flight).
_cache: dict[tuple[object, ...], Provider] = {}


async def get_provider(catalog: Catalog, settings: Settings, name: str, *, simulated: bool) -> Provider:
    """The provider called `name` (the sandbox when the job is simulated); call inside the I/O loop."""
    info = catalog.providers[name]
    # Keyed by pid: a forked child must not reuse its parent's connections. Building is synchronous,
    # and the loop is single-threaded, so no lock is needed.
    key = (
        (os.getpid(), "sandbox") if simulated else (os.getpid(), name, info.kind, info.base_url, settings.http_backend)
    )
    provider = _cache.get(key)
    if provider is None:
        provider = _cache[key] = _build(catalog, settings, info, simulated=simulated)
    return provider


def _build(catalog: Catalog, settings: Settings, info: ProviderInfo, *, simulated: bool) -> Provider:
    if simulated:
        qualities = {
            (model.api_model, task): estimate.value
            for model in catalog.models.values()
            for task, estimate in model.quality.items()
        }
        return SandboxProvider(qualities=qualities)
    api_key = settings.api_key(info.api_key_env)
    client = build_client(
        base_url=info.base_url,
        headers={},
        timeout_s=settings.request_timeout_s,
        max_connections=settings.calls_in_flight,
        backend=settings.http_backend,
    )
    if info.kind == "anthropic":
        return AnthropicProvider(name=info.name, client=client, api_key=api_key)
    if info.kind == "gemini":
        return GeminiProvider(name=info.name, client=client, api_key=api_key)
    if info.kind == "mistral":
        return MistralProvider(name=info.name, client=client, api_key=api_key)
    return OpenAIProvider(name=info.name, client=client, api_key=api_key)


_limits: dict[tuple[int, str | None], SharedLimits] = {}


def shared_limits(settings: Settings) -> SharedLimits:
    """This process's rate gates and breakers (shared through Redis when there is one); call inside the I/O loop."""
    key = (os.getpid(), settings.shared_state_url)
    limits = _limits.get(key)
    if limits is None:
        limits = _limits[key] = SharedLimits(settings.shared_state_url)
    return limits


async def close_all() -> None:
    """Close every cached provider's connections, and the shared limits' Redis (tests and shutdown)."""
    providers = list(_cache.values())
    _cache.clear()
    for provider in providers:
        await provider.aclose()
    limits = list(_limits.values())
    _limits.clear()
    for shared in limits:
        await shared.aclose()

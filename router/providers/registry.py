"""Provider instances per process: built inside the I/O loop on first use, then shared by every chunk."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from router.catalog import Catalog, ProviderInfo
from router.errors import ConfigError
from router.providers.anthropic import AnthropicProvider
from router.providers.anthropic_batch import AnthropicBatchAPI
from router.providers.base import Provider
from router.providers.batch_api import BatchAPI
from router.providers.gemini import GeminiProvider
from router.providers.gemini_batch import GeminiBatchAPI
from router.providers.http import build_client
from router.providers.limits import SharedLimits
from router.providers.mistral import MistralProvider
from router.providers.mistral_batch import MistralBatchAPI
from router.providers.openai import OpenAIProvider
from router.providers.openai_batch import OpenAIBatchAPI
from router.providers.sandbox import SandboxBatchAPI, SandboxBatchKnobs, SandboxProvider
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


def _sandbox(catalog: Catalog) -> SandboxProvider:
    qualities = {
        (model.api_model, task): estimate.value
        for model in catalog.models.values()
        for task, estimate in model.quality.items()
    }
    return SandboxProvider(qualities=qualities)


def _client(settings: Settings, info: ProviderInfo) -> Any:
    return build_client(
        base_url=info.base_url,
        headers={},
        timeout_s=settings.request_timeout_s,
        max_connections=settings.calls_in_flight,
        backend=settings.http_backend,
    )


def _build(catalog: Catalog, settings: Settings, info: ProviderInfo, *, simulated: bool) -> Provider:
    if simulated:
        return _sandbox(catalog)
    api_key = settings.api_key(info.api_key_env)
    client = _client(settings, info)
    if info.kind == "anthropic":
        return AnthropicProvider(name=info.name, client=client, api_key=api_key)
    if info.kind == "gemini":
        return GeminiProvider(name=info.name, client=client, api_key=api_key)
    if info.kind == "mistral":
        return MistralProvider(name=info.name, client=client, api_key=api_key)
    return OpenAIProvider(name=info.name, client=client, api_key=api_key)


# The batch API class of each catalog provider kind (router/providers/<vendor>_batch.py), constructed
# as cls(name=info.name, client=<build_client(...)>, api_key=api_key) over the same base URL as the
# provider's calls. A kind not listed has no batch API; a listed one is used only for providers the
# catalog gives a batch_multiplier and batch_window_h (an OpenAI-compatible vLLM box has neither).
BATCH_API_CLASSES: dict[str, type] = {
    "openai": OpenAIBatchAPI,
    "anthropic": AnthropicBatchAPI,
    "gemini": GeminiBatchAPI,
    "mistral": MistralBatchAPI,
}
_batch_cache: dict[tuple[object, ...], BatchAPI] = {}


def has_batch_api(catalog: Catalog, name: str, *, simulated: bool) -> bool:
    """Whether provider `name` has a batch API (the sandbox's, when simulated); no connection is made."""
    info = catalog.providers.get(name)
    if info is None or info.batch_multiplier is None or info.batch_window_h is None:
        return False
    return simulated or info.kind in BATCH_API_CLASSES


def sandbox_batch_knobs(settings: Settings) -> SandboxBatchKnobs:
    """The sandbox batch API's knobs from settings; ConfigError naming the setting when they are wrong."""
    try:
        return SandboxBatchKnobs.parse(settings.sandbox_batch)
    except ValueError as exc:
        raise ConfigError(f"PENNYROUTE_SANDBOX_BATCH: {exc}") from None


def get_batch_api(catalog: Catalog, settings: Settings, name: str, *, simulated: bool) -> BatchAPI | None:
    """The batch API of provider `name` (the sandbox's, simulated, when the job is); None when the
    provider has none. Built once per process (call inside the I/O loop) and kept, like providers."""
    info = catalog.providers[name]
    if simulated:
        knobs = sandbox_batch_knobs(settings)
        key: tuple[object, ...] = (os.getpid(), "sandbox", name, settings.sandbox_batch, settings.sandbox_batch_dir)
        found = _batch_cache.get(key)
        if found is None:
            window_s = (info.batch_window_h or 24) * 3600
            if "window_s" not in settings.sandbox_batch:
                knobs = replace(knobs, window_s=window_s)
            found = _batch_cache[key] = SandboxBatchAPI(
                name=name, provider=_sandbox(catalog), knobs=knobs, directory=settings.sandbox_batch_dir
            )
        return found
    cls = BATCH_API_CLASSES.get(info.kind)
    if cls is None:
        return None
    key = (os.getpid(), name, info.kind, info.base_url, settings.http_backend)
    found = _batch_cache.get(key)
    if found is None:
        api_key = settings.api_key(info.api_key_env)
        found = _batch_cache[key] = cls(name=info.name, client=_client(settings, info), api_key=api_key)
    return found


@asynccontextmanager
async def fresh_batch_api(
    catalog: Catalog, settings: Settings, name: str, *, simulated: bool
) -> AsyncIterator[BatchAPI]:
    """Provider `name`'s batch API on a client of its own, closed on leaving: a new connection, for a
    call that follows one whose connection broke (a stale keep-alive connection in the shared pool
    may break the next call too). The sandbox holds no connection: its shared instance is given."""
    if simulated:
        shared = get_batch_api(catalog, settings, name, simulated=True)
        assert shared is not None
        yield shared
        return
    info = catalog.providers[name]
    cls = BATCH_API_CLASSES[info.kind]
    api: BatchAPI = cls(name=info.name, client=_client(settings, info), api_key=settings.api_key(info.api_key_env))
    try:
        yield api
    finally:
        await api.aclose()


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
    batch_apis = list(_batch_cache.values())
    _batch_cache.clear()
    for batch_api in batch_apis:
        await batch_api.aclose()
    limits = list(_limits.values())
    _limits.clear()
    for shared in limits:
        await shared.aclose()

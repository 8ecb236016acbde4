"""What the SDK contract tests share: the fake's key (the fixtures keyed_server and keyed_fake, in
tests/unit/conftest.py, serve a fake that checks it), and pennyroute's provider for a vendor sending
one request to it."""

from __future__ import annotations

import asyncio

from router.providers.anthropic import AnthropicProvider
from router.providers.base import ChatRequest
from router.providers.gemini import GeminiProvider
from router.providers.http import build_client
from router.providers.mistral import MistralProvider
from router.providers.openai import OpenAIProvider

KEY = "contract-key"
PROVIDERS = {
    "openai": (OpenAIProvider, "/v1"),
    "anthropic": (AnthropicProvider, ""),
    "gemini": (GeminiProvider, ""),
    "mistral": (MistralProvider, "/v1"),
}


def send(url: str, vendor: str, request: ChatRequest) -> None:
    """Send `request` with pennyroute's provider for `vendor` to the fake at `url` (errors raised)."""
    cls, suffix = PROVIDERS[vendor]

    async def go() -> None:
        client = build_client(base_url=url + suffix, headers={}, timeout_s=5, max_connections=2, backend="httpx")
        provider = cls(name=vendor, client=client, api_key=KEY)
        try:
            await provider.complete(request)
        finally:
            await provider.aclose()

    asyncio.run(go())

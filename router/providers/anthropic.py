"""Anthropic's Messages API.

Wire format: POST {base_url}/v1/messages with base_url like "https://api.anthropic.com",
headers `x-api-key` and `anthropic-version: 2023-06-01`, body {model, max_tokens, system,
messages: [{role: user, content}], temperature}. The answer's `content` is a list of blocks; the
text blocks, joined, are the answer (thinking and other blocks are skipped).

Usage: Anthropic reports cache reads and writes APART from input (input_tokens excludes both), so
input_tokens maps as is, cache_read_input_tokens to cached_input_tokens and
cache_creation_input_tokens to cache_write_tokens. Errors arrive as
{"type": "error", "error": {"type": "overloaded_error", "message": ...}}; 529 means overloaded.
"""

from __future__ import annotations

from typing import Any

import httpx

from router.providers.base import ChatRequest, Completion
from router.providers.http import ClientPool, JsonApiProvider, estimated_usage
from router.usage import TokenUsage

PATH = "/v1/messages"
# The Messages API version this module's mapping was written against; Anthropic requires the header.
ANTHROPIC_VERSION = "2023-06-01"


class AnthropicProvider(JsonApiProvider):
    """A provider speaking Anthropic's Messages API; it owns (and closes) the client it is given."""

    path = PATH
    what = "message"

    def __init__(
        self,
        *,
        name: str,
        client: httpx.AsyncClient | ClientPool,
        api_key: str | None,
        simulated: bool = False,
    ) -> None:
        super().__init__(name=name, client=client, simulated=simulated)
        self._headers = {"anthropic-version": ANTHROPIC_VERSION}
        if api_key:  # None only for local stand-ins; the real API answers 401 without a key
            self._headers["x-api-key"] = api_key

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        return request_body(request)

    def parse(self, body: Any, request: ChatRequest) -> Completion:
        return parse_message(body, request)


def request_body(request: ChatRequest) -> dict[str, Any]:
    """The JSON body for one Messages call (`system` is left out when empty)."""
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_output_tokens,
        "messages": [{"role": "user", "content": request.prompt}],
        "temperature": request.temperature,
    }
    if request.system:
        body["system"] = request.system
    return body


def parse_message(body: Any, request: ChatRequest) -> Completion:
    """Read text and usage from a Messages body; raises KeyError, TypeError... when malformed."""
    blocks = body["content"]
    if not isinstance(blocks, list):
        raise TypeError("content is not a list of blocks")
    text = "".join(block["text"] for block in blocks if block.get("type") == "text")
    usage = body.get("usage")
    if not usage:
        return Completion(text=text, usage=estimated_usage(request, text))
    return Completion(
        text=text,
        usage=TokenUsage(
            input_tokens=int(usage["input_tokens"]),
            output_tokens=int(usage["output_tokens"]),
            # null, not 0, when the request used no cache_control
            cached_input_tokens=int(usage.get("cache_read_input_tokens") or 0),
            cache_write_tokens=int(usage.get("cache_creation_input_tokens") or 0),
        ),
    )

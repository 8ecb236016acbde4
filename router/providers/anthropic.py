"""Anthropic's Messages API.

Wire format: POST {base_url}/v1/messages with base_url like "https://api.anthropic.com",
headers `x-api-key` and `anthropic-version: 2026-10-21`, body {model, max_tokens, system,
messages: [{role: user, content}]}. The answer's `content` is a list of blocks; the text blocks,
joined, are the answer (thinking and other blocks are skipped).

API version 2026-10-21 (the current one, sent by the official SDKs from anthropic 2.0) removed the
sampling parameters: `temperature`, `top_p` and `top_k` are a 400 at any value, on every model. So
no temperature is sent, and none is needed for a model that refuses one (Claude Opus 4.x and
Sonnet 4.5 under 2023-06-01 refused temperature and top_p together, later models any non-default).

stop_reason: "end_turn" (or "stop_sequence") is a whole answer; "max_tokens" and
"model_context_window_exceeded" an answer cut off; "refusal" one the model declined (its
`stop_details` may name a category). Each is billed and charged (base.Completion).

Usage, read first: Anthropic reports cache reads and writes APART from input (input_tokens excludes
both), so input_tokens maps as is, cache_read_input_tokens to cached_input_tokens and
cache_creation_input_tokens to cache_write_tokens. Errors arrive as
{"type": "error", "error": {"type": "overloaded_error", "message": ...}}; 529 means overloaded.
"""

from __future__ import annotations

from typing import Any

import httpx

from router.providers.base import CUT, REFUSED, STOP, ChatRequest, Completion, UnreadableAnswer
from router.providers.http import ClientPool, JsonApiProvider, estimated_usage
from router.usage import TokenUsage

PATH = "/v1/messages"
# The Messages API version this module's mapping was written against; Anthropic requires the header.
# The current one (the official SDKs send it from anthropic 2.0): no sampling parameters.
ANTHROPIC_VERSION = "2026-10-21"


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
    """The JSON body for one Messages call (`system` is left out when empty; no sampling parameter:
    API version 2026-10-21 refuses them, see the module docstring)."""
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_output_tokens,
        "messages": [{"role": "user", "content": request.prompt}],
    }
    if request.system:
        body["system"] = request.system
    return body


# stop_reason values that end an answer before it is whole ("end_turn", "stop_sequence" are whole;
# "tool_use" and "pause_turn" come only with tools, which we never send).
FINISHES = {"max_tokens": CUT, "model_context_window_exceeded": CUT, "refusal": REFUSED}


def parse_message(body: Any, request: ChatRequest) -> Completion:
    """Read usage, then text and stop reason, from a Messages body. Raises KeyError, TypeError... when
    malformed, UnreadableAnswer when only the usage could be read."""
    usage = read_usage(body.get("usage"))
    try:
        blocks = body["content"]
        if not isinstance(blocks, list):
            raise TypeError("content is not a list of blocks")
        text = "".join(block["text"] for block in blocks if block.get("type") == "text")
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        if usage is None:
            raise
        raise UnreadableAnswer(f"{type(exc).__name__}: {exc}", usage=usage) from exc
    reason = body.get("stop_reason")
    details = body.get("stop_details") or {}
    detail = ", ".join(f"{k} {details[k]}" for k in ("category", "explanation") if details.get(k)) or None
    return Completion(
        text=text,
        usage=usage or estimated_usage(request, text),
        finish=FINISHES.get(str(reason), STOP),
        finish_reason=reason,
        detail=detail[:200] if detail else None,
    )


def read_usage(usage: Any) -> TokenUsage | None:
    """Tokens from a Messages body's `usage`, or None when it has none."""
    if not usage:
        return None
    return TokenUsage(
        input_tokens=int(usage["input_tokens"]),
        output_tokens=int(usage["output_tokens"]),
        # null, not 0, when the request used no cache_control
        cached_input_tokens=int(usage.get("cache_read_input_tokens") or 0),
        cache_write_tokens=int(usage.get("cache_creation_input_tokens") or 0),
    )

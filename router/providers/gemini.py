"""Google Gemini, natively: generateContent.

Wire format: POST {base_url}/v1beta/models/{model}:generateContent with header `x-goog-api-key`,
body {systemInstruction: {parts: [{text}]}, contents: [{role: "user", parts: [{text}]}],
generationConfig: {maxOutputTokens, temperature}}. The answer is candidates[0].content.parts[*].text.

Gemini 2.5 models think unless told not to, and their thoughts count inside maxOutputTokens: with a
classification's cap of a few tokens the answer comes back empty. A catalog entry with `thinking = 0`
sends thinkingConfig.thinkingBudget 0 (Flash, Flash-Lite); `thinking = N` sends a budget of N and a
cap of the answer's plus N (Pro cannot stop thinking; its smallest budget is 128).

Usage (usageMetadata): promptTokenCount INCLUDES cachedContentTokenCount (so input = prompt - cached);
candidatesTokenCount EXCLUDES thoughtsTokenCount, and thinking is billed at the output price, so
output = candidates + thoughts (reasoning_tokens = thoughts). A body without usage gets an estimate,
flagged estimated=True. Errors are {"error": {"code", "message", "status"}}; a 429 RESOURCE_EXHAUSTED
is a rate limit unless it names a per-day quota (router.providers.http.quota_exhausted).
"""

from __future__ import annotations

from typing import Any

import httpx

from router.providers.base import ChatRequest, Completion
from router.providers.http import ClientPool, JsonApiProvider, estimated_usage
from router.usage import TokenUsage

API_VERSION = "v1beta"


class GeminiProvider(JsonApiProvider):
    """A provider speaking Gemini's generateContent; it owns (and closes) the client it is given."""

    what = "generateContent answer"

    def __init__(
        self, *, name: str, client: httpx.AsyncClient | ClientPool, api_key: str | None, simulated: bool = False
    ) -> None:
        super().__init__(name=name, client=client, simulated=simulated)
        self._headers = {"x-goog-api-key": api_key} if api_key else {}

    def url(self, request: ChatRequest) -> str:
        return f"/{API_VERSION}/models/{request.model}:generateContent"

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "contents": [{"role": "user", "parts": [{"text": request.prompt}]}],
            "generationConfig": {"maxOutputTokens": request.output_cap, "temperature": request.temperature},
        }
        if request.thinking_tokens is not None:
            body["generationConfig"]["thinkingConfig"] = {"thinkingBudget": request.thinking_tokens}
        if request.system:
            body["systemInstruction"] = {"parts": [{"text": request.system}]}
        return body

    def parse(self, body: Any, request: ChatRequest) -> Completion:
        return parse_generate_content(body, request)


def parse_generate_content(body: Any, request: ChatRequest) -> Completion:
    """Read text and usage from a generateContent body; raises KeyError, TypeError... when malformed."""
    candidate = body["candidates"][0]
    # A candidate stopped by safety has no content: an empty answer that was billed, not a malformed one.
    parts = (candidate.get("content") or {}).get("parts") or []
    text = "".join(part.get("text", "") for part in parts if not part.get("thought"))
    if not isinstance(text, str):
        raise TypeError("parts[].text is not a string")
    usage = body.get("usageMetadata")
    if not usage or "promptTokenCount" not in usage:
        return Completion(text=text, usage=estimated_usage(request, text))
    prompt_tokens = int(usage["promptTokenCount"])
    cached = min(int(usage.get("cachedContentTokenCount") or 0), prompt_tokens)
    thoughts = int(usage.get("thoughtsTokenCount") or 0)
    return Completion(
        text=text,
        usage=TokenUsage(
            input_tokens=prompt_tokens - cached,
            output_tokens=int(usage.get("candidatesTokenCount") or 0) + thoughts,
            cached_input_tokens=cached,
            reasoning_tokens=thoughts,
        ),
    )

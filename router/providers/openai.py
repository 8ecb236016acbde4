"""OpenAI-compatible chat completions: OpenAI, Mistral, vLLM, Ollama, and the aggregators.

Wire format: POST {base_url}/chat/completions, `Authorization: Bearer <key>` (no header when the
key is None, for local servers), body {model, messages: [system, user], max_tokens, temperature}.
The client's base_url ends with the API version, as in the OpenAI SDK: "https://api.openai.com/v1",
"https://api.mistral.ai/v1", "http://localhost:8000/v1" (vLLM), "http://localhost:11434/v1" (Ollama).

`max_tokens` is sent, not OpenAI's newer `max_completion_tokens`: every compatible server reads
`max_tokens`, while many reject or ignore the newer name. OpenAI's reasoning models (o-series,
gpt-5) refuse `max_tokens` and any temperature but 1 with HTTP 400, and count their reasoning inside
the cap; a catalog entry marks them with `thinking = N` (and optionally `reasoning_effort`), and their
body carries `max_completion_tokens` = answer cap + N, the effort, and no temperature.

Usage: OpenAI counts cached input INSIDE prompt_tokens (prompt_tokens_details.cached_tokens is a
part of it), so input_tokens = prompt_tokens - cached_tokens. Servers that omit usage get an
estimate, marked estimated=True.
"""

from __future__ import annotations

from typing import Any

import httpx

from router.providers.base import ChatRequest, Completion
from router.providers.http import ClientPool, JsonApiProvider, estimated_usage
from router.usage import TokenUsage

PATH = "/chat/completions"


class OpenAIProvider(JsonApiProvider):
    """A provider speaking OpenAI's chat completions; it owns (and closes) the client it is given."""

    path = PATH
    what = "chat completion"

    def __init__(
        self,
        *,
        name: str,
        client: httpx.AsyncClient | ClientPool,
        api_key: str | None,
        simulated: bool = False,
    ) -> None:
        super().__init__(name=name, client=client, simulated=simulated)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        return request_body(request)

    def parse(self, body: Any, request: ChatRequest) -> Completion:
        return parse_completion(body, request)


def request_body(request: ChatRequest) -> dict[str, Any]:
    """The JSON body for one chat completion (the system message is left out when empty)."""
    messages = [{"role": "user", "content": request.prompt}]
    if request.system:
        messages.insert(0, {"role": "system", "content": request.system})
    if request.thinking_tokens is None:
        return {
            "model": request.model,
            "messages": messages,
            "max_tokens": request.max_output_tokens,
            "temperature": request.temperature,
        }
    body: dict[str, Any] = {"model": request.model, "messages": messages, "max_completion_tokens": request.output_cap}
    if request.reasoning_effort:
        body["reasoning_effort"] = request.reasoning_effort
    return body


def parse_completion(body: Any, request: ChatRequest) -> Completion:
    """Read text and usage from a chat completion body; raises KeyError, TypeError... when malformed."""
    message = body["choices"][0]["message"]
    # content is null for a refusal (or a tool call, which we never ask for): an empty answer that
    # was still billed, not a malformed one, so that it is not retried at full price.
    text = message.get("content") or message.get("refusal") or ""
    if not isinstance(text, str):
        raise TypeError("message.content is not a string")
    usage = body.get("usage")
    if not usage:
        return Completion(text=text, usage=estimated_usage(request, text))
    prompt_tokens = int(usage["prompt_tokens"])
    details = usage.get("prompt_tokens_details") or {}
    cached = min(int(details.get("cached_tokens") or 0), prompt_tokens)
    # Reasoning tokens are counted inside completion_tokens and billed as output.
    reasoning = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    return Completion(
        text=text,
        usage=TokenUsage(
            input_tokens=prompt_tokens - cached,
            output_tokens=int(usage["completion_tokens"]),
            cached_input_tokens=cached,
            reasoning_tokens=reasoning,
        ),
    )

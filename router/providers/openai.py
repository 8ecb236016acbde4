"""OpenAI-compatible chat completions: OpenAI, Mistral, vLLM, Ollama, and the aggregators.

Wire format: POST {base_url}/chat/completions, `Authorization: Bearer <key>` (no header when the
key is None, for local servers), body {model, messages: [system, user], max_tokens, temperature}.
The client's base_url ends with the API version, as in the OpenAI SDK: "https://api.openai.com/v1",
"https://api.mistral.ai/v1", "http://localhost:8000/v1" (vLLM), "http://localhost:11434/v1" (Ollama).

`max_tokens` is sent, not OpenAI's newer `max_completion_tokens`: every compatible server reads
`max_tokens`, while many reject or ignore the newer name. OpenAI's reasoning models (o-series,
gpt-5 but not gpt-5-chat: router.catalog.openai_reasoning_model) refuse `max_tokens` and any
temperature but 1 with HTTP 400, and count their reasoning inside the cap: their body carries
`max_completion_tokens` (the answer's cap plus the catalog's `thinking`, if set), the
`reasoning_effort` if set, and no temperature. So does any entry that sets `thinking`.

Answer: choices[0].message.content is a string, null (a refusal, with `message.refusal`), or, on
Mistral's reasoning models and some compatible servers, a list of chunks ({type: "text", text} and
{type: "thinking", thinking: [...]}): the text chunks, joined, are the answer. finish_reason
"length" (Mistral also "model_length") is an answer cut off by the cap, "content_filter" one the
filter withheld, Mistral's "error" one that broke off; each is charged and not used (base.Completion).

Usage is read first, so that an answer whose content cannot be read is still charged for what it
was billed. OpenAI counts cached input INSIDE prompt_tokens (prompt_tokens_details.cached_tokens is a
part of it), so input_tokens = prompt_tokens - cached_tokens. Servers that omit usage get an
estimate, marked estimated=True.
"""

from __future__ import annotations

from typing import Any

import httpx

from router.catalog import openai_reasoning_model
from router.providers.base import (
    BROKEN,
    CUT,
    FILTERED,
    REFUSED,
    STOP,
    ChatRequest,
    Completion,
    UnreadableAnswer,
)
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
    if request.thinking_tokens is None and not openai_reasoning_model(request.model):
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


# finish_reason values that end an answer before it is whole (anything else, or none, is a whole one:
# "stop", and "tool_calls", which we never ask for).
FINISHES = {
    "length": CUT,
    "model_length": CUT,  # Mistral: the model's context is full
    "content_filter": FILTERED,
    "error": BROKEN,  # Mistral: the generation failed part-way
}


def parse_completion(body: Any, request: ChatRequest) -> Completion:
    """Read usage, then text and finish reason, from a chat completion body. Raises KeyError,
    TypeError... when malformed, UnreadableAnswer when only the usage could be read."""
    usage = read_usage(body.get("usage"))
    try:
        choice = body["choices"][0]
        message = choice["message"]
        text = message_text(message.get("content"))
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        if usage is None:
            raise
        raise UnreadableAnswer(f"{type(exc).__name__}: {exc}", usage=usage) from exc
    usage = usage or estimated_usage(request, text)
    reason = choice.get("finish_reason")
    refusal = message.get("refusal")
    if refusal:  # content is null and the refusal says why: a billed answer, not a malformed one
        return Completion(
            text=text, usage=usage, finish=REFUSED, finish_reason="message.refusal", detail=str(refusal)[:200]
        )
    return Completion(text=text, usage=usage, finish=FINISHES.get(str(reason), STOP), finish_reason=reason)


def message_text(content: Any) -> str:
    """A message's text: a string as is, null as "", a list of chunks as its text chunks joined
    (thinking and other chunks skipped); TypeError for anything else."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [chunk.get("text") for chunk in content if isinstance(chunk, dict) and chunk.get("type") == "text"]
        if not all(isinstance(text, str) for text in texts):
            raise TypeError("a text chunk's text is not a string")
        return "".join(texts)  # type: ignore[arg-type]
    raise TypeError(f"message.content is a {type(content).__name__}, not a string or a list of chunks")


def read_usage(usage: Any) -> TokenUsage | None:
    """Tokens from a chat completion's `usage`, or None when it has none."""
    if not usage:
        return None
    prompt_tokens = int(usage["prompt_tokens"])
    details = usage.get("prompt_tokens_details") or {}
    cached = min(int(details.get("cached_tokens") or 0), prompt_tokens)
    # Reasoning tokens are counted inside completion_tokens and billed as output.
    reasoning = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    return TokenUsage(
        input_tokens=prompt_tokens - cached,
        output_tokens=int(usage.get("completion_tokens") or 0),
        cached_input_tokens=cached,
        reasoning_tokens=reasoning,
    )

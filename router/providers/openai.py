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

Errors (`read_error`) are decided by `error.code`, then `error.type`, never by the message alone:
{"error": {"message", "type", "param", "code"}}. OpenAI's error-codes guide lists "429 - Rate limit
reached for requests" (code rate_limit_exceeded; type "requests" or "tokens"; also slow_down) apart from
"429 - You exceeded your current quota" (type insufficient_quota; the code says which allowance:
insufficient_quota, credit_balance_exhausted, organization_spend_limit_exceeded,
project_spend_limit_exceeded, organization_usage_limit_exceeded; "inspect error.code": the guide's
billing section, https://developers.openai.com/docs/guides/error-codes). A rate-limit message often
links the billing page ("...Please add a payment method to your account to increase your rate limit.
Visit https://platform.openai.com/account/billing to add a payment method.", public reports such as
arc53/DocsGPT#287): the words "billing" or "quota" decide nothing. The message "You exceeded your
current quota" is read only when the body has neither code nor type (a compatible server).

Headers: x-request-id is kept (the SDK's `request_id`), x-should-retry obeyed (status_error).
x-ratelimit-reset-requests / -tokens ("1s", "6m0s", "20ms") are the time until that window is FULL
again (OpenAI's rate-limits guide, "Rate limits in headers"), not the wait for one more call: a tokens-
per-day window can say hours. They are kept as `window_reset_s`, capped at WINDOW_RESET_CAP_S, for the
model's shared rate (its pause for every worker when no Retry-After came), never as an item's wait.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import httpx

from router.catalog import openai_reasoning_model
from router.errors import QUOTA_SPENT
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
from router.providers.http import (
    ClientPool,
    ErrorReading,
    JsonApiProvider,
    error_fields,
    estimated_usage,
    text_field,
)
from router.usage import TokenUsage

PATH = "/chat/completions"
# A window that refills later than this still pauses the model's shared rate only this long: one
# second is what a shared bucket holds (router.providers.limits.BURST_S), and after it the halved or
# learned rate and the items' own backoff hold the calls back. Uncapped, a "6m0s" window would stop
# every worker on the model for six minutes (issue 13, finding 6).
WINDOW_RESET_CAP_S = 1.0
# error.code values that say the allowance is spent, not the rate: what is spent, and what to do.
# Source: OpenAI's error-codes guide, 429 "You exceeded your current quota" (see the module docstring).
QUOTA_CODES = {
    "insufficient_quota": QUOTA_SPENT,
    "credit_balance_exhausted": "prepaid credit is spent (credit_balance_exhausted): add credit",
    "organization_spend_limit_exceeded": (
        "monthly spend limit is reached (organization_spend_limit_exceeded): raise or remove it, "
        "or wait for the month to reset"
    ),
    "project_spend_limit_exceeded": (
        "project's monthly spend limit is reached (project_spend_limit_exceeded): raise or remove it, "
        "or wait for the month to reset"
    ),
    "organization_usage_limit_exceeded": (
        "monthly usage limit set by OpenAI is reached (organization_usage_limit_exceeded): "
        "ask OpenAI for a higher limit"
    ),
}
# error.code / error.type values of a rate limit: wait and try again.
RATE_LIMIT_KINDS = frozenset({"rate_limit_exceeded", "slow_down", "requests", "tokens", "rate_limit_error"})


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

    def read_error(self, status: int, headers: Mapping[str, str], body: Any) -> ErrorReading:
        return read_error(status, headers, body)


def read_error(status: int, headers: Mapping[str, str], body: Any) -> ErrorReading:
    """An OpenAI (or OpenAI-compatible) error, read from error.code and error.type (module docstring)."""
    error = error_fields(body)
    code = text_field(error, "code")
    kind = text_field(error, "type")
    message = text_field(error, "message") or ""
    window = window_reset_s(headers) if status == 429 else None
    quota: str | None = None
    if code in QUOTA_CODES:
        quota = QUOTA_CODES[code]
    elif kind == "insufficient_quota" and code not in RATE_LIMIT_KINDS:
        quota = QUOTA_SPENT  # the billing family by its type, with a code we do not know yet
    elif status == 402:
        quota = f"credit is spent (HTTP 402 payment required): {QUOTA_SPENT}"  # gateways (OpenRouter)
    elif status == 429 and code is None and kind is None and "exceeded your current quota" in message.lower():
        quota = QUOTA_SPENT  # fallback for a compatible server without codes: OpenAI's own quota wording
    return ErrorReading(
        code="/".join(k for k in (kind, code) if k) or None,
        quota=quota,
        key_refused=code == "invalid_api_key",
        window_reset_s=window,
    )


_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def go_duration_s(value: str) -> float | None:
    """Seconds in a Go-style duration such as "1h2m3.5s", "6m0s" or "20ms"; None if unreadable."""
    parts = _GO_DURATION.findall(value.strip())
    if not parts or "".join(n + u for n, u in parts) != value.strip():
        return None
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def window_reset_s(headers: Mapping[str, str]) -> float | None:
    """Time until the exhausted rate window (x-ratelimit-remaining-* == 0) is full again, capped at
    WINDOW_RESET_CAP_S; with no remaining-* header, the sooner of the two resets. None when absent."""
    resets: dict[str, float] = {}
    for what in ("requests", "tokens"):
        raw = headers.get(f"x-ratelimit-reset-{what}")
        if raw is not None and (seconds := go_duration_s(raw)) is not None:
            resets[what] = seconds
    if not resets:
        return None
    exhausted = [s for what, s in resets.items() if (headers.get(f"x-ratelimit-remaining-{what}") or "").strip() == "0"]
    return min(max(exhausted) if exhausted else min(resets.values()), WINDOW_RESET_CAP_S)


def request_body(request: ChatRequest) -> dict[str, Any]:
    """The JSON body for one chat completion: the conversation as given (ChatRequest.conversation
    leaves an empty system instruction out), the cap, and the sampling parameters the model takes (a reasoning model takes none)."""
    messages = [{"role": m.role, "content": m.content} for m in request.conversation()]
    body: dict[str, Any] = {"model": request.model, "messages": messages}
    if request.thinking_tokens is None and not openai_reasoning_model(request.model):
        body["max_tokens"] = request.max_output_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
    else:
        body["max_completion_tokens"] = request.output_cap
        if request.reasoning_effort:
            body["reasoning_effort"] = request.reasoning_effort
    if request.stop:
        body["stop"] = list(request.stop)
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

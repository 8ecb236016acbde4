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
cache_creation_input_tokens to cache_write_tokens.

Errors (`read_error`) arrive as {"type": "error", "error": {"type", "message", "details"},
"request_id": "req_..."}, with a `request-id` header too, and are decided by `error.type` and
`error.details.error_code`, as the Claude API errors page lists them
(https://platform.claude.com/docs/en/api/errors): 400 invalid_request_error, 401 authentication_error,
402 billing_error ("an issue with your billing or payment information"), 403 permission_error, 404
not_found_error, 409 conflict_error, 413 request_too_large, 429 rate_limit_error, 500 api_error, 504
timeout_error, 529 overloaded_error. Two spend limits hide behind those types:

- 429 rate_limit_error with error.details.error_code "enforced_spend_limit_reached": the organization
  reached its usage tier's monthly spend cap; it has no retry-after, and usage pauses until 00:00 UTC
  on the first of next month (same page; also the Dev Proxy guide "Anthropic 529 overloaded_error",
  learn.microsoft.com). Retrying fails until then: it stops Anthropic for the job.
- 400 invalid_request_error "You have reached your specified API usage limits. You will regain access
  on 2026-04-01 at 00:00 UTC." (or "...specified workspace API usage limits..."): a spend limit the user
  set (same page: "The API also returns a 400 when usage reaches an organization or workspace spend
  limit you set"; body seen in continuedev/continue#11305). It has no code, so the documented wording
  is the fallback that reads it. Likewise "Your credit balance is too low to access the Anthropic API"
  (a 400 with no code), and a 429 rate_limit_error naming a "spend limit" without details
  (can1357/oh-my-pi#5418).

The official SDK (anthropic 2.17, anthropic/types/shared/*_error_details.py) names more codes in
error.details.error_code, read here too: contract_spend_limit_reached (a 429: "the organization has
reached the spend limit of its contract") stops Anthropic; ramp_limit_exceeded (a 429: usage grew too
fast, "retry after the time in the retry-after header") is a rate limit; organization_on_hold (a 400)
stops it; any 402 (billing_error, linked_organization_spend_limit_reached,
linked_organization_billing_unavailable) stops it.

The wait of a 429 is its retry-after; without one, the reset time (anthropic-ratelimit-*-reset, RFC
3339) of the limit whose -remaining is 0, else the latest reset given (as anthropic-sdk-typescript#357
asked of the SDK). x-should-retry is obeyed (router.providers.http.status_error).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from router.providers.base import CUT, REFUSED, STOP, ChatRequest, Completion, UnreadableAnswer
from router.providers.http import (
    ClientPool,
    ErrorReading,
    JsonApiProvider,
    error_fields,
    estimated_usage,
    reset_in_s,
    text_field,
)
from router.usage import TokenUsage

PATH = "/v1/messages"
# The Messages API version this module's mapping was written against; Anthropic requires the header.
# The current one (the official SDKs send it from anthropic 2.0): no sampling parameters.
ANTHROPIC_VERSION = "2026-10-21"
# The rate limits whose anthropic-ratelimit-<name>-remaining / -reset headers a 429 may carry.
RATE_LIMITS = ("requests", "tokens", "input-tokens", "output-tokens")
TIER_CAP = (
    "usage tier's monthly spend cap is reached (enforced_spend_limit_reached): access resumes at 00:00 UTC "
    "on the first of next month, or move the organization to a higher tier"
)
CREDIT_LOW = "credit balance is too low: buy credits in the Claude Console (Plans & Billing)"
BILLING = "billing has a problem (billing_error): check the payment details in the Claude Console"
# error.details.error_code values after which no call can succeed for now (module docstring).
STOP_CODES = {
    "enforced_spend_limit_reached": TIER_CAP,
    "contract_spend_limit_reached": (
        "contract's spend limit is reached (contract_spend_limit_reached): ask Anthropic to raise it"
    ),
    "organization_on_hold": "organization is on hold (organization_on_hold): see the Claude Console",
}


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

    def read_error(self, status: int, headers: Mapping[str, str], body: Any) -> ErrorReading:
        return read_error(status, headers, body)


def read_error(status: int, headers: Mapping[str, str], body: Any, *, now: float | None = None) -> ErrorReading:
    """An Anthropic error, read from error.type and error.details.error_code (module docstring)."""
    error = error_fields(body)
    kind = text_field(error, "type")
    error_code = text_field(error.get("details"), "error_code")
    message = text_field(error, "message") or ""
    lowered = message.lower()
    quota: str | None = None
    if error_code in STOP_CODES:
        quota = STOP_CODES[error_code]
    elif kind == "billing_error" or status == 402:
        quota = f"{BILLING} ({error_code})" if error_code else BILLING
    elif status == 400 and "api usage limits" in lowered and "you have reached your specified" in lowered:
        quota = (
            f"spend limit is reached ({message[:160]}): raise or remove it in the Claude Console, or wait until then"
        )
    elif status == 400 and "credit balance is too low" in lowered:
        quota = CREDIT_LOW
    elif status == 429 and error_code is None and "spend limit" in lowered:
        quota = f"spend limit is reached ({message[:160]}): raise it in the Claude Console, or wait for it to reset"
    return ErrorReading(
        code="/".join(k for k in (kind, error_code) if k) or None,
        quota=quota,
        retry_after=reset_wait_s(headers, now=now) if status == 429 and quota is None else None,
        request_id=text_field(body, "request_id"),
    )


def reset_wait_s(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds until the exhausted limit resets (anthropic-ratelimit-<limit>-remaining == 0), else until
    the latest reset given; None without reset headers. Read only when a 429 has no retry-after."""
    resets: dict[str, float] = {}
    for name in RATE_LIMITS:
        raw = headers.get(f"anthropic-ratelimit-{name}-reset")
        if raw is not None and (seconds := reset_in_s(raw, now=now)) is not None:
            resets[name] = seconds
    exhausted = [
        s for name, s in resets.items() if (headers.get(f"anthropic-ratelimit-{name}-remaining") or "").strip() == "0"
    ]
    return max(exhausted or resets.values()) if resets else None


def request_body(request: ChatRequest) -> dict[str, Any]:
    """The JSON body for one Messages call: the system turns as `system` (left out when empty), the
    other turns as messages (Anthropic joins consecutive turns of one role), stop sequences; no
    sampling parameter: API version 2026-10-21 refuses them, see the module docstring."""
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_output_tokens,
        "messages": [{"role": m.role, "content": m.content} for m in request.turns()],
    }
    system = request.system_text()
    if system:
        body["system"] = system
    if request.stop:
        body["stop_sequences"] = list(request.stop)
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

"""Google Gemini, natively: generateContent.

Wire format: POST {base_url}/v1beta/models/{model}:generateContent with header `x-goog-api-key`,
body {systemInstruction: {parts: [{text}]}, contents: [{role: "user", parts: [{text}]}],
generationConfig: {maxOutputTokens, temperature}}. The answer is candidates[0].content.parts[*].text
(thought parts skipped).

Gemini 2.5 models think unless told not to, and their thoughts count inside maxOutputTokens: with a
classification's cap of a few tokens the answer comes back empty. A catalog entry with `thinking = 0`
sends thinkingConfig.thinkingBudget 0 (Flash, Flash-Lite); `thinking = N` sends a budget of N and a
cap of the answer's plus N (Pro cannot stop thinking; its smallest budget is 128).
Gemini 3 and later think by level and refuse thinkingBudget (router.catalog.gemini_levels): their
`thinking = N` is only room in maxOutputTokens, `reasoning_effort` is sent as thinkingConfig.thinkingLevel,
and no temperature is sent (Google asks to keep their default of 1.0: lower ones make them loop).

How an answer ended: a prompt blocked by safety has no candidates, only promptFeedback.blockReason and
the prompt's tokens in usageMetadata; a candidate's finishReason is "STOP" when whole, "MAX_TOKENS"
when cut off by the cap, "SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII" (and the
IMAGE_ ones) when filtered, "LANGUAGE" when the model declined the language, "OTHER" and the rest when
it broke off. Each is billed and charged (base.Completion).

Usage (usageMetadata), read first: promptTokenCount INCLUDES cachedContentTokenCount (so input =
prompt - cached); candidatesTokenCount EXCLUDES thoughtsTokenCount, and thinking is billed at the
output price, so output = candidates + thoughts (reasoning_tokens = thoughts). A body without usage
gets an estimate, flagged estimated=True.

Errors (`read_error`) are google.rpc.Status bodies: {"error": {"code", "message", "status", "details"}}
(the SDK's google.genai.errors.APIError reads code, status and message from them). A 429 is
RESOURCE_EXHAUSTED whatever the limit, and its message is the same for a minute's limit and a day's:
"You exceeded your current quota, please check your plan and billing details." Which limit it was is
in `details`, as a real per-minute 429 shows (RooCodeInc/Roo-Code#3883):

    {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
     "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_input_token_count",
                     "quotaId": "GenerateContentInputTokensPerModelPerMinute-FreeTier", ...}]},
    {"@type": "type.googleapis.com/google.rpc.Help", "links": [...]},
    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "26s"}

A quotaId with "PerDay" (GenerateRequestsPerDayPerProjectPerModel-FreeTier, google-gemini/gemini-cli#8437)
is the daily quota: it stops Gemini for the job ("Requests per day (RPD) quotas reset at midnight Pacific
time", https://ai.google.dev/gemini-api/docs/rate-limits). Any other 429 is a rate limit: wait and
retry, for RetryInfo.retryDelay (a protobuf Duration: "26s", "0.5s"). Gemini sends no Retry-After
header; the wait lives only in the body. A 429 without details ("Resource has been exhausted (e.g.
check quota).", googleapis/python-genai#2065) is a rate limit; an ErrorInfo whose metadata.quota_limit
names a day ("Gemini25ProRequestsPerDay", gemini-cli#10925) is the daily quota, and, as the documented
fallback for bodies without details, so is a message naming a per-day limit ("...limit:
GenerateRequestsPerDayPerProjectPerModel"). A bad key is 400 INVALID_ARGUMENT with an ErrorInfo
reason API_KEY_INVALID (or the message "API key not valid"). Error responses carry no request id.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import httpx

from router.catalog import gemini_levels
from router.providers.base import (
    BLOCKED,
    BROKEN,
    CUT,
    FILTERED,
    REFUSED,
    STOP,
    ChatRequest,
    Completion,
    UnreadableAnswer,
)
from router.providers.http import ClientPool, ErrorReading, JsonApiProvider, error_fields, estimated_usage, text_field
from router.usage import TokenUsage

API_VERSION = "v1beta"
QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
# A protobuf Duration in its JSON form: seconds with up to nine decimals and an "s".
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
# A per-day limit as named in a quotaId, a quota_limit or (fallback) a message.
_PER_DAY = re.compile(r"per ?day", re.IGNORECASE)


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
        return request_body(request)

    def parse(self, body: Any, request: ChatRequest) -> Completion:
        return parse_generate_content(body, request)

    def read_error(self, status: int, headers: Mapping[str, str], body: Any) -> ErrorReading:
        return read_error(status, headers, body)


def read_error(status: int, headers: Mapping[str, str], body: Any) -> ErrorReading:
    """A Gemini error, read from error.status and error.details (module docstring)."""
    error = error_fields(body)
    name = text_field(error, "status")
    message = text_field(error, "message") or ""
    details = [d for d in error.get("details") or [] if isinstance(d, dict)]
    quota_ids = [
        str(v.get("quotaId"))
        for d in details
        if d.get("@type") == QUOTA_FAILURE
        for v in d.get("violations") or []
        if isinstance(v, dict) and v.get("quotaId")
    ]
    infos = [d for d in details if d.get("@type") == ERROR_INFO]
    limits = [str((d.get("metadata") or {}).get("quota_limit") or "") for d in infos]
    daily = [q for q in quota_ids + limits if _PER_DAY.search(q)]
    if not daily and not quota_ids and not any(limits) and _PER_DAY.search(message):
        daily = ["named in the message"]  # the documented fallback: a body with no details
    quota = None
    if status == 429 and daily:
        quota = (
            f"daily quota is spent ({daily[0]}): it resets at midnight Pacific time; wait for it, or raise "
            "the project's usage tier"
        )
    delays = [duration_s(str(d.get("retryDelay") or "")) for d in details if d.get("@type") == RETRY_INFO]
    key_refused = any(d.get("reason") == "API_KEY_INVALID" for d in infos) or (
        status == 400 and "api key not valid" in message.lower()
    )
    return ErrorReading(
        code="/".join([name, *quota_ids] if name else quota_ids) or None,
        quota=quota,
        key_refused=key_refused,
        retry_after=next((d for d in delays if d is not None), None),
    )


def duration_s(value: str) -> float | None:
    """Seconds in a protobuf Duration's JSON form ("26s", "0.5s"); None if unreadable."""
    found = _DURATION.match(value)
    return float(found.group(1)) if found else None


def request_body(request: ChatRequest) -> dict[str, Any]:
    """The JSON body for one generateContent call: system turns as systemInstruction, the others as
    contents (an assistant turn is role "model"); see the module docstring for thinking and sampling."""
    config: dict[str, Any] = {"maxOutputTokens": request.output_cap}
    if gemini_levels(request.model) is not None:
        if request.reasoning_effort:
            config["thinkingConfig"] = {"thinkingLevel": request.reasoning_effort}
    else:
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.thinking_tokens is not None:
            config["thinkingConfig"] = {"thinkingBudget": request.thinking_tokens}
    if request.top_p is not None:
        config["topP"] = request.top_p
    if request.stop:
        config["stopSequences"] = list(request.stop)
    body: dict[str, Any] = {
        "contents": [
            {"role": "model" if m.role == "assistant" else "user", "parts": [{"text": m.content}]}
            for m in request.turns()
        ],
        "generationConfig": config,
    }
    system = request.system_text()
    if system:
        body["systemInstruction"] = {"parts": [{"text": system}]}
    return body


# finishReason values that end a candidate before it is whole ("STOP", and none, are whole).
FINISHES = {
    "MAX_TOKENS": CUT,
    "SAFETY": FILTERED,
    "RECITATION": FILTERED,
    "BLOCKLIST": FILTERED,
    "PROHIBITED_CONTENT": FILTERED,
    "SPII": FILTERED,
    "IMAGE_SAFETY": FILTERED,
    "IMAGE_PROHIBITED_CONTENT": FILTERED,
    "IMAGE_RECITATION": FILTERED,
    "LANGUAGE": REFUSED,
    "OTHER": BROKEN,
    "IMAGE_OTHER": BROKEN,
    "NO_IMAGE": BROKEN,
    "MALFORMED_FUNCTION_CALL": BROKEN,
    "UNEXPECTED_TOOL_CALL": BROKEN,
}


def parse_generate_content(body: Any, request: ChatRequest) -> Completion:
    """Read usage, then the block, text and finish reason, from a generateContent body. Raises
    KeyError, TypeError... when malformed, UnreadableAnswer when only the usage could be read."""
    usage = read_usage(body.get("usageMetadata"))
    blocked = (body.get("promptFeedback") or {}).get("blockReason")
    if blocked and not body.get("candidates"):
        # The prompt never reached the model; its tokens are billed. Not retried: the same prompt is blocked again.
        return Completion(
            text="",
            usage=usage or estimated_usage(request, ""),
            finish=BLOCKED,
            finish_reason=f"promptFeedback.blockReason {blocked}",
            detail=str((body.get("promptFeedback") or {}).get("blockReasonMessage") or "")[:200] or None,
        )
    try:
        candidate = body["candidates"][0]
        # A candidate stopped by a filter has no content: an answer that was billed, not a malformed one.
        parts = (candidate.get("content") or {}).get("parts") or []
        texts = [part.get("text", "") for part in parts if not part.get("thought")]
        if not all(isinstance(text, str) for text in texts):
            raise TypeError("parts[].text is not a string")
        text = "".join(texts)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        if usage is None:
            raise
        raise UnreadableAnswer(f"{type(exc).__name__}: {exc}", usage=usage) from exc
    reason = candidate.get("finishReason")
    return Completion(
        text=text,
        usage=usage or estimated_usage(request, text),
        finish=FINISHES.get(str(reason), STOP),
        finish_reason=reason,
        detail=str(candidate.get("finishMessage") or "")[:200] or None,
    )


def read_usage(usage: Any) -> TokenUsage | None:
    """Tokens from usageMetadata, or None when it has no promptTokenCount."""
    if not usage or "promptTokenCount" not in usage:
        return None
    prompt_tokens = int(usage["promptTokenCount"])
    cached = min(int(usage.get("cachedContentTokenCount") or 0), prompt_tokens)
    thoughts = int(usage.get("thoughtsTokenCount") or 0)
    return TokenUsage(
        input_tokens=prompt_tokens - cached,
        output_tokens=int(usage.get("candidatesTokenCount") or 0) + thoughts,
        cached_input_tokens=cached,
        reasoning_tokens=thoughts,
    )

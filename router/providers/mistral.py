"""Mistral's own API (la Plateforme): chat completions at https://api.mistral.ai/v1.

The wire format is the chat-completions one (router.providers.openai): `Authorization: Bearer`,
{model, messages, max_tokens, temperature}; usage {prompt_tokens, completion_tokens, total_tokens}.
What is Mistral's own: it rejects fields it does not know (so nothing OpenAI-only is sent), it
reports no cached-token detail, and its rate limits are per workspace.

Errors (`read_error`). Mistral's error glossary (https://docs.mistral.ai/resources/error-glossary)
gives the body {"object": "error", "message", "type", "param", "code"}, type one of
invalid_request_error, authentication_error, rate_limit_error, server_error; "402 Payment required: a
billing condition on your Organization blocks the request" (prepaid credit at zero, the Organization
or Workspace monthly spending limit reached, included usage exhausted, a failed payment); 429 for the
rate (requests per second, tokens per minute; "transient errors (429, 500, 502, 503, 504)"). Real 429
bodies seen in public reports: {"object":"error","message":"Rate limit exceeded","type":"rate_limited",
"param":null,"code":"1300"} (cline/cline#9085) and the older {"message":"Requests rate limit exceeded"}
(pydantic/pydantic-ai#1885); a 503 "Service tier capacity exceeded for this model." is the model at
capacity (BerriAI/litellm#25078), retried like any 503. A 401 says {"message":"Unauthorized",
"request_id":"..."} (cline/cline#1734): that request id is kept. So: 402 stops Mistral for the job,
401/403 refuse the key, every 429 waits and retries (no Retry-After: the engine backs off on its own).

Its reasoning models (Magistral, and others asked to reason) answer with `message.content` as a
list of chunks, {type: "thinking", thinking: [{type: "text", text}...]} then {type: "text", text}:
the text chunks are the answer (router.providers.openai.message_text). Its finish_reason adds
"model_length" (cut off by the context) and "error" (broken off) to the chat-completions ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from router.providers.base import ChatRequest
from router.providers.http import ErrorReading, error_fields, text_field
from router.providers.openai import OpenAIProvider, request_body

# What a 402 means on Mistral, and where to fix it (the glossary's "Admin Panel > Subscriptions > Billing").
PAYMENT_REQUIRED = (
    "balance or spending limit blocks calls (HTTP 402 payment required): add credit or raise the "
    "spending limit in Mistral's Admin Panel, Subscriptions > Billing"
)


class MistralProvider(OpenAIProvider):
    """Mistral's API: chat completions, sending only the fields Mistral documents."""

    what = "Mistral chat completion"

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        return request_body(request)

    def read_error(self, status: int, headers: Mapping[str, str], body: Any) -> ErrorReading:
        return read_error(status, headers, body)


def read_error(status: int, headers: Mapping[str, str], body: Any) -> ErrorReading:
    """A Mistral error, read from its status, type and code (module docstring)."""
    flat = body if isinstance(body, dict) and body.get("object") == "error" else error_fields(body)
    kind, code = text_field(flat, "type"), text_field(flat, "code")
    return ErrorReading(
        code="/".join(k for k in (kind, code) if k) or None,
        quota=PAYMENT_REQUIRED if status == 402 else None,
        request_id=text_field(body, "request_id"),
    )

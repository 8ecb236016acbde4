"""Mistral's own API (la Plateforme): chat completions at https://api.mistral.ai/v1.

The wire format is the chat-completions one (router.providers.openai): `Authorization: Bearer`,
{model, messages, max_tokens, temperature}; usage {prompt_tokens, completion_tokens, total_tokens}.
What is Mistral's own: it rejects fields it does not know (so nothing OpenAI-only is sent), it
reports no cached-token detail, and its rate limits are per workspace, answered with 429 and no
Retry-After (the engine then backs off on its own). A spent balance is a 429/402 naming billing,
which stops the provider for the job (router.providers.http.quota_exhausted).

Its reasoning models (Magistral, and others asked to reason) answer with `message.content` as a
list of chunks, {type: "thinking", thinking: [{type: "text", text}...]} then {type: "text", text}:
the text chunks are the answer (router.providers.openai.message_text). Its finish_reason adds
"model_length" (cut off by the context) and "error" (broken off) to the chat-completions ones.
"""

from __future__ import annotations

from typing import Any

from router.providers.base import ChatRequest
from router.providers.openai import OpenAIProvider, request_body


class MistralProvider(OpenAIProvider):
    """Mistral's API: chat completions, sending only the fields Mistral documents."""

    what = "Mistral chat completion"

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        return request_body(request)

"""Contract: the official SDKs (openai, anthropic, google-genai, mistralai; test-only dependencies) and
pennyroute's providers read the fake provider's SUCCESS answers the same way, in every answer dialect
it speaks: the same text, the same usage and the same finish reason. If the fake drifts from a
vendor's real format, its own SDK stops reading it as pennyroute does, and this fails.

Error bodies have their own contract tests (tests/unit/test_contract_errors_*.py, where present).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from router.providers.base import ChatRequest, Completion
from tests.fakes.server import start_in_thread
from tests.unit.test_providers import REQUEST, answer, call

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")
genai = pytest.importorskip("google.genai")
mistral_client = pytest.importorskip("mistralai.client")

KEY = "contract-key"
DIALECTS = (None, "cut", "refusal", "filtered", "blocked", "chunks")

# What an SDK read: (text, input tokens, output tokens, finish reason), in pennyroute's terms of tokens
# (input excludes cached input; output includes thinking).
Read = tuple[str, int, int, str | None]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    url, stop = start_in_thread(port=0, latency_ms=0, answer=answer)  # no key check: SDKs send theirs their way
    yield url
    stop()


def read_openai(base_url: str, request: ChatRequest) -> Read:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0)
    done = client.chat.completions.create(
        model=request.model,
        messages=[{"role": "system", "content": request.system}, {"role": "user", "content": request.prompt}],
        max_tokens=request.max_output_tokens,
        temperature=request.temperature,
    )
    choice, usage = done.choices[0], done.usage
    assert usage is not None
    cached = (usage.prompt_tokens_details.cached_tokens or 0) if usage.prompt_tokens_details else 0
    finish = "message.refusal" if choice.message.refusal else choice.finish_reason
    return choice.message.content or "", usage.prompt_tokens - cached, usage.completion_tokens, finish


def read_mistral(base_url: str, request: ChatRequest) -> Read:
    client = mistral_client.Mistral(api_key=KEY, server_url=base_url)
    done = client.chat.complete(
        model=request.model,
        messages=[{"role": "system", "content": request.system}, {"role": "user", "content": request.prompt}],
        max_tokens=request.max_output_tokens,
        temperature=request.temperature,
    )
    assert done.choices and done.usage
    content: Any = done.choices[0].message.content
    if isinstance(content, list):  # reasoning models: chunks; the text chunks are the answer
        content = "".join(chunk.text for chunk in content if getattr(chunk, "type", None) == "text")
    return (
        content or "",
        done.usage.prompt_tokens or 0,
        done.usage.completion_tokens or 0,
        done.choices[0].finish_reason,
    )


def read_anthropic(base_url: str, request: ChatRequest) -> Read:
    client = anthropic.Anthropic(base_url=base_url, api_key=KEY, max_retries=0)  # sends API version 2026-10-21
    done = client.messages.create(
        model=request.model,
        max_tokens=request.max_output_tokens,
        system=request.system,
        messages=[{"role": "user", "content": request.prompt}],
    )
    text = "".join(block.text for block in done.content if block.type == "text")
    return text, done.usage.input_tokens, done.usage.output_tokens, done.stop_reason


def read_gemini(base_url: str, request: ChatRequest) -> Read:
    types = genai.types
    client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=base_url, api_version="v1beta"))
    done = client.models.generate_content(
        model=request.model,
        contents=request.prompt,
        config=types.GenerateContentConfig(
            system_instruction=request.system,
            max_output_tokens=request.max_output_tokens,
            temperature=request.temperature,
        ),
    )
    meta = done.usage_metadata
    assert meta is not None
    prompt = (meta.prompt_token_count or 0) - (meta.cached_content_token_count or 0)
    output = (meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0)
    if not done.candidates:
        assert done.prompt_feedback and done.prompt_feedback.block_reason
        return "", prompt, output, f"promptFeedback.blockReason {done.prompt_feedback.block_reason.value}"
    candidate = done.candidates[0]
    parts = candidate.content.parts if candidate.content and candidate.content.parts else []
    text = "".join(part.text or "" for part in parts if not part.thought)
    return text, prompt, output, candidate.finish_reason.value if candidate.finish_reason else None


READERS: dict[str, Callable[[str, ChatRequest], Read]] = {
    "openai": read_openai,
    "mistral": read_mistral,
    "anthropic": read_anthropic,
    "gemini": read_gemini,
}


def ours(completion: Completion) -> Read:
    usage = completion.usage
    return completion.text, usage.input_tokens, usage.output_tokens, completion.finish_reason


# The fake's chat-completions path serves OpenAI and Mistral alike; two of its dialects are one
# vendor's only: OpenAI never sends content as chunks (Mistral does), and Mistral has no
# `message.refusal` (OpenAI does), so each SDK is held to its own vendor's dialects.
NOT_SPOKEN = {("openai", "chunks"), ("mistral", "refusal")}
CASES = [(vendor, dialect) for vendor in READERS for dialect in DIALECTS if (vendor, dialect) not in NOT_SPOKEN]


@pytest.mark.parametrize(("vendor", "dialect"), CASES)
def test_the_sdk_and_pennyroute_read_every_answer_the_same(server: str, vendor: str, dialect: str | None) -> None:
    httpx.post(f"{server}/_reset").raise_for_status()
    for _ in range(2):  # one answer in the dialect for the SDK, one for pennyroute
        if dialect is not None:
            httpx.post(f"{server}/_fail", json={"answer": dialect}).raise_for_status()
    sdk = READERS[vendor](server, REQUEST)
    mine = ours(call(server, vendor, "httpx", api_key=KEY))
    assert mine == sdk
    assert httpx.get(f"{server}/_stats").json()["calls"] == 2  # both answers were billed

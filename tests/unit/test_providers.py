"""Providers against the local fake server (tests.fakes.server), over both HTTP backends.

The server runs in a daemon thread on 127.0.0.1; each test runs its calls with `asyncio.run`, building
its clients inside that loop, as production code must. Faults are scripted through POST /_fail.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from typing import Any

import httpx
import pytest

from router.errors import (
    MalformedResponse,
    ProviderConnectionError,
    ProviderError,
    ProviderStatusError,
    ProviderTimeout,
)
from router.providers.anthropic import AnthropicProvider
from router.providers.base import STOP, ChatRequest, Completion
from router.providers.gemini import GeminiProvider
from router.providers.http import BACKENDS, Backend, ClientPool, JsonApiProvider, build_client, retry_after_s
from router.providers.mistral import MistralProvider
from router.providers.openai import OpenAIProvider
from router.usage import TokenUsage
from tests.fakes.server import ANTHROPIC_PATH, OPENAI_PATH, start_in_thread

KEY = "test-key"
# Client timeout for ordinary calls: loopback answers take milliseconds.
TIMEOUT_S = 1.0
REQUEST = ChatRequest(model="fake-small", system="Answer briefly.", prompt="hello there world", max_output_tokens=8)


def answer(model: str, system: str, prompt: str, max_output_tokens: int) -> Completion:
    """A trivial answer function whose numbers a test can predict."""
    return Completion(
        text=f"echo {prompt}",
        usage=TokenUsage(input_tokens=len(system) + len(prompt), output_tokens=min(3, max_output_tokens)),
    )


EXPECTED = answer(REQUEST.model, REQUEST.system, REQUEST.prompt, REQUEST.max_output_tokens)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    url, stop = start_in_thread(port=0, latency_ms=0, answer=answer, api_key=KEY)
    yield url
    stop()


@pytest.fixture
def base_url(server: str) -> str:
    httpx.post(f"{server}/_reset").raise_for_status()
    return server


def script(base_url: str, **fault: Any) -> None:
    httpx.post(f"{base_url}/_fail", json=fault).raise_for_status()


def stats(base_url: str) -> dict[str, Any]:
    bill: dict[str, Any] = httpx.get(f"{base_url}/_stats").json()
    return bill


GEMINI_CALL_PATH = f"/v1beta/models/{REQUEST.model}:generateContent"
VENDORS: dict[str, tuple[type[OpenAIProvider] | type[AnthropicProvider] | type[GeminiProvider], str, str]] = {
    "openai": (OpenAIProvider, "/v1", OPENAI_PATH),
    "anthropic": (AnthropicProvider, "", ANTHROPIC_PATH),
    "gemini": (GeminiProvider, "", GEMINI_CALL_PATH),
    "mistral": (MistralProvider, "/v1", OPENAI_PATH),
}


def call(
    base_url: str,
    vendor: str,
    backend: Backend,
    *,
    api_key: str | None = KEY,
    timeout_s: float = TIMEOUT_S,
    request: ChatRequest = REQUEST,
) -> Completion:
    """One provider call in a fresh loop, with a client built in that loop."""
    provider_cls, suffix, _ = VENDORS[vendor]

    async def go() -> Completion:
        client = build_client(
            base_url=base_url + suffix, headers={}, timeout_s=timeout_s, max_connections=4, backend=backend
        )
        provider = provider_cls(name=f"{vendor}-test", client=client, api_key=api_key)
        try:
            return await provider.complete(request)
        finally:
            await provider.aclose()

    return asyncio.run(go())


def raises(kind: type[ProviderError], fn: Callable[[], object]) -> ProviderError:
    with pytest.raises(kind) as info:
        fn()
    return info.value


both_backends = pytest.mark.parametrize("backend", BACKENDS)
both_vendors = pytest.mark.parametrize("vendor", list(VENDORS))


@both_backends
@both_vendors
def test_success_parses_text_and_tokens_and_is_billed(base_url: str, vendor: str, backend: Backend) -> None:
    done = call(base_url, vendor, backend)
    assert (done.text, done.usage, done.finish) == (EXPECTED.text, EXPECTED.usage, STOP)
    assert not done.usage.estimated
    bill = stats(base_url)
    assert bill["models"] == {
        REQUEST.model: {
            "calls": 1,
            "input_tokens": EXPECTED.usage.input_tokens,
            "output_tokens": EXPECTED.usage.output_tokens,
            "cached_input_tokens": 0,
        }
    }


@both_backends
def test_openai_cached_tokens_are_taken_out_of_prompt_tokens(base_url: str, backend: Backend) -> None:
    body = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "B"}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 1000,
            "completion_tokens": 2,
            "total_tokens": 1002,
            "prompt_tokens_details": {"cached_tokens": 768},
        },
    }
    script(base_url, path=OPENAI_PATH, body=body)
    done = call(base_url, "openai", backend)
    assert done == Completion(
        text="B", usage=TokenUsage(input_tokens=232, output_tokens=2, cached_input_tokens=768), finish_reason="stop"
    )
    assert stats(base_url)["calls"] == 0  # scripted answers are not billed


@both_backends
def test_anthropic_cache_reads_and_writes_are_apart_from_input(base_url: str, backend: Backend) -> None:
    body = {
        "type": "message",
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "x"},
            {"type": "text", "text": "The answer "},
            {"type": "text", "text": "is B."},
        ],
        "usage": {
            "input_tokens": 12,
            "output_tokens": 5,
            "cache_read_input_tokens": 900,
            "cache_creation_input_tokens": 40,
        },
    }
    script(base_url, path=ANTHROPIC_PATH, body=body)
    done = call(base_url, "anthropic", backend)
    assert done == Completion(
        text="The answer is B.",
        usage=TokenUsage(input_tokens=12, output_tokens=5, cached_input_tokens=900, cache_write_tokens=40),
    )  # no stop_reason in the body: taken as a whole answer


@both_backends
@both_vendors
def test_429_with_retry_after_is_retryable_with_the_wait(base_url: str, vendor: str, backend: Backend) -> None:
    script(base_url, status=429, retry_after="2")
    error = raises(ProviderStatusError, lambda: call(base_url, vendor, backend))
    assert (error.status_code, error.retry_after, error.retryable) == (429, 2.0, True)
    assert "scripted HTTP 429" in str(error)  # the provider's own message is quoted


@both_backends
@both_vendors
def test_401_is_not_retryable_and_names_the_provider(base_url: str, vendor: str, backend: Backend) -> None:
    error = raises(ProviderStatusError, lambda: call(base_url, vendor, backend, api_key="wrong-key"))
    assert error.status_code == (400 if vendor == "gemini" else 401)  # Gemini: 400 API key not valid
    assert not error.retryable and error.stops_provider
    assert error.retry_after is None
    assert str(error).startswith(f"{vendor}-test: HTTP {error.status_code}")
    assert "key" in str(error)  # the server's message ("Incorrect API key" / "invalid x-api-key")
    assert stats(base_url)["calls"] == 0


@both_backends
def test_529_overloaded_is_retryable(base_url: str, backend: Backend) -> None:
    script(base_url, status=529, body={"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    error = raises(ProviderStatusError, lambda: call(base_url, "anthropic", backend))
    assert (error.status_code, error.retryable) == (529, True)
    assert "overloaded_error: Overloaded" in str(error)


@both_backends
@both_vendors
def test_500_with_a_non_json_body_is_retryable_and_quotes_it(base_url: str, vendor: str, backend: Backend) -> None:
    script(base_url, status=500, body="<html>upstream exploded</html>")
    error = raises(ProviderStatusError, lambda: call(base_url, vendor, backend))
    assert (error.status_code, error.retryable) == (500, True)
    assert "upstream exploded" in str(error)


@both_backends
@both_vendors
def test_malformed_json_body_is_malformed_response(base_url: str, vendor: str, backend: Backend) -> None:
    script(base_url, body='{"choices": [')
    error = raises(MalformedResponse, lambda: call(base_url, vendor, backend))
    assert error.retryable


@both_backends
@both_vendors
def test_json_body_missing_fields_is_malformed_response(base_url: str, vendor: str, backend: Backend) -> None:
    script(base_url, body={"id": "x", "object": "nothing useful"})
    raises(MalformedResponse, lambda: call(base_url, vendor, backend))


@both_backends
@both_vendors
def test_missing_usage_is_estimated(base_url: str, vendor: str, backend: Backend) -> None:
    bodies = {
        "openai": {"choices": [{"message": {"role": "assistant", "content": "four words of text"}}]},
        "anthropic": {"content": [{"type": "text", "text": "four words of text"}], "usage": None},
        "gemini": {"candidates": [{"content": {"parts": [{"text": "four words of text"}], "role": "model"}}]},
        "mistral": {"choices": [{"message": {"role": "assistant", "content": "four words of text"}}]},
    }
    script(base_url, body=bodies[vendor])
    done = call(base_url, vendor, backend)
    assert done.text == "four words of text"
    assert done.usage.estimated
    assert done.usage.input_tokens > 0 and done.usage.output_tokens > 0


@both_backends
@both_vendors
def test_server_hanging_past_the_timeout_is_provider_timeout(base_url: str, vendor: str, backend: Backend) -> None:
    script(base_url, hang_s=2.0)
    started = time.monotonic()
    error = raises(ProviderTimeout, lambda: call(base_url, vendor, backend, timeout_s=0.3))
    assert error.retryable
    assert time.monotonic() - started < 1.5  # gave up near 0.3 s, did not wait for the answer


@both_backends
def test_connection_refused_is_a_connection_error_not_a_timeout(backend: Backend) -> None:
    # httpx_aiohttp reports a refused connection as httpx.ConnectTimeout; we must not.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # free once closed: nothing listens there
    error = raises(ProviderConnectionError, lambda: call(f"http://127.0.0.1:{port}", "openai", backend))
    assert error.retryable and error.status_code is None


@both_backends
def test_client_pool_spreads_calls_round_robin_and_works_with_a_provider(base_url: str, backend: Backend) -> None:
    hits: list[int] = []

    def handler(index: int) -> Callable[[httpx.Request], httpx.Response]:
        def respond(request: httpx.Request) -> httpx.Response:
            hits.append(index)
            return httpx.Response(200, json={})

        return respond

    async def go() -> Completion:
        pool = ClientPool([httpx.AsyncClient(transport=httpx.MockTransport(handler(i))) for i in range(3)])
        for _ in range(7):
            await pool.post("http://test/x", json={})
        await pool.aclose()
        built = ClientPool.build(
            k=3, base_url=base_url + "/v1", headers={}, timeout_s=TIMEOUT_S, max_connections=6, backend=backend
        )
        provider = OpenAIProvider(name="pooled", client=built, api_key=KEY)
        try:
            return (await asyncio.gather(*(provider.complete(REQUEST) for _ in range(6))))[0]
        finally:
            await provider.aclose()

    done = asyncio.run(go())
    assert (done.text, done.usage, done.finish) == (EXPECTED.text, EXPECTED.usage, STOP)
    assert hits == [0, 1, 2, 0, 1, 2, 0]
    assert stats(base_url)["calls"] == 6


@both_backends
def test_build_client_refuses_to_run_outside_an_event_loop(backend: Backend) -> None:
    with pytest.raises(RuntimeError):
        build_client(base_url="http://127.0.0.1:1", headers={}, timeout_s=1, max_connections=1, backend=backend)


def test_stats_and_reset(base_url: str) -> None:
    for _ in range(3):
        call(base_url, "openai", "httpx")
    call(base_url, "anthropic", "httpx", request=ChatRequest(model="other", system="", prompt="x", max_output_tokens=1))
    bill = stats(base_url)
    assert bill["calls"] == 4
    assert bill["models"]["other"] == {"calls": 1, "input_tokens": 1, "output_tokens": 1, "cached_input_tokens": 0}
    assert bill["input_tokens"] == 3 * EXPECTED.usage.input_tokens + 1
    httpx.post(f"{base_url}/_reset").raise_for_status()
    assert stats(base_url)["calls"] == 0


NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "250", "retry-after": "1"}, 0.25),  # ms is more precise, read first
        ({"retry-after-ms": "soon", "retry-after": "3"}, 3.0),
        ({"retry-after": formatdate(NOW + 30, usegmt=True)}, 30.0),
        ({"retry-after": formatdate(NOW - 30, usegmt=True)}, 0.0),  # a date in the past: no wait
        ({"retry-after": "-5"}, None),
        ({"retry-after": "whenever"}, None),
    ],
)
def test_retry_after_parsing(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_s(httpx.Headers(headers), now=NOW) == expected


@both_backends
def test_gemini_cached_tokens_are_inside_the_prompt_and_thoughts_are_billed_as_output(
    base_url: str, backend: Backend
) -> None:
    body = {
        "candidates": [
            {
                "content": {"parts": [{"text": "thinking...", "thought": True}, {"text": "B"}], "role": "model"},
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 1000,
            "cachedContentTokenCount": 600,
            "candidatesTokenCount": 2,
            "thoughtsTokenCount": 50,
            "totalTokenCount": 1052,
        },
    }
    script(base_url, path=GEMINI_CALL_PATH, body=body)
    done = call(base_url, "gemini", backend)
    assert done == Completion(
        text="B",
        usage=TokenUsage(input_tokens=400, output_tokens=52, cached_input_tokens=600, reasoning_tokens=50),
        finish_reason="STOP",
    )


def test_costs_follow_each_providers_token_rules() -> None:
    """Hand-computed: the same catalog price applied to each vendor's usage as its parser reads it."""
    from decimal import Decimal

    from router.catalog import Price, Rate
    from router.providers.anthropic import parse_message
    from router.providers.gemini import parse_generate_content
    from router.providers.openai import parse_completion

    price = Price(
        input=Rate(Decimal("1.00")),
        cached_input=Rate(Decimal("0.10")),
        cache_write=Rate(Decimal("1.25")),
        output=Rate(Decimal("4.00")),
        source="test",
    )
    openai = parse_completion(
        {
            "choices": [{"message": {"content": "B"}}],
            "usage": {
                "prompt_tokens": 1000,
                "completion_tokens": 30,
                "prompt_tokens_details": {"cached_tokens": 800},
                "completion_tokens_details": {"reasoning_tokens": 20},
            },
        },
        REQUEST,
    ).usage
    # 200 fresh input at $1, 800 cached at $0.10, 30 output (reasoning included) at $4 per million.
    assert price.cost_usd(openai) == (Decimal(200) * 1 + Decimal(800) * Decimal("0.10") + Decimal(30) * 4) / 1_000_000
    anthropic = parse_message(
        {
            "content": [{"type": "text", "text": "B"}],
            "usage": {
                "input_tokens": 200,
                "output_tokens": 30,
                "cache_read_input_tokens": 800,
                "cache_creation_input_tokens": 100,
            },
        },
        REQUEST,
    ).usage
    # Anthropic reports reads and writes apart from input: 200 + 800 read + 100 written.
    assert (
        price.cost_usd(anthropic)
        == (Decimal(200) + Decimal(800) * Decimal("0.10") + Decimal(100) * Decimal("1.25") + Decimal(30) * 4)
        / 1_000_000
    )
    gemini = parse_generate_content(
        {
            "candidates": [{"content": {"parts": [{"text": "B"}]}}],
            "usageMetadata": {
                "promptTokenCount": 1000,
                "cachedContentTokenCount": 800,
                "candidatesTokenCount": 10,
                "thoughtsTokenCount": 20,
            },
        },
        REQUEST,
    ).usage
    # Gemini: cached inside the prompt count; thoughts apart from candidates, billed as output.
    assert price.cost_usd(gemini) == (Decimal(200) + Decimal(800) * Decimal("0.10") + Decimal(30) * 4) / 1_000_000


@pytest.mark.parametrize("base", ["http://h:1", "http://h:1/v1", "http://h:1/v1/", "https://api.example.com/openai/v1"])
@pytest.mark.parametrize("kind", [OpenAIProvider, AnthropicProvider, GeminiProvider])
def test_each_endpoint_is_merged_once_as_httpx_merges_it(base: str, kind: type[JsonApiProvider]) -> None:
    """The providers post to an absolute URL built once per path (not merged by httpx on every call):
    it must be the very URL httpx would have built from the relative path, for any base URL."""
    client = httpx.AsyncClient(base_url=base)
    provider = kind(name="p", client=client, api_key=KEY)  # type: ignore[call-arg]
    request = ChatRequest(model="m-1", system="s", prompt="p", max_output_tokens=5)
    path = provider.url(request)
    assert provider._endpoint(path) == client._merge_url(path) and provider._endpoint(path).is_absolute_url
    assert provider._endpoint(path) is provider._endpoint(path)  # built once

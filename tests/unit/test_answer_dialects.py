"""Issue 13, findings 4, 5, 7 and the catalog part of 8, at the provider and catalog level: how each
vendor's answers end (read from the fake provider speaking their dialects), what is sent to Anthropic
and to thinking models, and the thinking settings the catalog refuses at load."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from router.catalog import load_catalog
from router.errors import ConfigError, MalformedResponse
from router.providers import anthropic, gemini
from router.providers.base import BLOCKED, CUT, FILTERED, REFUSED, STOP, ChatRequest
from router.providers.http import BACKENDS, Backend
from router.providers.openai import request_body as openai_body
from tests.fakes.faults import FaultMix
from tests.fakes.server import ANTHROPIC_PATH, start_in_thread
from tests.unit.test_providers import KEY, REQUEST, answer, call

VENDORS = ("openai", "anthropic", "gemini", "mistral")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    url, stop = start_in_thread(port=0, latency_ms=0, answer=answer, api_key=KEY)
    yield url
    stop()


@pytest.fixture
def base_url(server: str) -> str:
    httpx.post(f"{server}/_reset").raise_for_status()
    return server


def dialect(base_url: str, kind: str, count: int = 1) -> None:
    httpx.post(f"{base_url}/_fail", json={"answer": kind, "count": count}).raise_for_status()


def billed(base_url: str) -> dict[str, int]:
    bill: dict[str, int] = httpx.get(f"{base_url}/_stats").json()
    return bill


# -- how answers end, per vendor -------------------------------------------------------------------

# (vendor, dialect) -> (finish, the vendor's own finish reason)
ENDINGS = {
    ("openai", "cut"): (CUT, "length"),
    ("mistral", "cut"): (CUT, "length"),
    ("anthropic", "cut"): (CUT, "max_tokens"),
    ("gemini", "cut"): (CUT, "MAX_TOKENS"),
    ("openai", "refusal"): (REFUSED, "message.refusal"),
    ("anthropic", "refusal"): (REFUSED, "refusal"),
    ("gemini", "refusal"): (FILTERED, "SAFETY"),
    ("openai", "filtered"): (FILTERED, "content_filter"),
    ("gemini", "filtered"): (FILTERED, "PROHIBITED_CONTENT"),
    ("gemini", "blocked"): (BLOCKED, "promptFeedback.blockReason SAFETY"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("vendor", "kind"), list(ENDINGS))
def test_each_ending_is_read_with_the_usage_the_fake_billed(
    base_url: str, backend: Backend, vendor: str, kind: str
) -> None:
    dialect(base_url, kind)
    done = call(base_url, vendor, backend)
    assert (done.finish, done.finish_reason) == ENDINGS[(vendor, kind)]
    bill = billed(base_url)
    assert (done.usage.input_tokens, done.usage.output_tokens) == (bill["input_tokens"], bill["output_tokens"])
    assert not done.usage.estimated and bill["calls"] == 1
    if kind == "cut":
        assert done.usage.output_tokens == REQUEST.max_output_tokens  # the whole cap was spent
        assert done.unusable is None and "cut off by the output cap" in done.cut_reason
    else:
        assert done.text == "" and done.unusable is not None
    if kind == "blocked":
        assert done.usage.output_tokens == 0 and done.usage.input_tokens > 0  # the prompt's tokens only


@pytest.mark.parametrize("vendor", VENDORS)
def test_content_in_chunks_or_with_thinking_reads_the_text_alone(base_url: str, vendor: str) -> None:
    dialect(base_url, "chunks")
    done = call(base_url, vendor, "httpx")
    assert (done.text, done.finish) == (f"echo {REQUEST.prompt}", STOP)


def test_magistral_answers_in_chunks_and_is_read(base_url: str) -> None:
    raw = httpx.post(
        f"{base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": "magistral-small-2509", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
    ).json()
    assert [chunk["type"] for chunk in raw["choices"][0]["message"]["content"]] == ["thinking", "text"]
    done = call(
        base_url,
        "mistral",
        "httpx",
        request=ChatRequest(model="magistral-small-2509", system="", prompt="hi", max_output_tokens=8),
    )
    assert done.text == "echo hi" and done.usage.output_tokens > 0


def test_a_body_whose_usage_reads_but_content_does_not_keeps_the_usage(base_url: str) -> None:
    body = {"choices": [{"message": {"content": {"odd": True}}}], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}
    httpx.post(f"{base_url}/_fail", json={"body": body}).raise_for_status()
    with pytest.raises(MalformedResponse) as info:
        call(base_url, "openai", "httpx")
    assert info.value.usage is not None and (info.value.usage.input_tokens, info.value.usage.output_tokens) == (9, 2)
    assert not info.value.retryable  # billed, whole, in a shape we cannot read: it would come back the same


def test_a_body_with_no_usage_and_no_content_is_still_retryable(base_url: str) -> None:
    httpx.post(f"{base_url}/_fail", json={"body": {"nothing": 1}}).raise_for_status()
    with pytest.raises(MalformedResponse) as info:
        call(base_url, "gemini", "httpx")
    assert info.value.usage is None and info.value.retryable


def test_the_fault_mix_draws_answer_dialects_as_billed_answers(base_url: str) -> None:
    httpx.post(f"{base_url}/_faults", json={"seed": 1, "rates": {"cut": 1.0}}).raise_for_status()
    done = call(base_url, "anthropic", "httpx")
    assert done.finish == CUT and billed(base_url)["calls"] == 1
    with pytest.raises(ValueError, match="unknown fault kinds"):
        FaultMix.from_json({"rates": {"shrug": 0.1}})


# -- Anthropic: API version 2026-10-21, no sampling parameters (finding 5) -----------------------------


def test_anthropic_sends_the_current_version_and_no_sampling_parameter(base_url: str) -> None:
    body = anthropic.request_body(REQUEST)
    assert anthropic.ANTHROPIC_VERSION == "2026-10-21"
    assert not {"temperature", "top_p", "top_k"} & set(body)
    assert call(base_url, "anthropic", "aiohttp").finish == STOP  # and the fake, playing that version, answers


@pytest.mark.parametrize(
    ("version", "extra", "status"),
    [
        ("2026-10-21", {"temperature": 0.0}, 400),
        ("2026-10-21", {"temperature": 1.0}, 400),  # even the default value
        ("2026-10-21", {"top_k": 5}, 400),
        ("2023-06-01", {"temperature": 0.0}, 200),
        ("2024-01-01", {}, 400),
    ],
)
def test_the_fake_plays_anthropics_api_versions(
    base_url: str, version: str, extra: dict[str, float], status: int
) -> None:
    response = httpx.post(
        f"{base_url}{ANTHROPIC_PATH}",
        headers={"x-api-key": KEY, "anthropic-version": version},
        json={"model": "claude-x", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], **extra},
    )
    assert response.status_code == status, response.text


# -- thinking models: what is sent (finding 8) ---------------------------------------------------


def ask(model: str, **kw: object) -> ChatRequest:
    return ChatRequest(model=model, system="s", prompt="p", max_output_tokens=8, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("model", ["o3", "o4-mini", "gpt-5", "gpt-5-mini", "gpt-5.1", "openai/gpt-5-nano"])
def test_an_openai_reasoning_model_gets_max_completion_tokens_without_thinking(model: str) -> None:
    body = openai_body(ask(model))
    assert body["max_completion_tokens"] == 8 and "max_tokens" not in body and "temperature" not in body


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-5-chat-latest", "meta-llama/Llama-3.1-8B-Instruct"])
def test_chat_models_keep_max_tokens_and_temperature(model: str) -> None:
    body = openai_body(ask(model))
    assert body["max_tokens"] == 8 and body["temperature"] == 0.0 and "max_completion_tokens" not in body


def test_gemini_3_gets_a_thinking_level_room_in_the_cap_and_no_budget_or_temperature(base_url: str) -> None:
    request = ask("gemini-3-flash-preview", thinking_tokens=256, reasoning_effort="low")
    config = gemini.request_body(request)["generationConfig"]
    assert config == {"maxOutputTokens": 8 + 256, "thinkingConfig": {"thinkingLevel": "low"}}
    done = call(base_url, "gemini", "httpx", request=request)
    assert done.finish == STOP and done.usage.reasoning_tokens == 64  # the fake's "low"
    # The fake refuses what the API refuses: a budget on Gemini 3, a level on 2.5.
    refused = ask("gemini-3-flash-preview", thinking_tokens=256)
    assert "thinkingBudget" not in str(gemini.request_body(refused))
    for model, config in [
        ("gemini-3-pro-preview", {"thinkingConfig": {"thinkingBudget": 128}}),
        ("gemini-2.5-flash", {"thinkingConfig": {"thinkingLevel": "low"}}),
    ]:
        response = httpx.post(
            f"{base_url}/v1beta/models/{model}:generateContent",
            headers={"x-goog-api-key": KEY},
            json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "generationConfig": config},
        )
        assert response.status_code == 400, response.text


def test_gemini_2_5_keeps_its_budget_and_temperature() -> None:
    config = gemini.request_body(ask("gemini-2.5-pro", thinking_tokens=128))["generationConfig"]
    assert config == {"maxOutputTokens": 136, "temperature": 0.0, "thinkingConfig": {"thinkingBudget": 128}}


# -- the catalog: accepted and refused at load (finding 8) ------------------------------------------

PRICE = 'price = { input_usd_per_mtok = "1", output_usd_per_mtok = "2" }'


def load(tmp_path: Path, entry: str) -> object:
    path = tmp_path / "catalog.toml"
    path.write_text(f"[[models]]\n{entry}\n{PRICE}\n")
    return load_catalog(path)


@pytest.mark.parametrize(
    "entry",
    [
        'id = "gpt-5.1"\nprovider = "openai"\nreasoning_effort = "none"',
        'id = "gpt-5"\nprovider = "openai"\nthinking = 256\nreasoning_effort = "minimal"',
        'id = "gpt-5.2"\nprovider = "openai"\nthinking = 4096\nreasoning_effort = "xhigh"',
        'id = "gpt-5.5"\nprovider = "openai"\nthinking = 512\nreasoning_effort = "max"',
        'id = "o3"\nprovider = "openai"\nthinking = 1024\nreasoning_effort = "high"',
        'id = "gemini-3-flash-preview"\nprovider = "google"\nthinking = 256\nreasoning_effort = "minimal"',
        'id = "gemini-3-pro-preview"\nprovider = "google"\nthinking = 512\nreasoning_effort = "low"',
        'id = "gemini-2.5-flash-lite"\nprovider = "google"\nthinking = 0',
    ],
)
def test_current_reasoning_and_thinking_settings_are_accepted(tmp_path: Path, entry: str) -> None:
    load(tmp_path, entry)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            'id = "o4-mini"\nprovider = "openai"',
            "model o4-mini: o4-mini is an OpenAI reasoning model (o-series, gpt-5): it reasons inside its output "
            "cap, so set thinking = N",
        ),
        (
            'id = "gpt-5-mini"\nprovider = "openai"\nreasoning_effort = "low"',
            "model gpt-5-mini: gpt-5-mini is an OpenAI reasoning model",
        ),
        (
            'id = "o3"\nprovider = "openai"\nreasoning_effort = "minimal"',
            "model o3: reasoning_effort 'minimal' is refused by o3, which takes low, medium, high",
        ),
        (
            'id = "gpt-5.1"\nprovider = "openai"\nreasoning_effort = "minimal"',
            "model gpt-5.1: reasoning_effort 'minimal' is refused by gpt-5.1",
        ),
        (
            'id = "gpt-5"\nprovider = "openai"\nreasoning_effort = "none"',
            "model gpt-5: reasoning_effort 'none' is refused by gpt-5",
        ),
        ('id = "gpt-5-pro"\nprovider = "openai"\nreasoning_effort = "low"', "which takes high"),
        (
            'id = "gemini-3-pro-preview"\nprovider = "google"\nthinking = 0',
            "model gemini-3-pro-preview: thinking: gemini-3-pro-preview thinks by level and cannot switch thinking off",
        ),
        (
            'id = "gemini-3-pro-preview"\nprovider = "google"\nreasoning_effort = "medium"',
            "model gemini-3-pro-preview: reasoning_effort (its thinkingLevel) must be one of low, high",
        ),
        (
            'id = "gemini-3-flash-preview"\nprovider = "google"\nreasoning_effort = "xhigh"',
            "must be one of minimal, low, medium, high",
        ),
        (
            'id = "gemini-2.5-pro"\nprovider = "google"\nreasoning_effort = "low"',
            "model gemini-2.5-pro: reasoning_effort: gemini-2.5-pro takes a thinking budget",
        ),
        (
            'id = "gemini-2.5-pro"\nprovider = "google"\nthinking = 64',
            "model gemini-2.5-pro: thinking: gemini-2.5-pro takes a thinking budget of 128 to 32768, not 64",
        ),
        (
            'id = "gemini-2.5-flash-lite"\nprovider = "google"\nthinking = 100',
            "takes a thinking budget of 512 to 24576",
        ),
        (
            'id = "gemini-2.0-flash"\nprovider = "google"\nthinking = 0',
            "model gemini-2.0-flash: thinking: gemini-2.0-flash does not think",
        ),
        (
            'id = "mistral-small-2603"\nprovider = "mistral"\nreasoning_effort = "low"',
            "model mistral-small-2603: reasoning_effort is for OpenAI reasoning models",
        ),
    ],
)
def test_combinations_a_provider_refuses_are_refused_at_load_naming_model_and_field(
    tmp_path: Path, entry: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(tmp_path, entry)


def test_the_default_catalog_still_loads() -> None:
    catalog = load_catalog()
    assert catalog.model("gemini-2.5-pro").thinking == 128 and catalog.model("gemini-2.5-flash").thinking == 0

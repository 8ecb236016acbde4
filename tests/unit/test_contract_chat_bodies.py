"""Contract tests: a chat item's conversation goes on the wire as each vendor's own SDK sends it.

The same conversation (a system turn, user and assistant turns, a cap, sampling parameters and stop
sequences) is sent once with the vendor's official SDK (openai, anthropic, google-genai, mistralai:
the `dev` extra) and once with pennyroute's provider, to the fake provider, which keeps each body it
answered (GET /_asked). Every field pennyroute sends must equal the SDK's, and the turns must be the
same turns in the same order. So a /v1 line or a `--task chat` item reaches the model as its author
wrote it, whichever provider runs it.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from router.chat import Message
from router.providers.base import ChatRequest
from tests.sdk_contract import KEY, send

anthropic = pytest.importorskip("anthropic")
openai = pytest.importorskip("openai")
genai = pytest.importorskip("google.genai")
pytest.importorskip("mistralai.client")

SYSTEM = "You answer in French, briefly."
TURNS = [
    ("user", "What is the capital of Italy?"),
    ("assistant", "Rome."),
    ("user", "And of Spain? End with END."),
]
CAP, TEMPERATURE, TOP_P, STOP = 50, 0.3, 0.9, ["END", "\n\n"]


def asked(url: str) -> list[dict[str, Any]]:
    return list(httpx.get(f"{url}/_asked").json())


def ours(url: str, vendor: str, *, model: str, sampling: bool = True) -> dict[str, Any]:
    """The body pennyroute's provider sent for the conversation."""
    request = ChatRequest(
        model=model,
        system="",
        prompt="",
        messages=(Message("system", SYSTEM), *(Message(r, c) for r, c in TURNS)),
        max_output_tokens=CAP,
        temperature=TEMPERATURE if sampling else None,
        top_p=TOP_P if sampling else None,
        stop=tuple(STOP),
    )
    before = len(asked(url))
    send(url, vendor, request)
    return asked(url)[before]["body"]  # type: ignore[no-any-return]


def same_where_sent(mine: Any, theirs: Any, where: str = "body") -> None:
    """Every field pennyroute sends is the SDK's value for it, in lists item for item (the SDK may add
    defaults of its own, such as mistralai's `"prefix": false` on an assistant turn)."""
    if isinstance(mine, dict):
        assert isinstance(theirs, dict), where
        for key, value in mine.items():
            assert key in theirs, f"{where}.{key} is not in the SDK's body {sorted(theirs)}"
            same_where_sent(value, theirs[key], f"{where}.{key}")
    elif isinstance(mine, list):
        assert isinstance(theirs, list) and len(mine) == len(theirs), where
        for k, (a, b) in enumerate(zip(mine, theirs, strict=True)):
            same_where_sent(a, b, f"{where}[{k}]")
    else:
        assert mine == theirs, where


def test_openai_conversation_body_is_the_sdks(keyed_fake: str) -> None:
    client = openai.OpenAI(api_key=KEY, base_url=f"{keyed_fake}/v1", max_retries=0)
    messages: Any = [{"role": "system", "content": SYSTEM}, *({"role": r, "content": c} for r, c in TURNS)]
    client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, max_tokens=CAP, temperature=TEMPERATURE, top_p=TOP_P, stop=STOP
    )
    theirs = asked(keyed_fake)[-1]["body"]
    mine = ours(keyed_fake, "openai", model="gpt-4o-mini")
    same_where_sent(mine, theirs)
    assert set(mine) == {"model", "messages", "max_tokens", "temperature", "top_p", "stop"}


def test_mistral_conversation_body_is_the_sdks(keyed_fake: str) -> None:
    from mistralai.client import Mistral
    from mistralai.client.utils.retries import BackoffStrategy, RetryConfig

    client = Mistral(
        api_key=KEY, server_url=keyed_fake, retry_config=RetryConfig("none", BackoffStrategy(1, 1, 1.0, 1), False)
    )
    messages: Any = [{"role": "system", "content": SYSTEM}, *({"role": r, "content": c} for r, c in TURNS)]
    client.chat.complete(
        model="mistral-small-latest", messages=messages, max_tokens=CAP, temperature=TEMPERATURE, top_p=TOP_P, stop=STOP
    )
    theirs = asked(keyed_fake)[-1]["body"]
    mine = ours(keyed_fake, "mistral", model="mistral-small-latest")
    same_where_sent(mine, theirs)


def test_anthropic_conversation_body_is_the_sdks(keyed_fake: str) -> None:
    """Anthropic takes the system turns apart, and (API 2026-10-21) no sampling parameter: pennyroute
    drops temperature and top_p for it, so the SDK is called without them."""
    client = anthropic.Anthropic(api_key=KEY, base_url=keyed_fake, max_retries=0)
    client.messages.create(
        model="claude-haiku-4-5",
        max_tokens=CAP,
        system=SYSTEM,
        messages=[{"role": r, "content": c} for r, c in TURNS],  # type: ignore[misc]
        stop_sequences=STOP,
        extra_headers={"anthropic-version": "2026-10-21"},
    )
    theirs = asked(keyed_fake)[-1]["body"]
    mine = ours(keyed_fake, "anthropic", model="claude-haiku-4-5")
    same_where_sent(mine, theirs)
    assert "temperature" not in mine and "top_p" not in mine


def test_gemini_conversation_body_is_the_sdks(keyed_fake: str) -> None:
    from google.genai import types

    client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=keyed_fake, api_version="v1beta"))
    client.models.generate_content(
        model="gemini-2.5-flash",
        contents=[
            types.Content(role="model" if r == "assistant" else "user", parts=[types.Part(text=c)]) for r, c in TURNS
        ],
        config=types.GenerateContentConfig(
            system_instruction=SYSTEM,
            max_output_tokens=CAP,
            temperature=TEMPERATURE,
            top_p=TOP_P,
            stop_sequences=STOP,
        ),
    )
    theirs = asked(keyed_fake)[-1]["body"]
    mine = ours(keyed_fake, "gemini", model="gemini-2.5-flash")
    assert mine["contents"] == theirs["contents"]
    same_where_sent(mine["generationConfig"], theirs["generationConfig"])
    assert [p["text"] for p in mine["systemInstruction"]["parts"]] == [
        p["text"] for p in theirs["systemInstruction"]["parts"]
    ]

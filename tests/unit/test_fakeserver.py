"""The fake provider's fault mix and its call-by-call bill: what the fault tests rely on."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from router.providers.base import ChatRequest
from router.providers.http import build_client
from router.providers.openai import OpenAIProvider
from tests.fakes.faults import FaultMix
from tests.fakes.server import start_in_thread

KEY = "k"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    url, stop = start_in_thread(api_key=KEY)
    yield url
    stop()


def test_the_mix_is_reproducible_under_a_seed_and_near_its_rates() -> None:
    spec = {
        "seed": 7,
        "rates": {"429": 0.05, "500": 0.03, "529": 0.02, "truncated": 0.02, "malformed": 0.02, "hang": 0.01},
    }
    first, second = FaultMix.from_json(spec), FaultMix.from_json(spec)
    draws = [first.decide()[0] for _ in range(4000)]
    assert draws == [second.decide()[0] for _ in range(4000)]
    seen = Counter(draws)
    for kind, rate in spec["rates"].items():  # type: ignore[union-attr]
        assert abs(seen[kind] / 4000 - rate) < 0.01, (kind, seen[kind])
    assert abs(seen[None] / 4000 - 0.85) < 0.02


def test_a_lognormal_latency_has_the_heavy_tail_of_llm_calls() -> None:
    mix = FaultMix.from_json({"seed": 1, "latency_ms": {"median": 1000, "sigma": 0.8, "max": 5000}})
    delays = sorted(mix.decide()[1] for _ in range(20_000))
    assert 0.95 < delays[10_000] < 1.05  # the median
    at_cap = sum(d == 5.0 for d in delays) / len(delays)
    assert 0.015 < at_cap < 0.03 and delays[-1] == 5.0  # 2.2% would take over 5x the median: capped there
    assert 1.28 < sum(delays) / len(delays) < 1.38  # the mean: exp(sigma^2 / 2) = 1.377 s, a little less under the cap


@pytest.mark.parametrize(
    "spec",
    [
        {"rates": {"418": 0.1}},
        {"rates": {"429": 0.7, "500": 0.5}},
        {"rates": {"429": -0.1}},
        {"latency_ms": {"median": 0, "sigma": 1}},
    ],
)
def test_a_bad_mix_is_refused(server: str, spec: dict[str, object]) -> None:
    response = httpx.post(f"{server}/_faults", json=spec)
    assert response.status_code == 400 and response.json()["error"]


def test_faults_are_served_in_the_wire_format_and_only_answers_are_billed_by_call_id(server: str) -> None:
    httpx.post(f"{server}/_reset")
    httpx.post(
        f"{server}/_faults",
        json={"seed": 3, "rates": {"429": 0.1, "503": 0.1, "truncated": 0.1, "malformed": 0.1}, "retry_after_s": 0.5},
    ).raise_for_status()
    outcomes: Counter[str] = Counter()
    ok_ids: set[str] = set()

    async def go() -> None:
        client = build_client(base_url=f"{server}/v1", headers={}, timeout_s=2, max_connections=50)
        provider = OpenAIProvider(name="fake", client=client, api_key=KEY)
        try:

            async def one(k: int) -> None:
                request = ChatRequest(
                    model="m",
                    system="Answer with one letter. A) x B) y",
                    prompt=f"item {k}",
                    max_output_tokens=4,
                    request_id=f"call-{k}",
                )
                try:
                    await provider.complete(request)
                    outcomes["ok"] += 1
                    ok_ids.add(request.request_id or "")
                except Exception as exc:  # every fault must map to a ProviderError
                    outcomes[type(exc).__name__ + str(getattr(exc, "status_code", None) or "")] += 1
                    assert getattr(exc, "retryable", None) is True, exc
                    if getattr(exc, "status_code", None) == 429:
                        assert exc.retry_after == 0.5  # type: ignore[attr-defined]

            await asyncio.gather(*(one(k) for k in range(600)))
        finally:
            await provider.aclose()

    asyncio.run(go())
    bill = httpx.get(f"{server}/_bill").json()
    assert set(bill["calls"]) == ok_ids and bill["unidentified"] == 0  # billed exactly the answered calls
    assert all(c["repeats"] == 0 for c in bill["calls"].values())
    assert (
        outcomes["MalformedResponse"] > 30
        and outcomes["ProviderStatusError429"] > 30
        and outcomes["ProviderStatusError503"] > 30
    )
    assert 0.5 < outcomes["ok"] / 600 < 0.7


def test_a_hang_ends_as_a_timeout(server: str) -> None:
    from router.errors import ProviderTimeout

    httpx.post(f"{server}/_reset")
    httpx.post(f"{server}/_faults", json={"rates": {"hang": 1.0}}).raise_for_status()

    async def go() -> BaseException | None:
        client = build_client(base_url=f"{server}/v1", headers={}, timeout_s=0.3, max_connections=2)
        provider = OpenAIProvider(name="fake", client=client, api_key=KEY)
        try:
            await provider.complete(ChatRequest(model="m", system="", prompt="x", max_output_tokens=2))
        except ProviderTimeout as exc:
            return exc
        finally:
            await provider.aclose()
        return None

    assert isinstance(asyncio.run(go()), ProviderTimeout)
    httpx.post(f"{server}/_reset")

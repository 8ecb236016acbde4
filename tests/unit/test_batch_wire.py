"""The four batch wire formats (router/providers/<vendor>_batch.py) against the fake provider's batch APIs
(tests/fakes/batches.py): success, partial failure, expiry (billed or not), cancel, out-of-order
results, find, a batch refused whole, errors mapped as the synchronous path maps them, and results
that stream.

Each test builds its clients inside its own `asyncio.run`, as production code must, and sets the fake's
knobs through POST /_batch; custom_ids are unique per test, so the shared batch bill is read per line.
"""

from __future__ import annotations

import asyncio
import json
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest

from router.errors import ProviderConnectionError, ProviderError, ProviderStatusError
from router.providers import gemini_batch, mistral_batch, openai_batch
from router.providers.anthropic import AnthropicProvider
from router.providers.anthropic_batch import AnthropicBatchAPI
from router.providers.base import CUT, STOP, ChatRequest, Completion
from router.providers.batch_api import (
    CANCELED,
    ENDED,
    ERRORED,
    EXPIRED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    BatchAPI,
    BatchLine,
    BatchState,
    LineResult,
)
from router.providers.gemini import GeminiProvider
from router.providers.gemini_batch import GeminiBatchAPI
from router.providers.http import BACKENDS, Backend, build_client
from router.providers.mistral import MistralProvider
from router.providers.mistral_batch import MistralBatchAPI
from router.providers.openai import OpenAIProvider
from router.providers.openai_batch import OpenAIBatchAPI
from tests.fakes.batches import read_bill, set_knobs
from tests.helpers import FAKE_KEY

T = TypeVar("T")
VENDORS = ("openai", "mistral", "anthropic", "gemini")
MODELS = {
    "openai": "gpt-4o-mini",
    "mistral": "mistral-small-latest",
    "anthropic": "claude-haiku-4-5",
    "gemini": "gemini-2.0-flash",
}
SUFFIX = {"openai": "/v1", "mistral": "/v1", "anthropic": "", "gemini": ""}
BATCH_APIS: dict[str, Any] = {
    "openai": OpenAIBatchAPI,
    "mistral": MistralBatchAPI,
    "anthropic": AnthropicBatchAPI,
    "gemini": GeminiBatchAPI,
}
PROVIDERS: dict[str, Any] = {
    "openai": OpenAIProvider,
    "mistral": MistralProvider,
    "anthropic": AnthropicProvider,
    "gemini": GeminiProvider,
}
# The vendor's own status for a batch that ended with expired lines, and one that was cancelled.
EXPIRED_STATUS = {
    "openai": "expired",
    "mistral": "TIMEOUT_EXCEEDED",
    "anthropic": "ended",
    "gemini": "BATCH_STATE_EXPIRED",
}
CANCELLED_STATUS = {
    "openai": "cancelled",
    "mistral": "CANCELLED",
    "anthropic": "ended",
    "gemini": "BATCH_STATE_CANCELLED",
}
SYSTEM = "Classify the support ticket. Answer with one label: billing, bug, account, feature, other."
every_vendor = pytest.mark.parametrize("vendor", VENDORS)


@pytest.fixture
def base_url(fake_provider: str) -> str:
    knobs(fake_provider, reset=True)
    return fake_provider


knobs, batch_bill = set_knobs, read_bill


def lines_for(vendor: str, n: int, *, cap: int = 16, model: str | None = None) -> list[BatchLine]:
    prefix = uuid.uuid4().hex[:10]
    texts = ("I was charged twice on my invoice", "The app crashes with an error", "hello, a question about hiring")
    return [
        BatchLine(
            custom_id=f"c{prefix}-{i:05d}",
            request=ChatRequest(
                model=model or MODELS[vendor], system=SYSTEM, prompt=f"{texts[i % 3]} (case {i})", max_output_tokens=cap
            ),
        )
        for i in range(n)
    ]


def with_api(
    base_url: str,
    vendor: str,
    go: Callable[[BatchAPI], Awaitable[T]],
    *,
    api_key: str = FAKE_KEY,
    backend: Backend = "aiohttp",
    **kw: Any,
) -> T:
    """Run `go` with a fresh BatchAPI for `vendor`, built and closed inside its own loop."""

    async def run() -> T:
        client = build_client(
            base_url=base_url + SUFFIX[vendor], headers={}, timeout_s=10, max_connections=4, backend=backend
        )
        api: BatchAPI = BATCH_APIS[vendor](name=vendor, client=client, api_key=api_key, **kw)
        try:
            return await go(api)
        finally:
            await api.aclose()

    return asyncio.run(run())


def sync_answers(base_url: str, vendor: str, lines: list[BatchLine]) -> dict[str, Completion]:
    """What the synchronous path answers for the same requests, on the same server."""

    async def run() -> dict[str, Completion]:
        client = build_client(base_url=base_url + SUFFIX[vendor], headers={}, timeout_s=10, max_connections=4)
        provider = PROVIDERS[vendor](name=vendor, client=client, api_key=FAKE_KEY)
        try:
            return {line.custom_id: await provider.complete(line.request) for line in lines}
        finally:
            await provider.aclose()

    return asyncio.run(run())


async def ended(api: BatchAPI, first: BatchState) -> BatchState:
    """Poll until the batch is no longer pending or running (the fake's delay is short in these tests)."""
    state, deadline = first, time.monotonic() + 10
    while state.state not in (ENDED, FAILED):
        assert time.monotonic() < deadline, f"batch {first.batch_id} did not end: {state}"
        await asyncio.sleep(0.02)
        state = await api.get(state.batch_id)
    return state


def run_batch(
    base_url: str, vendor: str, lines: list[BatchLine], *, tag: str | None = None, **kw: Any
) -> tuple[BatchState, BatchState, list[LineResult]]:
    """Create, poll to the end, read every result: (first state, last state, results as read)."""

    async def go(api: BatchAPI) -> tuple[BatchState, BatchState, list[LineResult]]:
        first = await api.create(lines, model=lines[0].request.model, tag=tag or f"pr-{uuid.uuid4().hex[:8]}")
        last = await ended(api, first)
        return first, last, [result async for result in api.results(last.batch_id)]

    return with_api(base_url, vendor, go, **kw)


def by_outcome(results: list[LineResult]) -> dict[str, list[LineResult]]:
    out: dict[str, list[LineResult]] = {}
    for result in results:
        out.setdefault(result.outcome, []).append(result)
    return out


# -- success --------------------------------------------------------------------------------------------


@every_vendor
def test_a_batch_answers_each_line_as_the_sync_path_does_and_bills_it_at_batch_price(
    base_url: str, vendor: str
) -> None:
    lines = lines_for(vendor, 6) + lines_for(vendor, 1, cap=1)  # the last one is cut off by its cap
    sync_calls = httpx.get(f"{base_url}/_stats").json()["calls"]
    first, last, results = run_batch(base_url, vendor, lines)
    assert httpx.get(f"{base_url}/_stats").json()["calls"] == sync_calls  # batch lines are not on the sync bill
    assert first.state == (RUNNING if vendor == "anthropic" else PENDING)
    assert (last.state, last.total) == (ENDED, 7)
    assert {r.custom_id for r in results} == {line.custom_id for line in lines} and len(results) == 7
    sync = sync_answers(base_url, vendor, lines)
    bill = batch_bill(base_url)
    for result in results:
        assert result.outcome == SUCCEEDED and result.completion is not None
        expected = sync[result.custom_id]
        assert (result.completion.text, result.completion.usage, result.completion.finish) == (
            expected.text,
            expected.usage,
            expected.finish,
        )
        assert result.usage == expected.usage and not expected.usage.estimated
        billed = bill["lines"][result.custom_id]
        assert (billed["vendor"], billed["model"], billed["outcome"], billed["multiplier"]) == (
            vendor,
            MODELS[vendor],
            SUCCEEDED,
            "0.5",
        )
        assert (billed["input_tokens"], billed["output_tokens"], billed["repeats"]) == (
            expected.usage.input_tokens,
            expected.usage.output_tokens,
            0,
        )
    finishes = {r.custom_id: r.completion.finish for r in results if r.completion}
    assert finishes[lines[-1].custom_id] == CUT and finishes[lines[0].custom_id] == STOP
    assert bill["multipliers"] == {"openai": "0.5", "anthropic": "0.5", "mistral": "0.5", "gemini": "0.5"}


def test_a_mistral_reasoning_models_chunks_are_read_as_the_sync_path_reads_them(base_url: str) -> None:
    lines = lines_for("mistral", 3, model="magistral-small-latest")
    _, _, results = run_batch(base_url, "mistral", lines)
    sync = sync_answers(base_url, "mistral", lines)
    assert {r.custom_id: r.completion.text for r in results if r.completion} == {k: v.text for k, v in sync.items()}
    assert all(v.text and "work out" not in v.text for v in sync.values())  # the thinking chunk is not the answer


def test_gemini_large_batches_go_as_a_file_and_read_the_same(base_url: str) -> None:
    lines = lines_for("gemini", 5)
    _, last, results = run_batch(base_url, "gemini", lines, inline_max_bytes=0)
    sync = sync_answers(base_url, "gemini", lines)
    assert last.vendor_status == "BATCH_STATE_SUCCEEDED"
    assert {r.custom_id: (r.completion.text, r.completion.usage) for r in results if r.completion} == {
        k: (v.text, v.usage) for k, v in sync.items()
    }


def test_line_bytes_count_the_bytes_the_input_file_holds(base_url: str) -> None:
    lines = lines_for("openai", 4)

    async def go(api: BatchAPI) -> int:
        assert isinstance(api, OpenAIBatchAPI)
        file_id = await api.upload(lines, tag="pr-size")
        async with httpx.AsyncClient() as client:
            content = await client.get(
                f"{base_url}/v1/files/{file_id}/content", headers={"Authorization": f"Bearer {FAKE_KEY}"}
            )
        return len(content.content)

    async def counted(api: BatchAPI) -> int:
        return sum(api.line_bytes(line) for line in lines)

    assert with_api(base_url, "openai", go) == with_api(base_url, "openai", counted)


# -- partial failure, expiry, cancel ----------------------------------------------------------------------


@every_vendor
def test_errored_lines_are_retryable_unbilled_and_never_quote_the_key(base_url: str, vendor: str) -> None:
    knobs(base_url, errored=0.4, error_message=f"upstream said: Authorization: Bearer {FAKE_KEY} and {FAKE_KEY}")
    lines = lines_for(vendor, 10)
    _, last, results = run_batch(base_url, vendor, lines)
    outcomes = by_outcome(results)
    assert (len(outcomes[ERRORED]), len(outcomes[SUCCEEDED]), last.state) == (4, 6, ENDED)
    bill = batch_bill(base_url)["lines"]
    for result in outcomes[ERRORED]:
        assert result.retryable and result.usage is None and result.completion is None
        assert result.error and "upstream said" in result.error and FAKE_KEY not in result.error
        assert result.custom_id not in bill
    assert all(r.custom_id in bill for r in outcomes[SUCCEEDED])


@pytest.mark.parametrize(
    ("vendor", "request_"),
    [
        # gpt-5 takes only minimal, low, medium or high as its effort; Gemini 2.5 Pro cannot stop thinking.
        ("openai", ChatRequest(model="gpt-5", system="s", prompt="p", max_output_tokens=8, reasoning_effort="none")),
        ("gemini", ChatRequest(model="gemini-2.5-pro", system="s", prompt="p", max_output_tokens=8, thinking_tokens=0)),
    ],
)
def test_a_line_the_vendor_refuses_is_errored_and_not_retryable(
    base_url: str, vendor: str, request_: ChatRequest
) -> None:
    """A body the synchronous path refuses with a 400 is refused the same way in a batch, line by line."""
    lines = [BatchLine(custom_id=f"c{uuid.uuid4().hex[:8]}", request=request_)]
    _, last, results = run_batch(base_url, vendor, lines)
    assert last.state == ENDED
    assert [(r.outcome, r.retryable, r.usage) for r in results] == [(ERRORED, False, None)]
    assert results[0].error and "HTTP 400" in results[0].error


@every_vendor
@pytest.mark.parametrize("billed", [False, True])
def test_expired_lines_are_expired_and_keep_their_usage_when_billed(base_url: str, vendor: str, billed: bool) -> None:
    knobs(base_url, expired=0.3, expired_billed=billed)
    lines = lines_for(vendor, 10)
    _, last, results = run_batch(base_url, vendor, lines)
    assert (last.state, last.vendor_status) == (ENDED, EXPIRED_STATUS[vendor])
    outcomes = by_outcome(results)
    assert (len(outcomes[EXPIRED]), len(outcomes[SUCCEEDED])) == (3, 7)
    bill = batch_bill(base_url)["lines"]
    sync = sync_answers(base_url, vendor, lines)
    for result in outcomes[EXPIRED]:
        assert result.retryable and result.completion is None
        if billed:
            assert result.usage == sync[result.custom_id].usage
            assert bill[result.custom_id]["outcome"] == EXPIRED
            assert bill[result.custom_id]["output_tokens"] == result.usage.output_tokens  # type: ignore[union-attr]
        else:
            assert result.usage is None and result.custom_id not in bill


@every_vendor
def test_cancel_keeps_the_lines_done_and_cancels_the_rest(base_url: str, vendor: str) -> None:
    knobs(base_url, delay_s=3600, started_done=0.5)
    lines = lines_for(vendor, 10)

    async def go(api: BatchAPI) -> tuple[BatchState, BatchState, BatchState, list[LineResult]]:
        created = await api.create(lines, model=MODELS[vendor], tag=f"pr-{uuid.uuid4().hex[:8]}")
        running = await api.get(created.batch_id)
        cancelling = await api.cancel(created.batch_id)
        last = await ended(api, cancelling)
        return running, cancelling, last, [r async for r in api.results(last.batch_id)]

    running, cancelling, last, results = with_api(base_url, vendor, go)
    assert running.state == RUNNING
    assert cancelling.state in (RUNNING, ENDED)  # cancelling first, where the vendor has that word
    assert (last.state, last.vendor_status) == (ENDED, CANCELLED_STATUS[vendor])
    outcomes = by_outcome(results)
    assert (len(outcomes[SUCCEEDED]), len(outcomes[CANCELED])) == (5, 5)
    bill = batch_bill(base_url)["lines"]
    assert {r.custom_id for r in outcomes[SUCCEEDED]} <= set(bill)
    assert not any(r.custom_id in bill for r in outcomes[CANCELED])
    assert all(r.retryable and r.usage is None for r in outcomes[CANCELED])


@every_vendor
def test_results_come_out_of_order_and_each_line_once(base_url: str, vendor: str) -> None:
    lines = lines_for(vendor, 40)
    extra = {"inline_max_bytes": 0} if vendor == "gemini" else {}  # inline answers come in input order
    _, _, results = run_batch(base_url, vendor, lines, **extra)
    read = [r.custom_id for r in results]
    assert sorted(read) == sorted(line.custom_id for line in lines) and len(set(read)) == 40
    assert read != [line.custom_id for line in lines]


@every_vendor
def test_polling_reports_progress_then_the_end(base_url: str, vendor: str) -> None:
    knobs(base_url, delay_s=1.0)
    lines = lines_for(vendor, 4)

    async def go(api: BatchAPI) -> tuple[BatchState, BatchState]:
        created = await api.create(lines, model=MODELS[vendor], tag="pr-poll")
        return await api.get(created.batch_id), await ended(api, created)

    during, last = with_api(base_url, vendor, go)
    assert during.state == RUNNING and during.total == 4
    assert (last.state, last.total) == (ENDED, 4)
    assert last.done == 4


# -- find, refusal, errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("vendor", ["openai", "mistral", "gemini"])
def test_find_returns_the_batch_created_under_a_tag_across_pages(
    base_url: str, vendor: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = {"openai": openai_batch, "mistral": mistral_batch, "gemini": gemini_batch}[vendor]
    monkeypatch.setattr(module, "LIST_PAGE_SIZE", 2)  # three batches: the oldest is on the second page
    tags = [f"pr-{uuid.uuid4().hex[:8]}" for _ in range(3)]

    async def go(api: BatchAPI) -> tuple[list[str], list[BatchState | None], BatchState | None]:
        ids = [(await api.create(lines_for(vendor, 1), model=MODELS[vendor], tag=tag)).batch_id for tag in tags]
        return ids, [await api.find(tag) for tag in tags], await api.find("pr-never-created")

    ids, found, missing = with_api(base_url, vendor, go)
    assert [state.batch_id if state else None for state in found] == ids
    assert missing is None


def test_anthropic_find_is_none_and_custom_ids_are_checked_before_sending(base_url: str) -> None:
    lines = lines_for("anthropic", 2)
    bad = [BatchLine(custom_id="call.1", request=lines[0].request)]

    async def go(api: BatchAPI) -> tuple[BatchState | None, str]:
        created = await api.create(lines, model=MODELS["anthropic"], tag="pr-anthropic")
        with pytest.raises(ValueError, match=r"\[a-zA-Z0-9_-\]\{1,64\}") as info:
            await api.create(bad, model=MODELS["anthropic"], tag="pr-bad")
        assert created.batch_id.startswith("msgbatch_")
        return await api.find("pr-anthropic"), str(info.value)

    found, message = with_api(base_url, "anthropic", go)
    assert found is None and "call.1" in message


@every_vendor
def test_a_batch_refused_whole_is_failed_with_its_reason_and_bills_nothing(base_url: str, vendor: str) -> None:
    knobs(base_url, fail=True)
    lines = lines_for(vendor, 3)
    if vendor == "anthropic":  # Anthropic validates a batch when it is created
        error = with_api(base_url, vendor, lambda api: _raises(api.create(lines, model=MODELS[vendor], tag="t")))
        assert error.status_code == 400 and not error.retryable
        return
    _, last, results = run_batch(base_url, vendor, lines)
    assert last.state == FAILED and last.error and "refused at validation" in last.error
    assert results == []
    assert not any(line.custom_id in batch_bill(base_url)["lines"] for line in lines)


async def _raises(call: Awaitable[Any]) -> ProviderStatusError:
    with pytest.raises(ProviderStatusError) as info:
        await call
    return info.value


@every_vendor
def test_a_wrong_key_stops_the_provider_as_on_the_sync_path(base_url: str, vendor: str) -> None:
    lines = lines_for(vendor, 1)
    error = with_api(
        base_url,
        vendor,
        lambda api: _raises(api.create(lines, model=MODELS[vendor], tag="t")),
        api_key="sk-wrong-key-000000000000",
    )
    assert error.stops_provider and not error.retryable
    assert "sk-wrong-key" not in str(error)


@every_vendor
def test_a_rate_limited_poll_is_retryable_with_the_providers_wait(base_url: str, vendor: str) -> None:
    lines = lines_for(vendor, 1)
    path = {
        "openai": "/v1/batches/{id}",
        "mistral": "/v1/batch/jobs/{id}",
        "anthropic": "/v1/messages/batches/{id}",
        "gemini": "/v1beta/{id}",
    }[vendor]

    async def go(api: BatchAPI) -> ProviderStatusError:
        created = await api.create(lines, model=MODELS[vendor], tag="pr-429")
        fault = {"status": 429, "retry_after": "3", "path": path.format(id=created.batch_id)}
        if vendor == "gemini":  # Gemini's wait lives in the body, never in a header
            fault = {"preset": "gemini.per_minute", "retry_delay": "3s", "path": path.format(id=created.batch_id)}
        async with httpx.AsyncClient() as admin:
            (await admin.post(f"{base_url}/_fail", json=fault)).raise_for_status()
        return await _raises(api.get(created.batch_id))

    error = with_api(base_url, vendor, go)
    assert (error.status_code, error.retryable, error.retry_after) == (429, True, 3.0)


# -- streaming ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("vendor", VENDORS)
def test_results_stream_lines_before_the_file_has_ended(base_url: str, vendor: str, backend: Backend) -> None:
    """The fake holds its result stream after 10 lines; the client must already have yielded them."""
    knobs(base_url, hold_after_lines=10, chunk_lines=5)
    lines = lines_for(vendor, 60)
    extra = {"inline_max_bytes": 0} if vendor == "gemini" else {}

    async def go(api: BatchAPI) -> tuple[list[bool], int]:
        created = await api.create(lines, model=MODELS[vendor], tag="pr-stream")
        last = await ended(api, created)
        holding: list[bool] = []
        count = 0
        async with httpx.AsyncClient() as admin:
            async for _ in api.results(last.batch_id):
                count += 1
                if count == 1:
                    holding.append((await admin.get(f"{base_url}/_batch")).json()["holding"])
                    (await admin.post(f"{base_url}/_batch/release")).raise_for_status()
        return holding, count

    started = time.monotonic()
    holding, count = with_api(base_url, vendor, go, backend=backend, **extra)
    assert holding == [True] and count == 60
    assert time.monotonic() - started < 5  # released, not timed out (the hold lasts up to 10 s)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("vendor", VENDORS)
def test_a_connection_broken_mid_file_is_a_connection_error_after_the_lines_read(
    base_url: str, vendor: str, backend: Backend
) -> None:
    knobs(base_url, cut_after_lines=7, chunk_lines=7)
    lines = lines_for(vendor, 30)
    extra = {"inline_max_bytes": 0} if vendor == "gemini" else {}

    async def go(api: BatchAPI) -> tuple[list[str], BaseException | None]:
        last = await ended(api, await api.create(lines, model=MODELS[vendor], tag="pr-cut"))
        read: list[str] = []
        try:
            async for result in api.results(last.batch_id):
                read.append(result.custom_id)
        except ProviderError as exc:
            return read, exc
        return read, None

    read, error = with_api(base_url, vendor, go, backend=backend, **extra)
    assert isinstance(error, ProviderConnectionError) and error.retryable
    assert len(read) == 7 and set(read) <= {line.custom_id for line in lines}


def test_a_large_result_file_is_read_with_flat_memory(base_url: str) -> None:
    """20,000 result lines (about 14 MB of JSONL) read with a small, bounded peak of new memory."""
    knobs(base_url, chunk_lines=200)
    lines = lines_for("openai", 20_000)

    async def go(api: BatchAPI) -> tuple[int, int, int]:
        created = await api.create(lines, model=MODELS["openai"], tag="pr-large")
        last = await ended(api, created)
        size = 0
        count = 0
        tracemalloc.start()
        try:
            async for result in api.results(last.batch_id):
                count += 1
                size += len(result.completion.text) if result.completion else 0
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return count, peak, size

    count, peak, _ = with_api(base_url, "openai", go)
    assert count == 20_000
    # The whole file is ~14 MB; reading it streamed holds a few chunks and the ids seen (~2 MB).
    assert peak < 6 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB while reading"


# -- result lines the fake does not produce, read directly ------------------------------------------------


def read_lines(vendor: str, raws: list[Any]) -> list[LineResult | None]:
    """Result lines read by the vendor's BatchAPI without a server (its client is never used)."""

    async def go() -> list[LineResult | None]:
        client = build_client(base_url="http://127.0.0.1:1", headers={}, timeout_s=1, max_connections=1)
        api = BATCH_APIS[vendor](name=vendor, client=client, api_key=FAKE_KEY)
        try:
            if vendor == "gemini":
                return [api.read_entry(raw, key=raw.get("key"), model="gemini-2.0-flash") for raw in raws]
            if vendor == "anthropic":
                return [api.read_line(json.dumps(raw)) for raw in raws]
            return [api.read_line(json.dumps(raw), model=MODELS[vendor]) for raw in raws]
        finally:
            await api.aclose()

    return asyncio.run(go())


USAGE_ON_THE_WIRE = {
    "openai": {"prompt_tokens": 30, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 10}},
    "anthropic": {"input_tokens": 20, "output_tokens": 7, "cache_read_input_tokens": 10},
    "gemini": {
        "promptTokenCount": 30,
        "candidatesTokenCount": 5,
        "thoughtsTokenCount": 2,
        "cachedContentTokenCount": 10,
    },
}


@every_vendor
def test_an_errored_line_that_reports_usage_keeps_it_and_a_line_without_an_id_is_skipped(vendor: str) -> None:
    wire = USAGE_ON_THE_WIRE["openai" if vendor == "mistral" else vendor]
    if vendor in ("openai", "mistral"):
        errored = {
            "custom_id": "c1",
            "response": {
                "status_code": 500,
                "body": {"error": {"message": f"boom {FAKE_KEY}", "type": "server_error"}, "usage": wire},
            },
        }
        no_id = {"response": {"status_code": 200, "body": {}}}
    elif vendor == "anthropic":
        errored = {
            "custom_id": "c1",
            "result": {
                "type": "errored",
                "error": {"type": "error", "error": {"type": "api_error", "message": f"boom {FAKE_KEY}"}},
                "usage": wire,
            },
        }
        no_id = {"result": {"type": "succeeded"}}
    else:
        errored = {
            "key": "c1",
            "error": {"code": 13, "message": f"boom {FAKE_KEY}", "status": "INTERNAL"},
            "response": {"usageMetadata": wire},
        }
        no_id = {"response": {}}
    result, skipped = read_lines(vendor, [errored, no_id])
    assert skipped is None
    assert result is not None and (result.custom_id, result.outcome, result.retryable) == ("c1", ERRORED, True)
    assert result.usage is not None and (
        result.usage.input_tokens,
        result.usage.cached_input_tokens,
        result.usage.output_tokens,
    ) == (20, 10, 7)
    assert result.error and "boom" in result.error and FAKE_KEY not in result.error


@every_vendor
def test_an_answer_that_cannot_be_read_but_reports_usage_is_charged_and_not_retried(vendor: str) -> None:
    wire = USAGE_ON_THE_WIRE["openai" if vendor == "mistral" else vendor]
    if vendor in ("openai", "mistral"):
        raw = {"custom_id": "c2", "response": {"status_code": 200, "body": {"choices": "not a list", "usage": wire}}}
    elif vendor == "anthropic":
        raw = {"custom_id": "c2", "result": {"type": "succeeded", "message": {"content": "not blocks", "usage": wire}}}
    else:
        raw = {"key": "c2", "response": {"candidates": "nope", "usageMetadata": wire}}
    (result,) = read_lines(vendor, [raw])
    assert result is not None and (result.outcome, result.retryable) == (ERRORED, False)
    assert result.usage is not None and result.usage.output_tokens == 7
    assert result.error and result.error.startswith("unreadable")


def test_knobs_are_checked_and_reset(base_url: str) -> None:
    with pytest.raises(httpx.HTTPStatusError):
        knobs(base_url, errored=0.7, expired=0.5)  # more than every line
    with pytest.raises(httpx.HTTPStatusError):
        knobs(base_url, delay=3)  # no such knob
    assert knobs(base_url, delay_s=5, errored=0.1)["errored"] == 0.1
    after = knobs(base_url, expired=0.2)
    assert (after["delay_s"], after["errored"], after["expired"]) == (5, 0.1, 0.2)  # a POST changes what it names
    assert knobs(base_url, reset=True)["delay_s"] == 0

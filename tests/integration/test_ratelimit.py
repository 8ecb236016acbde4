"""Rate limits and circuit breakers shared by worker processes through Redis (and the in-memory variant)."""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from policies.circuit_breaker import THRESHOLD, BreakerState, allows, on_failure, on_success
from policies.rate_adapt import MIN_FACTOR, after_rate_limited, after_success, limits_now
from router.catalog import Catalog
from router.engine import runtime
from router.engine.chunk import run_chunk
from router.jobs.intake import JobRequest
from router.jobs.submit import submit_job
from router.ledger.tables import Call, Item
from router.providers import limits
from router.providers.limits import SharedLimits
from router.providers.registry import close_all
from router.settings import Settings
from tests.fakes.server import OPENAI_PATH
from tests.helpers import ledger, tickets, write_jsonl


@pytest.mark.parametrize(
    ("factor", "after_429", "after_ok"), [(1.0, 0.5, 1.0), (0.5, 0.25, 0.505), (0.06, MIN_FACTOR, 0.065)]
)
def test_the_rate_halves_on_a_429_and_climbs_back(factor: float, after_429: float, after_ok: float) -> None:
    assert after_rate_limited(factor).factor == pytest.approx(after_429)
    assert after_success(factor).factor == pytest.approx(after_ok)
    assert limits_now(600, None, 0.5) == (5.0, None)


def test_the_breaker_opens_after_failures_in_a_row_half_opens_and_closes() -> None:
    state = BreakerState()
    for _ in range(THRESHOLD - 1):
        state = on_failure(state, 100.0, cooldown_s=5)
    assert allows(state, 100.0).allowed and on_success(state) == BreakerState()
    state = on_failure(state, 100.0, cooldown_s=5)  # the 20th in a row
    decision = allows(state, 101.0)
    assert not decision.allowed and decision.retry_in_s == pytest.approx(4.0) and "circuit open" in decision.reason
    assert allows(state, 105.5).allowed  # half-open after the cooldown
    assert not allows(on_failure(state, 105.5, cooldown_s=5), 106.0).allowed  # one failure re-opens
    assert on_success(state) == BreakerState()  # one success closes


def _grants(
    url: str | None,
    key: str,
    n: int,
    rpm: int | None,
    tpm: int | None,
    tokens: int,
    out: multiprocessing.Queue[list[float]],
) -> None:
    async def go() -> list[float]:
        limits = SharedLimits(url)
        stamps = []
        for _ in range(n):
            await limits.acquire(key, rpm=rpm, tpm=tpm, tokens=tokens)
            stamps.append(time.time())
        await limits.aclose()
        return stamps

    out.put(asyncio.run(go()))


def _max_in_window(stamps: list[float], window: float) -> int:
    stamps = sorted(stamps)
    best, lo = 0, 0
    for hi, t in enumerate(stamps):
        while t - stamps[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


@pytest.fixture
def shared(broker_url: str) -> str:
    client = redis.Redis.from_url(broker_url)
    for key in client.scan_iter("pennyroute:*"):
        client.delete(key)
    return broker_url


def test_processes_share_one_requests_per_minute_limit(shared: str) -> None:
    """Three processes, 100 calls each, under one 6,000 rpm (100/s) limit: 300 calls take >= 2 s
    (the bucket holds 1 s), and no second holds more than 100 + the bucket."""
    queue: multiprocessing.Queue[list[float]] = multiprocessing.Queue()
    procs = [
        multiprocessing.Process(target=_grants, args=(shared, "m-rpm", 100, 6000, None, 10, queue)) for _ in range(3)
    ]
    started = time.time()
    for p in procs:
        p.start()
    stamps = [t for _ in procs for t in queue.get(timeout=30)]
    for p in procs:
        p.join(timeout=10)
    assert len(stamps) == 300
    assert max(stamps) - started >= 1.9
    assert _max_in_window(stamps, 1.0) <= 205


@pytest.mark.parametrize("where", ["redis", "memory"])
def test_a_tokens_per_minute_limit_counts_tokens(shared: str, where: str) -> None:
    url = shared if where == "redis" else None

    async def go() -> float:
        limits = SharedLimits(url)
        started = time.monotonic()
        for _ in range(5):  # 5 x 600 tokens under 60,000 tpm (1,000/s, bucket 1,000): >= 2 s
            await limits.acquire("m-tpm", rpm=None, tpm=60_000, tokens=600)
        await limits.aclose()
        return time.monotonic() - started

    assert asyncio.run(go()) >= 1.7


def test_a_429_slows_and_pauses_the_model_for_every_process(shared: str) -> None:
    async def go() -> tuple[float, float]:
        first, second = SharedLimits(shared), SharedLimits(shared)
        await first.observe("m-429", rpm=600, tpm=None, rate_limited=True, retry_after=1.0)
        factor = float(await second.client().get("pennyroute:rl:m-429:factor"))
        started = time.monotonic()
        await second.acquire("m-429", rpm=600, tpm=None, tokens=1)  # waits out the pause the other one saw
        waited = time.monotonic() - started
        await first.aclose()
        await second.aclose()
        return factor, waited

    factor, waited = asyncio.run(go())
    assert factor == 0.5 and waited >= 0.8


def test_an_open_breaker_is_seen_by_every_process(shared: str) -> None:
    async def go() -> tuple[bool, bool]:
        first, second = SharedLimits(shared), SharedLimits(shared)
        for _ in range(THRESHOLD):
            await first.record("flaky", failed=True)
        seen = (await second.breaker("flaky")).allowed
        await first.record("flaky", failed=False)
        await first.aclose()
        await second.aclose()
        return seen, (await SharedLimits(shared).breaker("flaky")).allowed

    blocked, after_success_seen = asyncio.run(go())
    assert blocked is False and after_success_seen is True


def test_a_failing_provider_trips_the_breaker_and_items_move_to_their_fallback(
    live_settings: object, catalog: object, tmp_path: Path, team: tuple[str, str], fake_provider: str
) -> None:

    httpx.post(f"{fake_provider}/_reset")
    runtime.run(close_all())  # fresh breakers for this process
    path = write_jsonl(tmp_path / "items.jsonl", tickets(100))
    job_id = submit_job(
        live_settings,
        catalog,
        JobRequest(  # type: ignore[arg-type]
            path=path,
            team=team[1],
            tenant=team[0],
            task="classify",
            labels=("billing", "bug", "other"),
            min_quality=0.9,
            providers=frozenset({"openai", "anthropic"}),
        ),
    ).job_id
    httpx.post(f"{fake_provider}/_fail", json={"status": 500, "count": 100_000, "path": OPENAI_PATH})
    try:
        outcome = run_chunk(live_settings, catalog, job_id=job_id, lo=0, hi=100)  # type: ignore[arg-type]
    finally:
        httpx.post(f"{fake_provider}/_reset")
        runtime.run(close_all())
    calls, items = ledger(live_settings, job_id)  # type: ignore[arg-type]
    sent_500 = [c for c in calls if c.error and "HTTP 500" in c.error]
    circuit = [c for c in calls if c.error and "circuit open" in c.error]
    assert outcome.done == 100 and all(i.status == "done" for i in items)
    assert (
        circuit and len(sent_500) <= 110
    )  # without the breaker: 3 tries x 100 items = 300 calls to a failing provider
    assert {c.provider for c in calls if c.status == "ok"} == {"anthropic"}


def test_timeouts_of_calls_sent_together_are_one_signal_not_many() -> None:
    """20 calls sent at once that all time out are one burst: the breaker stays closed. Bursts spread
    over time with no success between them (a provider that is down) still open it; 5xx answers count
    one by one."""
    state = BreakerState()
    for _ in range(THRESHOLD * 3):
        state = on_failure(state, 105.0, started=100.0, unanswered=True)
    assert state.failures == 1 and allows(state, 105.0).allowed
    for k in range(1, THRESHOLD):
        state = on_failure(state, 105.0 + k, started=100.0 + 2 * k, unanswered=True)
    assert not allows(state, 124.1).allowed  # 20 bursts, two seconds apart, nothing answered: open
    answered = BreakerState()
    for _ in range(THRESHOLD):
        answered = on_failure(answered, 100.0, started=100.0)  # 500s: each the provider's own answer
    assert not allows(answered, 100.0).allowed


def _outage_on_one_model(
    settings: Settings,
    catalog: Catalog,
    tmp_path: Path,
    team: tuple[str, str],
    fake_provider: str,
    *,
    n: int,
    fails: int,
) -> tuple[Any, list[Call], list[Item]]:
    """A job of `n` items routed to gpt-4o-mini alone (no fallback), whose provider answers 500 to its
    next `fails` calls; one chunk runs it with fresh breakers. Returns (outcome, calls, items)."""
    httpx.post(f"{fake_provider}/_reset")
    runtime.run(close_all())  # fresh breakers for this process
    path = write_jsonl(tmp_path / "items.jsonl", tickets(n))
    request = JobRequest(
        path=path, team=team[1], tenant=team[0], task="classify", labels=("billing", "bug", "other"),
        min_quality=0.5, models=frozenset({"gpt-4o-mini"}), quality="prior",
    )  # fmt: skip
    job_id = submit_job(settings, catalog, request).job_id
    httpx.post(f"{fake_provider}/_fail", json={"status": 500, "count": fails, "path": OPENAI_PATH})
    try:
        outcome = run_chunk(settings, catalog, job_id=job_id, lo=0, hi=n)
    finally:
        httpx.post(f"{fake_provider}/_reset")
        runtime.run(close_all())
    calls, items = ledger(settings, job_id)
    return outcome, calls, items


def test_with_no_fallback_an_open_breaker_makes_items_wait_not_fail(
    live_settings: Settings,
    catalog: Catalog,
    tmp_path: Path,
    team: tuple[str, str],
    fake_provider: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The route has one model and its provider fails a whole round: the breaker opens, and the
    items wait for it to let a probe through (here a 2 s cooldown) instead of failing at once."""
    monkeypatch.setattr(limits, "on_failure", functools.partial(limits.on_failure, cooldown_s=2.0))
    outcome, calls, items = _outage_on_one_model(live_settings, catalog, tmp_path, team, fake_provider, n=30, fails=30)
    assert any(c.error and "circuit open" in c.error for c in calls)  # the breaker did open
    assert outcome.done == 30 and all(i.status == "done" for i in items), [i.error for i in items if i.error]


def test_an_outage_on_a_route_with_no_fallback_is_waited_out_not_failed(
    live_settings: Settings,
    catalog: Catalog,
    tmp_path: Path,
    team: tuple[str, str],
    fake_provider: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its only provider answers 500 to the next 40 calls (every item's first 3 tries and more): the
    items wait the outage out, within the fault time (PENNYROUTE_FAULT_WAIT_S), and all end done."""
    settings = live_settings.model_copy(update={"fault_wait_s": 120.0})
    monkeypatch.setattr(limits, "on_failure", functools.partial(limits.on_failure, cooldown_s=1.0))
    outcome, calls, items = _outage_on_one_model(settings, catalog, tmp_path, team, fake_provider, n=10, fails=40)
    assert sum(1 for c in calls if c.error and "500" in c.error) == 40  # the whole outage was met
    assert outcome.done == 10 and all(i.status == "done" for i in items), [i.error for i in items if i.error]

"""A provider back from an outage is used again at once: calls waiting for its open breaker
(SharedLimits.wait_allowed) hold no slot and write no row while it is down, one of them is handed the
probe when the cooldown ends, and all go the moment the probe succeeds, in every worker (Redis) or
in this process (memory)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import redis

from policies.circuit_breaker import COOLDOWN_MAX_S, COOLDOWN_MIN_S, THRESHOLD, cooldown
from router.catalog import Catalog
from router.engine import runtime
from router.engine.calls import call_one
from router.engine.chunk import run_chunk
from router.errors import ProviderStatusError
from router.jobs.intake import JobRequest
from router.jobs.submit import submit_job
from router.ledger.tables import CallStatus
from router.providers.base import ChatRequest, Completion
from router.providers.limits import RECOVERY_POLL_S, SharedLimits
from router.providers.registry import close_all
from router.settings import Settings
from tests.fakes.server import OPENAI_PATH
from tests.helpers import ledger, tickets, write_jsonl


@pytest.fixture
def shared(broker_url: str) -> str:
    client = redis.Redis.from_url(broker_url)
    for key in client.scan_iter("pennyroute:cb:*"):
        client.delete(key)
    return broker_url


async def _open(limits: SharedLimits, provider: str) -> float:
    for _ in range(THRESHOLD):
        await limits.record(provider, failed=True)
    return time.monotonic()


@pytest.mark.parametrize("where", ["memory", "redis"])
def test_waiting_calls_get_one_probe_and_all_go_when_it_succeeds(where: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("shared") if where == "redis" else None

    async def scenario() -> tuple[float, list[tuple[float, bool, bool]], int, float]:
        limits = SharedLimits(url)
        opened = await _open(limits, "down")
        got: list[tuple[float, bool, bool]] = []  # (when, allowed, probe)

        async def wait() -> None:
            decision = await limits.wait_allowed("down", 10.0)
            got.append((time.monotonic(), decision.allowed, decision.probe))

        tasks = [asyncio.create_task(wait()) for _ in range(5)]
        while not got and time.monotonic() - opened < 5:
            await asyncio.sleep(0.01)
        # The probe is out: the others wait for its outcome, not refused (0.45 s: between two of the
        # watcher's polls, so that only the probe's own success can free them at once).
        await asyncio.sleep(0.45)
        before = len(got)
        await limits.record("down", failed=False)  # the probe answered: closed
        answered = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*tasks), 2.0)
        await limits.aclose()
        return opened, got, before, answered

    opened, got, before, answered = asyncio.run(scenario())
    probe, rest = got[0], got[1:]
    assert before == 1 and probe[1] and probe[2]  # one waiter, and only one, was handed the probe ...
    assert probe[0] - opened >= COOLDOWN_MIN_S - 0.05  # ... once the cooldown was over
    assert len(rest) == 4 and all(allowed and not is_probe for _, allowed, is_probe in rest)
    assert max(at for at, _, _ in rest) - answered < 0.05  # freed by the probe's success itself, not a poll


def test_a_probe_that_succeeds_in_one_worker_frees_the_waiters_of_another(shared: str) -> None:
    async def scenario() -> tuple[list[tuple[str, float, bool]], float]:
        first, second = SharedLimits(shared), SharedLimits(shared)
        await _open(first, "down")
        got: list[tuple[str, float, bool]] = []

        async def wait(name: str, limits: SharedLimits) -> None:
            decision = await limits.wait_allowed("down", 10.0)
            assert decision.allowed
            got.append((name, time.monotonic(), decision.probe))
            if decision.probe:  # this worker sends the probe, and it is answered
                await asyncio.sleep(0.05)
                await limits.record("down", failed=False)

        tasks = [asyncio.create_task(wait(n, w)) for n, w in [("first", first), ("second", second)] for _ in range(3)]
        await asyncio.wait_for(asyncio.gather(*tasks), 5.0)
        answered = next(at for _, at, probe in got if probe) + 0.05
        await first.aclose()
        await second.aclose()
        return got, answered

    got, answered = asyncio.run(scenario())
    assert sum(probe for _, _, probe in got) == 1  # one probe for both workers
    prober = next(name for name, _, probe in got if probe)
    other = [at for name, at, _ in got if name != prober]
    assert len(other) == 3 and max(other) - answered < 2 * RECOVERY_POLL_S + 0.1  # within a poll of the other worker


def test_a_call_whose_patience_runs_out_comes_back_refused() -> None:
    async def scenario() -> tuple[bool, float]:
        limits = SharedLimits(None)
        await _open(limits, "down")
        started = time.monotonic()
        decision = await limits.wait_allowed("down", 0.2)  # shorter than the cooldown
        return decision.allowed, time.monotonic() - started

    allowed, waited = asyncio.run(scenario())
    assert not allowed and 0.15 <= waited < 0.5


def test_an_outage_is_waited_out_with_one_refusal_per_item_and_its_end_noticed_at_once(
    live_settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str], fake_provider: str
) -> None:
    """The route's only provider answers 500 to every call for 2.5 s: the breaker opens and probes
    on its growing cooldown; each item is refused at most once and then waits for the breaker
    (no row per cooldown), and when a probe succeeds every item goes together, within one
    cooldown of the outage's end."""
    httpx.post(f"{fake_provider}/_reset")
    runtime.run(close_all())  # fresh breakers for this process
    n, outage_s = 30, 2.5
    path = write_jsonl(tmp_path / "items.jsonl", tickets(n))
    request = JobRequest(
        path=path, team=team[1], tenant=team[0], task="classify", labels=("billing", "bug", "other"),
        min_quality=0.5, models=frozenset({"gpt-4o-mini"}), quality="prior",
    )  # fmt: skip
    job_id = submit_job(live_settings, catalog, request).job_id
    httpx.post(f"{fake_provider}/_fail", json={"status": 500, "for_s": outage_s, "path": OPENAI_PATH})
    outage_end = time.time() + outage_s
    try:
        outcome = run_chunk(live_settings, catalog, job_id=job_id, lo=0, hi=n)
    finally:
        httpx.post(f"{fake_provider}/_reset")
        runtime.run(close_all())
    calls, items = ledger(live_settings, job_id)
    assert outcome.done == n and all(i.status == "done" for i in items), [i.error for i in items if i.error]
    refused = Counter(c.item_id for c in calls if c.error and "circuit" in c.error)
    assert refused and max(refused.values()) == 1  # refused once, then waited: not once per cooldown
    ok = sorted(c.finished_at.timestamp() for c in calls if c.status == CallStatus.OK)  # type: ignore[union-attr]
    assert ok[-1] - ok[0] < 0.8  # the waiting items went together, the moment the probe succeeded
    assert ok[0] - outage_end < COOLDOWN_MAX_S + 0.5  # within one cooldown (and a write) of the end


class _Down:
    """A provider whose calls fail with a 500 after `latency_s` (test stub: call_one needs a name and complete)."""

    name = "down"

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s

    async def complete(self, request: ChatRequest) -> Completion:
        await asyncio.sleep(self.latency_s)
        raise ProviderStatusError("HTTP 500", provider=self.name, status_code=500)


@pytest.mark.parametrize("where", ["memory", "redis"])
def test_a_probe_whose_failure_lands_while_the_breaker_is_open_still_frees_its_claim(
    where: str, request: pytest.FixtureRequest
) -> None:
    """The probe goes out; a call sent before the breaker opened fails meanwhile and re-opens it; the
    probe's own failure then changes nothing, but its claim must still be freed: else no probe could
    go for PROBE_HOLD_S (30 s), and every waiting item would wait that long after the outage."""
    url = request.getfixturevalue("shared") if where == "redis" else None

    async def scenario() -> tuple[bool, bool, bool]:
        limits = SharedLimits(url)
        await _open(limits, "down")
        await asyncio.sleep(COOLDOWN_MIN_S + 0.05)  # half-open
        ask = ChatRequest(model="m", system="", prompt="hi", max_output_tokens=5, request_id="r1")
        probe = asyncio.create_task(call_one(_Down(0.3), asyncio.Semaphore(10), 1, ask, limits))
        await asyncio.sleep(0.1)
        probing = not (await limits.breaker("down")).allowed  # the probe is out: others are refused
        await limits.record("down", failed=True, started=time.time() - 5)  # the straggler re-opens it
        _, outcome, _ = await probe
        await asyncio.sleep(cooldown(2) + 0.05)  # the new cooldown ends
        nxt = await limits.breaker("down")  # the next probe may go
        await limits.aclose()
        return probing, isinstance(outcome, ProviderStatusError), nxt.allowed and nxt.probe

    assert asyncio.run(scenario()) == (True, True, True)


def test_a_read_of_redis_never_replaces_a_newer_state_this_worker_is_writing(
    shared: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The breaker re-opens here while Redis still holds its half-open state (the write waits for a
    connection): a read in the meantime must not bring the old state back, or a call would take it
    for half-open and probe a breaker that is open (and its failure, changing nothing, would be lost)."""

    async def scenario() -> tuple[bool, bool]:
        limits = SharedLimits(shared)
        await _open(limits, "down")
        await asyncio.sleep(COOLDOWN_MIN_S + 0.05)  # half-open, in Redis too
        write = limits._write_state

        async def slow_write(*args: object) -> None:
            await asyncio.sleep(0.3)
            await write(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(limits, "_write_state", slow_write)
        failing = asyncio.create_task(limits.record("down", failed=True))  # the probe failed: open again
        await asyncio.sleep(0.05)
        await asyncio.sleep(RECOVERY_POLL_S)  # this process's view is old enough to be read again
        during = (await limits.wait_allowed("down", 0.01)).allowed  # must see open, not half-open
        await failing
        await limits.aclose()
        return during, redis.Redis.from_url(shared).hget("pennyroute:cb:down", "opens") == b"2"

    assert asyncio.run(scenario()) == (False, True)  # and the write did land

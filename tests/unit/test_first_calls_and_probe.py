"""router/providers/limits.py in memory: a model nobody stated limits for sends FIRST_CALLS calls until
one comes back with anything but a 429; a half-open breaker lets one probe call through."""

from __future__ import annotations

import asyncio

from policies.circuit_breaker import THRESHOLD
from router.providers import limits as limits_module
from router.providers.limits import FIRST_CALLS, SharedLimits


def test_first_calls_wait_for_one_to_come_back_and_429s_do_not_count() -> None:
    async def scenario() -> tuple[int, int, int]:
        limits = SharedLimits(None)
        sent = 0

        async def one() -> None:
            nonlocal sent
            await limits.first_calls("m")
            sent += 1

        tasks = [asyncio.create_task(one()) for _ in range(FIRST_CALLS + 10)]
        await asyncio.sleep(0.1)
        first = sent
        limits.came_back("m", rate_limited=True)  # a 429 is no sign the rest may go
        await asyncio.sleep(0.1)
        after_429 = sent
        limits.came_back("m", rate_limited=False)  # an answer (or any other outcome) is
        await asyncio.gather(*tasks)
        return first, after_429, sent

    first, after_429, sent = asyncio.run(scenario())
    assert first == FIRST_CALLS and after_429 == FIRST_CALLS and sent == FIRST_CALLS + 10


def test_a_half_open_breaker_lets_one_probe_through(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> list[bool]:
        limits = SharedLimits(None)
        for _ in range(THRESHOLD):
            await limits.record("p", failed=True)
        seen = [(await limits.breaker("p")).allowed]  # open
        clock = limits_module.time.time() + 60
        monkeypatch.setattr(limits_module.time, "time", lambda: clock)  # the cooldown is over
        seen += [(await limits.breaker("p")).allowed, (await limits.breaker("p")).allowed]  # probe, then wait
        await limits.record("p", failed=False)  # the probe answered: closed
        seen += [(await limits.breaker("p")).allowed, (await limits.breaker("p")).allowed]
        return seen

    assert asyncio.run(scenario()) == [False, True, False, True, True]


def test_a_retry_waits_for_a_providers_slot_ahead_of_first_tries() -> None:
    """Calls waiting for one of a provider's slots get them retries first, then first tries, each in
    arrival order; a waiter cancelled in the queue takes no slot."""
    from router.providers.limits import FIRST_TRY, RETRY

    async def scenario() -> list[str]:
        limits = SharedLimits(None)
        order: list[str] = []
        await limits.enter("p", 2)
        await limits.enter("p", 2)  # both slots taken

        async def wait(name: str, priority: int) -> None:
            await limits.enter("p", 2, priority=priority)
            order.append(name)

        tasks = {name: asyncio.create_task(wait(name, p)) for name, p in
                 [("first-a", FIRST_TRY), ("first-b", FIRST_TRY), ("gone", RETRY), ("retry", RETRY)]}  # fmt: skip
        await asyncio.sleep(0.01)
        tasks["gone"].cancel()
        await asyncio.sleep(0.01)
        for _ in range(3):
            await limits.leave("p", overloaded=False)
            await asyncio.sleep(0.01)
        await asyncio.gather(*(t for n, t in tasks.items() if n != "gone"))
        assert limits.in_flight("p") == 2  # three left, three granted: none lost to the cancelled one
        return order

    assert asyncio.run(scenario()) == ["retry", "first-a", "first-b"]

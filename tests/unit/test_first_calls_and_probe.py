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

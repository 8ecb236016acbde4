"""Rate limits and circuit breakers shared by every worker, through Redis.

Limits: a model's `rpm` and `tpm` (catalog) are two token buckets per model, kept in Redis and
taken atomically by one Lua script, so every worker process on every machine draws from the same
budget. The script reads Redis's own clock (workers' clocks may differ). A bucket holds one
second's worth (at least one call's tokens), so bursts stay small. The allowed rate is the
configured one times a factor that halves on a 429 and climbs back with successes
(policies/rate_adapt.py); a 429's Retry-After pauses the model for every worker.

Breakers: per provider (policies/circuit_breaker.py); the state is a Redis hash every worker reads,
cached for a second in each process, so a provider that keeps failing is left alone by all.

Without Redis (the embedded default) the same logic runs in memory, for this process. Models with
no limits cost nothing: no Redis round trip, no await.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from policies.circuit_breaker import BreakerDecision, BreakerState, allows, on_failure, on_success
from policies.rate_adapt import after_rate_limited, after_success, limits_now

# Buckets hold this many seconds of rate: small bursts, and a full bucket after a pause of 1 s.
BURST_S = 1.0
# A caller waiting for its turn sleeps at most this long before asking again.
MAX_SLEEP_S = 1.0
# Each process re-reads a provider's breaker state from Redis at most this often.
BREAKER_CACHE_S = 1.0
# Redis keys expire when unused for this long, so dropped models leave nothing behind.
KEY_TTL_S = 600
# Connections to Redis per process: calls queue for one (up to 5 s) rather than opening hundreds.
REDIS_CONNECTIONS = 16

# KEYS: request bucket, token bucket, factor, pause-until. ARGV: rps, tps, tokens.
# Returns "0" when both buckets had room (and takes from both), else the seconds to wait.
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local pause = tonumber(redis.call('GET', KEYS[4]) or '0')
if pause > now then return tostring(pause - now) end
local factor = tonumber(redis.call('GET', KEYS[3]) or '1')
local rps = tonumber(ARGV[1]) * factor
local tps = tonumber(ARGV[2]) * factor
local cost = tonumber(ARGV[3])
local function level(key, rate, need)
  if rate <= 0 then return nil, 0 end
  local cap = math.max(rate * BURST, need)
  local b = redis.call('HMGET', key, 'v', 'ts')
  local v = tonumber(b[1]) or cap
  local ts = tonumber(b[2]) or now
  v = math.min(cap, v + (now - ts) * rate)
  return v, rate
end
local r, rr = level(KEYS[1], rps, 1)
local k, kr = level(KEYS[2], tps, cost)
local wait = 0
if r and r < 1 then wait = math.max(wait, (1 - r) / rr) end
if k and k < cost then wait = math.max(wait, (cost - k) / kr) end
if wait > 0 then return tostring(wait) end
if r then redis.call('HSET', KEYS[1], 'v', r - 1, 'ts', now); redis.call('EXPIRE', KEYS[1], TTL) end
if k then redis.call('HSET', KEYS[2], 'v', k - cost, 'ts', now); redis.call('EXPIRE', KEYS[2], TTL) end
return '0'
""".replace("BURST", str(BURST_S)).replace("TTL", str(KEY_TTL_S))


CLEAN = BreakerState()


@dataclass
class _Bucket:
    level: float | None = None
    ts: float = field(default_factory=time.monotonic)


class SharedLimits:
    """Rate gates per model and breakers per provider, in Redis (`redis_url`) or in memory (None)."""

    def __init__(self, redis_url: str | None) -> None:
        self._url = redis_url
        self._redis: Any = None
        self._script: Any = None
        self._factor: dict[str, float] = {}  # this process's view of each model's factor
        self._breakers: dict[str, tuple[float, BreakerState]] = {}  # provider -> (read at, state)
        self._refreshing: set[str] = set()  # providers whose breaker state is being read now
        self._buckets: dict[str, _Bucket] = {}  # in-memory mode only
        self._pause: dict[str, float] = {}  # in-memory mode only

    def client(self) -> Any:
        if self._redis is None and self._url:
            pool = aioredis.BlockingConnectionPool.from_url(self._url, max_connections=REDIS_CONNECTIONS, timeout=5)
            self._redis = aioredis.Redis(connection_pool=pool)
            self._script = self._redis.register_script(TAKE)
        return self._redis

    # -- rate limits ------------------------------------------------------------------------------

    async def acquire(self, key: str, *, rpm: int | None, tpm: int | None, tokens: int) -> float:
        """Wait until a call of `tokens` tokens to model `key` fits its limits; returns seconds waited."""
        if not rpm and not tpm:
            return 0.0
        waited = 0.0
        while True:
            wait = await self._take(key, rpm, tpm, tokens)
            if wait <= 0:
                return waited
            pause = min(wait, MAX_SLEEP_S)
            await asyncio.sleep(pause)
            waited += pause

    async def _take(self, key: str, rpm: int | None, tpm: int | None, tokens: int) -> float:
        if self.client() is not None:
            keys = [
                f"pennyroute:rl:{key}:req",
                f"pennyroute:rl:{key}:tok",
                f"pennyroute:rl:{key}:factor",
                f"pennyroute:rl:{key}:pause",
            ]
            result = await self._script(keys=keys, args=[(rpm or 0) / 60, (tpm or 0) / 60, tokens])
            return float(result)
        now = time.monotonic()
        if self._pause.get(key, 0) > now:
            return self._pause[key] - now
        rps, tps = limits_now(rpm, tpm, self._factor.get(key, 1.0))
        waits = []
        levels: list[tuple[_Bucket, float]] = []
        for name, rate, need in ((f"{key}:req", rps, 1.0), (f"{key}:tok", tps, float(tokens))):
            if not rate:
                continue
            bucket = self._buckets.setdefault(name, _Bucket())
            cap = max(rate * BURST_S, need)
            level = min(cap, (cap if bucket.level is None else bucket.level) + (now - bucket.ts) * rate)
            bucket.level, bucket.ts = level, now
            if level < need:
                waits.append((need - level) / rate)
            levels.append((bucket, need))
        if waits:
            return max(waits)
        for bucket, need in levels:
            bucket.level = (bucket.level or 0) - need
        return 0.0

    async def observe(
        self, key: str, *, rpm: int | None, tpm: int | None, rate_limited: bool, retry_after: float | None
    ) -> None:
        """Feed a call's outcome to its model's rate: a 429 halves it (and pauses it for Retry-After)."""
        if not rpm and not tpm:
            return
        factor = self._factor.get(key, 1.0)
        if not rate_limited and factor >= 1.0:
            return  # the common case: nothing to change, no round trip
        new = after_rate_limited(factor).factor if rate_limited else after_success(factor).factor
        self._factor[key] = new
        client = self.client()
        if client is None:
            if rate_limited and retry_after:
                self._pause[key] = max(self._pause.get(key, 0.0), time.monotonic() + retry_after)
            return
        if rate_limited:
            shared = float(await client.get(f"pennyroute:rl:{key}:factor") or 1.0)
            new = min(new, after_rate_limited(shared).factor)
            self._factor[key] = new
        await client.set(f"pennyroute:rl:{key}:factor", new, ex=KEY_TTL_S)
        if rate_limited and retry_after:
            until = time.time() + retry_after
            await client.set(f"pennyroute:rl:{key}:pause", until, ex=max(1, int(retry_after) + 1))

    # -- circuit breakers ---------------------------------------------------------------------------

    def known_clean(self, provider: str) -> bool:
        """True, without awaiting, when this process's fresh view of the breaker is closed with no
        failures counted: the call may go through and a success needs no recording (the hot path)."""
        cached = self._breakers.get(provider)
        if cached is None:
            return self._url is None  # in memory: nothing recorded means clean
        return cached[1] == CLEAN and (self._url is None or time.monotonic() - cached[0] < BREAKER_CACHE_S)

    async def breaker(self, provider: str) -> BreakerDecision:
        """Whether calls to `provider` may go through now."""
        return allows(await self._state(provider), time.time())

    async def record(
        self, provider: str, *, failed: bool, started: float | None = None, unanswered: bool = False
    ) -> None:
        """Count a call's outcome for the provider's breaker (5xx, timeouts, connection errors fail);
        `started` (wall clock) groups unanswered failures of calls sent together into one signal."""
        state = await self._state(provider)
        if not failed and state == BreakerState():
            return  # closed and clean: nothing to write
        new = on_failure(state, time.time(), started=started, unanswered=unanswered) if failed else on_success(state)
        if new == state:
            return  # a failure of a burst already counted: nothing changes
        self._breakers[provider] = (time.monotonic(), new)
        client = self.client()
        if client is not None:
            await client.hset(
                f"pennyroute:cb:{provider}",
                mapping={
                    "failures": new.failures,
                    "open_until": new.open_until,
                    "half_open": int(new.half_open),
                    "burst_started": new.burst_started,
                },
            )
            await client.expire(f"pennyroute:cb:{provider}", KEY_TTL_S)

    async def _state(self, provider: str) -> BreakerState:
        cached = self._breakers.get(provider)
        client = self.client()
        if cached is not None and (client is None or time.monotonic() - cached[0] < BREAKER_CACHE_S):
            return cached[1]
        if client is None:
            return BreakerState()
        if provider in self._refreshing:  # one read at a time: the others go on with what is known
            return cached[1] if cached is not None else BreakerState()
        self._refreshing.add(provider)
        try:
            raw = await client.hgetall(f"pennyroute:cb:{provider}")
        finally:
            self._refreshing.discard(provider)
        state = (
            BreakerState(
                failures=int(raw.get(b"failures", 0)),
                open_until=float(raw.get(b"open_until", 0)),
                half_open=bool(int(raw.get(b"half_open", 0))),
                burst_started=float(raw.get(b"burst_started", 0)),
            )
            if raw
            else BreakerState()
        )
        self._breakers[provider] = (time.monotonic(), state)
        return state

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

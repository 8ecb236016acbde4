"""Rate limits and circuit breakers shared by every worker, through Redis.

Limits: a model's `rpm` and `tpm` (catalog) are two token buckets per model, kept in Redis and
taken atomically by one Lua script, so every worker process on every machine draws from the same
budget. The script reads Redis's own clock (workers' clocks may differ). A bucket holds one
second's worth (at least one call's tokens), so bursts stay small. The allowed rate is the
configured one times a factor that halves on a 429 and climbs back with successes
(policies/rate_adapt.py); a 429's Retry-After pauses the model for every worker.

Learned limits: a model with no `rpm`/`tpm` runs unthrottled until its first 429; then it waits out
the Retry-After and is held to a learned rate (policies/rate_adapt.py: seeded from the rate its calls
were answered at, cut on 429s, grown while it holds callers back). The learned rate is a Redis hash
every worker reads (cached for a second) and writes by compare-and-set, and it drives the same
bucket script as a configured limit.

Calls in flight: a provider's catalog `max_in_flight` (else the process's calls-in-flight gate)
caps this process's calls to it at once, a window narrowed on overload (resets, timeouts, 503, 529)
and widened as it answers (policies/in_flight.py): a server that floods is found and held even when
nobody wrote its limit down.

Breakers: per provider (policies/circuit_breaker.py); the state is a Redis hash every worker reads,
cached for a second in each process, so a provider that keeps failing is left alone by all. Calls
that wait for an open breaker (`wait_allowed`: items with nothing else to go to) wait in one queue
per provider, watched by one task per process that reads the state every RECOVERY_POLL_S: when the
cooldown ends it claims the probe and hands it to one waiter, and when the breaker closes (a probe
succeeded, in this process or another) it lets them all go at once.

Without Redis (the embedded default) the same logic runs in memory, for this process. Models with
no limits cost nothing: no Redis round trip, no await.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from policies.circuit_breaker import (
    BreakerDecision,
    BreakerState,
    allows,
    on_failure,
    on_success,
    probing_elsewhere,
)
from policies.in_flight import RAMP_S, Window, after_answer, after_overload, opening, ramped
from policies.rate_adapt import (
    LearnedRate,
    after_learned_429,
    after_learned_hold,
    after_rate_limited,
    after_success,
    first_429,
    is_rate_limit,
    limits_now,
    seed_learned,
)

log = logging.getLogger("pennyroute.limits")

# Buckets hold this many seconds of rate: small bursts, and a full bucket after a pause of 1 s.
BURST_S = 1.0
# A caller waiting for its turn sleeps at most this long before asking again.
MAX_SLEEP_S = 1.0
# Each process re-reads a provider's breaker state from Redis at most this often.
BREAKER_CACHE_S = 1.0
# Redis keys expire when unused for this long, so dropped models leave nothing behind.
KEY_TTL_S = 600
# Connections to Redis per process: calls queue for one (up to 5 s) rather than opening hundreds.
REDIS_CONNECTIONS = 64
# Priorities of a call waiting for a provider's slot (SharedLimits.enter): lower goes first.
RETRY = 0  # an item's retry or next stage: it has waited already
FIRST_TRY = 1  # an item's first call
# A model with no stated limits: its first calls in a process, before one comes back (first_calls).
FIRST_CALLS = 32
# ... and for at most this long: a rate limiter answers 429 at once (in tens of ms, even in front of a
# slow model), so a first burst that has not come back within a second is slow work or hung calls,
# not a limit; holding the rest longer only stalls the job behind them (a burst of hangs held every
# other call until the first timed out: 5 s in bench/faults.py's hangs case).
FIRST_WAIT_S = 1.0
FIRST_POLL_S = 0.02
# A half-open breaker's probe claim lasts at most this long (a probe that never comes back frees it).
PROBE_HOLD_S = 30.0
# While calls wait for a provider's open breaker, this process reads its state this often (one Redis
# read per provider, whatever the number of waiters): a probe that succeeded in another worker frees
# this worker's waiters within it.
RECOVERY_POLL_S = 0.2
# Each process re-reads a model's learned rate from Redis at most this often.
LEARNED_CACHE_S = 1.0
# The answers of the last this many seconds seed a learned rate (and no fewer than one second is
# assumed, so a burst answered in a moment is not read as a rate of thousands a second).
ANSWERED_WINDOW_S = 5.0
# A model's first 429 pauses it at least this long, so the answers of calls in flight can be counted.
SEED_WAIT_S = 1.0
# The learned rate grows only if it held a caller back this recently (it is what limits us).
HELD_RECENTLY_S = 1.0
# A growing learned rate is written at most this often, not once per answer.
GROW_EVERY_S = 0.5

# KEYS: a learned rate's hash. ARGV: the version read ('' when absent), then field, value pairs.
# Writes the fields and bumps the version only if nobody wrote since the read; returns 1 or 0.
CAS = """
local v = redis.call('HGET', KEYS[1], 'v') or ''
if v ~= ARGV[1] then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HINCRBY', KEYS[1], 'v', 1)
redis.call('EXPIRE', KEYS[1], TTL)
return 1
""".replace("TTL", str(KEY_TTL_S))

# KEYS: a breaker's probe claim. ARGV: the holder's token. Deletes the claim only if it is still
# that holder's (it may have expired and been taken by another call since).
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

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
        self._cas: Any = None
        self._release: Any = None
        self._learned: dict[str, tuple[float, LearnedRate | None, str]] = {}  # model -> (read at, rate, version)
        self._answered: dict[str, deque[float]] = {}  # model -> when its recent calls were answered
        self._limited: dict[str, deque[float]] = {}  # model -> when its recent calls were answered 429
        self._sent: dict[str, int] = {}  # provider -> calls on the wire now
        self._probe_until: dict[str, float] = {}  # in-memory mode only: provider -> its probe's claim ends
        self._probe_tokens: dict[str, str] = {}  # provider -> the token of the probe claim this process holds
        self._writing: dict[str, int] = {}  # provider -> breaker writes of this process not yet in Redis
        self._first: dict[str, list[Any]] = {}  # model -> [calls sent, one came back, first call at]
        self._held: dict[str, float] = {}  # model -> when its learned gate last held a caller back
        self._windows: dict[str, Window] = {}  # provider -> its calls-in-flight window
        self._active: dict[str, int] = {}  # provider -> calls in flight now
        # provider -> calls waiting for a slot: (priority, arrival, future set when granted), a heap
        self._waiting: dict[str, list[tuple[int, int, asyncio.Future[bool]]]] = {}
        self._arrivals = itertools.count()
        self._waiters: dict[str, deque[asyncio.Future[bool]]] = {}  # provider -> calls waiting for its breaker
        self._watchers: dict[str, asyncio.Task[None]] = {}  # provider -> the task that frees them

    def client(self) -> Any:
        if self._redis is None and self._url:
            pool = aioredis.BlockingConnectionPool.from_url(self._url, max_connections=REDIS_CONNECTIONS, timeout=5)
            self._redis = aioredis.Redis(connection_pool=pool)
            self._script = self._redis.register_script(TAKE)
            self._cas = self._redis.register_script(CAS)
            self._release = self._redis.register_script(RELEASE)
        return self._redis

    # -- rate limits ------------------------------------------------------------------------------

    async def acquire(self, key: str, *, rpm: int | None, tpm: int | None, tokens: int) -> float:
        """Wait until a call of `tokens` tokens to model `key` fits its limits (configured, or else
        learned); returns seconds waited."""
        learned = not rpm and not tpm
        if learned and await self.learned_rps(key) is None:
            return 0.0
        waited = 0.0
        while True:
            if learned:
                rps = await self.learned_rps(key)
                if rps is None:
                    return waited  # forgotten (expired) meanwhile
                if rps <= 0:  # a first 429: wait for its Retry-After, then measure the rate
                    pause = await self._paused_for(key) or SEED_WAIT_S / 4
                    await asyncio.sleep(min(pause, MAX_SLEEP_S))
                    waited += min(pause, MAX_SLEEP_S)
                    continue
                wait = await self._take(key, rps * 60, None, tokens)
            else:
                wait = await self._take(key, rpm, tpm, tokens)
            if wait <= 0:
                return waited
            if learned:
                self._held[key] = time.monotonic()
            pause = min(wait, MAX_SLEEP_S)
            await asyncio.sleep(pause)
            waited += pause

    async def _paused_for(self, key: str) -> float:
        """Seconds left of the model's Retry-After pause (0: none)."""
        client = self.client()
        if client is None:
            return max(0.0, self._pause.get(key, 0.0) - time.monotonic())
        until = float(await client.get(f"pennyroute:rl:{key}:pause") or 0)
        return max(0.0, until - time.time())

    async def _take(self, key: str, rpm: float | None, tpm: int | None, tokens: int) -> float:
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
        self,
        key: str,
        *,
        rpm: int | None,
        tpm: int | None,
        rate_limited: bool,
        retry_after: float | None,
        unanswered: int = 0,
    ) -> None:
        """Feed a call's outcome to its model's rate: a 429 halves it (and pauses it for Retry-After);
        with no configured limit, a 429 starts or cuts a learned rate, an answer may grow it.
        `unanswered`: calls to the provider still on their way in this process (see _share_429)."""
        if not rpm and not tpm:
            await self._observe_learned(key, rate_limited=rate_limited, retry_after=retry_after, unanswered=unanswered)
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

    # -- a model's first calls --------------------------------------------------------------------

    async def first_calls(self, key: str) -> None:
        """A model nobody stated limits for: until one of this process's calls to it comes back with
        anything but a 429 (an answer, an error, a timeout), at most FIRST_CALLS of them go out (or
        FIRST_WAIT_S passes). A rate limit answers 429 at once, before any answer is back: so a first
        burst against a limit nobody knows is FIRST_CALLS calls, not the whole gate, and its 429s
        start the learned rate before the rest are sent. A burst of hangs is held FIRST_CALLS at a
        time only until the first of them times out."""
        entry = self._first.get(key)
        if entry is None:
            entry = self._first[key] = [0, False, time.monotonic()]
        while entry[0] >= FIRST_CALLS and not entry[1]:
            if time.monotonic() - entry[2] >= FIRST_WAIT_S:
                entry[1] = True
                break
            await asyncio.sleep(FIRST_POLL_S)  # polled, not an Event: no tie to one event loop
        entry[0] += 1

    def came_back(self, key: str, *, rate_limited: bool) -> None:
        """A call to model `key` came back: anything but a 429 lets the rest of its first calls go."""
        entry = self._first.get(key)
        if entry is not None and not rate_limited:
            entry[1] = True

    # -- learned rates ----------------------------------------------------------------------------

    def answered(self, key: str) -> None:
        """Note that a call to model `key` was answered now (not a 429): what a learned rate is seeded from."""
        stamps = self._answered.get(key)
        if stamps is None:
            stamps = self._answered[key] = deque(maxlen=100_000)
        stamps.append(time.monotonic())

    def _answered_rps(self, key: str) -> float:
        stamps = self._answered.get(key) or deque()
        now = time.monotonic()
        while stamps and now - stamps[0] > ANSWERED_WINDOW_S:
            stamps.popleft()
        if not stamps:
            return 0.0
        return len(stamps) / max(1.0, now - stamps[0])

    def learned_known(self, key: str) -> bool:
        """True, without awaiting, when this process's fresh view says model `key` has no learned rate."""
        cached = self._learned.get(key)
        if cached is None:
            return self._url is None
        return cached[1] is None and (self._url is None or time.monotonic() - cached[0] < LEARNED_CACHE_S)

    async def learned_rps(self, key: str) -> float | None:
        """Model `key`'s learned rate in requests per second (0: measuring), None when it has none.
        A rate still to be measured whose pause is over is seeded here, from this process's answers."""
        rate, version = await self._learned_state(key)
        if rate is None:
            return None
        # Seeded once the first 429's pause is over, and never sooner than SEED_WAIT_S after it (the
        # pause is written after the rate: a caller in between must not seed from the first few answers).
        if rate.rps <= 0 and time.time() - rate.cut_at >= SEED_WAIT_S and await self._paused_for(key) <= 0:
            answered = self._answered_rps(key)
            if answered <= 0 and time.time() - rate.cut_at < ANSWERED_WINDOW_S:
                return 0.0  # no answer in yet (slow answers): keep measuring
            seeded, _ = seed_learned(rate, answered_rps=answered, now=time.time())
            rate = await self._write_learned(key, seeded, version) or rate
        return rate.rps

    async def _learned_state(self, key: str, *, fresh: bool = False) -> tuple[LearnedRate | None, str]:
        cached = self._learned.get(key)
        client = self.client()
        if cached is not None and (client is None or (not fresh and time.monotonic() - cached[0] < LEARNED_CACHE_S)):
            return cached[1], cached[2]
        if client is None:
            return None, ""
        raw = await client.hgetall(f"pennyroute:rl:{key}:learned")
        rate = (
            LearnedRate(
                float(raw[b"rps"]),
                float(raw[b"cut_at"]),
                float(raw[b"grown_at"]),
                raw.get(b"probing") == b"1",
                float(raw.get(b"ceiling") or 0),
            )
            if raw and b"rps" in raw
            else None
        )
        version = raw.get(b"v", b"").decode() if raw else ""
        self._learned[key] = (time.monotonic(), rate, version)
        return rate, version

    async def _write_learned(self, key: str, rate: LearnedRate, version: str) -> LearnedRate | None:
        """Store `rate` if nobody changed it since `version` was read; the stored rate, or None if lost."""
        client = self.client()
        if client is None:
            self._learned[key] = (time.monotonic(), rate, str(int(version or 0) + 1))
            return rate
        fields = ["rps", repr(rate.rps), "cut_at", repr(rate.cut_at), "grown_at", repr(rate.grown_at)]
        fields += ["probing", "1" if rate.probing else "0", "ceiling", repr(rate.ceiling)]
        written = await self._cas(keys=[f"pennyroute:rl:{key}:learned"], args=[version, *fields])
        if int(written):
            self._learned[key] = (time.monotonic(), rate, str(int(version or 0) + 1))
            return rate
        self._learned.pop(key, None)  # someone else wrote first: read theirs next time
        return None

    def _share_429(self, key: str, *, unanswered: int = 0) -> tuple[float, int]:
        """The share of model `key`'s responses in the last ANSWERED_WINDOW_S that were 429s, and how
        many responses that is (this process). `unanswered` calls still on their way count as
        responses to come: a 429 comes back at once and an answer after its latency, so the first
        429s of a burst are judged against the whole burst, not against the answers back so far."""
        stamps = self._limited.setdefault(key, deque(maxlen=100_000))
        now = time.monotonic()
        while stamps and now - stamps[0] > ANSWERED_WINDOW_S:
            stamps.popleft()
        self._answered_rps(key)  # drops the answers older than the window
        responses = len(stamps) + len(self._answered.get(key) or ())
        return len(stamps) / max(1, responses + unanswered), responses

    async def _observe_learned(
        self, key: str, *, rate_limited: bool, retry_after: float | None, unanswered: int = 0
    ) -> None:
        if rate_limited:
            self._limited.setdefault(key, deque(maxlen=100_000)).append(time.monotonic())
        if not rate_limited:
            self.answered(key)
            held = self._held.get(key)
            cached = self._learned.get(key)
            if held is None or time.monotonic() - held > HELD_RECENTLY_S or cached is None or cached[1] is None:
                return
            now = time.time()
            if now - cached[1].grown_at < GROW_EVERY_S:
                return  # grown a moment ago: no write for every answer
            rate, version = await self._learned_state(key)
            if rate is not None:
                await self._write_learned(key, after_learned_hold(rate, now=now), version)
            return
        share, responses = self._share_429(key, unanswered=unanswered)
        for _ in range(3):  # compare-and-set: another worker may write between our read and write
            rate, version = await self._learned_state(key, fresh=True)
            if not is_rate_limit(share, learned=rate is not None, responses=responses, calls=responses + unanswered):
                return  # incidental: the call retries after its Retry-After; the model is not slowed
            now = time.time()
            new = first_429(now=now) if rate is None else after_learned_429(rate, now=now)[0]
            if new == rate or await self._write_learned(key, new, version) is not None:
                break
        # A first 429 waits at least SEED_WAIT_S, so the answers to calls already sent come in to be counted.
        wait = max(retry_after or 0.0, SEED_WAIT_S) if rate is None else (retry_after or 0.0)
        if wait:
            await self._set_pause(key, wait)

    async def _set_pause(self, key: str, seconds: float) -> None:
        client = self.client()
        if client is None:
            self._pause[key] = max(self._pause.get(key, 0.0), time.monotonic() + seconds)
            return
        until = time.time() + seconds
        current = float(await client.get(f"pennyroute:rl:{key}:pause") or 0)
        if until > current:
            await client.set(f"pennyroute:rl:{key}:pause", until, ex=max(1, int(seconds) + 1))

    # -- calls in flight per provider ---------------------------------------------------------------

    async def enter(self, provider: str, cap: int, *, learned: bool = False, priority: int = FIRST_TRY) -> None:
        """Wait for a free slot among the provider's calls in flight (at most `cap`, fewer under
        overload; `learned`: nobody stated the cap, policies/in_flight.py). Waiting calls get slots
        lowest `priority` first, in arrival order within one: a retry (RETRY) goes before the first
        tries of items claimed after it, so an item that met a fault is not sent to the back of a
        queue of the job's next items (which made the job's end wait for it)."""
        window = self._windows.get(provider)
        if window is None or window.cap != cap or window.learned != learned:
            window = self._windows[provider] = opening(cap, learned=learned, now=time.monotonic())
        waiting = self._waiting.setdefault(provider, [])
        if not waiting and self._active.get(provider, 0) < self._ramped(provider).slots:
            self._active[provider] = self._active.get(provider, 0) + 1
            return
        granted: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        heapq.heappush(waiting, (priority, next(self._arrivals), granted))
        self._grant(provider)  # a slot may be free already (the calls ahead of it were cancelled)
        try:
            while not granted.done():
                window = self._ramped(provider)
                if window.learned and not window.ceiling and window.width < window.cap:
                    # slow start: the window widens with time too, so look again at the next doubling
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(granted), timeout=RAMP_S)
                    self._grant(provider)
                else:
                    await asyncio.shield(granted)
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():  # a slot was given to it: hand it on
                self._active[provider] -= 1
                self._grant(provider)
            else:
                granted.cancel()  # skipped when its turn comes
            raise

    def _ramped(self, provider: str) -> Window:
        window = self._windows[provider] = ramped(self._windows[provider], now=time.monotonic())
        return window

    def _grant(self, provider: str) -> None:
        """Give the free slots to the waiting calls, best first."""
        waiting = self._waiting.get(provider) or []
        slots = self._ramped(provider).slots
        while waiting and self._active.get(provider, 0) < slots:
            _, _, granted = heapq.heappop(waiting)
            if granted.done():  # its caller was cancelled while it waited
                continue
            self._active[provider] = self._active.get(provider, 0) + 1
            granted.set_result(True)

    async def leave(
        self, provider: str, *, overloaded: bool, called: bool = True, sent_at: float | None = None
    ) -> None:
        """Free a slot; an overload answer narrows the provider's window, any other widens it (a call
        that was never made, `called` false, leaves it as it is). `sent_at` (time.time()) tells a
        call sent at the window's old width from one sent after its last cut."""
        window = self._windows[provider]
        if called:
            self._windows[provider] = (
                after_overload(window, now=time.time(), sent_at=sent_at)[0] if overloaded else after_answer(window)
            )
        self._active[provider] -= 1
        self._grant(provider)

    def sending(self, provider: str, change: int) -> None:
        """A call to the provider went on the wire (+1) or came back (-1)."""
        self._sent[provider] = self._sent.get(provider, 0) + change

    def sent(self, provider: str) -> int:
        """The provider's calls in this process on the wire now: sent, not answered yet. (Calls
        waiting at a rate gate hold a calls-in-flight slot but were not sent: a 429's share is
        judged against what the provider was sent.)"""
        return self._sent.get(provider, 0)

    def in_flight(self, provider: str) -> int:
        """The provider's calls in this process that hold a calls-in-flight slot now."""
        return self._active.get(provider, 0)

    def window(self, provider: str) -> Window | None:
        """The provider's calls-in-flight window in this process (None: no call to it yet)."""
        return self._windows.get(provider)

    # -- circuit breakers ---------------------------------------------------------------------------

    def known_clean(self, provider: str) -> bool:
        """True, without awaiting, when this process's fresh view of the breaker is closed with no
        failures counted: the call may go through and a success needs no recording (the hot path)."""
        cached = self._breakers.get(provider)
        if cached is None:
            return self._url is None  # in memory: nothing recorded means clean
        return cached[1] == CLEAN and (self._url is None or time.monotonic() - cached[0] < BREAKER_CACHE_S)

    async def breaker(self, provider: str) -> BreakerDecision:
        """Whether calls to `provider` may go through now (half-open: only the call that claims the
        probe, across every worker; it must `release_probe` once its outcome is recorded)."""
        decision = allows(await self._state(provider), time.time())
        if decision.probe and not await self._claim_probe(provider):
            return probing_elsewhere()
        return decision

    async def _claim_probe(self, provider: str) -> bool:
        """Claim the half-open breaker's one probe, across every worker; the call that gets it must
        `release_probe` once its outcome is recorded (or it was not sent)."""
        client = self.client()
        token = uuid.uuid4().hex
        if client is None:
            now = time.monotonic()
            if self._probe_until.get(provider, 0.0) > now:
                return False
            self._probe_until[provider] = now + PROBE_HOLD_S
        elif not await client.set(f"pennyroute:cb:{provider}:probe", token, nx=True, px=int(PROBE_HOLD_S * 1000)):
            return False
        self._probe_tokens[provider] = token
        return True

    async def release_probe(self, provider: str) -> None:
        """The probe's outcome is recorded (or it was not sent): the next cooldown's probe may go. Only
        the holder releases its claim, whatever the outcome did to the breaker (a failure of a
        probe the breaker already re-opened for changes nothing, and must still free the claim)."""
        token = self._probe_tokens.pop(provider, None)
        if token is None:
            return
        client = self.client()
        if client is None:
            self._probe_until.pop(provider, None)
        else:
            await self._release(keys=[f"pennyroute:cb:{provider}:probe"], args=[token])

    async def wait_allowed(self, provider: str, patience_s: float) -> BreakerDecision:
        """Wait, up to `patience_s`, until the provider's breaker lets this call through: at once when
        it is closed, or as the probe once its cooldown is over (the others wait for the probe's
        outcome). Returns the decision; `probe` true means this call holds the probe claim (it is
        sent without asking the breaker again), not allowed means the patience ran out."""
        deadline = time.monotonic() + patience_s
        while True:
            decision = allows(await self._state(provider, max_age=RECOVERY_POLL_S), time.time())
            if decision.allowed and (not decision.probe or await self._claim_probe(provider)):
                return decision
            left = deadline - time.monotonic()
            if left <= 0:
                return decision if not decision.allowed else probing_elsewhere()
            waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(provider, deque()).append(waiter)
            self._watch(provider)
            try:
                probe = await asyncio.wait_for(waiter, timeout=left)
            except TimeoutError:
                continue  # one last look at the breaker, then the deadline
            if probe:
                return BreakerDecision(True, 0.0, "half-open: probing", probe=True)

    def _watch(self, provider: str) -> None:
        """Start the task that frees the provider's waiters, unless it runs (on this loop)."""
        task = self._watchers.get(provider)
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            self._watchers[provider] = asyncio.get_running_loop().create_task(self._watcher(provider))

    async def _watcher(self, provider: str) -> None:
        """While calls wait for the provider's breaker: every RECOVERY_POLL_S, read its state; when
        it is closed, free every waiter; when its cooldown is over, claim the probe and hand it to one."""
        waiters = self._waiters.setdefault(provider, deque())
        while True:
            while waiters and waiters[0].done():  # timed out (or cancelled) meanwhile
                waiters.popleft()
            if not waiters:
                return
            try:
                decision = allows(await self._state(provider, max_age=RECOVERY_POLL_S), time.time())
                if decision.allowed and not decision.probe:
                    self.wake(provider)
                elif decision.probe and await self._claim_probe(provider):
                    if not self._hand_probe(provider):
                        await self.release_probe(provider)  # nobody left to send it
            except Exception as exc:  # Redis unreachable: the waiters' own deadlines still end their wait
                log.warning("breaker state unavailable (%s)", exc)
                decision = probing_elsewhere()
            # Open: look again when the cooldown ends (the probe leaves then), or sooner if a worker
            # reopened or closed it meanwhile.
            await asyncio.sleep(
                min(RECOVERY_POLL_S, max(0.01, decision.retry_in_s)) if not decision.allowed else RECOVERY_POLL_S
            )

    def _hand_probe(self, provider: str) -> bool:
        waiters = self._waiters.get(provider) or deque()
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return True
        return False

    def wake(self, provider: str) -> None:
        """The provider's breaker is closed: every call waiting for it goes now."""
        waiters = self._waiters.get(provider)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(False)

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
        if not new.half_open and self._waiters.get(provider):
            self.wake(provider)  # the probe succeeded here: the calls waiting for it go at once
        client = self.client()
        if client is not None:
            # Until it is in Redis, this process's view is newer than Redis's: _state keeps it.
            self._writing[provider] = self._writing.get(provider, 0) + 1
            try:
                await self._write_state(client, provider, new)
            finally:
                self._writing[provider] -= 1

    async def _write_state(self, client: Any, provider: str, new: BreakerState) -> None:
        async with client.pipeline(transaction=False) as pipe:  # one round trip for both
            pipe.hset(
                f"pennyroute:cb:{provider}",
                mapping={
                    "failures": new.failures,
                    "open_until": new.open_until,
                    "half_open": int(new.half_open),
                    "burst_started": new.burst_started,
                    "opens": new.opens,
                },
            )
            pipe.expire(f"pennyroute:cb:{provider}", KEY_TTL_S)
            await pipe.execute()

    async def _state(self, provider: str, *, max_age: float = BREAKER_CACHE_S) -> BreakerState:
        cached = self._breakers.get(provider)
        client = self.client()
        if cached is not None and (client is None or time.monotonic() - cached[0] < max_age):
            return cached[1]
        if client is None:
            return BreakerState()
        if provider in self._refreshing or self._writing.get(provider):
            # One read at a time: the others go on with what is known. And while this process's own
            # write is on its way, Redis holds an older state than this process knows.
            return cached[1] if cached is not None else BreakerState()
        self._refreshing.add(provider)
        asked = time.monotonic()
        try:
            raw = await client.hgetall(f"pennyroute:cb:{provider}")
        finally:
            self._refreshing.discard(provider)
        latest = self._breakers.get(provider)
        if latest is not None and (latest[0] >= asked or self._writing.get(provider)):
            return latest[1]  # written here while the read was on its way: newer than what was read
        state = (
            BreakerState(
                failures=int(raw.get(b"failures", 0)),
                open_until=float(raw.get(b"open_until", 0)),
                half_open=bool(int(raw.get(b"half_open", 0))),
                burst_started=float(raw.get(b"burst_started", 0)),
                opens=int(raw.get(b"opens", 0)),
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

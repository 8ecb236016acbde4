"""The fake provider's fault mix: what a real provider does to a batch, on a seed, at chosen rates.

    POST /_faults {"seed": 1,
                   "rates": {"429": 0.05, "500": 0.03, "503": 0.02, "529": 0.03,
                             "truncated": 0.02, "malformed": 0.02, "hang": 0.01},
                   "retry_after_s": 1.0,
                   "burst_429": {"every_s": 10, "length_s": 1},
                   "latency_ms": [0, 50],
                   "rpm": {"limit": 1200, "burst_s": 1.0, "headers": true}}

Each call draws one number from the seeded generator: below the cumulative rates, it gets that fault.
Statuses are served as the vendor serves them (429 with Retry-After and retry-after-ms; 529 as
Anthropic's overloaded_error; Gemini's RESOURCE_EXHAUSTED). "truncated" is a 200 whose JSON body
is cut off mid-way; "malformed" a 200 whose JSON has the wrong shape; "hang" accepts the call and
never answers (the client's timeout ends it). "cut", "refusal", "filtered", "blocked" and "chunks" are
not faults but billed answers in the vendor's own dialect (tests/fakes/server.py). A 429 burst answers every call with 429 for
`length_s` seconds out of every `every_s`. `latency_ms` delays every answer by a uniform draw from
[lo, hi], or, given as {"median": 1000, "sigma": 0.8, "max": 30000}, by a lognormal draw: the heavy
tail of real LLM latencies, where a few calls take ten times the median.

`rpm` enforces a requests-per-minute limit as providers do (OpenAI: "1,200 RPM may be enforced as
20 requests per second"): a token bucket refilled at limit/60 a second that holds `burst_s` seconds
of it. A call that finds it empty is answered 429 at once, with Retry-After (whole seconds, at least
1) and retry-after-ms (the exact time to the next token); with `headers`, also OpenAI's
x-ratelimit-limit-requests / -remaining-requests / -reset-requests. Refused calls are counted in
`served["429"]` and `rpm_refused`; the check runs before the fault draw.

Only well-formed 200 answers are billed: a fault is the provider's failure, and providers do not
bill calls they failed to answer. (A call that the provider answered but the client gave up on, a
timeout on our side, is billed: see tests/fakes/server.py.)
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

# A hang lasts this long: far beyond any client timeout a test uses, and short enough that a
# stopping server's cleanup (which cancels open calls) is never held up by one in practice.
HANG_S = 3600.0
KINDS = (
    "408",
    "409",
    "429",
    "500",
    "502",
    "503",
    "504",
    "529",
    "truncated",
    "malformed",
    "hang",
    # Billed answers in a vendor's dialect rather than faults (tests/fakes/server.py ANSWER_DIALECTS).
    "cut",
    "refusal",
    "filtered",
    "blocked",
    "chunks",
)


@dataclass
class FaultMix:
    """Fault rates per kind, drawn on a seed; `decide` says what the next call gets."""

    rates: dict[str, float]
    seed: int = 0
    retry_after_s: float = 1.0
    burst_every_s: float | None = None
    burst_length_s: float = 0.0
    latency_ms: tuple[float, float] = (0.0, 0.0)
    lognormal_ms: tuple[float, float, float] | None = None  # (median, sigma, max)
    served: dict[str, int] = field(default_factory=dict)
    rpm_limit: int | None = None
    rpm_burst_s: float = 1.0
    rpm_headers: bool = False
    rpm_refused: int = 0
    _rpm_level: float | None = field(default=None, repr=False)
    _rpm_ts: float = field(default_factory=time.monotonic, repr=False)
    _rng: random.Random = field(default_factory=random.Random, repr=False)
    _t0: float = field(default_factory=time.monotonic, repr=False)

    @classmethod
    def from_json(cls, spec: dict[str, Any]) -> FaultMix:
        """Read the /_faults body; ValueError names what is wrong."""
        rates = {str(k): float(v) for k, v in (spec.get("rates") or {}).items()}
        unknown = set(rates) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
        if any(r < 0 for r in rates.values()) or sum(rates.values()) > 1:
            raise ValueError("rates must be >= 0 and sum to at most 1")
        burst = spec.get("burst_429") or {}
        latency = spec.get("latency_ms") or [0, 0]
        lognormal = None
        if isinstance(latency, dict):
            if float(latency.get("median", 0)) <= 0 or float(latency.get("sigma", -1)) < 0:
                raise ValueError("latency_ms as a lognormal needs median > 0 and sigma >= 0 (and optionally max)")
            lognormal = (float(latency["median"]), float(latency["sigma"]), float(latency.get("max", 3_600_000)))
            latency = [0, 0]
        rpm = spec.get("rpm") or {}
        if rpm and (not isinstance(rpm, dict) or int(rpm.get("limit", 0)) <= 0 or float(rpm.get("burst_s", 1)) <= 0):
            raise ValueError('rpm needs {"limit": N > 0} (and optionally "burst_s" > 0, "headers": true)')
        mix = cls(
            rates=rates,
            seed=int(spec.get("seed", 0)),
            retry_after_s=float(spec.get("retry_after_s", 1.0)),
            burst_every_s=float(burst["every_s"]) if burst.get("every_s") else None,
            burst_length_s=float(burst.get("length_s", 0)),
            latency_ms=(float(latency[0]), float(latency[1])),
            lognormal_ms=lognormal,
            rpm_limit=int(rpm["limit"]) if rpm else None,
            rpm_burst_s=float(rpm.get("burst_s", 1.0)) if rpm else 1.0,
            rpm_headers=bool(rpm.get("headers", False)) if rpm else False,
        )
        mix._rng.seed(mix.seed)
        return mix

    def decide(self) -> tuple[str | None, float]:
        """(fault kind or None, extra latency in seconds) for the next call."""
        lo, hi = self.latency_ms
        delay = self._rng.uniform(lo, hi) / 1000 if hi else 0.0
        if self.lognormal_ms is not None:
            median, sigma, most = self.lognormal_ms
            delay = min(most, self._rng.lognormvariate(math.log(median), sigma)) / 1000
        if self.burst_every_s and (time.monotonic() - self._t0) % self.burst_every_s < self.burst_length_s:
            return self._count("429"), delay
        draw = self._rng.random()
        edge = 0.0
        for kind in KINDS:
            edge += self.rates.get(kind, 0.0)
            if draw < edge:
                return self._count(kind), delay
        return None, delay

    def over_rpm(self) -> dict[str, str] | None:
        """Take one request from the rpm bucket: None when it had room, else the 429's headers."""
        if self.rpm_limit is None:
            return None
        rate = self.rpm_limit / 60
        cap = max(1.0, rate * self.rpm_burst_s)
        now = time.monotonic()
        level = cap if self._rpm_level is None else min(cap, self._rpm_level + (now - self._rpm_ts) * rate)
        self._rpm_ts = now
        if level >= 1:
            self._rpm_level = level - 1
            return None
        self._rpm_level = level
        self.rpm_refused += 1
        self._count("429")
        wait_s = (1 - level) / rate
        headers = {
            "Retry-After": str(max(1, math.ceil(wait_s))),
            "retry-after-ms": str(max(1, math.ceil(wait_s * 1000))),
        }
        if self.rpm_headers:
            headers.update(
                {
                    "x-ratelimit-limit-requests": str(self.rpm_limit),
                    "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": f"{max(1, math.ceil(wait_s * 1000))}ms",
                }
            )
        return headers

    def _count(self, kind: str) -> str:
        self.served[kind] = self.served.get(kind, 0) + 1
        return kind

    def retry_after_headers(self) -> dict[str, str]:
        return {
            "Retry-After": f"{max(1, round(self.retry_after_s))}",
            "retry-after-ms": f"{int(self.retry_after_s * 1000)}",
        }

"""The fake provider's fault mix: what a real provider does to a batch, on a seed, at chosen rates.

    POST /_faults {"seed": 1,
                   "rates": {"429": 0.05, "500": 0.03, "503": 0.02, "529": 0.03,
                             "truncated": 0.02, "malformed": 0.02, "hang": 0.01},
                   "retry_after_s": 1.0,
                   "burst_429": {"every_s": 10, "length_s": 1},
                   "latency_ms": [0, 50],
                   "rpm": {"limit": 1200, "burst_s": 1.0, "headers": true}}

Each call draws one number from the seeded generator: below the cumulative rates, it gets that fault.
Statuses are served as the vendor serves them (`vendor_error` below): OpenAI's 429 is type "requests",
code rate_limit_exceeded, with Retry-After and retry-after-ms; Anthropic's 429 a rate_limit_error with
retry-after, its 529 an overloaded_error; Gemini's 429 a RESOURCE_EXHAUSTED with NO Retry-After header,
the wait in the body's RetryInfo.retryDelay and the limit in QuotaFailure (per minute), as the real
Gemini API answers. "truncated" is a 200 whose JSON body
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
x-ratelimit-limit-requests / -remaining-requests / -reset-requests. Gemini gets the wait in its body's
RetryInfo instead. Refused calls are counted in `served["429"]` and `rpm_refused`; the check runs
before the fault draw.

Real error dialects (`PRESETS`, served by POST /_fail {"preset": NAME}): the bodies and headers each
provider sends for its rate limits, spent quotas and spend limits, as quoted in the provider modules
(router/providers/<vendor>.py). Every error carries the vendor's request id (OpenAI and Mistral
x-request-id; Anthropic request-id and the body's request_id; Gemini none).

Only well-formed 200 answers are billed: a fault is the provider's failure, and providers do not
bill calls they failed to answer. (A call that the provider answered but the client gave up on, a
timeout on our side, is billed: see tests/fakes/server.py.)
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Callable
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


# -- the vendors' error dialects ----------------------------------------------------------------

# Error "type"s by status, in each vendor's own vocabulary (OpenAI's 401 code is invalid_api_key).
OPENAI_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 429: "requests"}
OPENAI_ERROR_CODES = {401: "invalid_api_key", 429: "rate_limit_exceeded"}
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
GEMINI_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# Gemini's 429 message is the same for a minute's limit and a day's (RooCodeInc/Roo-Code#3883).
GEMINI_QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more information on "
    "this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."
)
# A free-tier OpenAI rate limit links the billing page (arc53/DocsGPT#287): it is still a rate limit.
OPENAI_RATE_MESSAGE = (
    "Rate limit reached for {model} in organization org-fake on requests per min (RPM): Limit 3, Used 3, "
    "Requested 1. Please try again in 20s. Visit https://platform.openai.com/account/rate-limits to learn "
    "more. You can increase your rate limit by adding a payment method to your account at "
    "https://platform.openai.com/account/billing."
)
_request_ids = itertools.count(1)

Dialect = tuple[int, Any, dict[str, str]]
"""(status, JSON body, headers) of one error response."""


def request_id_headers(vendor: str) -> dict[str, str]:
    """The request-id header a vendor puts on every response (Gemini: none)."""
    n = next(_request_ids)
    if vendor == "anthropic":
        return {"request-id": f"req_011fake{n:08d}"}
    if vendor in ("openai", "mistral"):
        return {"x-request-id": f"req_fake{n:08d}"}
    return {}


def vendor_error(vendor: str, status: int, message: str, *, code: str | None = None) -> Dialect:
    """An error body shaped as the vendor shapes it, with its request id header (and body field)."""
    headers = request_id_headers(vendor)
    if vendor == "gemini":
        error: dict[str, Any] = {"code": status, "message": message, "status": GEMINI_STATUSES.get(status, "UNKNOWN")}
        if code == "API_KEY_INVALID":
            error["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            ]
        return status, {"error": error}, headers
    if vendor == "anthropic":
        kind = ANTHROPIC_ERROR_TYPES.get(status, "api_error")
        body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": headers["request-id"]}
        return status, body, headers
    if vendor == "mistral":
        kind = {401: "authentication_error", 429: "rate_limited"}.get(status, "invalid_request_error")
        body = {"object": "error", "message": message, "type": kind, "param": None, "code": code}
        return status, body, headers
    kind = OPENAI_ERROR_TYPES.get(status, "server_error")
    body = {"error": {"message": message, "type": kind, "param": None, "code": code or OPENAI_ERROR_CODES.get(status)}}
    return status, body, headers


def gemini_429(*, per: str, retry_delay: str | None, model: str = "gemini-2.5-pro") -> Dialect:
    """Gemini's RESOURCE_EXHAUSTED as the API sends it: no Retry-After header; QuotaFailure names the
    limit (`per` "Minute" or "Day"), RetryInfo (if any) the wait."""
    quota_id = f"GenerateRequestsPer{per}PerProjectPerModel-FreeTier"
    details: list[dict[str, Any]] = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [
                {
                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                    "quotaId": quota_id,
                    "quotaDimensions": {"location": "global", "model": model},
                    "quotaValue": "5" if per == "Minute" else "100",
                }
            ],
        },
        {
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [
                {
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                }
            ],
        },
    ]
    if retry_delay is not None:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay})
    body = {"error": {"code": 429, "message": GEMINI_QUOTA_MESSAGE, "status": "RESOURCE_EXHAUSTED", "details": details}}
    return 429, body, {}


def _openai_rate_limit(**_: Any) -> Dialect:
    # No Retry-After (openai/openai-node#1477 shows a real 429 without one); the requests window is
    # exhausted and refills in six minutes: information, not a wait (issue 13, finding 6).
    status, body, headers = vendor_error("openai", 429, OPENAI_RATE_MESSAGE.format(model="gpt-4o-mini"))
    headers |= {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "6m0s",
        "x-ratelimit-limit-tokens": "40000",
        "x-ratelimit-remaining-tokens": "39000",
        "x-ratelimit-reset-tokens": "1.5s",
    }
    return status, body, headers


def _openai_quota(*, code: str = "insufficient_quota", **_: Any) -> Dialect:
    message = (
        "You exceeded your current quota, please check your plan and billing details. For more information on "
        "this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors."
    )
    status, body, headers = vendor_error("openai", 429, message, code=code)
    body["error"]["type"] = "insufficient_quota"
    return status, body, headers


def _anthropic_rate_limit(*, retry_after: str = "1", **_: Any) -> Dialect:
    status, body, headers = vendor_error(
        "anthropic", 429, "Number of request tokens has exceeded your per-minute rate limit"
    )
    headers |= {"retry-after": retry_after, "anthropic-ratelimit-requests-remaining": "0", "x-should-retry": "true"}
    return status, body, headers


def _anthropic_spend_cap(**_: Any) -> Dialect:
    # The usage tier's monthly cap: rate_limit_error with details.error_code, and no retry-after.
    status, body, headers = vendor_error(
        "anthropic", 429, "This request would exceed your account's monthly spend limit. Please try again later."
    )
    body["error"]["details"] = {"error_code": "enforced_spend_limit_reached"}
    return status, body, headers


def _anthropic_spend_limit(**_: Any) -> Dialect:
    return vendor_error(
        "anthropic",
        400,
        "You have reached your specified API usage limits. You will regain access on 2026-12-01 at 00:00 UTC.",
    )


PRESETS: dict[str, Callable[..., Dialect]] = {
    "openai.rate_limit": _openai_rate_limit,
    "openai.insufficient_quota": _openai_quota,
    "openai.invalid_api_key": lambda **_: vendor_error(
        "openai",
        401,
        "Incorrect API key provided: wrong-ke*. You can find your API key at https://platform.openai.com/account/api-keys.",
    ),
    "anthropic.rate_limit": _anthropic_rate_limit,
    "anthropic.overloaded": lambda **_: (
        529,
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}, "request_id": "req_011fake"},
        {"request-id": "req_011fake", "x-should-retry": "true"},
    ),
    "anthropic.spend_cap": _anthropic_spend_cap,
    "anthropic.spend_limit": _anthropic_spend_limit,
    "anthropic.credit_low": lambda **_: vendor_error(
        "anthropic",
        400,
        "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.",
    ),
    "gemini.per_minute": lambda *, retry_delay="26s", **_: gemini_429(per="Minute", retry_delay=retry_delay),
    "gemini.per_day": lambda *, retry_delay="26s", **_: gemini_429(per="Day", retry_delay=retry_delay),
    "mistral.rate_limit": lambda **_: vendor_error("mistral", 429, "Rate limit exceeded", code="1300"),
    "mistral.payment_required": lambda **_: vendor_error(
        "mistral", 402, "Payment required: your organization's spending limit is reached."
    ),
}
"""Real error responses by name; each takes keyword options (retry_delay, retry_after, code)."""


def mix_error(vendor: str, status: int, message: str, *, retry_after_s: float) -> Dialect:
    """A fault mix's error, with each vendor's own way of saying how long to wait."""
    if vendor == "gemini" and status == 429:
        return gemini_429(per="Minute", retry_delay=f"{retry_after_s:g}s")
    if vendor == "anthropic" and status == 529:
        status, body, headers = vendor_error(vendor, 529, "Overloaded")
    else:
        status, body, headers = vendor_error(vendor, status, message)
    if vendor != "gemini" and status in (429, 503, 529):  # Gemini sends no Retry-After header, ever
        headers |= {"Retry-After": f"{max(1, round(retry_after_s))}", "retry-after-ms": f"{int(retry_after_s * 1000)}"}
    return status, body, headers

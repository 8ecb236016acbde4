"""How fast to call a model: its configured limits, scaled by a factor that adapts to 429s (AIMD).

A 429 halves the factor (multiplicative decrease, floor MIN_FACTOR): the provider says we are over
its real limit, which can be below the configured one (shared keys, tier changes). Every successful
call adds STEP back (additive increase, up to 1.0), so the rate climbs back over a few hundred calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Never below 5% of the configured rate: a misbehaving provider still gets probed.
MIN_FACTOR = 0.05
# +0.5% of the configured rate per success: from half speed back to full in 100 successes.
STEP = 0.005


@dataclass(frozen=True, slots=True)
class RateDecision:
    factor: float
    reason: str


def after_rate_limited(factor: float) -> RateDecision:
    new = max(MIN_FACTOR, factor / 2)
    return RateDecision(new, f"429: rate {factor:.0%} -> {new:.0%} of the configured limit")


def after_success(factor: float) -> RateDecision:
    new = min(1.0, factor + STEP)
    return RateDecision(new, "success" if new == factor else f"success: rate {factor:.1%} -> {new:.1%}")


def limits_now(rpm: float | None, tpm: int | None, factor: float) -> tuple[float | None, float | None]:
    """Requests and tokens per second allowed now (None: unlimited)."""
    return (rpm * factor / 60 if rpm else None, tpm * factor / 60 if tpm else None)


# -- limits nobody configured ----------------------------------------------------------------------
#
# A model with no `rpm` in the catalog runs unthrottled until its first 429. From then on it has a
# learned rate (requests per second), seeded from the rate at which its calls were answered just
# before (a provider over its limit answers at about its limit), cut by LEARN_CUT on a later 429
# (once per CUT_GAP_S: the 429s of calls already sent at the old rate are one signal), and raised by
# GROW_SHARE_PER_S of itself for every second in which it is what holds callers back: a cut of 15%
# is won back in about 15 s, so the sawtooth stays above 90% of the real limit on average. Until its
# first cut a seeded rate probes upward ten times as fast (TCP's slow start): a seed measured low
# (slow answers, or one worker's share of them) is outgrown in seconds, not minutes.

# A cut of 15%: halving would average 75% of the limit; 15% keeps the average above 90%.
LEARN_CUT = 0.85
# 429s within this long of a cut are answers to calls sent before it: the same signal, not a new one.
CUT_GAP_S = 2.0
# While the learned rate holds callers back it climbs 1% a second (of itself, so a seed that was
# too low, one worker's share of the answers, say, is outgrown in minutes, not hours).
GROW_SHARE_PER_S = 0.01
# Growth until the first cut: 10% a second, doubling in about 7 s.
PROBE_GROW_SHARE_PER_S = 0.1
# Past the rate of its last cut (the ceiling: where 429s came), a learned rate climbs this much slower:
# it spends its time just under the limit it found, not over it (as TCP CUBIC plateaus near the
# window of its last loss), and still finds a limit that was raised.
PAST_CEILING_SLOWDOWN = 10.0
# The ceiling sits this far under the rate where the 429s came (that rate was already over the limit).
CEILING_MARGIN = 0.95
# Growth is counted over at most this long per update: a gate idle for a while has not earned more.
MAX_GROW_S = 1.0
# Never below one call every two seconds: a provider that refuses everything is still probed.
MIN_LEARNED_RPS = 0.5
# A provider over its limit answers 429 to much of what it is sent. A few 429s among many answers are
# incidental (a shared key's neighbours, one node's hiccup, a fault mix): each call retries after its
# Retry-After, but the model is not slowed for them. So a learned rate starts only when at least
# START_SHARE of a model's recent answers (ANSWERED_WINDOW_S) are 429s, and is cut only when at least
# CUT_SHARE are: held there, a learned limit costs under CUT_SHARE of the requests in 429s.
START_SHARE = 0.10
CUT_SHARE = 0.02
# A share means something only over this many recent responses (429s and answers): a 429 answered at
# once while the answers to the calls sent with it are still on their way is 100% of one response.
MIN_RESPONSES = 10


# A learned rate starts only when the 429s among a model's recent responses are too many to be
# incidental: more than a provider answering INCIDENTAL_SHARE of calls 429 at any load would give with
# probability START_ALPHA (an exact one-sided binomial test). A share alone is not enough at small
# counts: a model that gets little traffic (a fallback) sees 10 responses, and one incidental 429
# among them is 10%; a learned rate started on it is then cut by every later incidental 429 (a 20%
# fault mix held a fallback model at 2 requests a second). A provider over its limit fails a large
# share of a burst: 32 calls with 12 429s start it.
INCIDENTAL_SHARE = 0.10
START_ALPHA = 1e-3


def is_rate_limit(share_429: float, *, learned: bool, responses: int = MIN_RESPONSES, calls: int | None = None) -> bool:
    """Whether 429s at this share of a model's recent `responses` say it is over a limit (not
    incidental). `calls`: what the share is of, when more than the responses (the calls still on
    their way count as responses to come)."""
    if responses < MIN_RESPONSES:
        return False
    if learned:
        return share_429 >= CUT_SHARE
    calls = max(calls or responses, responses)
    limited = round(share_429 * calls)
    return share_429 >= START_SHARE and binomial_tail(calls, limited, INCIDENTAL_SHARE) < START_ALPHA


def binomial_tail(n: int, k: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed exactly (in logs) until its terms stop counting."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    total = 0.0
    for i in range(k, n + 1):
        term = math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q)
        total += term
        if i > n * p and term < total * 1e-12:
            break
    return min(1.0, total)


@dataclass(frozen=True, slots=True)
class LearnedRate:
    """A model's learned rate in requests per second (0: a 429 came, the rate is not measured yet),
    when it was last cut or seeded, and when it last grew (wall-clock seconds)."""

    rps: float
    cut_at: float
    grown_at: float
    probing: bool = True  # seeded and not cut yet: grows at PROBE_GROW_SHARE_PER_S
    ceiling: float = 0.0  # the rate at the last cut (0: none yet)


def first_429(*, now: float) -> LearnedRate:
    """A model with no limit got its first 429: it waits, then is seeded (`seed_learned`)."""
    return LearnedRate(0.0, now, now)


def seed_learned(rate: LearnedRate, *, answered_rps: float, now: float) -> tuple[LearnedRate, str]:
    """Hold a model to the rate at which its calls were answered around its first 429."""
    rps = max(MIN_LEARNED_RPS, answered_rps)
    return LearnedRate(
        rps, now, now, True
    ), f"429 with no configured limit: learned {rps * 60:.0f} rpm (the rate answered)"


def after_learned_429(rate: LearnedRate, *, now: float) -> tuple[LearnedRate, str]:
    """A 429 under a learned rate: cut it by LEARN_CUT, unless a cut was made within CUT_GAP_S."""
    if rate.rps <= 0 or now - rate.cut_at < CUT_GAP_S:
        return rate, "429 of a call sent before the last cut"
    rps = max(MIN_LEARNED_RPS, rate.rps * LEARN_CUT)
    ceiling = rate.rps * CEILING_MARGIN
    return LearnedRate(rps, now, now, False, ceiling), f"429: learned rate {rate.rps * 60:.0f} -> {rps * 60:.0f} rpm"


def after_learned_hold(rate: LearnedRate, *, now: float) -> LearnedRate:
    """The learned rate held callers back until `now`: it climbs for the time since it last grew."""
    seconds = min(MAX_GROW_S, now - rate.grown_at)
    if rate.rps <= 0 or seconds <= 0:
        return rate
    share = PROBE_GROW_SHARE_PER_S if rate.probing else GROW_SHARE_PER_S
    if rate.ceiling and rate.rps >= rate.ceiling:
        share /= PAST_CEILING_SLOWDOWN
    return LearnedRate(rate.rps * (1 + share * seconds), rate.cut_at, now, rate.probing, rate.ceiling)

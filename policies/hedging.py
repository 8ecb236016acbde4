"""Hedged calls, as decisions: when a call that has not come back is sent a second time, and
whether the job can afford it.

A call is a straggler when it has been out far longer than the model's calls take: a connection
that hangs until the client's timeout (minutes, by default) holds its item, and at a job's end the
whole job, for all that time. After `hedge_after` (HEDGE_FACTOR times the HEDGE_QUANTILE of the
model's recent service times, never less than HEDGE_FLOOR_S) the same request goes out once more;
the first answer stands and the other call is given up (the engine charges it at its worst case:
it was sent, so it may be billed). That is what the hung call cost anyway, with a retry after
its timeout: a hedge adds spend only when the first call would have answered after all, between
the hedge and the timeout, and it saves the rest of the timeout.

What a hedge may cost is weighed against the saving: at most HEDGE_SHARE of a batch's calls
(plus HEDGE_ALLOWANCE, so a small batch may hedge too) are hedges, none dearer than the same call
on the baseline model, and only on a job whose route saves more than that share of the baseline:
even every hedge wasted is paid for by the saving. Under overload many calls are slow at once: the share keeps hedges from doubling the load
on a provider that is already behind (the breaker and the calls-in-flight window deal with that).

Inputs are plain values: service times in seconds, the client's timeout, counts and prices.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

# At least this many answered calls of the model before its stragglers are judged: fewer say
# nothing about its tail.
MIN_SAMPLES = 20
# A straggler is out HEDGE_FACTOR times longer than this quantile of the model's service times:
# about 1 in 20 calls is slower than the quantile by definition; few are three times slower.
HEDGE_QUANTILE = 0.95
HEDGE_FACTOR = 3.0
# Never hedge a call out for less than this: below it, a hedge saves less than a retry's backoff.
HEDGE_FLOOR_S = 1.0
# A hedge later than this share of the timeout saves too little of it to be worth a call.
TIMEOUT_SHARE = 0.5
# At most this share of a batch's calls are hedges, plus a few (a small batch's stragglers).
HEDGE_SHARE = Decimal("0.05")
HEDGE_ALLOWANCE = 4
# At most this many hedges of one call out at once (a hedge that straggles too is hedged in its turn).
MAX_HEDGES = 2


def hedge_after(service_s: Sequence[float], timeout_s: float) -> float | None:
    """How long a call of a model is out before it is hedged, from its recent service times (in
    seconds, from send to answer); None: not hedged (too few samples, or the hedge would come
    too close to the timeout to save anything)."""
    if len(service_s) < MIN_SAMPLES:
        return None
    ordered = sorted(service_s)
    quantile = ordered[min(len(ordered) - 1, int(HEDGE_QUANTILE * len(ordered)))]
    after = max(HEDGE_FLOOR_S, HEDGE_FACTOR * quantile)
    return after if after <= TIMEOUT_SHARE * timeout_s else None


def hedges_left(*, calls: int, hedged: int) -> int:
    """How many more of a batch's calls may be hedged, given the calls it made and the hedges so far."""
    return max(0, int(HEDGE_SHARE * calls) + HEDGE_ALLOWANCE - hedged)


def worth_hedging(*, call_usd: Decimal, route_usd: Decimal, baseline_usd: Decimal | None) -> bool:
    """Whether a call may be hedged, from worst cases on its item: the call's (`call_usd`), the job's
    route's first stage (`route_usd`: what the item was routed to) and the baseline model's
    (`baseline_usd`). Only when the route saves more than HEDGE_SHARE of the baseline on the item
    (the saving pays for the hedges: at most HEDGE_SHARE of the calls) and the call is no dearer
    than the baseline's (a fallback dearer than the baseline is not hedged). With no baseline there
    is no saving to weigh it against: not hedged."""
    if baseline_usd is None:
        return False
    return call_usd <= baseline_usd and route_usd <= baseline_usd * (1 - HEDGE_SHARE)

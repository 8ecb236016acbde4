"""Table-driven tests for the pure policies: Wilson bounds and cheapest-qualifying choice."""

from __future__ import annotations

import itertools
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from policies.cheapest_qualifying import choose_model
from policies.confidence import wilson_lower_bound, wilson_upper_bound
from policies.types import Candidate, JobProfile, QualityEstimate, Verdict


def prior(value: float, source: str = "catalog") -> QualityEstimate:
    return QualityEstimate(value=value, n=None, source=source)


def measured(value: float, n: int, source: str = "eval") -> QualityEstimate:
    return QualityEstimate(value=value, n=n, source=source)


def cand(model_id: str, input_usd: str = "1", output_usd: str | None = None, **overrides: Any) -> Candidate:
    """A candidate that qualifies under job() defaults; output price defaults to the input price."""
    fields: dict[str, Any] = {
        "model_id": model_id,
        "provider": "acme",
        "input_usd_per_mtok": Decimal(input_usd),
        "output_usd_per_mtok": Decimal(output_usd if output_usd is not None else input_usd),
        "context_window": 128_000,
        "region": "eu",
        "open_weight": False,
        "quality": prior(0.95),
    }
    fields.update(overrides)
    return Candidate(**fields)


def job(**overrides: Any) -> JobProfile:
    # 1M input tokens and 1,000 x 100 = 100k output tokens: with cand() defaults a job costs 1.1 x its price.
    fields: dict[str, Any] = {
        "task": "classify",
        "min_quality": 0.9,
        "n_items": 1_000,
        "total_input_tokens": 1_000_000,
        "max_input_tokens": 2_000,
        "output_tokens_per_item": 100,
    }
    fields.update(overrides)
    return JobProfile(**fields)


def verdict_of(verdicts: tuple[Verdict, ...], model_id: str) -> Verdict:
    (found,) = [v for v in verdicts if v.model_id == model_id]
    return found


# --- Wilson bounds -----------------------------------------------------------------------------


# Reference values from the closed form with z = 1.959964 (two-sided 95%) and z = 2.575829 (99%),
# cross-checked against statsmodels' proportion_confint(method="wilson").
@pytest.mark.parametrize(
    ("mean", "n", "confidence", "lower", "upper"),
    [
        (0.9, 100, 0.95, 0.8256, 0.9448),
        (0.5, 100, 0.95, 0.4038, 0.5962),
        (0.9, 100, 0.99, 0.7962, 0.9540),
        (1.0, 10, 0.95, 0.7225, 1.0),
        (0.0, 10, 0.95, 0.0, 0.2775),
        (0.91, 200, 0.95, 0.8622, 0.9423),
        (0.7, 0, 0.95, 0.0, 1.0),  # no samples: no information
    ],
)
def test_wilson_bounds(mean: float, n: int, confidence: float, lower: float, upper: float) -> None:
    assert wilson_lower_bound(mean, n, confidence) == pytest.approx(lower, abs=5e-5)
    assert wilson_upper_bound(mean, n, confidence) == pytest.approx(upper, abs=5e-5)


def test_wilson_default_is_two_sided_95() -> None:
    assert wilson_lower_bound(0.9, 100) == wilson_lower_bound(0.9, 100, 0.95)
    # One-sided 95% (z = 1.645) would give 0.8402; we must be the more conservative 0.8256.
    assert wilson_lower_bound(0.9, 100) < 0.83


@pytest.mark.parametrize(
    ("mean", "n", "confidence"),
    [(-0.01, 10, 0.95), (1.01, 10, 0.95), (0.5, -1, 0.95), (0.5, 10, 0.0), (0.5, 10, 1.0)],
)
def test_wilson_rejects_invalid_input(mean: float, n: int, confidence: float) -> None:
    with pytest.raises(ValueError):
        wilson_lower_bound(mean, n, confidence)
    with pytest.raises(ValueError):
        wilson_upper_bound(mean, n, confidence)


# --- choosing ----------------------------------------------------------------------------------


def test_a_chat_job_needs_no_estimate() -> None:
    """A chat job's answers are not measured: with no bar, the cheapest model meeting the constraints
    runs it, estimate or none; any other task still needs an estimate at bar 0."""
    pool = [cand("a", "2", quality=prior(0.0)), cand("b", "1", quality=None)]
    decision = choose_model(replace(job(min_quality=0.0), task="chat"), pool)
    assert decision.model_id == "b" and "no quality bar" in decision.summary
    assert choose_model(job(min_quality=0.0), pool).model_id == "a"


@pytest.mark.parametrize(
    ("candidates", "min_quality", "expected"),
    [
        # cheapest of those above the bar wins
        ([cand("a", "3"), cand("b", "1"), cand("c", "2")], 0.9, "b"),
        # the cheapest is below the bar, the next one is chosen
        ([cand("a", "3"), cand("b", "1", quality=prior(0.85)), cand("c", "2")], 0.9, "c"),
        # output price matters as well as input price: b costs 1 + 10/10 = 2, c costs 1.5 + 1/10 = 1.6
        ([cand("b", "1", "10"), cand("c", "1.5", "1")], 0.9, "c"),
        # a prior exactly on the bar qualifies
        ([cand("a", "2"), cand("b", "1", quality=prior(0.9))], 0.9, "b"),
        # a bar of 0 admits anything with an estimate, not a missing one
        ([cand("a", "2", quality=prior(0.0)), cand("b", "1", quality=None)], 0.0, "a"),
    ],
)
def test_cheapest_qualifying_is_chosen(candidates: list[Candidate], min_quality: float, expected: str) -> None:
    decision = choose_model(job(min_quality=min_quality), candidates)
    assert decision.ok
    assert decision.model_id == expected
    assert decision.expected_cost_usd == verdict_of(decision.verdicts, expected).expected_cost_usd
    assert verdict_of(decision.verdicts, expected).qualifies


@pytest.mark.parametrize(
    ("quality", "qualifies", "bound", "reason"),
    [
        (prior(0.92, "catalog 2025-06"), True, 0.92, "quality 0.920 (prior: catalog 2025-06) >= bar 0.900"),
        (prior(0.88, "catalog 2025-06"), False, 0.88, "quality 0.880 (prior: catalog 2025-06) < bar 0.900"),
        # mean above the bar, but on 100 items the lower bound is not
        (
            measured(0.92, 100, "eval run 7"),
            False,
            0.8500,
            "quality lower bound 0.850 (mean 0.920, n=100, 95% Wilson; eval run 7) < bar 0.900",
        ),
        # the same mean on 2,000 items is convincing
        (
            measured(0.92, 2_000, "eval run 8"),
            True,
            0.9073,
            "quality lower bound 0.907 (mean 0.920, n=2,000, 95% Wilson; eval run 8) >= bar 0.900",
        ),
        (None, False, None, "no quality estimate for task classify"),
    ],
)
def test_prior_vs_measured_quality(
    quality: QualityEstimate | None, qualifies: bool, bound: float | None, reason: str
) -> None:
    decision = choose_model(job(), [cand("m", quality=quality)])
    (verdict,) = decision.verdicts
    assert verdict.meets_constraints  # quality never affects constraints or cost
    assert verdict.expected_cost_usd is not None
    assert verdict.qualifies is qualifies
    assert decision.model_id == ("m" if qualifies else None)
    assert verdict.quality_bound == (None if bound is None else pytest.approx(bound, abs=1e-4))
    assert reason in verdict.reasons


def test_measured_bound_uses_profile_confidence() -> None:
    candidate = cand("m", quality=measured(0.95, 300))  # lower bound 0.919 at 95%, 0.908 at 99%
    assert choose_model(job(min_quality=0.915, confidence=0.95), [candidate]).ok
    decision = choose_model(job(min_quality=0.915, confidence=0.99), [candidate])
    assert not decision.ok
    assert "99% Wilson" in decision.verdicts[0].reasons[-1]


@pytest.mark.parametrize(
    ("excluded", "profile", "reason"),
    [
        (
            cand("x", "0.1", region="us"),
            job(regions=frozenset({"eu"})),
            "region us not in allowed regions [eu]",
        ),
        (
            cand("x", "0.1", provider="openai"),
            job(allowed_providers=frozenset({"mistral", "acme"})),
            "provider openai not in allowed providers [acme, mistral]",
        ),
        (
            cand("x", "0.1"),
            job(allowed_models=frozenset({"ok", "other"})),
            "model x not in allowed models [ok, other]",
        ),
        (
            cand("x", "0.1", context_window=32_768),
            job(max_input_tokens=50_000, output_tokens_per_item=112),
            "context window 32,768 tokens < longest item 50,112 tokens (50,000 input + 112 output)",
        ),
        (
            # one token short: the output must fit too
            cand("x", "0.1", context_window=50_111),
            job(max_input_tokens=50_000, output_tokens_per_item=112),
            "context window 50,111 tokens < longest item 50,112 tokens (50,000 input + 112 output)",
        ),
        (
            cand("x", "0.1", unavailable_reason="no API key: set MISTRAL_API_KEY"),
            job(),
            "unavailable: no API key: set MISTRAL_API_KEY",
        ),
    ],
)
def test_constraint_exclusions(excluded: Candidate, profile: JobProfile, reason: str) -> None:
    # "x" is ten times cheaper than "ok", so it would win if the constraint were ignored.
    decision = choose_model(profile, [excluded, cand("ok", "1", context_window=None)])
    assert decision.model_id == "ok"
    verdict = verdict_of(decision.verdicts, "x")
    assert not verdict.meets_constraints
    assert not verdict.qualifies
    assert verdict.expected_cost_usd is None
    assert reason in verdict.reasons
    assert decision.baseline_model_id == "ok"  # excluded models are no baseline either
    assert decision.verdicts[-1].model_id == "x"  # unpriced verdicts come last


@pytest.mark.parametrize(
    ("context_window", "fits", "note"),
    [
        (50_112, True, None),  # exactly enough
        (None, True, "context window unknown; assumed to fit the longest item (50,112 tokens)"),
    ],
)
def test_context_fits(context_window: int | None, fits: bool, note: str | None) -> None:
    decision = choose_model(
        job(max_input_tokens=50_000, output_tokens_per_item=112), [cand("m", context_window=context_window)]
    )
    (verdict,) = decision.verdicts
    assert verdict.meets_constraints is fits
    assert decision.model_id == "m"
    if note is not None:
        assert note in verdict.reasons
    assert not any(r.startswith("context window") and "<" in r for r in verdict.reasons)


def test_no_constraint_when_none() -> None:
    candidate = cand("m", provider="anyone", region="mars")
    decision = choose_model(job(allowed_providers=None, allowed_models=None, regions=None), [candidate])
    assert decision.model_id == "m"
    assert decision.verdicts[0].reasons == ("quality 0.950 (prior: catalog) >= bar 0.900",)


def test_nothing_qualifies_gives_a_reason_per_candidate() -> None:
    candidates = [
        cand("weak", "1", quality=prior(0.95)),
        cand("unsure", "2", quality=measured(0.995, 50)),
        cand("unknown", "3", quality=None),
        cand("far", "0.5", region="us", quality=prior(0.999)),
        cand("keyless", "0.5", unavailable_reason="no API key: set X_API_KEY"),
    ]
    decision = choose_model(job(min_quality=0.99, regions=frozenset({"eu"})), candidates)
    assert not decision.ok
    assert decision.model_id is None
    assert decision.expected_cost_usd is None
    assert len(decision.verdicts) == len(candidates)
    expected_reasons = {
        "weak": "quality 0.950 (prior: catalog) < bar 0.990",
        "unsure": "quality lower bound 0.920 (mean 0.995, n=50, 95% Wilson; eval) < bar 0.990",
        "unknown": "no quality estimate for task classify",
        "far": "region us not in allowed regions [eu]",
        "keyless": "unavailable: no API key: set X_API_KEY",
    }
    for model_id, reason in expected_reasons.items():
        verdict = verdict_of(decision.verdicts, model_id)
        assert not verdict.qualifies
        assert reason in verdict.reasons
    # Baseline still exists: the most expensive model meeting the constraints.
    assert decision.baseline_model_id == "unknown"
    assert decision.summary == (
        "No model qualifies for bar 0.990 (task classify, 5 candidates): 1 unavailable, "
        "1 outside the allowed regions, 1 without a quality estimate, 3 below the quality bar. "
        "Best quality meeting the constraints: weak at 0.950."
    )


def test_no_candidates() -> None:
    decision = choose_model(job(), [])
    assert decision.model_id is None
    assert decision.baseline_model_id is None
    assert decision.verdicts == ()
    assert decision.summary == "No model qualifies for bar 0.900 (task classify): no candidates."


@pytest.mark.parametrize(
    ("candidates", "baseline", "baseline_cost"),
    [
        # most expensive meeting constraints, even though it is below the bar
        ([cand("cheap", "1"), cand("pricey", "10", quality=prior(0.5)), cand("mid", "5")], "pricey", "11"),
        # a dearer model that fails a constraint is not the baseline
        ([cand("cheap", "1"), cand("mid", "5"), cand("far", "50", region="us")], "mid", "5.5"),
        # equal costs: smallest model_id
        ([cand("cheap", "1"), cand("zeta", "5"), cand("alpha", "5")], "alpha", "5.5"),
    ],
)
def test_baseline_is_most_expensive_meeting_constraints(
    candidates: list[Candidate], baseline: str, baseline_cost: str
) -> None:
    decision = choose_model(job(regions=frozenset({"eu"})), candidates)
    assert decision.model_id == "cheap"
    assert decision.baseline_model_id == baseline
    assert decision.baseline_cost_usd == Decimal(baseline_cost)


@pytest.mark.parametrize(
    ("profile", "input_usd", "output_usd", "cost"),
    [
        # 1,234,567 x 0.15 + 1,000 x 37 x 0.6 = 185,185.05 + 22,200 = 207,385.05 per million
        (
            job(n_items=1_000, total_input_tokens=1_234_567, output_tokens_per_item=37),
            "0.15",
            "0.6",
            "0.20738505",
        ),
        # 3 x 0.1 is 0.30000000000000004 in float; Decimal keeps it exact
        (job(n_items=0, total_input_tokens=3, output_tokens_per_item=0), "0.1", "0.3", "0.0000003"),
        # 10,000 items, 5M input tokens at $2.50, 200 output each at $10: $12.50 + $20.00
        (job(n_items=10_000, total_input_tokens=5_000_000, output_tokens_per_item=200), "2.50", "10.00", "32.50"),
        (job(n_items=0, total_input_tokens=0), "2.50", "10.00", "0"),
    ],
)
def test_expected_cost_is_exact_decimal(profile: JobProfile, input_usd: str, output_usd: str, cost: str) -> None:
    decision = choose_model(profile, [cand("m", input_usd, output_usd)])
    assert isinstance(decision.expected_cost_usd, Decimal)
    assert decision.expected_cost_usd == Decimal(cost)
    assert decision.baseline_cost_usd == Decimal(cost)


def test_tie_on_cost_prefers_higher_quality_bound() -> None:
    candidates = [cand("a", "1", quality=prior(0.92)), cand("b", "1", quality=prior(0.97))]
    for order in itertools.permutations(candidates):
        assert choose_model(job(), list(order)).model_id == "b"


def test_full_tie_is_broken_by_model_id_whatever_the_input_order() -> None:
    candidates = [cand("m-c"), cand("m-a"), cand("m-b")]
    outcomes = {choose_model(job(), list(order)) for order in itertools.permutations(candidates)}
    assert len(outcomes) == 1  # same Decision, verdict order included
    (decision,) = outcomes
    assert decision.model_id == "m-a"
    assert [v.model_id for v in decision.verdicts] == ["m-a", "m-b", "m-c"]


def test_verdicts_are_in_ascending_cost_order_unpriced_last() -> None:
    candidates = [
        cand("d", "4"),
        cand("gone", "0.1", unavailable_reason="down"),
        cand("b", "2", quality=None),
        cand("a", "1"),
        cand("c", "3"),
    ]
    decision = choose_model(job(), candidates)
    assert [v.model_id for v in decision.verdicts] == ["a", "b", "c", "d", "gone"]
    costs = [v.expected_cost_usd for v in decision.verdicts]
    assert costs == [Decimal("1.1"), Decimal("2.2"), Decimal("3.3"), Decimal("4.4"), None]


@pytest.mark.parametrize(
    ("candidates", "summary"),
    [
        (
            [
                cand("mistral-medium-3-1", "0.4", "2", quality=prior(0.92)),
                cand("gpt-4o", "2.5", "10"),
                cand("mini", "1", "4"),
            ],
            "mistral-medium-3-1 is the cheapest of 3 qualifying models at an expected $2.40 for 10,000 items "
            "(quality 0.920 prior >= bar 0.900); baseline gpt-4o would cost $14.50 (saving $12.10).",
        ),
        (
            [cand("solo", "0.4", "2", quality=measured(0.97, 2_000))],
            "solo is the only qualifying model at an expected $2.40 for 10,000 items "
            "(quality lower bound 0.962, n=2,000 >= bar 0.900); "
            "it is also the most expensive model meeting the constraints, so nothing is saved.",
        ),
        (
            [cand("tiny", "0.000001", "0.000001"), cand("big", "0.000002", "0.000002", quality=prior(0.5))],
            "tiny is the only qualifying model at an expected $0.0000052 for 10,000 items "
            "(quality 0.950 prior >= bar 0.900); baseline big would cost $0.000010 (saving $0.0000052).",
        ),
    ],
)
def test_summary(candidates: list[Candidate], summary: str) -> None:
    # 10,000 items, 5M input tokens, 20 output tokens each.
    profile = job(n_items=10_000, total_input_tokens=5_000_000, output_tokens_per_item=20)
    assert choose_model(profile, candidates).summary == summary


def test_reason_shows_more_decimals_when_three_would_hide_the_gap() -> None:
    decision = choose_model(job(min_quality=0.9), [cand("m", quality=prior(0.8996))])
    assert "quality 0.8996 (prior: catalog) < bar 0.9000" in decision.verdicts[0].reasons


@pytest.mark.parametrize(
    "profile",
    [
        job(min_quality=-0.01),
        job(min_quality=1.01),
        job(min_quality=float("nan")),
        job(n_items=-1),
        job(total_input_tokens=-1),
        job(confidence=1.0),
    ],
)
def test_invalid_profile_raises(profile: JobProfile) -> None:
    with pytest.raises(ValueError):
        choose_model(profile, [cand("m")])


def test_bar_bounds_are_valid() -> None:
    assert choose_model(job(min_quality=0.0), [cand("m")]).ok
    assert choose_model(job(min_quality=1.0), [cand("m", quality=prior(1.0))]).ok
    assert not choose_model(job(min_quality=1.0), [cand("m", quality=measured(1.0, 10_000))]).ok


@pytest.mark.parametrize(
    ("share", "responses", "learned", "limit"),
    [
        (0.05, 400, False, False),
        (0.12, 400, False, False),  # a little over the incidental share, but not surely
        (0.1, 10, False, False),  # one 429 among a fallback model's 10 responses
        (0.3, 10, False, False),
        (0.6, 10, False, True),
        (12 / 32, 32, False, True),  # a first burst of 32 calls into a limit
        (0.2, 400, False, True),
        (0.01, 400, True, False),
        (0.05, 400, True, True),
    ],
)
def test_a_few_429s_among_many_answers_are_incidental(share: float, responses: int, learned: bool, limit: bool) -> None:
    """A 20% fault mix answers 429 to 5% of calls: that is not a rate limit to learn (it collapsed one)."""
    from policies.rate_adapt import is_rate_limit

    assert is_rate_limit(share, learned=learned, responses=responses) is limit


def test_incidental_429s_of_a_small_model_start_no_learned_rate() -> None:
    """A model answering 5% 429s at random, judged on every 429 over windows of 10 to 60 responses:
    its learned rate starts in well under 1% of 2,000 simulated windows."""
    import random

    from policies.rate_adapt import is_rate_limit

    rng = random.Random(7)
    starts = 0
    for _ in range(2000):
        n = rng.randint(10, 60)
        k = sum(rng.random() < 0.05 for _ in range(n))
        starts += is_rate_limit(k / n, learned=False, responses=n)
    assert starts <= 2


def test_binomial_tail_matches_the_sum() -> None:
    from math import comb

    from policies.rate_adapt import binomial_tail

    for n, k, p in ((10, 3, 0.1), (32, 12, 0.1), (50, 0, 0.3), (20, 21, 0.5), (400, 80, 0.1)):
        exact = sum(comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1)) if k <= n else 0.0
        assert binomial_tail(n, k, p) == pytest.approx(exact, rel=1e-9, abs=1e-300)


def test_a_first_429_before_the_answers_come_in_is_not_a_rate_limit() -> None:
    """429s come back at once, answers after their latency: the first 429 of a burst is 100% of one
    response. A share is judged over MIN_RESPONSES responses, so it does not start a learned rate."""
    from policies.rate_adapt import MIN_RESPONSES, is_rate_limit

    assert not is_rate_limit(1.0, learned=False, responses=1)
    assert not is_rate_limit(0.5, learned=True, responses=MIN_RESPONSES - 1)
    assert is_rate_limit(0.6, learned=False, responses=MIN_RESPONSES)


def test_a_learned_rate_grows_slowly_past_the_rate_of_its_last_cut() -> None:
    """After a cut, the learned rate climbs back at GROW_SHARE_PER_S to just under where the 429s came
    (its ceiling), then PAST_CEILING_SLOWDOWN times slower: it stays near the limit, not over it."""
    from policies.rate_adapt import (
        CEILING_MARGIN,
        GROW_SHARE_PER_S,
        LEARN_CUT,
        PAST_CEILING_SLOWDOWN,
        LearnedRate,
        after_learned_429,
        after_learned_hold,
    )

    cut, _ = after_learned_429(LearnedRate(20.0, 0.0, 0.0, probing=True), now=100.0)
    assert cut.rps == pytest.approx(20.0 * LEARN_CUT) and cut.ceiling == pytest.approx(20.0 * CEILING_MARGIN)
    assert not cut.probing
    below = after_learned_hold(cut, now=101.0)
    assert below.rps == pytest.approx(cut.rps * (1 + GROW_SHARE_PER_S))
    at = replace_rate(cut, rps=cut.ceiling)
    past = after_learned_hold(at, now=101.0)
    assert past.rps == pytest.approx(at.rps * (1 + GROW_SHARE_PER_S / PAST_CEILING_SLOWDOWN))


def replace_rate(rate: Any, **changes: Any) -> Any:
    from dataclasses import replace

    return replace(rate, **changes)

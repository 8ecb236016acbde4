"""Choose the cheapest model whose quality clears the job's bar and that meets its constraints.

A candidate *meets the constraints* when it is available, its provider, model and region are
allowed, and its context window fits the longest item. It *qualifies* when it also clears the
quality bar: a prior (n is None) is compared as is, a measured mean by its Wilson lower bound at
the profile's confidence. Among qualifying models the lowest expected cost wins; ties go to the
higher quality bound, then to the smaller model_id. The baseline is the most expensive model that
meets the constraints, whatever its quality, so callers can report savings against it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal, Inexact, localcontext
from enum import Enum

from policies.confidence import wilson_lower_bound
from policies.types import Candidate, Decision, JobProfile, Verdict

_TOKENS_PER_MTOK = 1_000_000  # prices are quoted per million tokens
_MONEY_PRECISION = 60  # significant digits: far beyond any real token count times price


class _Exclusion(Enum):
    """Why a candidate was turned down; the value is how the summary counts it."""

    UNAVAILABLE = "unavailable"
    PROVIDER = "from a provider not allowed"
    MODEL = "not in the allowed models"
    REGION = "outside the allowed regions"
    CONTEXT = "with too small a context window"
    NO_ESTIMATE = "without a quality estimate"
    QUALITY = "below the quality bar"


def choose_model(profile: JobProfile, candidates: Sequence[Candidate]) -> Decision:
    """Judge every candidate against `profile` and pick the cheapest one that qualifies.

    Returns a Decision whose verdicts are in ascending expected-cost order (candidates
    without a cost, i.e. not meeting the constraints, last). When nothing qualifies,
    `model_id` is None and the summary counts the reasons. Raises ValueError only for
    an invalid profile (bar outside [0, 1], negative sizes, confidence outside (0, 1)).
    """
    _check_profile(profile)
    judged = [_judge(profile, candidate) for candidate in candidates]
    verdicts = tuple(sorted((verdict for verdict, _ in judged), key=_table_order))

    priced = [v for v in verdicts if v.expected_cost_usd is not None]
    qualifying = [v for v in priced if v.qualifies]
    chosen = min(qualifying, key=_choice_order, default=None)
    # Most expensive; among equal costs the smallest model_id, like every other tie here.
    baseline = min(priced, key=lambda v: (-_cost(v), v.model_id), default=None)

    if chosen is None:
        summary = _summary_none(profile, judged)
    else:
        chosen_candidate = next(c for c, (v, _) in zip(candidates, judged, strict=True) if v is chosen)
        summary = _summary_chosen(profile, chosen, chosen_candidate, len(qualifying), baseline)
    return Decision(
        model_id=chosen.model_id if chosen else None,
        expected_cost_usd=chosen.expected_cost_usd if chosen else None,
        baseline_model_id=baseline.model_id if baseline else None,
        baseline_cost_usd=baseline.expected_cost_usd if baseline else None,
        verdicts=verdicts,
        summary=summary,
    )


def expected_cost_usd(profile: JobProfile, candidate: Candidate) -> Decimal:
    """The whole job's expected cost on `candidate`, exact: no float and no rounding."""
    with localcontext() as ctx:
        ctx.prec = _MONEY_PRECISION
        ctx.traps[Inexact] = True  # rounding money silently would be a bug; make it loud
        input_usd = profile.total_input_tokens * candidate.input_usd_per_mtok
        output_tokens = profile.n_items * (profile.output_tokens_per_item + candidate.thinking_tokens_per_item)
        output_usd = output_tokens * candidate.output_usd_per_mtok
        return (input_usd + output_usd) / _TOKENS_PER_MTOK


def _check_profile(profile: JobProfile) -> None:
    if not 0.0 <= profile.min_quality <= 1.0:
        raise ValueError(f"min_quality must be in [0, 1], got {profile.min_quality!r}")
    if not 0.0 < profile.confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {profile.confidence!r}")
    sizes = {
        "n_items": profile.n_items,
        "total_input_tokens": profile.total_input_tokens,
        "max_input_tokens": profile.max_input_tokens,
        "output_tokens_per_item": profile.output_tokens_per_item,
    }
    for name, value in sizes.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")


def _judge(profile: JobProfile, candidate: Candidate) -> tuple[Verdict, frozenset[_Exclusion]]:
    """One candidate's verdict, with every reason, and the kinds of exclusion it hit."""
    reasons: list[str] = []
    excluded: set[_Exclusion] = set()

    def exclude(kind: _Exclusion, reason: str) -> None:
        excluded.add(kind)
        reasons.append(reason)

    if candidate.unavailable_reason is not None:
        exclude(_Exclusion.UNAVAILABLE, f"unavailable: {candidate.unavailable_reason}")
    if profile.allowed_providers is not None and candidate.provider not in profile.allowed_providers:
        exclude(
            _Exclusion.PROVIDER,
            f"provider {candidate.provider} not in allowed providers {_listing(profile.allowed_providers)}",
        )
    if profile.allowed_models is not None and candidate.model_id not in profile.allowed_models:
        exclude(
            _Exclusion.MODEL,
            f"model {candidate.model_id} not in allowed models {_listing(profile.allowed_models)}",
        )
    if profile.regions is not None and candidate.region not in profile.regions:
        exclude(
            _Exclusion.REGION,
            f"region {candidate.region} not in allowed regions {_listing(profile.regions)}",
        )

    output_per_item = profile.output_tokens_per_item + candidate.thinking_tokens_per_item
    needed = profile.max_input_tokens + output_per_item
    if candidate.context_window is None:
        reasons.append(f"context window unknown; assumed to fit the longest item ({needed:,} tokens)")
    elif candidate.context_window < needed:
        thinking = (
            f", {candidate.thinking_tokens_per_item:,} of it thinking" if candidate.thinking_tokens_per_item else ""
        )
        exclude(
            _Exclusion.CONTEXT,
            f"context window {candidate.context_window:,} tokens < longest item {needed:,} tokens "
            f"({profile.max_input_tokens:,} input + {output_per_item:,} output{thinking})",
        )
    if candidate.thinking_tokens_per_item:
        reasons.append(
            f"thinks up to {candidate.thinking_tokens_per_item:,} tokens per item, billed as output and counted in its cost"
        )

    bound, quality_reason, clears_bar = _quality(profile, candidate)
    if clears_bar:
        reasons.append(quality_reason)
    else:
        exclude(_Exclusion.QUALITY if bound is not None else _Exclusion.NO_ESTIMATE, quality_reason)

    meets_constraints = not (excluded - {_Exclusion.QUALITY, _Exclusion.NO_ESTIMATE})
    verdict = Verdict(
        model_id=candidate.model_id,
        provider=candidate.provider,
        meets_constraints=meets_constraints,
        qualifies=meets_constraints and clears_bar,
        quality_bound=bound,
        expected_cost_usd=expected_cost_usd(profile, candidate) if meets_constraints else None,
        reasons=tuple(reasons),
    )
    return verdict, frozenset(excluded)


# Tasks whose answers are not measured (a chat item is sent as written: there is no right answer to
# score), so their jobs have no bar and a model needs no estimate. Other tasks need one even at bar 0.
UNMEASURED_TASKS = frozenset({"chat"})


def _quality(profile: JobProfile, candidate: Candidate) -> tuple[float | None, str, bool]:
    """The value compared with the bar, a reason saying how it compared, and whether it clears it."""
    quality = candidate.quality
    bar = profile.min_quality
    if quality is None:
        if profile.task in UNMEASURED_TASKS and bar <= 0:  # no bar can be asked: any model clears it
            return None, "no quality bar: quality not measured", True
        return None, f"no quality estimate for task {profile.task}", False
    if quality.n is None:
        bound = quality.value
        shown_bound, shown_bar = _two_numbers(bound, bar)
        described = f"quality {shown_bound} (prior: {quality.source})"
    elif quality.lower is not None:
        bound = quality.lower
        shown_bound, shown_bar = _two_numbers(bound, bar)
        described = (
            f"quality lower bound {shown_bound} (mean {quality.value:.3f}, n={quality.n:,}, "
            f"{_percent(profile.confidence)} one-sided anytime-valid; {quality.source})"
        )
    else:
        bound = wilson_lower_bound(quality.value, quality.n, profile.confidence)
        shown_bound, shown_bar = _two_numbers(bound, bar)
        described = (
            f"quality lower bound {shown_bound} (mean {quality.value:.3f}, n={quality.n:,}, "
            f"{_percent(profile.confidence)} Wilson; {quality.source})"
        )
    clears_bar = bound >= bar
    return bound, f"{described} {'>=' if clears_bar else '<'} bar {shown_bar}", clears_bar


def _summary_chosen(
    profile: JobProfile, chosen: Verdict, candidate: Candidate, n_qualifying: int, baseline: Verdict | None
) -> str:
    which = "the only qualifying model" if n_qualifying == 1 else f"the cheapest of {n_qualifying} qualifying models"
    text = f"{chosen.model_id} is {which} at an expected {_usd(_cost(chosen))} for {profile.n_items:,} items"
    if chosen.quality_bound is None:  # qualifying without an estimate: no bar was asked
        text += " (no quality bar);"
    else:
        shown_bound, shown_bar = _two_numbers(chosen.quality_bound, profile.min_quality)
        n = candidate.quality.n if candidate.quality is not None else None
        quality = f"quality {shown_bound} prior" if n is None else f"quality lower bound {shown_bound}, n={n:,}"
        text += f" ({quality} >= bar {shown_bar});"
    if baseline is None or baseline.model_id == chosen.model_id:
        return f"{text} it is also the most expensive model meeting the constraints, so nothing is saved."
    saving = _cost(baseline) - _cost(chosen)
    return f"{text} baseline {baseline.model_id} would cost {_usd(_cost(baseline))} (saving {_usd(saving)})."


def _summary_none(profile: JobProfile, judged: Sequence[tuple[Verdict, frozenset[_Exclusion]]]) -> str:
    # A bar of 0 is a check of the constraints alone (a job that calibrates has its bar judged later).
    head = (
        f"No model qualifies for bar {profile.min_quality:.3f}"
        if profile.min_quality
        else "No model meets the constraints"
    )
    if not judged:
        return f"{head} (task {profile.task}): no candidates."
    counts = [
        f"{sum(kind in kinds for _, kinds in judged)} {kind.value}"
        for kind in _Exclusion
        if any(kind in kinds for _, kinds in judged)
    ]
    text = f"{head} (task {profile.task}, {len(judged)} candidates): {', '.join(counts)}."
    meeting = [v for v, _ in judged if v.meets_constraints and v.quality_bound is not None]
    if meeting:
        best = min(meeting, key=lambda v: (-(v.quality_bound or 0.0), v.model_id))
        text += f" Best quality meeting the constraints: {best.model_id} at {best.quality_bound:.3f}."
    return text


def _cost(verdict: Verdict) -> Decimal:
    if verdict.expected_cost_usd is None:
        raise ValueError(f"{verdict.model_id} has no expected cost")  # only priced verdicts get here
    return verdict.expected_cost_usd


def _choice_order(verdict: Verdict) -> tuple[Decimal, float, str]:
    """Cheapest first, then the higher quality bound, then model_id for determinism."""
    return _cost(verdict), -(verdict.quality_bound or 0.0), verdict.model_id


def _table_order(verdict: Verdict) -> tuple[bool, Decimal, bool, float, str]:
    """Ascending cost, unpriced last; among equal costs qualifying first, in choice order."""
    cost = verdict.expected_cost_usd
    bound = verdict.quality_bound if verdict.quality_bound is not None else -1.0
    return cost is None, cost if cost is not None else Decimal(0), not verdict.qualifies, -bound, verdict.model_id


def _listing(names: Iterable[str]) -> str:
    return f"[{', '.join(sorted(names))}]"


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def _two_numbers(a: float, b: float) -> tuple[str, str]:
    """Show a and b with 3 decimals, or more (up to 6) if 3 would make unequal numbers look equal."""
    shown_a, shown_b = f"{a:.3f}", f"{b:.3f}"
    for places in range(4, 7):
        if shown_a != shown_b or a == b:
            break
        shown_a, shown_b = f"{a:.{places}f}", f"{b:.{places}f}"
    return shown_a, shown_b


def _usd(amount: Decimal) -> str:
    """Dollars with cents and thousands separators; sub-cent amounts keep two significant digits."""
    if amount == 0 or abs(amount) >= Decimal("0.01"):
        return f"${amount:,.2f}"
    digits = amount.quantize(Decimal(1).scaleb(amount.adjusted() - 1))
    return f"${digits:f}"

"""Calibration, as a decision: which model to test next on the job's sample, and when to stop.

Cheapest first, a slice at a time. After each slice a model's Wilson interval (two-sided, 95% by
default, policies/confidence.py) decides: a lower bound at or above the bar chooses it and ends the
search; an upper bound below the bar drops it; otherwise it answers the next slice. A model still
undecided on the whole sample is passed over; if no model is chosen, the answer says how many more
labelled items would decide the most promising one, or that no model can meet the bar.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.confidence import wilson_lower_bound, wilson_upper_bound


@dataclass(frozen=True, slots=True)
class CalibrationStep:
    kind: str  # test | chosen | need_more | none
    model_id: str | None
    n_items: int
    reason: str


def next_step(
    *,
    models: tuple[str, ...],
    counts: dict[str, tuple[int, int]],
    sample_size: int,
    bar: float,
    confidence: float,
    slice_size: int,
) -> CalibrationStep:
    """Cheapest first: test a model a slice at a time until its bound clears the bar (chosen) or its
    upper bound falls below it (dropped); a model undecided on the whole sample is passed over.

    Looking after every slice gives chance more than one try; so the error allowed, 1 - confidence,
    is shared out over the looks a model can get (Bonferroni): with a 200-item sample in slices of 50,
    each look uses a 98.75% interval, and stopping early does not weaken the 95% the user asked for.
    """
    looks = max(1, -(-sample_size // slice_size))
    confidence = 1 - (1 - confidence) / looks
    undecided: list[tuple[str, int, int]] = []
    for model_id in models:
        n, k = counts.get(model_id, (0, 0))
        mean = k / n if n else 0.0
        lower, upper = wilson_lower_bound(mean, n, confidence), wilson_upper_bound(mean, n, confidence)
        if n and lower >= bar:
            return CalibrationStep(
                "chosen", model_id, 0, f"{model_id}: {k}/{n} right, lower bound {lower:.3f} >= bar {bar:.3f}"
            )
        if n and upper < bar:
            continue
        if n < sample_size:
            return CalibrationStep(
                "test", model_id, min(slice_size, sample_size - n), f"{model_id}: undecided at {k}/{n}"
            )
        undecided.append((model_id, n, k))
    if undecided:
        model_id, n, k = max(undecided, key=lambda u: u[2] / u[1])
        mean = k / n
        more = _items_needed(mean, n, bar, confidence)
        lower, upper = wilson_lower_bound(mean, n, confidence), wilson_upper_bound(mean, n, confidence)
        if mean > bar:
            outcome = f"about {more} more labelled items would decide it"
        elif mean < bar:
            outcome = f"its rate is below the bar: about {more} more labelled items would rule it out"
        else:
            outcome = "its rate sits exactly at the bar: more labelled items may decide it either way"
        return CalibrationStep(
            "need_more",
            model_id,
            more,
            (
                f"the sample of {sample_size} items cannot decide: {model_id} got {k}/{n} right "
                f"(bound {lower:.3f} < bar {bar:.3f} <= {upper:.3f}); {outcome}"
            ),
        )
    detail = (
        "; ".join(f"{m}: {counts[m][1]}/{counts[m][0]}" for m in models if m in counts) or "no model could be tested"
    )
    return CalibrationStep("none", None, 0, f"no model meets the bar {bar:.3f} on this job's sample ({detail})")


def _items_needed(mean: float, n: int, bar: float, confidence: float) -> int:
    """More items, at the same rate, for the interval to leave the bar: the lower bound rising above
    it (rate above the bar) or the upper bound falling below it (rate below); 0 when the rate is the bar."""
    if mean == bar:
        return 0
    total = max(n, 1)
    while total < 1_000_000:
        lower, upper = wilson_lower_bound(mean, total, confidence), wilson_upper_bound(mean, total, confidence)
        if (mean > bar and lower >= bar) or (mean < bar and upper < bar):
            break
        total = int(total * 1.2) + 1
    return max(0, total - n)

"""Drift, as a decision: do the drift checks (production items also answered by the reference
model) still support the job's bar?"""

from __future__ import annotations

from dataclasses import dataclass

from policies.confidence import wilson_upper_bound


@dataclass(frozen=True, slots=True)
class DriftVerdict:
    drifted: bool
    reason: str


# Fewer checks than this say too little to re-route a job on.
MIN_CHECKS = 20


def judge_drift(*, n: int, agree: int, bar: float, confidence: float = 0.95) -> DriftVerdict:
    """Drifted when even the upper bound of the agreement with the reference is below the bar."""
    if n < MIN_CHECKS:
        return DriftVerdict(False, f"{n} checks so far: fewer than {MIN_CHECKS}")
    upper = wilson_upper_bound(agree / n, n, confidence)
    if upper < bar:
        return DriftVerdict(True, f"agreement {agree}/{n}: upper bound {upper:.3f} < bar {bar:.3f}")
    return DriftVerdict(False, f"agreement {agree}/{n}: upper bound {upper:.3f} >= bar {bar:.3f}")

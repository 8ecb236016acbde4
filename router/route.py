"""How a job's items run, as data kept on the job row: one model or a cascade, its fallbacks, drift checks.

    single   every item goes to `model_id`; an item whose model fails after its retries falls back to
             the next model in `fallbacks` (the next-cheapest that still qualifies), then the next.
    cascade  every item goes to `model_id` and `second_id` (two cheap models); when both answer and
             agree, that answer stands; otherwise the item escalates to `strong_id`, then to `fallbacks`.

A share of items (`drift_share`) is also sent to `reference_id` (purpose "drift") to check that the
quality measured at calibration still holds (see policies/drift.py and engine).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from policies.types import Decision

# Share of production items also answered by the reference model when drift checks are on: 2% costs
# little (2% of a reference model's price) and gives ~200 checks per 10k items.
DEFAULT_DRIFT_SHARE = 0.02


@dataclass(frozen=True, slots=True)
class Route:
    kind: str  # single | cascade
    model_id: str
    second_id: str | None = None
    strong_id: str | None = None
    fallbacks: tuple[str, ...] = ()
    reference_id: str | None = None
    drift_share: float = 0.0
    reasons: tuple[str, ...] = field(default=())

    def stages(self) -> list[tuple[str, ...]]:
        """The models an item goes through, stage by stage (a stage of two models must agree)."""
        if self.kind == "cascade" and self.second_id and self.strong_id:
            first: list[tuple[str, ...]] = [(self.model_id, self.second_id), (self.strong_id,)]
        else:
            first = [(self.model_id,)]
        seen = {m for stage in first for m in stage}
        return first + [(m,) for m in self.fallbacks if m not in seen]

    def models(self) -> list[str]:
        """Every model the route may call, run stages first, then the reference."""
        out = [m for stage in self.stages() for m in stage]
        if self.reference_id and self.reference_id not in out:
            out.append(self.reference_id)
        return out

    def in_drift_sample(self, job_id: str, seq_or_id: int) -> bool:
        """Whether an item is one of the drift-checked share (deterministic per job and item)."""
        if not self.reference_id or self.drift_share <= 0:
            return False
        digest = hashlib.blake2b(f"{job_id}\x1f{seq_or_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 < self.drift_share

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model_id": self.model_id,
            "second_id": self.second_id,
            "strong_id": self.strong_id,
            "fallbacks": list(self.fallbacks),
            "reference_id": self.reference_id,
            "drift_share": self.drift_share,
            "reasons": list(self.reasons),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None, *, model_id: str) -> Route:
        """The route kept on a job row; a job without one (older rows) runs `model_id` alone."""
        if not data:
            return cls(kind="single", model_id=model_id)
        return cls(
            kind=data.get("kind", "single"),
            model_id=data.get("model_id") or model_id,
            second_id=data.get("second_id"),
            strong_id=data.get("strong_id"),
            fallbacks=tuple(data.get("fallbacks") or ()),
            reference_id=data.get("reference_id"),
            drift_share=float(data.get("drift_share") or 0.0),
            reasons=tuple(data.get("reasons") or ()),
        )


def fallbacks_from(decision: Decision, *, exclude: set[str]) -> tuple[str, ...]:
    """The models that qualified, cheapest first, other than those in `exclude`."""
    qualifying = [
        v for v in decision.verdicts if v.qualifies and v.model_id not in exclude and v.expected_cost_usd is not None
    ]
    qualifying.sort(key=lambda v: v.expected_cost_usd)  # type: ignore[arg-type, return-value]
    return tuple(v.model_id for v in qualifying)


def single_route(decision: Decision) -> Route:
    """Run the decision's model; fall back to the next-cheapest qualifying models, in order."""
    assert decision.model_id is not None
    return Route(
        kind="single", model_id=decision.model_id, fallbacks=fallbacks_from(decision, exclude={decision.model_id})
    )

"""The frozen values policies take and give back."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class QualityEstimate:
    """A model's quality on one task kind: mean in [0, 1], sample size (None for a prior), and where it came from."""

    value: float
    n: int | None
    source: str
    # The lower bound calibration judged it by (anytime-valid, policies/confidence.py): when set, it
    # is the value compared with the bar, so the bound shown is the bound used.
    lower: float | None = None


@dataclass(frozen=True, slots=True)
class Candidate:
    """A model the job could run on, with what the policy needs to judge it."""

    model_id: str
    provider: str
    input_usd_per_mtok: Decimal
    output_usd_per_mtok: Decimal
    context_window: int | None  # None: unknown, treated as unlimited
    region: str  # "eu", "us", "local", ...
    open_weight: bool
    quality: QualityEstimate | None  # for the job's task kind; None: unknown
    unavailable_reason: str | None = None  # e.g. "no API key: set MISTRAL_API_KEY"
    thinking_tokens_per_item: int = 0  # a thinking model's reasoning, billed as output, on top of the answer


@dataclass(frozen=True, slots=True)
class JobProfile:
    """What the job needs: its bar, its constraints, and its size in tokens."""

    task: str  # "classify" | "summarize" | "chat" (not measured: no bar)
    min_quality: float  # in [0, 1]
    n_items: int
    total_input_tokens: int  # estimated, prompt included, over all items
    max_input_tokens: int  # the longest item's prompt, estimated
    output_tokens_per_item: int  # expected output tokens per item
    allowed_providers: frozenset[str] | None = None
    allowed_models: frozenset[str] | None = None
    regions: frozenset[str] | None = None  # e.g. {"eu"}
    confidence: float = 0.95  # for the lower bound of measured estimates


@dataclass(frozen=True, slots=True)
class Verdict:
    """How one candidate fared: eligible or not, and every reason why."""

    model_id: str
    provider: str
    meets_constraints: bool  # provider/model/region/context/availability all fine
    qualifies: bool  # meets constraints and its quality bound meets the bar
    quality_bound: float | None  # the value compared with the bar
    expected_cost_usd: Decimal | None  # for the whole job
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    """The model chosen (or None) and why; the baseline is the most expensive model that meets the constraints."""

    model_id: str | None
    expected_cost_usd: Decimal | None
    baseline_model_id: str | None
    baseline_cost_usd: Decimal | None
    verdicts: tuple[Verdict, ...]
    summary: str

    @property
    def ok(self) -> bool:
        return self.model_id is not None

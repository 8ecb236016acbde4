"""Execution mode, as a decision: does a job's work go to the providers' batch APIs (about half price,
answered within their window) or as synchronous calls (answered now, at the standard price)?

Per stage of the route:

    calibration   always synchronous: its measurements decide the route, and the bulk waits on them
    bulk          the route's first stage (one model, or a cascade's two cheap models): batch when the
                  job can wait (its deadline leaves room for a batch and a synchronous re-run of what a
                  batch leaves undone), every provider of the stage sells a batch API with a known
                  price, and no model's region holds only in standard processing under --region
    escalations   a cascade's strong model: a second batch when there is room for it after the first,
                  else synchronous (a near deadline)
    drift checks  ride along with the stage they check (the bulk's mode)

`--mode sync` keeps everything synchronous; `--mode batch` asks for batch whatever the deadline (and
is refused with its reason when no batch can be had); `auto` (the default) decides from the deadline,
and without a deadline stays synchronous: results are wanted now.

The engine asks again as it goes (`rerun_mode`, `cancel_open_batch`): lines a batch left undone are
re-run in a next batch while there is room, else synchronously; a batch still open when the deadline
comes near is cancelled and its undone lines run synchronously.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

SYNC = "sync"
BATCH = "batch"
AUTO = "auto"
MODES = (AUTO, SYNC, BATCH)

# Most batches end within an hour (Anthropic's and OpenAI's documentation say so), however long their window.
TYPICAL_BATCH_S = 3600
# Time kept, before the deadline, to cancel a batch that has not ended and run its undone lines
# synchronously: a large job's lines at a provider's standard rate limits take this order of time.
SYNC_RESERVE_S = 2 * 3600
# So a stage goes to batch only with at least this long left (or its whole window, when shorter).
MIN_BATCH_LEAD_S = TYPICAL_BATCH_S + SYNC_RESERVE_S


@dataclass(frozen=True, slots=True)
class BatchOffer:
    """What one stage model's provider offers in batch."""

    model_id: str
    provider: str
    has_batch_api: bool  # a BatchAPI exists for the provider (or the sandbox's, when simulated)
    window_s: int | None  # the batch window (catalog batch_window_h); None: unknown
    multiplier: Decimal | None  # the batch price as a share of the standard one; None: unknown
    region_sync_only: bool = False  # the model's region holds only in standard processing


@dataclass(frozen=True, slots=True)
class ModeInputs:
    """A job's request and what its route's providers offer."""

    requested: str  # auto | sync | batch
    time_left_s: float | None  # until the deadline; None: no deadline given
    region_constrained: bool  # the job was given --region
    bulk: tuple[BatchOffer, ...]  # the route's first stage
    escalation: tuple[BatchOffer, ...] = ()  # a cascade's strong stage, if any
    bulk_cost_usd: Decimal | None = None  # the bulk's expected cost at the standard price


@dataclass(frozen=True, slots=True)
class ModeDecision:
    """The mode of each stage, the batch price share used, the saving expected, and why."""

    bulk: str  # sync | batch
    escalations: str  # sync | batch (nothing to escalate: sync)
    multiplier: Decimal  # of the bulk's calls: 1 when synchronous
    saving_usd: Decimal | None  # the bulk's expected cost times (1 - multiplier); None: unknown
    reasons: tuple[str, ...]
    refused: str | None = None  # --mode batch that cannot be had: why (the caller reports it against --mode)
    calibration: str = SYNC
    drift: str = SYNC  # rides along with the bulk

    @property
    def summary(self) -> str:
        """One line: the mode and the saving, as the decision line shows it."""
        if self.bulk == BATCH:
            saving = f", saving about ${self.saving_usd:.4f}" if self.saving_usd is not None else ""
            share = (1 - self.multiplier) * 100
            return f"mode: batch at {self.multiplier.normalize():f} of the standard price ({share:.0f}% off{saving})"
        return f"mode: sync ({self.reasons[0]})" if self.reasons else "mode: sync"


def _why_not(offer: BatchOffer, region_constrained: bool) -> str | None:
    """Why `offer` cannot go to batch at all, or None."""
    if not offer.has_batch_api:
        return f"{offer.provider} has no batch API"
    if offer.multiplier is None or offer.window_s is None:
        return f"the catalog gives {offer.provider} no batch_multiplier and batch_window_h"
    if region_constrained and offer.region_sync_only:
        return f"{offer.model_id}'s region holds only in standard processing (--region)"
    return None


def _lead_s(offers: tuple[BatchOffer, ...]) -> float:
    """How long a stage needs left to go to batch: MIN_BATCH_LEAD_S, or its longest window when shorter."""
    return float(min(MIN_BATCH_LEAD_S, max(o.window_s or 0 for o in offers)))


def stage_mode(
    offers: tuple[BatchOffer, ...], *, requested: str, time_left_s: float | None, region_constrained: bool
) -> tuple[str, str]:
    """(mode, why) for one stage: batch only when every provider of the stage can take it and there is room."""
    if requested == SYNC:
        return SYNC, "--mode sync"
    if not offers:
        return SYNC, "nothing to run"
    for offer in offers:
        why = _why_not(offer, region_constrained)
        if why is not None:
            return SYNC, why
    if requested == AUTO and time_left_s is None:
        return SYNC, "no --deadline: results are wanted now"
    if time_left_s is not None and time_left_s < _lead_s(offers):
        return SYNC, (
            f"deadline near: {time_left_s / 3600:.1f} h left, batch needs {_lead_s(offers) / 3600:.0f} h "
            "(a typical batch and a synchronous re-run of what it leaves)"
        )
    window_h = max(o.window_s or 0 for o in offers) / 3600
    return BATCH, f"the job can wait: batch answers within {window_h:.0f} h, usually within 1 h"


def decide(inputs: ModeInputs) -> ModeDecision:
    """The execution mode of each stage of a job (see the module's docstring)."""
    if inputs.requested not in MODES:
        return ModeDecision(SYNC, SYNC, Decimal(1), None, (), refused=f"unknown mode '{inputs.requested}'")
    bulk, why_bulk = stage_mode(
        inputs.bulk,
        requested=inputs.requested,
        time_left_s=inputs.time_left_s,
        region_constrained=inputs.region_constrained,
    )
    refused = None
    if inputs.requested == BATCH and bulk == SYNC:
        refused = f"--mode batch: {why_bulk}"
    reasons = [f"bulk: {why_bulk}", "calibration: always synchronous (its measurements decide the route)"]
    escalations = SYNC
    if inputs.escalation:
        # A second batch starts once the first has ended: typically an hour from now.
        later = None if inputs.time_left_s is None else inputs.time_left_s - TYPICAL_BATCH_S
        if bulk == BATCH:
            escalations, why = stage_mode(
                inputs.escalation,
                requested=inputs.requested,
                time_left_s=later,
                region_constrained=inputs.region_constrained,
            )
        else:
            why = "the bulk runs synchronously"
        reasons.append(f"escalations: {escalations} ({why})")
    reasons.append(f"drift checks: ride along with the bulk ({bulk})")
    multiplier = Decimal(1)
    saving = None
    if bulk == BATCH:
        multiplier = max(o.multiplier or Decimal(1) for o in inputs.bulk)  # the smallest discount of the stage
        if inputs.bulk_cost_usd is not None:
            saving = inputs.bulk_cost_usd * (1 - multiplier)
    else:
        saving = Decimal(0) if inputs.bulk_cost_usd is not None else None
    return ModeDecision(
        bulk=bulk,
        escalations=escalations,
        multiplier=multiplier,
        saving_usd=saving,
        reasons=tuple(reasons),
        refused=refused,
        drift=bulk,
    )


def rerun_mode(*, time_left_s: float | None, window_s: int) -> str:
    """Where lines a batch left undone (errored, expired, cancelled) run again: a next batch while the
    deadline leaves room for one, else synchronously."""
    if time_left_s is None or time_left_s >= min(MIN_BATCH_LEAD_S, window_s):
        return BATCH
    return SYNC


def cancel_open_batch(*, time_left_s: float | None) -> bool:
    """Whether a batch still open should be cancelled now, its undone lines run synchronously: the
    deadline is within the time kept to run them."""
    return time_left_s is not None and time_left_s < SYNC_RESERVE_S

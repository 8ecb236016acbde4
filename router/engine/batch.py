"""A batch of a chunk's items and its books: what every batch of a chunk shares, its planned calls,
the worst case reserved against the budget, and the call rows recorded before any call is made.

Exactly-once money: every call's row (status in_flight, with a fresh id) is committed before the call
is made (here), and its outcome is written onto that row (engine/settle.py). Per batch in the normal
case: one batched insert of call rows, one round of calls (engine/rounds.py), one batched write.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from sqlmodel import Session

from policies.budget_fit import items_that_fit
from router import chat
from router.catalog import MTOK, Catalog, ModelInfo
from router.ledger import budgets, repo
from router.ledger.db import UNREACHABLE, rolled_back, session_scope
from router.ledger.rollup import BaselineRates, CallFacts, rollup_rows
from router.ledger.tables import CallStatus, utcnow
from router.ledger.types import ClaimedItem, JobSnapshot
from router.prompts import MESSAGE_OVERHEAD_TOKENS, PromptSpec, spec_for
from router.providers.base import ChatRequest
from router.route import Route
from router.settings import Settings
from router.usage import TokenUsage

log = logging.getLogger("pennyroute.engine")

# How often a chunk that fits no budget looks again while other chunks hold reservations.
BUDGET_POLL_S = 0.2
# While Postgres is unreachable, a write of calls already made is tried again after 0.5 s, 1 s, 2 s ...
# (at most 10 s apart) until half the lease has passed: the calls were made, so their record must
# land; if it cannot, the items are taken over after the lease and their calls charged as unknown.
DB_RETRY_FIRST_S = 0.5
DB_RETRY_MAX_S = 10.0
T = TypeVar("T")


# -- what a chunk's batches share ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChunkContext:
    """What every batch of a chunk shares: the job's fixed facts, route, prompt and stopped providers."""

    job: JobSnapshot
    route: Route
    spec: PromptSpec
    labels: tuple[str, ...]  # the labels answers are read as; none: answers are taken as given
    common: dict[str, Any]  # the columns every call row of the job shares
    stopped: dict[str, str]  # provider -> why it takes no more calls for this job
    purpose: str = "run"  # run | calibration: what the route's calls are for (drift checks are "drift")

    @classmethod
    def build(
        cls,
        catalog: Catalog,
        job: JobSnapshot,
        *,
        route: Route | None = None,
        purpose: str = "run",
        spec: PromptSpec | None = None,
    ) -> ChunkContext:
        """The context of a chunk of `job` (which has a model): its own route, or `route` (calibration).

        `spec` replaces the job's prompt (a summary judge's rubric): its answers are then read back
        as the text given, not as the job's labels."""
        common = {
            "job_id": job.id,
            "tenant_id": job.tenant_id,
            "team_id": job.team_id,
            "status": CallStatus.IN_FLIGHT,
            "simulated": job.simulated,
        }
        if route is None:
            route = Route.from_json(dict(job.route) if job.route else None, model_id=job.model_id or "")
        return cls(
            job=job,
            route=route,
            spec=spec or spec_for(job.task, job.labels, job.max_words, job.max_output_tokens),
            labels=tuple(job.labels) if spec is None else (),
            common=common,
            stopped=dict(job.stopped_providers or {}),
            purpose=purpose,
        )

    @property
    def chat(self) -> bool:
        """Whether each item is a conversation sent as given, its answer kept as it came (router/chat.py)."""
        return self.job.task == "chat" and not self.labels and self.spec.system == ""

    def request(self, info: ModelInfo, text: str, call_id: str) -> ChatRequest:
        """The call one item makes on a model: the job's prompt around the item's text, or a chat item's
        own conversation, cap (at most the job's) and sampling parameters."""
        plain = ChatRequest(
            model=info.api_model,
            system=self.spec.system,
            prompt=text,
            max_output_tokens=self.spec.max_output_tokens,
            request_id=call_id,
            thinking_tokens=info.thinking,
            reasoning_effort=info.reasoning_effort,
        )
        if not self.chat:
            return plain
        item = chat.stored(text)
        return replace(
            plain,
            system="",
            prompt="",
            messages=item.messages,
            max_output_tokens=min(item.max_tokens or self.spec.max_output_tokens, self.spec.max_output_tokens),
            temperature=item.temperature,
            top_p=item.top_p,
            stop=item.stop,
        )

    def callable(self, catalog: Catalog, model_id: str, stopped: dict[str, str]) -> bool:
        """Whether `model_id` can be called: the catalog knows it and its provider is not stopped."""
        return model_id in catalog.models and catalog.model(model_id).provider not in stopped

    def first_tries(
        self, catalog: Catalog, item: ClaimedItem, stopped: dict[str, str]
    ) -> tuple[int, list[PlannedCall]]:
        """An item's first calls: the first stage whose models can be called, plus a drift check."""
        stages = self.route.stages()
        tries: list[PlannedCall] = []
        stage_index = len(stages)
        for index, stage in enumerate(stages):
            if all(self.callable(catalog, m, stopped) for m in stage):
                stage_index, tries = index, [PlannedCall(item.id, m, self.purpose) for m in stage]
                break
        reference = self.route.reference_id
        if (
            tries
            and reference
            and reference not in {t.model_id for t in tries}
            and self.callable(catalog, reference, stopped)
            and self.route.in_drift_sample(self.job.id, item.seq)
        ):
            tries.append(PlannedCall(item.id, reference, "drift"))
        return stage_index, tries

    def worst_usage(self, catalog: Catalog, model_id: str, text: str) -> TokenUsage:
        """An upper bound on one call's tokens: input <= prompt bytes, output <= its cap (thinking included)."""
        worst_input = len(self.spec.system.encode()) + len(text.encode()) + MESSAGE_OVERHEAD_TOKENS
        known = catalog.models.get(model_id)
        output_cap = known.output_cap(self.spec.max_output_tokens) if known else self.spec.max_output_tokens
        return TokenUsage(input_tokens=worst_input, output_tokens=output_cap, estimated=True)

    def baseline_worst_usd(self, catalog: Catalog, text: str) -> Decimal | None:
        """What the call's worst case would cost on the job's baseline model, at its rates at submit
        (None: the job has no baseline)."""
        job = self.job
        if job.baseline_input_usd_per_mtok is None or job.baseline_output_usd_per_mtok is None:
            return None
        usage = self.worst_usage(catalog, job.baseline_model_id or "", text)
        return (
            usage.input_tokens * job.baseline_input_usd_per_mtok
            + usage.output_tokens * job.baseline_output_usd_per_mtok
        ) / MTOK

    def worst_case_usd(self, catalog: Catalog, model_id: str, text: str, at: datetime) -> Decimal:
        """An upper bound on one call's cost, at the prices in force at `at`."""
        return catalog.price(model_id, at).cost_usd(self.worst_usage(catalog, model_id, text))


@dataclass(frozen=True, slots=True)
class PlannedCall:
    """One planned call: an item, a model, why (run or drift), and which try of that pair it is."""

    item_id: int
    model_id: str
    purpose: str  # run | drift
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class Recorded:
    """The call rows of a round, committed before its calls: one id per try, in order, and when."""

    ids: list[str]
    started: datetime


@dataclass(slots=True)
class Batch:
    """Leading items of a chunk whose first calls are recorded (and, under a budget, reserved)."""

    items: list[ClaimedItem]
    stage: dict[int, int]  # item id -> the stage its first tries belong to
    tries: list[PlannedCall]
    recorded: Recorded
    reservation_ids: list[str]


def plan(
    catalog: Catalog, chunk: ChunkContext, items: Sequence[ClaimedItem]
) -> tuple[dict[int, int], dict[int, list[PlannedCall]]]:
    """Each item's first stage and first calls (ChunkContext.first_tries), by item id."""
    stage: dict[int, int] = {}
    tries: dict[int, list[PlannedCall]] = {}
    for item in items:
        stage[item.id], tries[item.id] = chunk.first_tries(catalog, item, chunk.stopped)
    return stage, tries


def unbudgeted_batch(session: Session, *, catalog: Catalog, chunk: ChunkContext, items: list[ClaimedItem]) -> Batch:
    """All of `items` as one batch, their first calls recorded in `session`: no budget to reserve from."""
    stage, tries = plan(catalog, chunk, items)
    flat = [t for row in items for t in tries[row.id]]
    return Batch(
        items=items,
        stage=stage,
        tries=flat,
        recorded=record_calls(session, catalog=catalog, common=chunk.common, tries=flat),
        reservation_ids=[],
    )


def reserve_batch(settings: Settings, catalog: Catalog, chunk: ChunkContext, items: list[ClaimedItem]) -> Batch | None:
    """Reserve the worst case of as many leading items as the budget takes, and record their calls.

    When none fit while other chunks hold reservations, wait for those to settle (they release
    most of what they hold); None when nothing fits and nothing is held: the budget is spent.
    """
    deadline = time.monotonic() + settings.budget_wait_s
    stage, tries = plan(catalog, chunk, items)
    while True:
        with session_scope(settings) as session:
            now = utcnow()
            period = budgets.fresh_period(session, team_id=chunk.job.team_id, now=now)
            if period is None:  # the budget was removed meanwhile
                return unbudgeted_batch(session, catalog=catalog, chunk=chunk, items=items)
            texts = {row.id: row.text for row in items}
            worst = [
                sum(
                    (chunk.worst_case_usd(catalog, t.model_id, texts[t.item_id], now) for t in tries[row.id]),
                    Decimal(0),
                )
                for row in items
            ]
            count = items_that_fit(worst, budgets.remaining_usd(period, settings))
            if count:
                held = budgets.reserve(
                    session,
                    period=period,
                    amount_usd=sum(worst[:count], Decimal(0)),
                    job_id=chunk.job.id,
                    settings=settings,
                    now=now,
                )
                if held is not None:
                    batch = items[:count]
                    flat = [t for row in batch for t in tries[row.id]]
                    recorded = record_calls(session, catalog=catalog, common=chunk.common, tries=flat)
                    return Batch(items=batch, stage=stage, tries=flat, recorded=recorded, reservation_ids=[held.id])
                continue  # another worker took it first: look again at once
            others_hold = period.reserved > 0
        if not others_hold or time.monotonic() > deadline:
            return None
        time.sleep(BUDGET_POLL_S * (1 + random.random()))


def reserve_more(
    session: Session,
    *,
    settings: Settings,
    catalog: Catalog,
    chunk: ChunkContext,
    tries: list[PlannedCall],
    texts: dict[int, str],
) -> str | None:
    """Hold the worst case of calls beyond a batch's first (escalations, fallbacks): the reservation's
    id, "" when the team has no budget (nothing to hold), None when it does not fit."""
    now = utcnow()
    period = budgets.current_period(session, team_id=chunk.job.team_id, now=now)
    if period is None:
        return ""
    amount = sum((chunk.worst_case_usd(catalog, t.model_id, texts[t.item_id], now) for t in tries), Decimal(0))
    held = budgets.reserve(session, period=period, amount_usd=amount, job_id=chunk.job.id, settings=settings, now=now)
    return None if held is None else held.id


def blank_update(call_id: str, *, latency_ms: int | None, finished_at: datetime) -> dict[str, Any]:
    """A call row's update with nothing charged yet (no tokens, $0, no error): the caller sets its
    status and what it cost."""
    return {
        "id": call_id,
        "latency_ms": latency_ms,
        "finished_at": finished_at,
        "input_tokens": 0,
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "output_tokens": 0,
        "reasoning_tokens": 0,
        "usage_estimated": False,
        "cost_usd": Decimal(0),
        "error": None,
        "finish": None,
    }


def record_calls(
    session: Session,
    *,
    catalog: Catalog,
    common: dict[str, Any],
    tries: list[PlannedCall],
    extra: dict[str, Any] | None = None,
) -> Recorded:
    """Write one in-flight call row per try, priced at the rates in force now; return their ids.
    `extra` adds columns every row shares (a provider batch's lines: mode, multiplier, batch).

    One insert per (model, purpose): usually one per batch."""
    started = utcnow()
    ids = _call_ids(len(tries))
    groups: dict[tuple[str, str], list[int]] = {}
    for k, t in enumerate(tries):
        groups.setdefault((t.model_id, t.purpose), []).append(k)
    for (model_id, purpose), members in groups.items():
        price = catalog.price(model_id, started)
        repo.insert_calls(
            session,
            common={
                **common,
                "model_id": model_id,
                "provider": catalog.model(model_id).provider,
                "purpose": purpose,
                "started_at": started,
                "input_tokens": 0,
                "cached_input_tokens": 0,
                "cache_write_tokens": 0,
                "output_tokens": 0,
                "usage_estimated": False,
                "cost_usd": Decimal(0),
                "input_usd_per_mtok": price.input.base,
                "cached_input_usd_per_mtok": price.cached_input.base,
                "cache_write_usd_per_mtok": price.cache_write.base,
                "output_usd_per_mtok": price.output.base,
                **(extra or {}),
            },
            ids=[ids[k] for k in members],
            item_ids=[tries[k].item_id for k in members],
        )
    return Recorded(ids, started)


def rollups(
    catalog: Catalog,
    job: JobSnapshot,
    facts: dict[tuple[str, str], list[CallFacts]],
    *,
    baseline_calls: Collection[str],
) -> list[dict[str, Any]]:
    """The rollup rows of a batch's calls, per (model, purpose) and day; `baseline_calls` are the calls
    that stand for their items in the baseline (run calls only carry one)."""
    baseline = _baseline_rates(catalog, job)
    return [
        row
        for (model_id, purpose), group in facts.items()
        for row in rollup_rows(
            group,
            tenant_id=job.tenant_id,
            team_id=job.team_id,
            job_id=job.id,
            model_id=model_id,
            provider=catalog.model(model_id).provider if model_id in catalog.models else "unknown",
            task=job.task,
            purpose=purpose,
            timezone=job.timezone,
            baseline_rates=baseline if purpose == "run" else None,
            baseline_calls=baseline_calls,
        )
    ]


def _baseline_rates(catalog: Catalog, job: JobSnapshot) -> BaselineRates | None:
    """How the job's rollups price its run calls on its baseline model (None: it has none)."""
    if (
        job.baseline_input_usd_per_mtok is None or job.baseline_output_usd_per_mtok is None
    ):  # submit sets both or neither
        return None
    known = catalog.models.get(job.baseline_model_id or "")
    return BaselineRates(
        job.baseline_input_usd_per_mtok, job.baseline_output_usd_per_mtok, (known.thinking or 0) if known else 0
    )


def _call_ids(n: int) -> list[str]:
    """`n` fresh random call ids (128 bits, as hex): one read of the OS's randomness for the lot,
    where uuid4() per call made one system call each (5% of a worker's time at 0 ms, profiled)."""
    raw = os.urandom(16 * n)
    return [raw[i : i + 16].hex() for i in range(0, 16 * n, 16)]


def write_retrying(settings: Settings, write: Callable[[Session], T]) -> T:
    """Run `write` in one transaction, trying again while the database is unreachable (up to half the
    lease, DB_RETRY_FIRST_S doubling to DB_RETRY_MAX_S apart); then the error is raised."""
    deadline = time.monotonic() + settings.lease_s / 2
    delay = DB_RETRY_FIRST_S
    while True:
        try:
            with session_scope(settings) as session:
                return write(session)
        except UNREACHABLE as exc:
            if time.monotonic() + delay > deadline:
                raise
            if rolled_back(exc):  # a deadlock or serialization failure: nothing was written; again at once
                log.warning(
                    "recording a batch was rolled back (%s); trying again", type(getattr(exc, "orig", exc)).__name__
                )
                time.sleep(random.random() * DB_RETRY_FIRST_S / 10)
                continue
            log.warning("database unreachable while recording a batch; trying again in %.1f s", delay)
            time.sleep(delay * (1 + random.random() * 0.25))  # jitter: workers do not all come back at once
            delay = min(delay * 2, DB_RETRY_MAX_S)


def pause(
    settings: Settings,
    chunk: ChunkContext,
    items: Sequence[ClaimedItem],
    *,
    reason: str = "budget",
    detail: str | None = None,
) -> None:
    """Hand `items` back untried and pause the job, waiting for `reason` (budget | provider), with an
    event saying why (a budget event for the team, else a job event)."""
    with session_scope(settings) as session:
        repo.release_items(session, [(row.id, row.attempts) for row in items])
        if repo.pause_job(session, chunk.job.id, reason=reason):
            if reason == "budget":
                period = budgets.current_period(session, team_id=chunk.job.team_id)
                budgets.record_event(
                    session,
                    team_id=chunk.job.team_id,
                    period=period.period_start if period else utcnow().date(),
                    kind="paused",
                    detail={
                        "job_id": chunk.job.id,
                        "items_waiting": len(items),
                        "settled": str(period.settled) if period else None,
                        "limit": str(period.limit_amount) if period else None,
                    },
                )
            else:
                repo.add_job_event(
                    session,
                    job_id=chunk.job.id,
                    kind="paused",
                    detail={"reason": reason, "why": detail, "items_waiting": len(items)},
                )

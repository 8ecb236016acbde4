"""A batch of a chunk's items: plan its calls, reserve their worst case, record their call rows, make
the calls stage by stage, and write what came back.

Exactly-once money: every call's row (status in_flight, with a fresh id) is committed before the call
is made, and its outcome is written onto that row. Per batch in the normal case: one batched insert
of call rows, one round of calls, one batched write of outcomes. What to do after a failed call or a
finished stage is policies.escalation's decision; this module applies it and keeps the books.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from sqlmodel import Session

from policies.budget_fit import items_that_fit
from policies.escalation import ACCEPT, ESCALATE, FAIL, HOLD, MAX_WAIT_S, after_failure, after_stage
from router.catalog import Catalog, ModelInfo, Price
from router.ledger.db import UNREACHABLE, session_scope
from router.engine import alerts, drift, runtime
from router.engine.calls import call_all
from router.errors import ProviderError, ProviderStatusError
from router.ledger import budgets, repo
from router.ledger.rollup import BaselineRates, CallFacts, rollup_rows, upsert_rollups
from router.ledger.tables import CallStatus, ItemStatus, utcnow
from router.ledger.types import ClaimedItem, JobSnapshot
from router.prompts import MESSAGE_OVERHEAD_TOKENS, PromptSpec, parse_label, spec_for
from router.providers.base import ChatRequest, Completion
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
# A failed call's error is kept on its row up to this many characters: a provider's message, not its page.
ERROR_CHARS = 2000
T = TypeVar("T")


# -- what a chunk's batches share ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChunkContext:
    """What every batch of a chunk shares: the job's fixed facts, route, prompt and stopped providers."""

    job: JobSnapshot
    route: Route
    spec: PromptSpec
    labels: tuple[str, ...]
    common: dict[str, Any]  # the columns every call row of the job shares
    stopped: dict[str, str]  # provider -> why it takes no more calls for this job
    purpose: str = "run"  # run | calibration: what the route's calls are for (drift checks are "drift")

    @classmethod
    def build(cls, catalog: Catalog, job: JobSnapshot, *, route: Route | None = None, purpose: str = "run") -> ChunkContext:
        """The context of a chunk of `job` (which has a model): its own route, or `route` (calibration)."""
        common = {"job_id": job.id, "tenant_id": job.tenant_id, "team_id": job.team_id,
                  "status": CallStatus.IN_FLIGHT, "simulated": job.simulated}
        if route is None:
            route = Route.from_json(dict(job.route) if job.route else None, model_id=job.model_id or "")
        return cls(job=job, route=route, spec=spec_for(job.task, job.labels, job.max_words), labels=tuple(job.labels),
                   common=common, stopped=dict(job.stopped_providers or {}), purpose=purpose)

    def callable(self, catalog: Catalog, model_id: str, stopped: dict[str, str]) -> bool:
        """Whether `model_id` can be called: the catalog knows it and its provider is not stopped."""
        return model_id in catalog.models and catalog.model(model_id).provider not in stopped

    def first_tries(self, catalog: Catalog, item: ClaimedItem, stopped: dict[str, str]) -> tuple[int, list[PlannedCall]]:
        """An item's first calls: the first stage whose models can be called, plus a drift check."""
        stages = self.route.stages()
        tries: list[PlannedCall] = []
        stage_index = len(stages)
        for index, stage in enumerate(stages):
            if all(self.callable(catalog, m, stopped) for m in stage):
                stage_index, tries = index, [PlannedCall(item.id, m, self.purpose) for m in stage]
                break
        reference = self.route.reference_id
        if (tries and reference and reference not in {t.model_id for t in tries} and self.callable(catalog, reference, stopped)
                and self.route.in_drift_sample(self.job.id, item.seq)):
            tries.append(PlannedCall(item.id, reference, "drift"))
        return stage_index, tries

    def worst_case_usd(self, catalog: Catalog, model_id: str, text: str, at: datetime) -> Decimal:
        """An upper bound on one call's cost: input tokens <= prompt bytes, output <= its cap (thinking included)."""
        worst_input = len(self.spec.system.encode()) + len(text.encode()) + MESSAGE_OVERHEAD_TOKENS
        usage = TokenUsage(input_tokens=worst_input, output_tokens=catalog.model(model_id).output_cap(self.spec.max_output_tokens))
        return catalog.price(model_id, at).cost_usd(usage)


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


# -- planning, reserving, recording ----------------------------------------------------------------


def plan(catalog: Catalog, chunk: ChunkContext, items: Sequence[ClaimedItem]) -> tuple[dict[int, int], dict[int, list[PlannedCall]]]:
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
    return Batch(items=items, stage=stage, tries=flat, recorded=record_calls(session, catalog=catalog, common=chunk.common, tries=flat),
                 reservation_ids=[])


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
            worst = [sum((chunk.worst_case_usd(catalog, t.model_id, texts[t.item_id], now) for t in tries[row.id]), Decimal(0))
                     for row in items]
            count = items_that_fit(worst, budgets.remaining_usd(period, settings))
            if count:
                held = budgets.reserve(session, period=period, amount_usd=sum(worst[:count], Decimal(0)),
                                       job_id=chunk.job.id, settings=settings, now=now)
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


def reserve_more(session: Session, *, settings: Settings, catalog: Catalog, chunk: ChunkContext, tries: list[PlannedCall],
                 texts: dict[int, str]) -> str | None:
    """Hold the worst case of calls beyond a batch's first (escalations, fallbacks): the reservation's
    id, "" when the team has no budget (nothing to hold), None when it does not fit."""
    now = utcnow()
    period = budgets.current_period(session, team_id=chunk.job.team_id, now=now)
    if period is None:
        return ""
    amount = sum((chunk.worst_case_usd(catalog, t.model_id, texts[t.item_id], now) for t in tries), Decimal(0))
    held = budgets.reserve(session, period=period, amount_usd=amount, job_id=chunk.job.id, settings=settings, now=now)
    return None if held is None else held.id


def record_calls(session: Session, *, catalog: Catalog, common: dict[str, Any], tries: list[PlannedCall]) -> Recorded:
    """Write one in-flight call row per try, priced at the rates in force now; return their ids.

    One insert per (model, purpose): usually one per batch."""
    started = utcnow()
    ids = _call_ids(len(tries))
    groups: dict[tuple[str, str], list[int]] = {}
    for k, t in enumerate(tries):
        groups.setdefault((t.model_id, t.purpose), []).append(k)
    for (model_id, purpose), members in groups.items():
        price = catalog.price(model_id, started)
        repo.insert_calls(session, common={
            **common, "model_id": model_id, "provider": catalog.model(model_id).provider, "purpose": purpose,
            "started_at": started, "input_tokens": 0, "cached_input_tokens": 0, "cache_write_tokens": 0,
            "output_tokens": 0, "usage_estimated": False, "cost_usd": Decimal(0),
            "input_usd_per_mtok": price.input.base, "cached_input_usd_per_mtok": price.cached_input.base,
            "cache_write_usd_per_mtok": price.cache_write.base, "output_usd_per_mtok": price.output.base,
        }, ids=[ids[k] for k in members], item_ids=[tries[k].item_id for k in members])
    return Recorded(ids, started)


def _call_ids(n: int) -> list[str]:
    """`n` fresh random call ids (128 bits, as hex): one read of the OS's randomness for the lot,
    where uuid4() per call made one system call each (5% of a worker's time at 0 ms, profiled)."""
    raw = os.urandom(16 * n)
    return [raw[i:i + 16].hex() for i in range(0, 16 * n, 16)]


# -- making the calls ------------------------------------------------------------------------------


@dataclass(slots=True)
class Answer:
    output: str | None  # the parsed answer; None when the call failed or its answer was unusable
    call_id: str
    error: str | None


@dataclass(slots=True)
class Executed:
    """What a batch's calls gave: finished item rows, answers per item and model, and what to write."""

    finished_items: dict[int, dict[str, Any]]
    answers: dict[int, dict[str, Answer]]
    held_back: list[int]
    unwritten: list[dict[str, Any]]
    facts: dict[tuple[str, str], list[CallFacts]]
    references: dict[int, str | None]
    reservation_ids: list[str]
    newly_stopped: dict[str, str]
    blocked: bool
    held: dict[int, int]  # item id -> its try count when claimed: only that holder may write it


def execute(settings: Settings, catalog: Catalog, chunk: ChunkContext, batch: Batch) -> Executed:
    """Make the batch's calls, stage by stage, recording each round's call rows before it is made.

    Each round makes the calls planned so far, concurrently. A retryable failure is tried again
    (policies.escalation.after_failure: up to MAX_ATTEMPTS, with backoff) on the same model; a final
    failure, or two cheap models that disagree in a cascade, moves the item to its next stage (the
    strong model, then fallbacks: policies.escalation.after_stage). A provider that refuses us (bad
    key, quota spent) takes no more calls for this job. Returns what happened, for `finish` to write.
    """
    progress = _Progress.start(chunk, batch)
    tries, recorded = batch.tries, batch.recorded
    while tries:
        # Looked up once a round, not once a call: the round's models and their prices at its start.
        infos = {m: catalog.model(m) for m in {t.model_id for t in tries}}
        prices = {m: catalog.price(m, recorded.started) for m in infos}
        requests = _requests(chunk, tries, recorded, infos, progress.texts)
        results = runtime.run(call_all(catalog, settings, chunk.job.simulated, requests))
        round_ = _Round(tries=tries, recorded=recorded, infos=infos, prices=prices, finished=utcnow(), retry=[], waits=[])
        for k, result, latency_s in results:
            _record_result(catalog, chunk, progress, round_, k, result, latency_s)
        advance = _reserve_escalations(settings, catalog, chunk, progress, _advance_items(catalog, chunk, progress, round_))
        tries = round_.retry + advance
        if tries:
            recorded = _record_next_round(settings, catalog, chunk, progress, tries)
            if round_.retry:
                time.sleep(min(max(round_.waits), MAX_WAIT_S) * (1 + random.random() * 0.25))  # up to 25% jitter spreads the herd
    return progress.executed(batch)


@dataclass(slots=True)
class _Progress:
    """A batch's state across its rounds (one per batch): answers so far, finished and held-back
    items, stopped providers, reservations, and the outcomes not yet written."""

    texts: dict[int, str]  # item id -> text, in claim order
    stages: tuple[tuple[str, ...], ...]
    route_models: tuple[str, ...]
    stage: dict[int, int]  # item id -> its current stage
    answers: dict[int, dict[str, Answer]]  # item id -> model -> its answer (drift checks excluded)
    references: dict[int, str | None]  # item id -> the reference model's answer (drift checks)
    finished_items: dict[int, dict[str, Any]]
    held_back: list[int]  # items handed back, to run later (budget, or every provider stopped)
    blocked: bool  # some were handed back because the providers left to them are stopped
    stopped: dict[str, str]
    newly_stopped: dict[str, str]
    reservation_ids: list[str]
    unwritten: list[dict[str, Any]]  # call outcomes not yet written
    facts: dict[tuple[str, str], list[CallFacts]]

    @classmethod
    def start(cls, chunk: ChunkContext, batch: Batch) -> _Progress:
        texts = {row.id: row.text for row in batch.items}
        stages = tuple(chunk.route.stages())
        progress = cls(
            texts=texts, stages=stages, route_models=tuple(chunk.route.models()), stage=dict(batch.stage),
            answers={item_id: {} for item_id in texts}, references={}, finished_items={}, held_back=[], blocked=False,
            stopped=dict(chunk.stopped), newly_stopped={}, reservation_ids=list(batch.reservation_ids), unwritten=[],
            facts={},
        )
        for item_id in texts:  # items with nothing to call at all (every provider stopped)
            if progress.stage[item_id] >= len(stages):
                progress.held_back.append(item_id)
                progress.blocked = True
        return progress

    def executed(self, batch: Batch) -> Executed:
        return Executed(
            finished_items=self.finished_items, answers=self.answers, held_back=self.held_back, unwritten=self.unwritten,
            facts=self.facts, references=self.references, reservation_ids=self.reservation_ids,
            newly_stopped=self.newly_stopped, blocked=self.blocked, held={row.id: row.attempts for row in batch.items},
        )


@dataclass(slots=True)
class _Round:
    """One round's calls and what was looked up for them once (models, prices), plus the tries it
    plans next on the same models (retries) and how long those ask to wait."""

    tries: list[PlannedCall]
    recorded: Recorded
    infos: dict[str, ModelInfo]
    prices: dict[str, Price]
    finished: datetime
    retry: list[PlannedCall]
    waits: list[float]


def _requests(chunk: ChunkContext, tries: list[PlannedCall], recorded: Recorded, infos: dict[str, ModelInfo],
              texts: dict[int, str]) -> list[tuple[int, str, ChatRequest]]:
    """The round's requests as (index in `tries`, provider name, request); the call row's id goes along."""
    system, max_output = chunk.spec.system, chunk.spec.max_output_tokens
    return [
        (k, infos[t.model_id].provider, ChatRequest(model=infos[t.model_id].api_model, system=system,
                                                   prompt=texts[t.item_id], max_output_tokens=max_output,
                                                   request_id=recorded.ids[k], thinking_tokens=infos[t.model_id].thinking,
                                                   reasoning_effort=infos[t.model_id].reasoning_effort))
        for k, t in enumerate(tries)
    ]


def _record_result(catalog: Catalog, chunk: ChunkContext, progress: _Progress, round_: _Round, k: int,
                   result: Completion | ProviderError, latency_s: float) -> None:
    """Record the outcome of the round's `k`-th call: its row's update, its rollup facts, and the
    item's answer (unless another try of the same call follows)."""
    t, call_id = round_.tries[k], round_.recorded.ids[k]
    update: dict[str, Any] = {
        "id": call_id, "latency_ms": int(latency_s * 1000), "finished_at": round_.finished,
        "input_tokens": 0, "cached_input_tokens": 0, "cache_write_tokens": 0, "output_tokens": 0,
        "reasoning_tokens": 0, "usage_estimated": False, "cost_usd": Decimal(0), "error": None,
    }
    output: str | None = None
    error: str | None = None
    if isinstance(result, Completion):
        usage = result.usage
        update.update(
            status=CallStatus.OK, input_tokens=usage.input_tokens, cached_input_tokens=usage.cached_input_tokens,
            cache_write_tokens=usage.cache_write_tokens, output_tokens=usage.output_tokens,
            reasoning_tokens=usage.reasoning_tokens, usage_estimated=usage.estimated,
            cost_usd=round_.prices[t.model_id].cost_usd(usage),
        )
        output, error = _parse(result.text, chunk.job.task, chunk.labels)
    else:
        error = str(result)[:ERROR_CHARS]
        update.update(status=CallStatus.ERROR, error=error)
        _after_failure(catalog, progress, round_, t, result)
    progress.unwritten.append(update)
    progress.facts.setdefault((t.model_id, t.purpose), []).append(CallFacts(
        started_at=round_.recorded.started, failed=output is None, input_tokens=update["input_tokens"],
        cached_input_tokens=update["cached_input_tokens"], output_tokens=update["output_tokens"],
        cost_usd=update["cost_usd"], simulated=chunk.job.simulated, reasoning_tokens=update["reasoning_tokens"],
        call_id=call_id))
    retry = round_.retry
    if retry and retry[-1].item_id == t.item_id and retry[-1].model_id == t.model_id and retry[-1].purpose == t.purpose:
        return  # another try of this call follows: its answer is not in yet
    if t.purpose == "drift":
        progress.references[t.item_id] = output
    else:
        progress.answers[t.item_id][t.model_id] = Answer(output, call_id, error)


def _after_failure(catalog: Catalog, progress: _Progress, round_: _Round, t: PlannedCall, error: ProviderError) -> None:
    """A failed call: its provider takes no more calls for the job if it refused us; another try on
    the same model follows if policies.escalation says so."""
    provider = round_.infos[t.model_id].provider
    if error.stops_provider and provider not in progress.stopped:
        progress.stopped[provider] = progress.newly_stopped[provider] = _stop_message(provider, error, catalog)
    decision = after_failure(attempt=t.attempt, retryable=error.retryable, retry_after=error.retry_after,
                             provider_stopped=provider in progress.stopped)
    if decision.retry:
        round_.retry.append(PlannedCall(t.item_id, t.model_id, t.purpose, t.attempt + 1))
        round_.waits.append(decision.wait_s)


def _advance_items(catalog: Catalog, chunk: ChunkContext, progress: _Progress, round_: _Round) -> list[PlannedCall]:
    """Move every item whose current stage has all its answers (policies.escalation.after_stage):
    accept it, fail it, hold it back, or escalate it; returns the escalations' calls."""
    # Looked up once a round, not once an item: which of the route's models can be called, which are stopped.
    stopped = progress.stopped
    callable_models = frozenset(m for m in progress.route_models if chunk.callable(catalog, m, stopped))
    stopped_models = frozenset(m for m in progress.route_models if m in catalog.models and catalog.model(m).provider in stopped)
    waiting = {t.item_id for t in round_.retry if t.purpose != "drift"}
    stages, stage, finished_items, held_back = progress.stages, progress.stage, progress.finished_items, progress.held_back
    advance: list[PlannedCall] = []
    for item_id in progress.texts:
        if item_id in finished_items or item_id in waiting or item_id in held_back:
            continue
        got, current = progress.answers[item_id], stage[item_id]
        decision = after_stage(stages=stages, current=current, answers=got, callable_models=callable_models,
                               stopped_models=stopped_models)
        kind = decision.kind
        if kind == ACCEPT:
            first = got[stages[current][0]]
            finished_items[item_id] = _item_row(item_id, ItemStatus.DONE, first.output, None, first.call_id, round_.finished)
        elif kind == ESCALATE:
            assert decision.stage is not None  # an escalation names its stage
            stage[item_id] = decision.stage
            advance.extend(PlannedCall(item_id, m, chunk.purpose) for m in stages[decision.stage])
        elif kind == HOLD:
            held_back.append(item_id)  # a stopped provider, not the item, is at fault: keep it for later
            progress.blocked = True
        elif kind == FAIL:
            last = got[stages[current][-1]]
            finished_items[item_id] = _item_row(item_id, ItemStatus.FAILED, None, decision.reason, last.call_id, round_.finished)
    return advance


def _reserve_escalations(settings: Settings, catalog: Catalog, chunk: ChunkContext, progress: _Progress,
                         advance: list[PlannedCall]) -> list[PlannedCall]:
    """Under a budget, hold the worst case of the escalations' calls; when it cannot take them, their
    items are handed back (to run later) and no escalation is made. Returns the calls to make."""
    if not advance or not progress.reservation_ids:
        return advance
    with session_scope(settings) as session:
        extra = reserve_more(session, settings=settings, catalog=catalog, chunk=chunk, tries=advance, texts=progress.texts)
    if extra is None:  # the budget cannot take the escalation: hand those items back
        progress.held_back.extend(sorted({t.item_id for t in advance}))
        return []
    if extra:
        progress.reservation_ids.append(extra)
    return advance


def _record_next_round(settings: Settings, catalog: Catalog, chunk: ChunkContext, progress: _Progress,
                       tries: list[PlannedCall]) -> Recorded:
    """Write this round's outcomes and the next round's call rows in one transaction."""
    done_calls = progress.unwritten

    def write(session: Session) -> Recorded:
        repo.finish_calls(session, done_calls)
        return record_calls(session, catalog=catalog, common=chunk.common, tries=tries)

    recorded = write_retrying(settings, write)
    progress.unwritten = []
    return recorded


def _parse(text: str, task: str, labels: tuple[str, ...]) -> tuple[str | None, str | None]:
    """(answer, None) when the answer is usable, else (None, why)."""
    if task == "classify":
        label = parse_label(text, labels)
        if label is None:
            return None, f"answer {text[:80]!r} names no single label"
        return label, None
    return text.strip(), None


def _stop_message(provider: str, error: ProviderError, catalog: Catalog) -> str:
    """Why a provider takes no more calls for the job, naming the setting to fix."""
    info = catalog.providers.get(provider)
    env = info.api_key_env if info is not None else None
    if isinstance(error, ProviderStatusError) and error.quota_exhausted:
        fix = f"the {provider} account's quota or credit is spent: add credit or raise its spend limit"
    elif env:
        fix = f"the key was refused: check {env}"
    else:
        fix = f"the key was refused: check provider {provider}'s settings in the catalog"
    return f"{str(error)[:300]} ({fix}; then `pennyroute jobs resume JOB`)"


def _item_row(item_id: int, status: str, output: str | None, error: str | None, call_id: str, now: datetime) -> dict[str, Any]:
    return {"id": item_id, "status": status, "output": output, "error": error, "final_call_id": call_id,
            "finished_at": now, "lease_until": None}


# -- writing what happened -------------------------------------------------------------------------


def finish(settings: Settings, catalog: Catalog, chunk: ChunkContext, executed: Executed, *, write_items: bool) -> tuple[int, int]:
    """Write the batch's outcome in one transaction: calls, items and counts (unless `write_items` is
    false: calibration writes only its calls), rollups, drift counts, settlement. Then send any
    soft-limit alert, pause the job if stopped providers blocked items, and judge drift."""
    job = chunk.job
    rows = [{**row, "held": executed.held[item_id]} for item_id, row in executed.finished_items.items()] if write_items else []
    held_back = executed.held_back if write_items else []
    done = sum(1 for row in rows if row["status"] == ItemStatus.DONE)
    failed = len(rows) - done
    final_calls = {row["final_call_id"] for row in executed.finished_items.values()}  # one per item, for the baseline
    rollups = _rollups(catalog, job, executed.facts, baseline_calls=final_calls)
    checked, agreed = _drift_tally(executed)
    actual = sum((f.cost_usd for group in executed.facts.values() for f in group), Decimal(0))

    def write(session: Session) -> list[dict[str, Any]]:
        repo.finish_batch(session, job_id=job.id, calls=executed.unwritten, items=rows, rollups=rollups, now=utcnow())
        if held_back:
            repo.release_items(session, [(item_id, executed.held[item_id]) for item_id in held_back])
        if checked:
            repo.add_drift_counts(session, job_id=job.id, model_id=chunk.route.model_id, checked=checked, agreed=agreed)
        for provider, why in executed.newly_stopped.items():
            repo.stop_provider(session, job_id=job.id, provider=provider, why=why)
        return _settle(session, reservation_ids=executed.reservation_ids, actual_usd=actual)

    for alert in write_retrying(settings, write):
        alerts.send_alert(alert, settings)
    chunk.stopped.update(executed.newly_stopped)  # the chunk's next batches skip them too
    if executed.blocked and write_items:
        pause(settings, chunk, [], reason="provider", detail="; ".join(chunk.stopped.values()))
    if checked:
        drift.check(settings, catalog, job_id=job.id)
    return done, failed


def _drift_tally(executed: Executed) -> tuple[int, int]:
    """(checked, agreed): the batch's items done whose reference model answered, and how many of
    those answers match the item's."""
    checked = agreed = 0
    for item_id, reference in executed.references.items():
        row = executed.finished_items.get(item_id)
        if reference is not None and row is not None and row["status"] == ItemStatus.DONE:
            checked += 1
            agreed += row["output"] == reference
    return checked, agreed


def _settle(session: Session, *, reservation_ids: list[str], actual_usd: Decimal) -> list[dict[str, Any]]:
    """Settle the batch's reservations: the first takes the whole actual spend, the others are
    released. Returns the soft-limit alerts to send."""
    found = []
    spend = actual_usd
    for reservation_id in reservation_ids:
        alert = budgets.settle(session, reservation_id=reservation_id, actual_usd=spend, now=utcnow())
        spend = Decimal(0)
        if alert:
            found.append(alert)
    return found


def _rollups(catalog: Catalog, job: JobSnapshot, facts: dict[tuple[str, str], list[CallFacts]], *,
             baseline_calls: Collection[str]) -> list[dict[str, Any]]:
    """The rollup rows of a batch's calls, per (model, purpose) and day; `baseline_calls` are the calls
    that stand for their items in the baseline (run calls only carry one)."""
    baseline = _baseline_rates(catalog, job)
    return [
        row
        for (model_id, purpose), group in facts.items()
        for row in rollup_rows(group, tenant_id=job.tenant_id, team_id=job.team_id, job_id=job.id, model_id=model_id,
                               provider=catalog.model(model_id).provider if model_id in catalog.models else "unknown",
                               task=job.task, purpose=purpose, timezone=job.timezone,
                               baseline_rates=baseline if purpose == "run" else None, baseline_calls=baseline_calls)
    ]


def _baseline_rates(catalog: Catalog, job: JobSnapshot) -> BaselineRates | None:
    """How the job's rollups price its run calls on its baseline model (None: it has none)."""
    if job.baseline_input_usd_per_mtok is None or job.baseline_output_usd_per_mtok is None:  # submit sets both or neither
        return None
    known = catalog.models.get(job.baseline_model_id or "")
    return BaselineRates(job.baseline_input_usd_per_mtok, job.baseline_output_usd_per_mtok, (known.thinking or 0) if known else 0)


def write_retrying(settings: Settings, write: Callable[[Session], T]) -> T:
    """Run `write` in one transaction, trying again while the database is unreachable (up to half the
    lease, DB_RETRY_FIRST_S doubling to DB_RETRY_MAX_S apart); then the error is raised."""
    deadline = time.monotonic() + settings.lease_s / 2
    delay = DB_RETRY_FIRST_S
    while True:
        try:
            with session_scope(settings) as session:
                return write(session)
        except UNREACHABLE:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("database unreachable while recording a batch; trying again in %.1f s", delay)
            time.sleep(delay * (1 + random.random() * 0.25))  # jitter: workers do not all come back at once
            delay = min(delay * 2, DB_RETRY_MAX_S)


# -- budgets, lost calls, calibration --------------------------------------------------------------


def pause(settings: Settings, chunk: ChunkContext, items: Sequence[ClaimedItem], *, reason: str = "budget",
          detail: str | None = None) -> None:
    """Hand `items` back untried and pause the job, waiting for `reason` (budget | provider), with an
    event saying why (a budget event for the team, else a job event)."""
    with session_scope(settings) as session:
        repo.release_items(session, [(row.id, row.attempts) for row in items])
        if repo.pause_job(session, chunk.job.id, reason=reason):
            if reason == "budget":
                period = budgets.current_period(session, team_id=chunk.job.team_id)
                budgets.record_event(session, team_id=chunk.job.team_id, period=period.period_start if period else utcnow().date(),
                                     kind="paused", detail={"job_id": chunk.job.id, "items_waiting": len(items),
                                                            "settled": str(period.settled) if period else None,
                                                            "limit": str(period.limit_amount) if period else None})
            else:
                repo.add_job_event(session, job_id=chunk.job.id, kind="paused",
                                   detail={"reason": reason, "why": detail, "items_waiting": len(items)})


def charge_lost(session: Session, settings: Settings, catalog: Catalog, chunk: ChunkContext, items: Sequence[ClaimedItem],
                now: datetime) -> Decimal:
    """Record the in-flight calls of items taken over from a dead worker as `unknown`, at their
    worst case (the provider may have answered and billed them; we cannot know): tokens at their
    bounds, cost at the call's recorded prices, in the rollups, and settled against the budget."""
    texts = {row.id: row.text for row in items}
    lost = repo.lost_calls(session, list(texts))
    if not lost:
        return Decimal(0)
    updates: list[dict[str, Any]] = []
    facts: dict[tuple[str, str], list[CallFacts]] = {}
    for call in lost:
        worst_input = len(chunk.spec.system.encode()) + len(texts[call.item_id].encode()) + MESSAGE_OVERHEAD_TOKENS
        known = catalog.models.get(call.model_id)
        output_cap = known.output_cap(chunk.spec.max_output_tokens) if known else chunk.spec.max_output_tokens
        usage = TokenUsage(input_tokens=worst_input, output_tokens=output_cap, estimated=True)
        if known:
            cost = catalog.price(call.model_id, call.started_at).cost_usd(usage)
        else:
            cost = (worst_input * call.input_usd_per_mtok + usage.output_tokens * call.output_usd_per_mtok) / Decimal(1_000_000)
        updates.append({"id": call.id, "status": CallStatus.UNKNOWN, "input_tokens": worst_input, "cached_input_tokens": 0,
                        "cache_write_tokens": 0, "output_tokens": usage.output_tokens, "reasoning_tokens": 0, "usage_estimated": True,
                        "cost_usd": cost, "latency_ms": None, "finished_at": now,
                        "error": "worker lost while the call was in flight: outcome unknown, charged at its worst case"})
        facts.setdefault((call.model_id, call.purpose), []).append(CallFacts(
            started_at=call.started_at, failed=True, input_tokens=worst_input, cached_input_tokens=0,
            output_tokens=usage.output_tokens, cost_usd=cost, simulated=chunk.job.simulated))
    repo.finish_calls(session, updates)
    upsert_rollups(session, _rollups(catalog, chunk.job, facts, baseline_calls=()))  # lost: no answer stands for an item
    total = sum((u["cost_usd"] for u in updates), Decimal(0))
    if chunk.job.has_budget:
        budgets.settle_unknown(session, job_id=chunk.job.id, team_id=chunk.job.team_id, amount_usd=total, settings=settings, now=now)
    return total


def answer_items(settings: Settings, catalog: Catalog, job: JobSnapshot, *, model_id: str, items: list[ClaimedItem],
                 purpose: str = "calibration") -> dict[int, Answer] | None:
    """Have `model_id` answer `items` outside the job's route (calibration), reserving, recording and
    settling like any batch, without writing the items' outcomes. Returns each item's answer (retries
    and the model's fallbacks excluded), or None when the team's budget cannot take the calls."""
    chunk = ChunkContext.build(catalog, job, route=Route(kind="single", model_id=model_id), purpose=purpose)
    if job.has_budget:
        batch = reserve_batch(settings, catalog, chunk, items)
        if batch is None:
            return None
    else:
        with session_scope(settings) as session:
            batch = unbudgeted_batch(session, catalog=catalog, chunk=chunk, items=items)
    executed = execute(settings, catalog, chunk, batch)
    finish(settings, catalog, chunk, executed, write_items=False)
    return {item_id: by_model[model_id] for item_id, by_model in executed.answers.items() if model_id in by_model}

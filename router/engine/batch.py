"""Running a chunk of a job: claim its items, record its calls, make them, record what came back.

Exactly-once money: every call's row (status in_flight, with a fresh id) is committed before the call
is made, and its outcome is written onto that row. A chunk delivered twice claims nothing the first
delivery still holds, so nothing is called or charged twice. Per chunk in the normal case: one claim,
one batched insert of call rows, one batched write of outcomes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError

from policies.budget_fit import items_that_fit
from router.ledger import budgets
from router.engine import drift
from router.engine import alerts
from router.engine import runtime
from router.catalog import Catalog
from router.db import session_scope
from router.errors import CircuitOpen, ProviderError, ProviderStatusError
from router.ledger import repo
from router.ledger.rollup import BaselineRates, CallFacts, rollup_rows, upsert_rollups
from router.ledger.tables import CallStatus, ItemStatus, JobStatus, utcnow
from router.ledger.types import JobSnapshot
from router.prompts import MESSAGE_OVERHEAD_TOKENS, PromptSpec, parse_label, spec_for
from router.providers.base import ChatRequest, Completion, Provider
from router.usage import TokenUsage
from router.providers.registry import close_all, get_provider, shared_limits
from router.providers.limits import SharedLimits
from router.settings import Settings
from router.route import Route

log = logging.getLogger("pennyroute.engine")

# Tries per item within a chunk for retryable failures (429, 5xx, timeouts) before it is failed.
MAX_ATTEMPTS = 3
# Backoff between tries when the provider gave no Retry-After: 1 s, then 2 s, plus jitter.
BACKOFF_BASE_S = 1.0
# A Retry-After longer than this is not waited for inside a chunk: the item fails with its reason.
MAX_WAIT_S = 30.0
# How often a chunk that fits no budget looks again while other chunks hold reservations.
BUDGET_POLL_S = 0.2


@dataclass(frozen=True, slots=True)
class ChunkOutcome:
    claimed: int
    done: int
    failed: int


def chunk_ranges(n_items: int, chunk_size: int) -> list[tuple[int, int]]:
    """The seq ranges [lo, hi) that split a job into chunks."""
    return [(lo, min(lo + chunk_size, n_items)) for lo in range(0, n_items, chunk_size)]


def run_chunk(settings: Settings, catalog: Catalog, *, job_id: str, lo: int, hi: int) -> ChunkOutcome:
    """Run the items of `job_id` with seq in [lo, hi) that nobody else holds. Safe to run twice."""
    now = utcnow()
    with session_scope(settings) as session:
        job = repo.job_for_chunk(session, job_id)
        if job is None or job.status != JobStatus.RUNNING or job.model_id is None:
            return ChunkOutcome(0, 0, 0)
        claimed = repo.claim_items(
            session, job_id=job_id, lo=lo, hi=hi, now=now, lease_until=now + timedelta(seconds=settings.lease_s)
        )
        if not claimed:
            return ChunkOutcome(0, 0, 0)
        chunk = ChunkContext.build(catalog, job)
        retaken = [row for row in claimed if row.attempts > 1]
        if retaken:  # a worker died holding these: its calls in flight are recorded as unknown
            charge_lost(session, settings, catalog, chunk, retaken, now)
        # No budget (the common case): the call rows are committed with the claim.
        first = None if job.has_budget else unbudgeted_batch(session, catalog, chunk, list(claimed))
    done = failed = 0
    pending = list(claimed)
    while pending:
        if first is None and _cancelled(settings, job_id, pending):
            failed += len(pending)
            break
        batch = first or reserve_batch(settings, catalog, chunk, pending)
        first = None
        if batch is None:  # the budget cannot take even one more item: hand the rest back and pause
            pause(settings, chunk, pending)
            break
        batch_done, batch_failed = run_batch(settings, catalog, chunk, batch)
        done, failed = done + batch_done, failed + batch_failed
        pending = pending[len(batch.items):]
    return ChunkOutcome(len(claimed), done, failed)


def _cancelled(settings: Settings, job_id: str, items: list[Any]) -> bool:
    """Between batches: if the job was cancelled, its claimed items not yet tried end as cancelled."""
    with session_scope(settings) as session:
        if repo.job_status(session, job_id) != JobStatus.CANCELLED:
            return False
        repo.fail_items(session, job_id=job_id, item_ids=[row.id for row in items], error="cancelled", now=utcnow())
    return True


def charge_lost(session: Any, settings: Settings, catalog: Catalog, chunk: ChunkContext, items: list[Any], now: Any) -> Decimal:
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
        facts.setdefault((call.model_id, call.purpose), []).append(
            CallFacts(call.started_at, True, worst_input, 0, usage.output_tokens, cost, chunk.job.simulated))
    repo.finish_calls(session, updates)
    job = chunk.job
    baseline = _baseline_rates(catalog, job)
    upsert_rollups(session, [
        row for (model_id, purpose), group in facts.items()
        for row in rollup_rows(group, tenant_id=job.tenant_id, team_id=job.team_id, job_id=job.id, model_id=model_id,
                               provider=catalog.model(model_id).provider if model_id in catalog.models else "unknown",
                               task=job.task, purpose=purpose, timezone=job.timezone,
                               baseline_rates=baseline if purpose == "run" else None, baseline_calls=())  # lost: no answer
    ])
    total = sum((u["cost_usd"] for u in updates), Decimal(0))
    if job.has_budget:
        budgets.settle_unknown(session, job_id=job.id, team_id=job.team_id, amount_usd=total, settings=settings, now=now)
    return total


@dataclass(frozen=True, slots=True)
class ChunkContext:
    """What every batch of a chunk shares: the job's fixed facts, route, prompt and stopped providers."""

    job: JobSnapshot
    route: Route
    spec: PromptSpec
    labels: tuple[str, ...]
    common: dict[str, Any]
    stopped: dict[str, str]  # provider -> why it takes no more calls for this job
    purpose: str = "run"  # run | calibration: what the route's calls are for (drift checks are "drift")

    @classmethod
    def build(cls, catalog: Catalog, job: JobSnapshot, *, route: Route | None = None, purpose: str = "run") -> ChunkContext:
        common = {"job_id": job.id, "tenant_id": job.tenant_id, "team_id": job.team_id,
                  "status": CallStatus.IN_FLIGHT, "simulated": job.simulated}
        route = route or Route.from_json(job.route, model_id=job.model_id)
        return cls(job, route, spec_for(job.task, job.labels, job.max_words), tuple(job.labels), common, dict(job.stopped_providers or {}), purpose)

    def callable(self, catalog: Catalog, model_id: str, stopped: dict[str, str]) -> bool:
        return model_id in catalog.models and catalog.model(model_id).provider not in stopped

    def first_tries(self, catalog: Catalog, item: Any, stopped: dict[str, str]) -> tuple[int, list[PlannedCall]]:
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

    def worst_case_usd(self, catalog: Catalog, model_id: str, text: str, at: Any) -> Decimal:
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


@dataclass(slots=True)
class Batch:
    items: list[Any]
    stage: dict[int, int]  # item id -> the stage its first tries belong to
    tries: list[PlannedCall]
    recorded: Recorded
    reservation_ids: list[str]


def plan(catalog: Catalog, chunk: ChunkContext, items: list[Any]) -> tuple[dict[int, int], dict[int, list[PlannedCall]]]:
    stage: dict[int, int] = {}
    tries: dict[int, list[PlannedCall]] = {}
    for item in items:
        stage[item.id], tries[item.id] = chunk.first_tries(catalog, item, chunk.stopped)
    return stage, tries


def unbudgeted_batch(session: Any, catalog: Catalog, chunk: ChunkContext, items: list[Any]) -> Batch:
    stage, tries = plan(catalog, chunk, items)
    flat = [t for row in items for t in tries[row.id]]
    return Batch(items, stage, flat, record_calls(session, catalog, chunk.common, flat), [])


def reserve_batch(settings: Settings, catalog: Catalog, chunk: ChunkContext, items: list[Any]) -> Batch | None:
    """Reserve the worst case of as many leading items as the budget takes, and record their calls.

    When none fit while other chunks hold reservations, wait for those to settle (they release
    most of what they hold); None when nothing fits and nothing is held: the budget is spent.
    """
    deadline = time.monotonic() + settings.budget_wait_s
    stage, tries = plan(catalog, chunk, items)
    while True:
        with session_scope(settings) as session:
            now = utcnow()
            period = budgets.current_period(session, team_id=chunk.job.team_id, now=now)
            if period is None:  # the budget was removed meanwhile
                return unbudgeted_batch(session, catalog, chunk, items)
            budgets.release_expired(session, period_id=period.id, now=now)  # type: ignore[arg-type]
            session.refresh(period)
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
                    return Batch(batch, stage, flat, record_calls(session, catalog, chunk.common, flat), [held.id])
                continue  # another worker took it first: look again at once
            others_hold = period.reserved > 0
        if not others_hold or time.monotonic() > deadline:
            return None
        time.sleep(BUDGET_POLL_S * (1 + random.random()))


def reserve_more(settings: Settings, catalog: Catalog, chunk: ChunkContext, session: Any, tries: list[PlannedCall],
                  texts: dict[int, str]) -> str | None:
    """Hold the worst case of calls beyond a batch's first (escalations, fallbacks); None when it does not fit."""
    now = utcnow()
    period = budgets.current_period(session, team_id=chunk.job.team_id, now=now)
    if period is None:
        return ""
    amount = sum((chunk.worst_case_usd(catalog, t.model_id, texts[t.item_id], now) for t in tries), Decimal(0))
    held = budgets.reserve(session, period=period, amount_usd=amount, job_id=chunk.job.id, settings=settings, now=now)
    return None if held is None else held.id


def pause(settings: Settings, chunk: ChunkContext, items: list[Any], *, reason: str = "budget", detail: str | None = None) -> None:
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


@dataclass(slots=True)
class Answer:
    output: str | None  # the parsed answer; None when the call failed or its answer was unusable
    call_id: str
    error: str | None


def answer_items(settings: Settings, catalog: Catalog, job: JobSnapshot, *, model_id: str, items: list[Any],
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
            batch = unbudgeted_batch(session, catalog, chunk, items)
    executed = execute(settings, catalog, chunk, batch)
    finish(settings, catalog, chunk, executed, write_items=False)
    return {item_id: by_model[model_id] for item_id, by_model in executed.answers.items() if model_id in by_model}


def run_batch(settings: Settings, catalog: Catalog, chunk: ChunkContext, batch: Batch) -> tuple[int, int]:
    """Make the batch's calls, then record outcomes, settlement and rollups. Returns (done, failed) items."""
    return finish(settings, catalog, chunk, execute(settings, catalog, chunk, batch), write_items=True)


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
    (up to MAX_ATTEMPTS, with backoff) on the same model; a final failure, or two cheap models that
    disagree in a cascade, moves the item to its next stage (the strong model, then fallbacks). A
    provider that refuses us (bad key, quota spent) takes no more calls for this job. Returns
    what happened, for `finish` to write.
    """
    job, route = chunk.job, chunk.route
    texts = {row.id: row.text for row in batch.items}
    stages = route.stages()
    stage = dict(batch.stage)
    answers: dict[int, dict[str, Answer]] = {item_id: {} for item_id in texts}
    references: dict[int, str | None] = {}
    finished_items: dict[int, dict[str, Any]] = {}
    held_back: list[int] = []  # items handed back, to run later (budget, or every provider stopped)
    blocked = False  # some were handed back because the providers left to them are stopped
    stopped = dict(chunk.stopped)
    newly_stopped: dict[str, str] = {}
    tries, recorded = batch.tries, batch.recorded
    reservation_ids = list(batch.reservation_ids)
    unwritten: list[dict[str, Any]] = []
    facts: dict[tuple[str, str], list[CallFacts]] = {}
    last_error: dict[int, str] = {}
    for item_id in texts:  # items with nothing to call at all (every provider stopped)
        if stage[item_id] >= len(stages):
            held_back.append(item_id)
            blocked = True
    while tries:
        # Looked up once a round, not once a call: the round's models and their prices at its start.
        infos = {m: catalog.model(m) for m in {t.model_id for t in tries}}
        prices = {m: catalog.price(m, recorded.started) for m in infos}
        system, max_output = chunk.spec.system, chunk.spec.max_output_tokens
        requests = [
            (k, infos[t.model_id].provider, ChatRequest(model=infos[t.model_id].api_model, system=system,
                                                       prompt=texts[t.item_id], max_output_tokens=max_output,
                                                       request_id=recorded.ids[k], thinking_tokens=infos[t.model_id].thinking,
                                                       reasoning_effort=infos[t.model_id].reasoning_effort))
            for k, t in enumerate(tries)
        ]
        results = runtime.run(call_all(catalog, settings, job.simulated, requests))
        finished = utcnow()
        retry: list[PlannedCall] = []
        waits: list[float] = []
        for k, result, latency_s in results:
            t, call_id = tries[k], recorded.ids[k]
            provider = infos[t.model_id].provider
            update: dict[str, Any] = {
                "id": call_id, "latency_ms": int(latency_s * 1000), "finished_at": finished,
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
                    reasoning_tokens=usage.reasoning_tokens, usage_estimated=usage.estimated, cost_usd=prices[t.model_id].cost_usd(usage),
                )
                output, error = _parse(result.text, job.task, chunk.labels)
            else:
                error = str(result)[:2000]
                update.update(status=CallStatus.ERROR, error=error)
                if result.stops_provider:
                    why = _stop_message(provider, result, catalog)
                    if provider not in stopped:
                        stopped[provider] = newly_stopped[provider] = why
                elif (result.retryable and t.attempt + 1 < MAX_ATTEMPTS and (result.retry_after or 0) <= MAX_WAIT_S
                      and provider not in stopped):
                    retry.append(PlannedCall(t.item_id, t.model_id, t.purpose, t.attempt + 1))
                    waits.append(result.retry_after or BACKOFF_BASE_S * 2**t.attempt)
            unwritten.append(update)
            facts.setdefault((t.model_id, t.purpose), []).append(CallFacts(
                recorded.started, output is None, update["input_tokens"], update["cached_input_tokens"],
                update["output_tokens"], update["cost_usd"], job.simulated, update["reasoning_tokens"], call_id))
            if retry and retry[-1].item_id == t.item_id and retry[-1].model_id == t.model_id and retry[-1].purpose == t.purpose:
                continue  # another try of this call follows: its answer is not in yet
            if t.purpose == "drift":
                references[t.item_id] = output
            else:
                answers[t.item_id][t.model_id] = Answer(output, call_id, error)
                if error:
                    last_error[t.item_id] = error
        # Move every item whose current stage has all its answers: accept, or go to the next stage.
        waiting = {t.item_id for t in retry if t.purpose != "drift"}
        advance: list[PlannedCall] = []
        for item_id in texts:
            if item_id in finished_items or item_id in waiting or item_id in held_back:
                continue
            models = stages[stage[item_id]]
            got = answers[item_id]
            if any(m not in got for m in models):
                continue
            outputs = [got[m].output for m in models]
            if outputs[0] is not None and all(o == outputs[0] for o in outputs):
                finished_items[item_id] = _item_row(item_id, ItemStatus.DONE, outputs[0], None, got[models[0]].call_id, finished)
                continue
            nxt = next((i for i in range(stage[item_id] + 1, len(stages))
                        if all(chunk.callable(catalog, m, stopped) and m not in got for m in stages[i])), None)
            if nxt is not None:
                stage[item_id] = nxt
                advance.extend(PlannedCall(item_id, m, chunk.purpose) for m in stages[nxt])
            elif _only_stopped_left(catalog, stages, stage[item_id], got, stopped):
                held_back.append(item_id)  # a stopped provider, not the item, is at fault: keep it for later
                blocked = True
            else:
                reason = last_error.get(item_id) or (f"models disagreed ({', '.join(f'{m}: {got[m].output}' for m in models)}) "
                                                     "and no stronger model is left")
                finished_items[item_id] = _item_row(item_id, ItemStatus.FAILED, None, reason, got[models[-1]].call_id, finished)
        if advance and reservation_ids:
            with session_scope(settings) as session:
                extra = reserve_more(settings, catalog, chunk, session, advance, texts)
            if extra is None:  # the budget cannot take the escalation: hand those items back
                held_back.extend(sorted({t.item_id for t in advance}))
                advance = []
            elif extra:
                reservation_ids.append(extra)
        tries = retry + advance
        if tries:
            def next_round(session: Any, done_calls: list[dict[str, Any]] = unwritten, planned: list[PlannedCall] = tries) -> Recorded:
                repo.finish_calls(session, done_calls)  # this round's outcomes, with the next round's rows
                return record_calls(session, catalog, chunk.common, planned)

            recorded = _write_retrying(settings, next_round)
            unwritten = []
            if retry:
                time.sleep(min(max(waits), MAX_WAIT_S) * (1 + random.random() * 0.25))  # jitter spreads the herd
    return Executed(finished_items, answers, held_back, unwritten, facts, references, reservation_ids, newly_stopped, blocked,
                     {row.id: row.attempts for row in batch.items})


def finish(settings: Settings, catalog: Catalog, chunk: ChunkContext, executed: Executed, *, write_items: bool) -> tuple[int, int]:
    """Write the batch's outcome in one transaction: calls, items and counts (unless `write_items` is
    false: calibration writes only its calls), rollups, drift counts, settlement."""
    job = chunk.job
    finished_items, held_back, facts = executed.finished_items, executed.held_back, executed.facts
    references, newly_stopped = executed.references, executed.newly_stopped
    rows = [{**row, "held": executed.held[item_id]} for item_id, row in finished_items.items()] if write_items else []
    if not write_items:
        held_back = []
    done = sum(1 for row in rows if row["status"] == ItemStatus.DONE)
    failed = len(rows) - done
    baseline = _baseline_rates(catalog, job)
    final_calls = {row["final_call_id"] for row in finished_items.values()}  # one per item, for the baseline
    rollups = [
        row
        for (model_id, purpose), group in facts.items()
        for row in rollup_rows(group, tenant_id=job.tenant_id, team_id=job.team_id, job_id=job.id, model_id=model_id,
                               provider=catalog.model(model_id).provider, task=job.task, purpose=purpose,
                               timezone=job.timezone, baseline_rates=baseline if purpose == "run" else None,
                               baseline_calls=final_calls)
    ]
    checked = agreed = 0
    for item_id, reference in references.items():
        row = finished_items.get(item_id)
        if reference is not None and row is not None and row["status"] == ItemStatus.DONE:
            checked += 1
            agreed += row["output"] == reference
    actual = sum((f.cost_usd for group in facts.values() for f in group), Decimal(0))

    def write(session: Any) -> list[dict[str, Any]]:
        repo.finish_batch(session, job_id=job.id, calls=executed.unwritten, items=rows, rollups=rollups, now=utcnow())
        if held_back:
            repo.release_items(session, [(item_id, executed.held[item_id]) for item_id in held_back])
        if checked:
            repo.add_drift_counts(session, job_id=job.id, model_id=chunk.route.model_id, checked=checked, agreed=agreed)
        for provider, why in newly_stopped.items():
            repo.stop_provider(session, job_id=job.id, provider=provider, why=why)
        alerts = []
        spend = actual
        for reservation_id in executed.reservation_ids:
            alert = budgets.settle(session, reservation_id=reservation_id, actual_usd=spend, now=utcnow())
            spend = Decimal(0)  # the first reservation takes the spend; the others are released
            if alert:
                alerts.append(alert)
        return alerts

    alerts = _write_retrying(settings, write)
    for alert in alerts:
        alerts.send_alert(alert, settings)
    chunk.stopped.update(newly_stopped)  # the chunk's next batches skip them too
    if executed.blocked and write_items:
        pause(settings, chunk, [], reason="provider", detail="; ".join(chunk.stopped.values()))
    if checked:
        drift.check(settings, catalog, job_id=job.id)
    return done, failed


# While Postgres is unreachable, a write of calls already made is tried again after 0.5 s, 1 s, 2 s ...
# (at most 10 s apart) until half the lease has passed: the calls were made, so their record must
# land; if it cannot, the items are taken over after the lease and their calls charged as unknown.
DB_RETRY_FIRST_S = 0.5
DB_RETRY_MAX_S = 10.0
T = TypeVar("T")


def _baseline_rates(catalog: Catalog, job: JobSnapshot) -> BaselineRates | None:
    """How the job's rollups price its run calls on its baseline model (None: it has none)."""
    if job.baseline_input_usd_per_mtok is None:
        return None
    known = catalog.models.get(job.baseline_model_id or "")
    return BaselineRates(job.baseline_input_usd_per_mtok, job.baseline_output_usd_per_mtok,
                         (known.thinking or 0) if known else 0)


def _write_retrying(settings: Settings, write: Callable[[Any], T]) -> T:
    """Run `write` in one transaction, trying again while the database is unreachable."""
    deadline = time.monotonic() + settings.lease_s / 2
    delay = DB_RETRY_FIRST_S
    while True:
        try:
            with session_scope(settings) as session:
                return write(session)
        except (OperationalError, InterfaceError):
            if time.monotonic() + delay > deadline:
                raise
            log.warning("database unreachable while recording a batch; trying again in %.1f s", delay)
            time.sleep(delay * (1 + random.random() * 0.25))
            delay = min(delay * 2, DB_RETRY_MAX_S)


def _only_stopped_left(catalog: Catalog, stages: list[tuple[str, ...]], current: int, got: dict[str, Answer],
                       stopped: dict[str, str]) -> bool:
    """True when the item failed only because providers were stopped: its answers all errored on a
    stopped provider, so a later resume (after the key is fixed) can still run it."""
    return bool(stopped) and all(a.output is None and a.error is not None for a in got.values()) and any(
        catalog.model(m).provider in stopped for m in got)


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


@dataclass(frozen=True, slots=True)
class Recorded:
    ids: list[str]  # call id per try, in order
    started: Any


def record_calls(session: Any, catalog: Catalog, common: dict[str, Any], tries: list[PlannedCall]) -> Recorded:
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


def _parse(text: str, task: str, labels: tuple[str, ...]) -> tuple[str | None, str | None]:
    """(answer, None) when the answer is usable, else (None, why)."""
    if task == "classify":
        label = parse_label(text, labels)
        if label is None:
            return None, f"answer {text[:80]!r} names no single label"
        return label, None
    return text.strip(), None


def _item_row(item_id: int, status: str, output: str | None, error: str | None, call_id: str, now: Any) -> dict[str, Any]:
    return {"id": item_id, "status": status, "output": output, "error": error, "final_call_id": call_id,
            "finished_at": now, "lease_until": None}


async def call_all(
    catalog: Catalog, settings: Settings, simulated: bool, requests: Sequence[tuple[int, str, ChatRequest]],
) -> list[tuple[int, Completion | ProviderError, float]]:
    providers = {name: await get_provider(catalog, settings, name, simulated=simulated) for name in {p for _, p, _ in requests}}
    gate = runtime.gate(settings.calls_in_flight)
    limits = None if simulated else shared_limits(settings)
    models = _models_by_wire_name(catalog)
    return await asyncio.gather(*(call_one(providers[name], gate, key, request, limits, models.get((name, request.model)))
                                  for key, name, request in requests))


_WIRE_NAMES: weakref.WeakKeyDictionary[Catalog, dict[tuple[str, str], Any]] = weakref.WeakKeyDictionary()


def _models_by_wire_name(catalog: Catalog) -> dict[tuple[str, str], Any]:
    """(provider, API model name) -> model, built once per catalog."""
    found = _WIRE_NAMES.get(catalog)
    if found is None:
        found = _WIRE_NAMES[catalog] = {(m.provider, m.api_model): m for m in catalog.models.values()}
    return found


async def call_one(
    provider: Provider, gate: asyncio.Semaphore, key: int, request: ChatRequest, limits: SharedLimits | None = None,
    model: Any = None,
) -> tuple[int, Completion | ProviderError, float]:
    async with gate:
        if limits is not None:
            try:
                if not limits.known_clean(provider.name):
                    breaker = await limits.breaker(provider.name)
                    if not breaker.allowed:
                        return key, CircuitOpen(breaker.reason, provider=provider.name), 0.0
                if model is not None and (model.rpm or model.tpm):
                    tokens = (len(request.system) + len(request.prompt)) // 4 + request.output_cap
                    await limits.acquire(model.model_id, rpm=model.rpm, tpm=model.tpm, tokens=tokens)
            except Exception as exc:  # shared limits unreachable: call anyway; the provider's 429s still hold us back
                log.warning("shared rate limits unavailable (%s); calling without them", exc)
        started = time.perf_counter()
        try:
            result: Completion | ProviderError = await provider.complete(request)
        except ProviderError as exc:
            result = exc
        except Exception as exc:  # a bug or an unmapped client error must fail the item, not the chunk
            result = ProviderError(f"unexpected {type(exc).__name__}: {exc}", provider=provider.name)
        elapsed = time.perf_counter() - started
        if limits is not None and (isinstance(result, ProviderError) or not limits.known_clean(provider.name)
                                   or (model is not None and (model.rpm or model.tpm))):
            failing = isinstance(result, ProviderError)
            rate_limited = failing and result.status_code == 429  # type: ignore[union-attr]
            try:
                # A 5xx, a timeout or a broken connection counts against the provider; a 429 slows the model.
                await limits.record(provider.name, failed=failing and result.retryable and not rate_limited)  # type: ignore[union-attr]
                if model is not None:
                    await limits.observe(model.model_id, rpm=model.rpm, tpm=model.tpm, rate_limited=rate_limited,
                                         retry_after=result.retry_after if rate_limited else None)  # type: ignore[union-attr]
            except Exception as exc:  # the call is made and will be recorded; losing one observation is harmless
                log.warning("shared rate limits unavailable (%s)", exc)
        return key, result, elapsed


def run_job_inline(
    settings: Settings, catalog: Catalog, *, job_id: str, n_items: int,
    progress: Callable[[ChunkOutcome], None] | None = None,
) -> None:
    """Run every chunk of a job in this process (the embedded default: no broker, no worker)."""
    # SQLite takes one writer at a time; a server database takes as many chunks as a worker would.
    threads = 1 if settings.is_sqlite else settings.worker_threads
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pennyroute-chunk") as pool:
        futures = [
            pool.submit(run_chunk, settings, catalog, job_id=job_id, lo=lo, hi=hi)
            for lo, hi in chunk_ranges(n_items, settings.chunk_size)
        ]
        try:
            for future in futures:
                outcome = future.result()
                if progress:
                    progress(outcome)
        finally:
            runtime.run(close_all())  # this process is done with providers: close their connections

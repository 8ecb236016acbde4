"""Ingesting a wave of provider batches once every batch of it has ended, exactly once: results
streamed a page at a time, each line settling its call row while in flight, items decided as the
synchronous path decides them, and what follows (a next wave, or the rest synchronously) recorded in
the same transaction. engine/batch_mode.py has the whole picture.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlmodel import Session

from policies.escalation import ACCEPT, ESCALATE, FAIL, HOLD, after_stage
from router import metrics
from router.catalog import Catalog
from router.engine import alerts, drift, runtime
from router.engine.batch import (
    Batch,
    ChunkContext,
    PlannedCall,
    blank_update,
    pause,
    record_calls,
    reserve_more,
    rollups,
)
from router.engine.batch_submit import (
    ERROR_CHARS,
    Part,
    aware,
    batch_api_of,
    create_parts,
    record_wave,
    stage_in_batch,
)
from router.engine.rounds import Answer, drift_tally, execute, parse_answer
from router.engine.settle import finish
from router.ledger import budgets, repo
from router.ledger.db import session_scope
from router.ledger.rollup import CallFacts
from router.ledger.tables import BatchState, CallStatus, ItemStatus, JobStatus, utcnow
from router.ledger.types import ClaimedItem
from router.providers import batch_api as wire
from router.providers.base import OUTCOME_OF_FINISH
from router.redact import configured_secrets, redact
from router.settings import Settings
from router.usage import TokenUsage

# An item's stage is sent in batch at most this many times; lines still undone then run synchronously.
MAX_BATCH_ROUNDS = 3
# Result lines settled per statement while a wave is ingested (streamed: never the whole file at once).
INGEST_PAGE = 1000


# -- ingest ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Ingest:
    """A wave's results as they are read: answers per item and model, drift answers, rows to write."""

    answers: dict[int, dict[str, Answer]] = field(default_factory=dict)
    references: dict[int, str | None] = field(default_factory=dict)
    rerun: set[int] = field(default_factory=set)  # items a line of which must run again
    facts: dict[tuple[str, str], list[CallFacts]] = field(default_factory=dict)
    written: set[str] = field(default_factory=set)  # call ids settled by this ingest
    spent_usd: Decimal = Decimal(0)
    settled: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    by_provider: dict[tuple[str, str], int] = field(default_factory=dict)  # (provider, line outcome) -> lines


async def _page(results: AsyncIterator[wire.LineResult], size: int) -> list[wire.LineResult]:
    page: list[wire.LineResult] = []
    async for line in results:
        page.append(line)
        if len(page) >= size:
            break
    return page


def ingest_wave(settings: Settings, catalog: Catalog, *, wave: str, at: datetime | None = None) -> bool:
    """Settle a wave whose batches have all ended, exactly once (see the module's docstring); then
    create its next wave or run what is left synchronously (decided as at `at`, by default now).
    Returns whether this call ingested it."""
    secrets = configured_secrets(settings)
    with session_scope(settings) as session:
        batches = repo.wave_batches(session, wave=wave, for_update=True)
        if not batches or any(b.state not in (BatchState.ENDED, BatchState.FAILED) for b in batches):
            return False  # ingested already (by another poller), or not ended
        job = repo.job_for_chunk(session, batches[0].job_id)
        assert job is not None  # a provider batch belongs to a job
        chunk = ChunkContext.build(catalog, job)
        calls = {c.id: c for c in repo.batch_calls(session, [b.id for b in batches])}
        stage_of_batch = {b.id: b.stage for b in batches}
        got = _Ingest()
        now = utcnow()
        for b in batches:
            if b.state != BatchState.ENDED or b.batch_id is None:
                continue
            api = runtime.run(batch_api_of(catalog, settings, b.provider, b.simulated))
            if api is None:
                continue
            results = api.results(b.batch_id)
            while page := runtime.run(_page(results, INGEST_PAGE)):
                _settle_page(session, catalog, chunk, calls, page, got, now, secrets)
        # Lines the provider gave no result for (a batch refused whole, or a line missing): not run.
        missing = [c for c in calls.values() if c.status == CallStatus.IN_FLIGHT and c.id not in got.written]
        _settle_unrun(session, chunk, missing, got, now)
        item_stage = {c.item_id: stage_of_batch[c.provider_batch_id] for c in calls.values() if c.purpose != "drift"}
        plan_next = _resolve(session, settings, catalog, chunk, got, item_stage, batches, now, at or now)
        for b in batches:
            repo.update_provider_batch(session, b.id, state=BatchState.INGESTED, ingested_at=now)
        found_alerts: list[dict[str, Any]] = []
        reservation = next((b.reservation_id for b in batches if b.reservation_id), None)
        if reservation is not None:
            alert = budgets.settle(session, reservation_id=reservation, actual_usd=got.spent_usd, now=now)
            if alert:
                found_alerts.append(alert)
        repo.add_job_event(
            session,
            job_id=job.id,
            kind="batch_ingested",
            detail={
                "wave": wave,
                "batches": len(batches),
                "lines": got.settled,
                "outcomes": got.outcomes,
                "spent_usd": str(got.spent_usd),
                "next": plan_next.summary(),
            },
        )
    for (provider, outcome), n in got.by_provider.items():  # counted once committed: a retried ingest counts once
        metrics.count_batch_lines(provider=provider, outcome=outcome, n=n)
    for alert in found_alerts:
        alerts.send_alert(alert, settings)
    create_parts(settings, catalog, plan_next.parts)
    if plan_next.paused:
        pause(settings, chunk, plan_next.paused)
    if plan_next.blocked:
        pause(settings, chunk, [], reason="provider", detail="; ".join(chunk.stopped.values()))
    if plan_next.sync_tries:
        run_sync(settings, catalog, chunk, plan_next.sync_stage, plan_next.sync_tries)
    if plan_next.checked:
        drift.check(settings, catalog, job_id=job.id)
    return True


def _settle_page(
    session: Session,
    catalog: Catalog,
    chunk: ChunkContext,
    calls: dict[str, Any],
    page: list[wire.LineResult],
    got: _Ingest,
    now: datetime,
    secrets: frozenset[str],
) -> None:
    """Settle one page of result lines: each line's call row, while still in flight."""
    updates: list[dict[str, Any]] = []
    meaning: dict[str, tuple[Any, wire.LineResult, str | None, str | None, str | None, bool]] = {}
    for line in page:
        call = calls.get(line.custom_id)
        if call is None or call.status != CallStatus.IN_FLIGHT or call.id in meaning or call.id in got.written:
            continue  # not ours, settled before (a second ingest), or given twice
        price = catalog.price(call.model_id, call.started_at)
        usage = line.usage or (line.completion.usage if line.completion is not None else None)
        update = _blank(call.id, now, call.started_at)
        output = error = outcome = None
        again = False
        if line.outcome == wire.SUCCEEDED and line.completion is not None:
            update.update(
                status=CallStatus.OK,
                finish=line.completion.finish,
                **_charged(line.completion.usage, price, call.price_multiplier),
            )
            output, error = parse_answer(line.completion, chunk.labels, chat=chunk.chat)
            if output is None:
                outcome = OUTCOME_OF_FINISH.get(line.completion.finish)
                update["error"] = redact(error or "", secrets)[:ERROR_CHARS] or None
        else:
            said = redact(line.error or line.outcome, secrets)
            if usage is not None:  # billed though not answered (an expired line the provider still charged)
                update.update(**_charged(usage, price, call.price_multiplier))
                said = f"{line.outcome}, billed (charged with its tokens): {said}"
            else:
                said = f"{line.outcome}, not billed: {said}"
            update.update(status=CallStatus.ERROR, error=said[:ERROR_CHARS])
            error = said[:ERROR_CHARS]
            again = line.outcome in (wire.EXPIRED, wire.CANCELED) or (line.outcome == wire.ERRORED and line.retryable)
        updates.append(update)
        meaning[call.id] = (call, line, output, error, outcome, again)
    written = repo.settle_calls(session, updates)
    for update in updates:
        if update["id"] not in written:
            continue
        call, line, output, error, outcome, again = meaning[update["id"]]
        _count(got, chunk, call, update, output, error, outcome, again, line.outcome)


def _settle_unrun(session: Session, chunk: ChunkContext, missing: list[Any], got: _Ingest, now: datetime) -> None:
    updates = []
    for call in missing:
        update = _blank(call.id, now, call.started_at)
        update.update(status=CallStatus.ERROR, error="not run: the batch was refused, or gave no result for the line")
        updates.append(update)
    written = repo.settle_calls(session, updates)
    by_id = {c.id: c for c in missing}
    for update in updates:
        if update["id"] in written:
            _count(got, chunk, by_id[update["id"]], update, None, update["error"], None, True, "not_run")


def _count(
    got: _Ingest,
    chunk: ChunkContext,
    call: Any,
    update: dict[str, Any],
    output: str | None,
    error: str | None,
    outcome: str | None,
    again: bool,
    line_outcome: str,
) -> None:
    """A line written: its answer, its rollup facts, what it cost."""
    got.written.add(call.id)
    got.settled += 1
    got.outcomes[line_outcome] = got.outcomes.get(line_outcome, 0) + 1
    got.by_provider[(call.provider, line_outcome)] = got.by_provider.get((call.provider, line_outcome), 0) + 1
    got.spent_usd += update["cost_usd"]
    saved = update.pop("_saved")
    got.facts.setdefault((call.model_id, call.purpose), []).append(
        CallFacts.of_update(
            update,
            started_at=call.started_at,
            answered=output is not None,
            simulated=chunk.job.simulated,
            call_id=call.id,
            outcome=outcome,
            batch=True,
            batch_saved_usd=saved,
        )
    )
    if call.purpose == "drift":
        got.references[call.item_id] = output
    elif again:
        got.rerun.add(call.item_id)
    else:
        got.answers.setdefault(call.item_id, {})[call.model_id] = Answer(output, call.id, error)


def _blank(call_id: str, now: datetime, started: datetime | None) -> dict[str, Any]:
    latency = int((now - aware(started)).total_seconds() * 1000) if started is not None else None
    return {
        **blank_update(call_id, latency_ms=latency, finished_at=now),
        "status": CallStatus.ERROR,
        "_saved": Decimal(0),
    }


def _charged(usage: TokenUsage, price: Any, multiplier: Decimal) -> dict[str, Any]:
    """A batch line's tokens and cost: its usage at the list price times the batch multiplier."""
    standard = price.cost_usd(usage)
    cost = standard * multiplier
    return {
        "input_tokens": usage.input_tokens,
        "cached_input_tokens": usage.cached_input_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "output_tokens": usage.output_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "usage_estimated": usage.estimated,
        "cost_usd": cost,
        "_saved": standard - cost,
    }


@dataclass(slots=True)
class _Next:
    """What follows a wave: batches to create, items to run synchronously, items handed back."""

    parts: list[Part] = field(default_factory=list)
    sync_stage: dict[int, int] = field(default_factory=dict)
    sync_tries: list[PlannedCall] = field(default_factory=list)
    paused: list[ClaimedItem] = field(default_factory=list)  # the budget cannot take them: handed back
    blocked: bool = False  # items handed back because only stopped providers are left to them
    checked: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, int]:
        return {**self.counts, "next_batches": len(self.parts), "sync_calls": len(self.sync_tries)}


def _resolve(
    session: Session,
    settings: Settings,
    catalog: Catalog,
    chunk: ChunkContext,
    got: _Ingest,
    item_stage: dict[int, int],
    batches: list[Any],
    now: datetime,
    at: datetime,
) -> _Next:
    """Decide each item of the wave (done, failed, again, escalated), write the finished ones with the
    wave's rollups and drift counts, and record the next wave's lines (in this transaction)."""
    job = chunk.job
    out = _Next()
    held = {row.id: row for row in repo.held_items(session, sorted(item_stage)) if row.id in item_stage}
    status = repo.job_status(session, job.id)
    cancelled = status == JobStatus.CANCELLED
    stages = chunk.route.stages()
    for b in batches:  # the wave is judged on the models it was sent to (a re-route since moves later stages only)
        if b.stage_models and b.stage < len(stages):
            stages[b.stage] = tuple(b.stage_models)
    stopped = dict(job.stopped_providers or {})
    route_models = list(dict.fromkeys([*chunk.route.models(), *(m for stage in stages for m in stage)]))
    callable_models = frozenset(m for m in route_models if chunk.callable(catalog, m, stopped))
    stopped_models = frozenset(m for m in route_models if m in catalog.models and catalog.model(m).provider in stopped)
    finished: dict[int, dict[str, Any]] = {}
    held_back: list[Any] = []
    baseline: set[str] = set()
    again: dict[int, int] = {}  # item id -> the stage it runs next
    round_no = max(b.round for b in batches)
    for item_id, row in held.items():
        stage = item_stage[item_id]
        answers = got.answers.get(item_id, {})
        decision_kind: str
        next_stage: int | None
        reason: str | None
        if item_id in got.rerun:
            decision_kind, next_stage, reason = "again", stage, None
        else:
            decision = after_stage(
                stages=stages,
                current=stage,
                answers=answers,
                callable_models=callable_models,
                stopped_models=stopped_models,
            )
            decision_kind, next_stage, reason = decision.kind, decision.stage, decision.reason
        if decision_kind == ACCEPT:
            first = answers[stages[stage][0]]
            finished[item_id] = _item_row(item_id, ItemStatus.DONE, first.output, None, first.call_id, now)
            baseline.add(first.call_id)
        elif decision_kind == FAIL or (cancelled and decision_kind in ("again", ESCALATE)):
            why = "cancelled" if cancelled and decision_kind != FAIL else reason
            failing = [a for a in answers.values() if a.error == reason] or list(answers.values())
            call_id = failing[-1].call_id if failing else None
            finished[item_id] = _item_row(item_id, ItemStatus.FAILED, None, why, call_id, now)
            if call_id:
                baseline.add(call_id)
        elif decision_kind == HOLD:
            held_back.append(row)
        else:
            again[item_id] = next_stage if next_stage is not None else stage
        out.counts[str(decision_kind)] = out.counts.get(str(decision_kind), 0) + 1
    rows = rollups(catalog, job, got.facts, baseline_calls=baseline)
    items = [{**r, "held": held[item_id].attempts} for item_id, r in finished.items()]
    repo.finish_batch(session, job_id=job.id, calls=[], items=items, rollups=rows, now=now)
    checked, agreed = drift_tally(finished, got.references)
    if checked:
        repo.add_drift_counts(session, job_id=job.id, model_id=chunk.route.model_id, checked=checked, agreed=agreed)
    out.checked = checked
    if held_back:  # a stopped provider: the held items go back, and the job pauses (after the commit)
        repo.release_items(session, [(row.id, row.attempts) for row in held_back])
        out.blocked = True
    if not again:
        return out
    # What runs next: each stage in batch while the deadline leaves room (a re-run at most
    # MAX_BATCH_ROUNDS times), else synchronously.
    by_stage: dict[int, list[int]] = {}
    for item_id, stage in again.items():
        by_stage.setdefault(stage, []).append(item_id)
    for stage, item_ids in sorted(by_stage.items()):
        rerun = all(item_stage[i] == stage for i in item_ids)
        batch_ok = stage_in_batch(catalog, chunk, stage, at, rerun=rerun) and (not rerun or round_no < MAX_BATCH_ROUNDS)
        tries = [PlannedCall(i, m, chunk.purpose) for i in item_ids for m in stages[stage]]
        if batch_ok:
            parts, refused = record_wave(
                session,
                settings=settings,
                catalog=catalog,
                chunk=chunk,
                items=[held[i] for i in item_ids],
                stage_of=dict.fromkeys(item_ids, stage),
                tries=tries,
                round_no=round_no + 1 if rerun else 1,
            )
            out.parts.extend(parts)
            if refused:
                repo.release_items(session, [(row.id, row.attempts) for row in refused])
                out.paused.extend(refused)  # pause() hands back nothing more: they are released here
        else:
            out.sync_stage.update(dict.fromkeys(item_ids, stage))
            out.sync_tries.extend(tries)
    return out


def _item_row(
    item_id: int, status: str, output: str | None, error: str | None, call_id: str | None, now: datetime
) -> dict[str, Any]:
    return {
        "id": item_id,
        "status": status,
        "output": output,
        "error": error,
        "final_call_id": call_id,
        "finished_at": now,
        "lease_until": None,
    }


def run_sync(
    settings: Settings, catalog: Catalog, chunk: ChunkContext, stage_of: dict[int, int], tries: list[PlannedCall]
) -> None:
    """Run items' next stage synchronously (a near deadline, or lines a batch left undone too often):
    the sync engine's own path (engine/rounds.py execute, engine/settle.py finish), from that stage."""
    with session_scope(settings) as session:
        items = list(repo.held_items(session, sorted(stage_of)))
        ids = {row.id for row in items}
        tries = [t for t in tries if t.item_id in ids]
        if not tries:
            return
        reservation_ids: list[str] = []
        held: str | None = ""
        if chunk.job.has_budget:
            held = reserve_more(
                session,
                settings=settings,
                catalog=catalog,
                chunk=chunk,
                tries=tries,
                texts={row.id: row.text for row in items},
            )
        if held:
            reservation_ids.append(held)
        if held is not None:
            repo.extend_lease(
                session,
                [(row.id, row.attempts) for row in items],
                until=utcnow() + timedelta(seconds=settings.lease_s),
            )
            recorded = record_calls(session, catalog=catalog, common=chunk.common, tries=tries)
    if held is None:  # the budget cannot take them: they go back, and the job pauses
        pause(settings, chunk, items)
        return
    batch = Batch(
        items=items,
        stage={row.id: stage_of[row.id] for row in items},
        tries=tries,
        recorded=recorded,
        reservation_ids=reservation_ids,
    )
    executed = execute(settings, catalog, chunk, batch, write_items=True)
    finish(settings, catalog, chunk, executed, write_items=True)

"""Running a job's work on the providers' batch APIs: submit a wave of lines, poll, ingest, go on.

    submit   claim items (engine/chunk.py), plan their calls, reserve the worst case at the batch
             price, write every line's call row (mode batch, id = custom_id) and the wave's
             provider_batch rows (state creating), commit; then `create` each batch and record the
             provider's id. A worker that dies between the commit and recording the id leaves a row in
             `creating`: the poller asks the provider for it by tag (`find`) and creates it only if
             the provider has none, so nothing is created twice.
    poll     short looks (Celery beat's poll_batches_task; in-process, `wait_for_batches`): each open
             batch's state; a batch still open when the deadline comes near is cancelled (its undone
             lines run synchronously); a cancelled job's batches are cancelled.
    ingest   once every batch of a wave has ended, in one transaction: stream each batch's results a
             page at a time; each line settles its call row only while it is in flight, at its own
             usage times the list price times the multiplier kept on the row (a line ingested twice is
             settled once; a line billed though expired is charged); items whose stage answered are
             written done or failed (policies.escalation.after_stage, as the sync path decides);
             errored, expired or cancelled lines re-run their item's stage, and a cascade's
             escalations run the next stage: in a next wave (its rows written in the same transaction)
             while the deadline leaves room, else synchronously; the wave's reservation is settled.

The provider_batch rows are the truth: a killed worker or beat, a flushed Redis or a restarted
Postgres lose nothing, since polling starts again from the rows.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlmodel import Session

from policies.budget_fit import items_that_fit
from policies.escalation import ACCEPT, ESCALATE, FAIL, HOLD, after_stage
from policies.execution_mode import BATCH, BatchOffer, cancel_open_batch, rerun_mode, stage_mode
from router.catalog import Catalog
from router.engine import alerts, drift, runtime
from router.engine.batch import Batch, ChunkContext, PlannedCall, pause, plan, record_calls, reserve_more, rollups
from router.engine.rounds import Answer, drift_tally, execute, parse_answer
from router.engine.settle import finish
from router.errors import ProviderError
from router.ledger import budgets, repo
from router.ledger.db import get_engine, session_scope
from router.ledger.rollup import CallFacts
from router.ledger.tables import BatchState, CallMode, CallStatus, ItemStatus, JobStatus, utcnow
from router.ledger.types import ClaimedItem, JobSnapshot
from router.providers import batch_api as wire
from router.providers.base import OUTCOME_OF_FINISH, ChatRequest
from router.providers.registry import get_batch_api, has_batch_api
from router.redact import configured_secrets, redact
from router.settings import Settings
from router.usage import TokenUsage

log = logging.getLogger("pennyroute.engine")

# Items one claim of a batch-mode job sends to batch (jobs/lifecycle.py hands such jobs over in ranges
# this large): a provider batch of 10,000 lines is far below every vendor's limit (50,000 to 100,000)
# and its call rows are one insert; the vendors' per-batch overhead makes 100-line batches wasteful.
WAVE_ITEMS = 10_000
# An item's stage is sent in batch at most this many times; lines still undone then run synchronously.
MAX_BATCH_ROUNDS = 3
# Items whose lines are in a batch are held for the batch's window plus this (then another worker may
# take them over, charging their calls in flight at their worst case, as a dead worker's).
LEASE_MARGIN_S = 3600
# Result lines settled per statement while a wave is ingested (streamed: never the whole file at once).
INGEST_PAGE = 1000
# A batch row left `creating` is recovered (find, else create) only after this long, so a poller does
# not race the worker still inside `create` (its HTTP call ends within request_timeout_s).
MIN_CREATE_GRACE_S = 300.0
ERROR_CHARS = 2000
# The in-process runner looks at open batches this often at most (the sandbox's answer at once).
INLINE_POLL_MAX_S = 1.0
# A provider's batch state, in our books.
_STATE = {
    wire.PENDING: BatchState.PENDING,
    wire.RUNNING: BatchState.RUNNING,
    wire.ENDED: BatchState.ENDED,
    wire.FAILED: BatchState.FAILED,
}


# -- what goes to batch ------------------------------------------------------------------------------


def time_left_s(job: JobSnapshot, now: datetime) -> float | None:
    """Seconds until the job's deadline; None when it has none."""
    return None if job.deadline_at is None else (aware(job.deadline_at) - now).total_seconds()


def aware(moment: datetime) -> datetime:
    """A time read back from the ledger, with its zone: SQLite gives it back without one (it is UTC)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def offers(catalog: Catalog, models: Sequence[str], *, simulated: bool) -> tuple[BatchOffer, ...]:
    """What each model's provider offers in batch (policies.execution_mode's inputs)."""
    out = []
    for model_id in models:
        info = catalog.models.get(model_id)
        provider = catalog.providers.get(info.provider) if info is not None else None
        if info is None or provider is None:
            out.append(BatchOffer(model_id, "unknown", False, None, None))
            continue
        out.append(
            BatchOffer(
                model_id=model_id,
                provider=provider.name,
                has_batch_api=has_batch_api(catalog, provider.name, simulated=simulated),
                window_s=provider.batch_window_h * 3600 if provider.batch_window_h else None,
                multiplier=provider.batch_multiplier,
                region_sync_only=info.region_sync_only,
            )
        )
    return tuple(out)


def stage_in_batch(catalog: Catalog, chunk: ChunkContext, stage: int, now: datetime, *, rerun: bool = False) -> bool:
    """Whether the route's `stage` goes to batch now: the job's decision put its bulk in batch, and the
    policy, asked with the time left now, still says batch (a re-run: while there is room for one)."""
    job = chunk.job
    if not job.execution or job.execution.get("bulk") != BATCH:
        return False
    stages = chunk.route.stages()
    if stage >= len(stages):
        return False
    stage_offers = offers(catalog, stages[stage], simulated=job.simulated)
    left = time_left_s(job, now)
    mode, _ = stage_mode(stage_offers, requested=job.mode, time_left_s=left, region_constrained=bool(job.regions))
    if mode != BATCH:
        return False
    if rerun:
        window = min(o.window_s or 0 for o in stage_offers)
        return rerun_mode(time_left_s=left, window_s=window) == BATCH
    return True


def _multiplier(catalog: Catalog, model_id: str) -> Decimal:
    return catalog.providers[catalog.model(model_id).provider].batch_multiplier or Decimal(1)


def _window_s(catalog: Catalog, model_id: str) -> int:
    return (catalog.providers[catalog.model(model_id).provider].batch_window_h or 24) * 3600


def line_request(chunk: ChunkContext, catalog: Catalog, model_id: str, text: str, call_id: str) -> ChatRequest:
    """The chat call a batch line carries (as engine/rounds.py builds a synchronous one)."""
    info = catalog.model(model_id)
    return ChatRequest(
        model=info.api_model,
        system=chunk.spec.system,
        prompt=text,
        max_output_tokens=chunk.spec.max_output_tokens,
        request_id=call_id,
        thinking_tokens=info.thinking,
        reasoning_effort=info.reasoning_effort,
    )


# -- submit ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Part:
    """One provider batch to create: its row's id (the tag), its model and its lines."""

    tag: str
    provider: str
    model_id: str
    simulated: bool
    lines: list[wire.BatchLine] = field(default_factory=list)


def submit_wave(
    settings: Settings, catalog: Catalog, chunk: ChunkContext, items: Sequence[ClaimedItem]
) -> list[ClaimedItem]:
    """Send claimed items' first calls to batch (one wave); returns the items not sent (their stage
    cannot go to batch now: they run synchronously). Items the budget cannot take are handed back and
    the job pauses."""
    now = utcnow()
    stage_of, by_item = plan(catalog, chunk, items)
    batchable = {s: stage_in_batch(catalog, chunk, s, now) for s in set(stage_of.values())}
    taken = [row for row in items if by_item[row.id] and batchable.get(stage_of[row.id], False)]
    taken_ids = {row.id for row in taken}
    left = [row for row in items if row.id not in taken_ids]
    if not taken:
        return left
    with session_scope(settings) as session:
        parts, refused = record_wave(
            session,
            settings=settings,
            catalog=catalog,
            chunk=chunk,
            items=taken,
            stage_of=stage_of,
            tries=[t for row in taken for t in by_item[row.id]],
            round_no=1,
        )
    if refused:
        pause(settings, chunk, refused)
    create_parts(settings, catalog, parts)
    return left


def record_wave(
    session: Session,
    *,
    settings: Settings,
    catalog: Catalog,
    chunk: ChunkContext,
    items: Sequence[ClaimedItem],
    stage_of: dict[int, int],
    tries: Sequence[PlannedCall],
    round_no: int,
) -> tuple[list[_Part], list[ClaimedItem]]:
    """In `session`: reserve the worst case of as many of `items` as the budget takes (at the batch
    price, held for the window), write their lines' call rows and the wave's provider_batch rows, and
    hold the items for the window. Returns the batches to create (after the commit) and the items the
    budget refused (to hand back)."""
    now = utcnow()
    texts = {row.id: row.text for row in items}
    per_item: dict[int, list[PlannedCall]] = {}
    for t in tries:
        per_item.setdefault(t.item_id, []).append(t)
    items = [row for row in items if row.id in per_item]
    window_s = max(_window_s(catalog, t.model_id) for t in tries)
    reservation_id = None
    refused: list[ClaimedItem] = []
    if chunk.job.has_budget:
        period = budgets.fresh_period(session, team_id=chunk.job.team_id, now=now)
        if period is not None:
            worst = [
                sum(
                    (
                        chunk.worst_case_usd(catalog, t.model_id, texts[row.id], now) * _multiplier(catalog, t.model_id)
                        for t in per_item[row.id]
                    ),
                    Decimal(0),
                )
                for row in items
            ]
            count = items_that_fit(worst, budgets.remaining_usd(period, settings))
            held = None
            if count:
                held = budgets.reserve(
                    session,
                    period=period,
                    amount_usd=sum(worst[:count], Decimal(0)),
                    job_id=chunk.job.id,
                    settings=settings,
                    now=now,
                    hold_s=window_s + LEASE_MARGIN_S,
                )
            if held is None:
                count = 0
            else:
                reservation_id = held.id
            refused, items = list(items[count:]), list(items[:count])
    if not items:
        return [], refused
    wave = uuid.uuid4().hex
    parts: list[_Part] = []
    rows: list[dict[str, Any]] = []
    by_model: dict[str, list[PlannedCall]] = {}
    for row in items:
        for t in per_item[row.id]:
            by_model.setdefault(t.model_id, []).append(t)
    simulated = chunk.job.simulated
    for model_id, model_tries in by_model.items():
        provider = catalog.model(model_id).provider
        api = runtime.run(_batch_api(catalog, settings, provider, simulated))
        if api is None:
            raise RuntimeError(f"{provider} has no batch API")  # stage_in_batch said it has: a catalog change
        multiplier = _multiplier(catalog, model_id)
        for group in _split(api.limits, model_tries, texts, api, chunk, catalog):
            tag = uuid.uuid4().hex
            recorded = record_calls(
                session,
                catalog=catalog,
                common=chunk.common,
                tries=group,
                extra={"mode": CallMode.BATCH, "price_multiplier": multiplier, "provider_batch_id": tag},
            )
            part = _Part(tag, provider, model_id, simulated)
            for t, call_id in zip(group, recorded.ids, strict=True):
                part.lines.append(
                    wire.BatchLine(call_id, line_request(chunk, catalog, model_id, texts[t.item_id], call_id))
                )
            parts.append(part)
            rows.append(
                {
                    "id": tag,
                    "job_id": chunk.job.id,
                    "wave": wave,
                    "provider": provider,
                    "model_id": model_id,
                    "state": BatchState.CREATING,
                    "n_lines": len(group),
                    "stage": stage_of[group[0].item_id],
                    "round": round_no,
                    "simulated": simulated,
                    "price_multiplier": multiplier,
                    "reserved_usd": Decimal(0),
                    "reservation_id": reservation_id,
                    "created_at": now,
                }
            )
    repo.insert_provider_batches(session, rows)
    repo.extend_lease(
        session,
        [(row.id, row.attempts) for row in items],
        until=now + timedelta(seconds=window_s + LEASE_MARGIN_S),
    )
    return parts, refused


def _split(
    limits: wire.BatchLimits,
    tries: list[PlannedCall],
    texts: dict[int, str],
    api: wire.BatchAPI,
    chunk: ChunkContext,
    catalog: Catalog,
) -> list[list[PlannedCall]]:
    """`tries` in groups that fit one batch: at most `max_lines` lines and `max_bytes` encoded bytes."""
    groups: list[list[PlannedCall]] = [[]]
    size = 0
    for t in tries:
        line = wire.BatchLine("0" * 32, line_request(chunk, catalog, t.model_id, texts[t.item_id], "0" * 32))
        nbytes = api.line_bytes(line)
        if groups[-1] and (len(groups[-1]) >= limits.max_lines or size + nbytes > limits.max_bytes):
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += nbytes
    return [g for g in groups if g]


async def _batch_api(catalog: Catalog, settings: Settings, provider: str, simulated: bool) -> wire.BatchAPI | None:
    return get_batch_api(catalog, settings, provider, simulated=simulated)


def create_parts(settings: Settings, catalog: Catalog, parts: Sequence[_Part]) -> None:
    """Create each batch at its provider and record its id. A create that fails in a way that may
    have reached the provider leaves the row `creating` (the poller finds it or creates it later);
    one refused outright fails the batch (its lines re-run)."""
    for part in parts:
        api = runtime.run(_batch_api(catalog, settings, part.provider, part.simulated))
        if api is None:
            continue
        api_model = catalog.model(part.model_id).api_model
        try:
            state = runtime.run(api.create(part.lines, model=api_model, tag=part.tag))
        except ProviderError as exc:
            _create_failed(settings, part.tag, exc)
            continue
        _record_created(settings, part.tag, state)


def _create_failed(settings: Settings, tag: str, exc: ProviderError) -> None:
    said = redact(str(exc), configured_secrets(settings))[:ERROR_CHARS]
    with session_scope(settings) as session:
        if exc.retryable or exc.maybe_billed:
            repo.update_provider_batch(session, tag, error=f"create failed, to be tried again: {said}")
        else:
            now = utcnow()
            repo.update_provider_batch(session, tag, state=BatchState.FAILED, error=said, ended_at=now)
    log.warning("provider batch %s: create failed: %s", tag, said)


def _record_created(settings: Settings, tag: str, state: wire.BatchState) -> None:
    with session_scope(settings) as session:
        repo.record_batch_created(
            session,
            tag=tag,
            batch_id=state.batch_id,
            state=_STATE.get(state.state, BatchState.RUNNING),
            vendor_status=state.vendor_status,
            now=utcnow(),
        )


# -- poll --------------------------------------------------------------------------------------------


def poll_batches(
    settings: Settings, catalog: Catalog, *, job_id: str | None = None, now: datetime | None = None
) -> int:
    """Look at every open batch (of one job, if given) once: recover those left `creating`, ask the
    provider the others' state, cancel those of cancelled jobs or past the deadline's reserve, then
    ingest each wave whose batches have all ended. Safe to run twice, and at once: on Postgres one
    poller at a time (an advisory lock); another returns at once. Returns the batches still open."""
    if settings.is_sqlite:
        return _poll(settings, catalog, job_id=job_id, now=now)
    with repo.try_lock(get_engine(settings), f"pennyroute.poll_batches.{job_id or '*'}") as locked:
        if not locked:
            return -1
        return _poll(settings, catalog, job_id=job_id, now=now)


def _poll(settings: Settings, catalog: Catalog, *, job_id: str | None, now: datetime | None) -> int:
    now = now or utcnow()
    grace = max(MIN_CREATE_GRACE_S, 2 * settings.request_timeout_s)
    with session_scope(settings) as session:
        rows = repo.open_provider_batches(session, job_id=job_id)
        jobs = {r.job_id: repo.job_for_chunk(session, r.job_id) for r in rows}
    waves: dict[str, bool] = {}
    for row in rows:
        job = jobs.get(row.job_id)
        ended = row.state in (BatchState.ENDED, BatchState.FAILED)
        if not ended and job is not None:
            try:
                ended = _look(settings, catalog, row, job, now, grace)
            except ProviderError as exc:
                said = redact(str(exc), configured_secrets(settings))[:ERROR_CHARS]
                log.warning("provider batch %s: %s", row.id, said)
                with session_scope(settings) as session:
                    repo.update_provider_batch(session, row.id, error=said, polled_at=now)
        waves[row.wave] = waves.get(row.wave, True) and ended
    for wave, all_ended in waves.items():
        if all_ended:
            ingest_wave(settings, catalog, wave=wave, at=now)
    with session_scope(settings) as session:
        return len(repo.open_provider_batches(session, job_id=job_id))


def _look(settings: Settings, catalog: Catalog, row: Any, job: JobSnapshot, now: datetime, grace: float) -> bool:
    """One open batch: recover, cancel or ask its state; record it. Returns whether it has ended."""
    api = runtime.run(_batch_api(catalog, settings, row.provider, row.simulated))
    if api is None:  # the catalog no longer gives its provider a batch API: its lines run again
        with session_scope(settings) as session:
            repo.update_provider_batch(
                session, row.id, state=BatchState.FAILED, error="the provider has no batch API now", ended_at=now
            )
        return True
    if row.batch_id is None:
        if row.created_at is not None and (now - aware(row.created_at)).total_seconds() < grace:
            return False  # its worker may still be inside `create`
        # One poller recovers it, holding its row while it asks the provider (and creates it if need be).
        with session_scope(settings) as session:
            if not repo.lock_creating(session, row.id):
                return False
            found = runtime.run(api.find(row.id))
            if found is None and job.status == JobStatus.CANCELLED:
                repo.update_provider_batch(
                    session, row.id, state=BatchState.FAILED, error="job cancelled before it was sent", ended_at=now
                )
                return True
            if found is None:
                found = _recreate(settings, catalog, row, job, api)
            repo.record_batch_created(
                session,
                tag=row.id,
                batch_id=found.batch_id,
                state=_STATE.get(found.state, BatchState.RUNNING),
                vendor_status=found.vendor_status,
                now=utcnow(),
            )
        return found.state in (wire.ENDED, wire.FAILED)
    left = time_left_s(job, now)
    if job.status == JobStatus.CANCELLED or cancel_open_batch(time_left_s=left):
        state = runtime.run(api.cancel(row.batch_id))
    else:
        state = runtime.run(api.get(row.batch_id))
    ours = _STATE.get(state.state, BatchState.RUNNING)
    with session_scope(settings) as session:
        repo.update_provider_batch(
            session,
            row.id,
            state=ours,
            vendor_status=state.vendor_status,
            polled_at=now,
            ended_at=now if ours in (BatchState.ENDED, BatchState.FAILED) else None,
            error=state.error,
        )
    return ours in (BatchState.ENDED, BatchState.FAILED)


def _recreate(settings: Settings, catalog: Catalog, row: Any, job: JobSnapshot, api: wire.BatchAPI) -> wire.BatchState:
    """Create a batch whose worker died before the provider had it, from its recorded lines."""
    chunk = ChunkContext.build(catalog, job)
    with session_scope(settings) as session:
        lines = [
            wire.BatchLine(r.id, line_request(chunk, catalog, r.model_id, r.text, r.id))
            for r in repo.batch_lines(session, row.id)
        ]
    log.info("provider batch %s: not found at %s; creating it (%d lines)", row.id, row.provider, len(lines))
    return runtime.run(api.create(lines, model=catalog.model(row.model_id).api_model, tag=row.id))


def cancel_job_batches(settings: Settings, catalog: Catalog, *, job_id: str) -> int:
    """Ask the providers to cancel a job's open batches (the lines done stay done and are ingested);
    returns how many were asked. Called by `jobs cancel` after the job is marked cancelled."""
    asked = 0
    with session_scope(settings) as session:
        rows = [
            r
            for r in repo.open_provider_batches(session, job_id=job_id)
            if r.state in (BatchState.PENDING, BatchState.RUNNING)
        ]
    for row in rows:
        api = runtime.run(_batch_api(catalog, settings, row.provider, row.simulated))
        if api is None or row.batch_id is None:
            continue
        try:
            state = runtime.run(api.cancel(row.batch_id))
        except ProviderError as exc:
            log.warning("provider batch %s: cancel failed: %s", row.id, exc)
            continue
        asked += 1
        ours = _STATE.get(state.state, BatchState.RUNNING)
        with session_scope(settings) as session:
            repo.update_provider_batch(
                session, row.id, state=ours, vendor_status=state.vendor_status, polled_at=utcnow()
            )
    return asked


def wait_for_batches(
    settings: Settings, catalog: Catalog, *, job_id: str, stop: Callable[[], bool] = runtime.stopping
) -> None:
    """In-process (the embedded default, no beat): poll the job's open batches until none is left,
    or `stop` says so (a Ctrl-C: the batches stay open at the provider; `jobs resume` polls again)."""
    every = min(settings.batch_poll_every_s, INLINE_POLL_MAX_S)
    while not stop():
        if poll_batches(settings, catalog, job_id=job_id) == 0:
            return
        runtime.run(_sleep(every))


async def _sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


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
            api = runtime.run(_batch_api(catalog, settings, b.provider, b.simulated))
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
            output, error = parse_answer(line.completion, chunk.labels)
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
    got.spent_usd += update["cost_usd"]
    saved = update.pop("_saved")
    got.facts.setdefault((call.model_id, call.purpose), []).append(
        CallFacts(
            started_at=call.started_at,
            failed=output is None,
            input_tokens=update["input_tokens"],
            cached_input_tokens=update["cached_input_tokens"],
            output_tokens=update["output_tokens"],
            cost_usd=update["cost_usd"],
            simulated=chunk.job.simulated,
            reasoning_tokens=update["reasoning_tokens"],
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
        "id": call_id,
        "status": CallStatus.ERROR,
        "input_tokens": 0,
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "output_tokens": 0,
        "reasoning_tokens": 0,
        "usage_estimated": False,
        "cost_usd": Decimal(0),
        "latency_ms": latency,
        "error": None,
        "finish": None,
        "finished_at": now,
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

    parts: list[_Part] = field(default_factory=list)
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
    stopped = dict(job.stopped_providers or {})
    route_models = chunk.route.models()
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

"""Running a job's work on the providers' batch APIs: submit a wave of lines, poll, ingest, go on.

    submit   claim items (engine/chunk.py), plan their calls, reserve the worst case at the batch
             price, write every line's call row (mode batch, id = custom_id) and the wave's
             provider_batch rows (state creating), commit; then `create` each batch and record the
             provider's id. A create whose connection broke before any byte left is sent again at
             once; one that got no answer after it was sent (a stale keep-alive connection, a
             timeout) is looked for by its tag at once, on a fresh connection, and adopted, or sent
             again when the provider says it has none (batch_submit.create_again; not at Anthropic,
             which cannot be asked). A worker that dies between the commit and recording the id, or
             a create still unknown after that, leaves a row in `creating`: the poller asks the
             provider for it by tag (`find`) and creates it only if the provider has none, so
             nothing is created twice.
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
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlmodel import Session

from policies.execution_mode import cancel_open_batch
from router.catalog import Catalog
from router.engine import runtime
from router.engine.batch import ChunkContext, rollups
from router.engine.batch_ingest import ingest_wave
from router.engine.batch_submit import (
    ERROR_CHARS,
    STATE,
    WAVE_ITEMS,
    aware,
    batch_api_of,
    check_settings,
    line_request,
    offers,
    stage_in_batch,
    submit_wave,
    time_left_s,
)
from router.errors import ProviderError
from router.ledger import budgets, repo
from router.ledger.db import get_engine, session_scope
from router.ledger.rollup import CallFacts, upsert_rollups
from router.ledger.tables import BatchState, CallStatus, JobStatus, utcnow
from router.ledger.types import JobSnapshot
from router.providers import batch_api as wire
from router.redact import configured_secrets, redact
from router.settings import Settings

# What the rest of the engine and jobs/ use: submit (engine/batch_submit.py), ingest
# (engine/batch_ingest.py) and poll (here).
__all__ = [
    "WAVE_ITEMS",
    "MIN_CREATE_GRACE_S",
    "cancel_job_batches",
    "check_settings",
    "ingest_wave",
    "offers",
    "poll_batches",
    "stage_in_batch",
    "submit_wave",
    "wait_for_batches",
]

log = logging.getLogger("pennyroute.engine")

# A batch row left `creating` is recovered (find, else create) only after this long, so a poller does
# not race the worker still inside `create` (its HTTP call ends within request_timeout_s). A create
# that merely lost its connection does not wait for this: its worker finds or re-sends it at once
# (batch_submit.create_again); this is for a dead worker, and for Anthropic's unknown creates.
MIN_CREATE_GRACE_S = 300.0
# The in-process runner looks at open batches this often at most (the sandbox's answer at once).
INLINE_POLL_MAX_S = 1.0


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
        if not all_ended:
            continue
        try:
            ingest_wave(settings, catalog, wave=wave, at=now)
        except ProviderError as exc:  # reading results failed: nothing was written; the next poll reads again
            log.warning("provider batch wave %s: results could not be read: %s", wave, exc)
    with session_scope(settings) as session:
        return len(repo.open_provider_batches(session, job_id=job_id))


def _look(settings: Settings, catalog: Catalog, row: Any, job: JobSnapshot, now: datetime, grace: float) -> bool:
    """One open batch: recover, cancel or ask its state; record it. Returns whether it has ended."""
    api = runtime.run(batch_api_of(catalog, settings, row.provider, row.simulated))
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
            if found is None and not wire.can_find(api):
                # The vendor cannot be asked whether it has the batch: its lines may have been sent, and
                # billed. They are charged at their worst case (as a dead worker's calls) and run again.
                _charge_maybe_sent(session, settings, catalog, row, job, now)
                return True
            if found is None:
                found = _recreate(settings, catalog, row, job, api)
            repo.record_batch_created(
                session,
                tag=row.id,
                batch_id=found.batch_id,
                state=STATE.get(found.state, BatchState.RUNNING),
                vendor_status=found.vendor_status,
                now=utcnow(),
            )
        return found.state in (wire.ENDED, wire.FAILED)
    left = time_left_s(job, now)
    if job.status == JobStatus.CANCELLED or cancel_open_batch(time_left_s=left):
        state = runtime.run(api.cancel(row.batch_id))
    else:
        state = runtime.run(api.get(row.batch_id))
    ours = STATE.get(state.state, BatchState.RUNNING)
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


def _charge_maybe_sent(
    session: Session, settings: Settings, catalog: Catalog, row: Any, job: JobSnapshot, now: datetime
) -> None:
    """A batch that may or may not be at the provider, which cannot be asked: its lines in flight are
    recorded unknown at their worst case at the batch price (the ledger may exceed the bill, never fall
    short of it), in the rollups and settled against the budget; the batch fails, so its items run again."""
    chunk = ChunkContext.build(catalog, job)
    texts = {r.id: r.text for r in repo.batch_lines(session, row.id)}
    updates: list[dict[str, Any]] = []
    facts: dict[tuple[str, str], list[CallFacts]] = {}
    for call in repo.batch_calls(session, [row.id]):
        if call.status != CallStatus.IN_FLIGHT:
            continue
        usage = chunk.worst_usage(catalog, call.model_id, texts[call.id])
        standard = catalog.price(call.model_id, call.started_at).cost_usd(usage)
        cost = standard * call.price_multiplier
        updates.append(
            {
                "id": call.id,
                "status": CallStatus.UNKNOWN,
                "input_tokens": usage.input_tokens,
                "cached_input_tokens": 0,
                "cache_write_tokens": 0,
                "output_tokens": usage.output_tokens,
                "reasoning_tokens": 0,
                "usage_estimated": True,
                "cost_usd": cost,
                "latency_ms": None,
                "error": "batch maybe sent, and the provider cannot be asked for it: charged at its worst case",
                "finish": None,
                "finished_at": now,
            }
        )
        facts.setdefault((call.model_id, call.purpose), []).append(
            CallFacts(
                started_at=call.started_at,
                failed=True,
                input_tokens=usage.input_tokens,
                cached_input_tokens=0,
                output_tokens=usage.output_tokens,
                cost_usd=cost,
                simulated=job.simulated,
                batch=True,
                batch_saved_usd=standard - cost,
            )
        )
    written = repo.settle_calls(session, updates)
    total = sum((u["cost_usd"] for u in updates if u["id"] in written), Decimal(0))
    if len(written) == len(updates):  # else another poller charged them: its facts are in the rollups
        upsert_rollups(session, rollups(catalog, job, facts, baseline_calls=()))
        if job.has_budget and total:
            budgets.settle_unknown(
                session, job_id=job.id, team_id=job.team_id, amount_usd=total, settings=settings, now=now
            )
    repo.update_provider_batch(
        session,
        row.id,
        state=BatchState.FAILED,
        error="maybe sent; the provider cannot be asked for it: its lines were charged at their worst case",
        ended_at=now,
    )


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
        api = runtime.run(batch_api_of(catalog, settings, row.provider, row.simulated))
        if api is None or row.batch_id is None:
            continue
        try:
            state = runtime.run(api.cancel(row.batch_id))
        except ProviderError as exc:
            log.warning("provider batch %s: cancel failed: %s", row.id, exc)
            continue
        asked += 1
        ours = STATE.get(state.state, BatchState.RUNNING)
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

"""Sending work to a provider's batch API: what goes to batch now (policies/execution_mode.py asked
with the time left), and a wave of lines: the worst case reserved at the batch price, every line's call
row (mode batch, id = custom_id) and the wave's provider_batch rows committed, then `create`, then the
provider's id recorded. engine/batch_mode.py has the whole picture.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlmodel import Session

from policies.budget_fit import items_that_fit
from policies.execution_mode import BATCH, BatchOffer, rerun_mode, stage_mode
from router.catalog import Catalog
from router.engine import runtime
from router.engine.batch import ChunkContext, PlannedCall, pause, plan, record_calls
from router.errors import ProviderConnectionError, ProviderError, ProviderTimeout
from router.ledger import budgets, repo
from router.ledger.db import session_scope
from router.ledger.tables import BatchState, CallMode, utcnow
from router.ledger.types import ClaimedItem, JobSnapshot
from router.providers import batch_api as wire
from router.providers.base import ChatRequest
from router.providers.registry import fresh_batch_api, get_batch_api, has_batch_api, sandbox_batch_knobs
from router.redact import configured_secrets, redact
from router.settings import Settings

log = logging.getLogger("pennyroute.engine")

# Items one claim of a batch-mode job sends to batch (jobs/lifecycle.py hands such jobs over in ranges
# this large): a provider batch of 10,000 lines is far below every vendor's limit (50,000 to 100,000)
# and its call rows are one insert; the vendors' per-batch overhead makes 100-line batches wasteful.
WAVE_ITEMS = 10_000
# Items whose lines are in a batch are held for the batch's window plus this (then another worker may
# take them over, charging their calls in flight at their worst case, as a dead worker's).
LEASE_MARGIN_S = 3600
ERROR_CHARS = 2000
# After a create whose connection broke once the request had gone (a stale keep-alive connection the
# server had closed, a timeout after sending), the provider is asked for the batch by its tag at once,
# this many times, this far apart, each on a fresh connection: a second look covers a find that itself
# met a broken connection, and a list that shows a new batch a moment late. Both short: the job's
# caller is waiting, and the alternative (the poller's MIN_CREATE_GRACE_S) is 5 minutes.
FIND_TRIES = 2
FIND_PAUSE_S = 1.0
# A provider's batch state, in our books.
STATE = {
    wire.PENDING: BatchState.PENDING,
    wire.RUNNING: BatchState.RUNNING,
    wire.ENDED: BatchState.ENDED,
    wire.FAILED: BatchState.FAILED,
}


# -- what goes to batch ------------------------------------------------------------------------------


def check_settings(settings: Settings, *, simulated: bool) -> None:
    """Refuse, before a job is written, batch settings that would fail it later (ConfigError)."""
    if simulated:
        sandbox_batch_knobs(settings)


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
    return chunk.request(catalog.model(model_id), text, call_id)


# -- submit ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Part:
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
) -> tuple[list[Part], list[ClaimedItem]]:
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
    parts: list[Part] = []
    rows: list[dict[str, Any]] = []
    by_model: dict[str, list[PlannedCall]] = {}
    for row in items:
        for t in per_item[row.id]:
            by_model.setdefault(t.model_id, []).append(t)
    simulated = chunk.job.simulated
    route_stages = chunk.route.stages()
    for model_id, model_tries in by_model.items():
        provider = catalog.model(model_id).provider
        api = runtime.run(batch_api_of(catalog, settings, provider, simulated))
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
            part = Part(tag, provider, model_id, simulated)
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
                    "stage_models": list(route_stages[stage_of[group[0].item_id]])
                    if stage_of[group[0].item_id] < len(route_stages)
                    else None,
                    "round": round_no,
                    "simulated": simulated,
                    "price_multiplier": multiplier,
                    # Its lines' worst case at the batch price (held in the wave's reservation under a budget).
                    "reserved_usd": sum(
                        (chunk.worst_case_usd(catalog, model_id, texts[t.item_id], now) * multiplier for t in group),
                        Decimal(0),
                    ),
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


async def batch_api_of(catalog: Catalog, settings: Settings, provider: str, simulated: bool) -> wire.BatchAPI | None:
    return get_batch_api(catalog, settings, provider, simulated=simulated)


def create_parts(settings: Settings, catalog: Catalog, parts: Sequence[Part]) -> None:
    """Create each batch at its provider and record its id. A create that fails in a way that may
    have reached the provider leaves the row `creating` (the poller finds it or creates it later);
    one refused outright fails the batch (its lines re-run)."""
    for part in parts:
        api = runtime.run(batch_api_of(catalog, settings, part.provider, part.simulated))
        if api is None:
            continue
        api_model = catalog.model(part.model_id).api_model
        try:
            state = runtime.run(api.create(part.lines, model=api_model, tag=part.tag))
        except ProviderError as exc:
            try:
                state = runtime.run(create_again(settings, catalog, part, api_model, exc, can_find=wire.can_find(api)))
            except ProviderError as again:
                _create_failed(settings, part.tag, again)
                continue
        record_created(settings, part.tag, state)


def unsent(exc: ProviderError) -> bool:
    """A connection that failed before any byte of the request left (refused, DNS, connect timeout)."""
    return isinstance(exc, (ProviderConnectionError, ProviderTimeout)) and not exc.maybe_billed


def ambiguous(exc: ProviderError) -> bool:
    """A call that got no answer after its request was sent: the provider may have the batch."""
    return isinstance(exc, (ProviderConnectionError, ProviderTimeout)) and exc.maybe_billed


async def create_again(
    settings: Settings, catalog: Catalog, part: Part, api_model: str, exc: ProviderError, *, can_find: bool
) -> wire.BatchState:
    """What follows a failed `create`, at once and on a fresh connection: one that never left is sent
    again; one whose fate is unknown is looked for by its tag (adopted if the provider has it, sent
    again if it says it has none: safe, and a duplicate would still carry the tag). Anything else, and
    an unknown fate at a vendor that cannot be asked (Anthropic), raises `exc` again: the row stays
    `creating` for the poller (engine/batch_mode.py), or fails when refused outright."""
    if not unsent(exc) and not (ambiguous(exc) and can_find):
        raise exc
    async with fresh_batch_api(catalog, settings, part.provider, simulated=part.simulated) as api:
        if ambiguous(exc):
            said_none = False
            for attempt in range(FIND_TRIES):
                if attempt:
                    await asyncio.sleep(FIND_PAUSE_S)
                try:
                    found = await api.find(part.tag)
                except ProviderError as find_failed:
                    log.warning("provider batch %s: find after a failed create: %s", part.tag, find_failed)
                    continue
                if found is not None:
                    log.info("provider batch %s: the create that broke had reached %s", part.tag, part.provider)
                    return found
                said_none = True
            if not said_none:
                raise exc  # the provider could not be asked: the poller asks later
            log.info("provider batch %s: %s has no such batch; creating it again", part.tag, part.provider)
        return await api.create(part.lines, model=api_model, tag=part.tag)


def _create_failed(settings: Settings, tag: str, exc: ProviderError) -> None:
    said = redact(str(exc), configured_secrets(settings))[:ERROR_CHARS]
    with session_scope(settings) as session:
        if exc.retryable or exc.maybe_billed:
            repo.update_provider_batch(session, tag, error=f"create failed, to be tried again: {said}")
        else:
            now = utcnow()
            repo.update_provider_batch(session, tag, state=BatchState.FAILED, error=said, ended_at=now)
    log.warning("provider batch %s: create failed: %s", tag, said)


def record_created(settings: Settings, tag: str, state: wire.BatchState) -> None:
    with session_scope(settings) as session:
        repo.record_batch_created(
            session,
            tag=tag,
            batch_id=state.batch_id,
            state=STATE.get(state.state, BatchState.RUNNING),
            vendor_status=state.vendor_status,
            now=utcnow(),
        )

"""Writing what a batch's calls gave, in one transaction: call outcomes, item outcomes and counts,
rollups, drift counts, stopped providers, and the settlement of its reservations; and charging the
calls of a dead worker at their worst case.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlmodel import Session

from router.catalog import Catalog
from router.engine import alerts, drift
from router.engine.batch import ChunkContext, pause, rollups, write_retrying
from router.engine.rounds import Executed, drift_tally
from router.ledger import budgets, repo
from router.ledger.rollup import CallFacts, upsert_rollups
from router.ledger.tables import CallStatus, ItemStatus, JobStatus, utcnow
from router.ledger.types import ClaimedItem
from router.settings import Settings


def finish(
    settings: Settings, catalog: Catalog, chunk: ChunkContext, executed: Executed, *, write_items: bool
) -> tuple[int, int]:
    """Write the rest of the batch's outcome in one transaction: the calls and items not written on
    the way and the job's counts (unless `write_items` is false: calibration writes only its calls),
    rollups, drift counts, stopped providers, the settlement of its reservations. Then send any
    soft-limit alert, pause the job if stopped providers blocked items, and judge drift. Returns the
    batch's (done, failed), those written on the way included."""
    job = chunk.job
    rows = (
        [{**row, "held": executed.held[item_id]} for item_id, row in executed.finished_items.items()]
        if write_items
        else []
    )
    held_back = executed.held_back if write_items else []
    done = sum(1 for row in rows if row["status"] == ItemStatus.DONE)
    failed = len(rows) - done
    rows_of_rollups = rollups(catalog, job, executed.facts, baseline_calls=executed.baseline_calls)
    checked, agreed = drift_tally(executed.finished_items if write_items else {}, executed.references)

    def write(session: Session) -> list[dict[str, Any]]:
        repo.finish_batch(
            session, job_id=job.id, calls=executed.unwritten, items=rows, rollups=rows_of_rollups, now=utcnow()
        )
        if held_back:
            repo.release_items(session, [(item_id, executed.held[item_id]) for item_id in held_back])
        if checked:
            repo.add_drift_counts(session, job_id=job.id, model_id=chunk.route.model_id, checked=checked, agreed=agreed)
        for provider, why in executed.newly_stopped.items():
            repo.stop_provider(session, job_id=job.id, provider=provider, why=why)
        found = _settle(
            session, reservation_ids=executed.reservation_ids, actual_usd=executed.spent_usd - executed.settled_usd
        )
        if write_items and job.has_budget and repo.job_status(session, job.id) == JobStatus.DONE:
            # Every item is finished: what the job still holds is left by batches whose worker died after
            # writing their items (their spend settled on the way); nothing will settle it now.
            budgets.release_job(session, job_id=job.id)
        return found

    for alert in write_retrying(settings, write):
        alerts.send_alert(alert, settings)
    chunk.stopped.update(executed.newly_stopped)  # the chunk's next batches skip them too
    if executed.blocked and write_items:
        pause(settings, chunk, [], reason="provider", detail="; ".join(chunk.stopped.values()))
    if checked:
        drift.check(settings, catalog, job_id=job.id)
    if not write_items:
        return 0, 0
    return executed.done + done, executed.failed + failed


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


def charge_lost(
    session: Session,
    settings: Settings,
    catalog: Catalog,
    chunk: ChunkContext,
    items: Sequence[ClaimedItem],
    now: datetime,
) -> Decimal:
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
        usage = chunk.worst_usage(catalog, call.model_id, texts[call.item_id])
        worst_input = usage.input_tokens
        if call.model_id in catalog.models:
            cost = catalog.price(call.model_id, call.started_at).cost_usd(usage)
        else:
            cost = (worst_input * call.input_usd_per_mtok + usage.output_tokens * call.output_usd_per_mtok) / Decimal(
                1_000_000
            )
        cost *= call.price_multiplier  # a line of a provider batch: at the batch price
        updates.append(
            {
                "id": call.id,
                "status": CallStatus.UNKNOWN,
                "input_tokens": worst_input,
                "cached_input_tokens": 0,
                "cache_write_tokens": 0,
                "output_tokens": usage.output_tokens,
                "reasoning_tokens": 0,
                "usage_estimated": True,
                "cost_usd": cost,
                "latency_ms": None,
                "finished_at": now,
                "finish": None,
                "error": "worker lost while the call was in flight: outcome unknown, charged at its worst case",
            }
        )
        facts.setdefault((call.model_id, call.purpose), []).append(
            CallFacts(
                started_at=call.started_at,
                failed=True,
                input_tokens=worst_input,
                cached_input_tokens=0,
                output_tokens=usage.output_tokens,
                cost_usd=cost,
                simulated=chunk.job.simulated,
            )
        )
    repo.finish_calls(session, updates)
    upsert_rollups(session, rollups(catalog, chunk.job, facts, baseline_calls=()))  # lost: no answer stands for an item
    total = sum((u["cost_usd"] for u in updates), Decimal(0))
    if chunk.job.has_budget:
        budgets.settle_unknown(
            session, job_id=chunk.job.id, team_id=chunk.job.team_id, amount_usd=total, settings=settings, now=now
        )
    return total

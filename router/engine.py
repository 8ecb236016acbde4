"""Running a chunk of a job: claim its items, record its calls, make them, record what came back.

Exactly-once money: every call's row (status in_flight, with a fresh id) is committed before the call
is made, and its outcome is written onto that row. A chunk delivered twice claims nothing the first
delivery still holds, so nothing is called or charged twice. Per chunk in the normal case: one claim,
one batched insert of call rows, one batched write of outcomes.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from policies.budget_fit import items_that_fit
from router import budgets, runtime
from router.catalog import Catalog
from router.db import session_scope
from router.errors import ProviderError
from router.ledger import repo
from router.ledger.rollup import CallFacts, rollup_rows
from router.ledger.tables import CallStatus, ItemStatus, JobStatus, utcnow
from router.prompts import MESSAGE_OVERHEAD_TOKENS, PromptSpec, classify_spec, parse_label, summarize_spec
from router.providers.base import ChatRequest, Completion, Provider, TokenUsage
from router.providers.registry import close_all, get_provider
from router.settings import Settings

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


def prompt_spec(job: Any) -> PromptSpec:
    if job.task == "classify":
        return classify_spec(tuple(job.labels or ()))
    return summarize_spec(job.max_words)


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
        chunk = _Chunk.build(catalog, job)
        # No budget (the common case): the call rows are committed with the claim.
        first = None if job.has_budget else _Batch(claimed, _record_calls(session, catalog, chunk.common, [r.id for r in claimed]), None)
    done = failed = 0
    pending = list(claimed)
    while pending:
        batch = first or _reserve_batch(settings, catalog, chunk, pending)
        first = None
        if batch is None:  # the budget cannot take even one more item: hand the rest back and pause
            _pause(settings, chunk, pending)
            break
        batch_done, batch_failed = _run_batch(settings, catalog, chunk, batch)
        done, failed = done + batch_done, failed + batch_failed
        pending = pending[len(batch.items):]
    return ChunkOutcome(len(claimed), done, failed)


@dataclass(frozen=True, slots=True)
class _Chunk:
    """What every batch of a chunk shares: the job's fixed facts, model and prompt."""

    job: Any
    model: Any
    spec: PromptSpec
    labels: tuple[str, ...]
    common: dict[str, Any]

    @classmethod
    def build(cls, catalog: Catalog, job: Any) -> _Chunk:
        model = catalog.model(job.model_id)
        common = {
            "job_id": job.id, "tenant_id": job.tenant_id, "team_id": job.team_id, "model_id": model.model_id,
            "provider": model.provider, "purpose": "run", "status": CallStatus.IN_FLIGHT, "simulated": job.simulated,
        }
        return cls(job, model, prompt_spec(job), tuple(job.labels or ()), common)

    def worst_case_usd(self, catalog: Catalog, text: str, at: Any) -> Decimal:
        """An upper bound on one call's cost: input tokens <= prompt bytes, output <= max_tokens."""
        worst_input = len(self.spec.system.encode()) + len(text.encode()) + MESSAGE_OVERHEAD_TOKENS
        usage = TokenUsage(input_tokens=worst_input, output_tokens=self.spec.max_output_tokens)
        return catalog.price(self.model.model_id, at).cost_usd(usage)


@dataclass(slots=True)
class _Batch:
    items: list[Any]
    recorded: _Recorded
    reservation_id: str | None


def _reserve_batch(settings: Settings, catalog: Catalog, chunk: _Chunk, items: list[Any]) -> _Batch | None:
    """Reserve the worst case of as many leading items as the budget takes, and record their calls.

    When none fit while other chunks hold reservations, wait for those to settle (they release
    most of what they hold); None when nothing fits and nothing is held: the budget is spent.
    """
    deadline = time.monotonic() + settings.budget_wait_s
    while True:
        with session_scope(settings) as session:
            now = utcnow()
            period = budgets.current_period(session, team_id=chunk.job.team_id, now=now)
            if period is None:  # the budget was removed meanwhile
                return _Batch(items, _record_calls(session, catalog, chunk.common, [r.id for r in items]), None)
            budgets.release_expired(session, period_id=period.id, now=now)  # type: ignore[arg-type]
            session.refresh(period)
            worst = [chunk.worst_case_usd(catalog, row.text, now) for row in items]
            count = items_that_fit(worst, budgets.remaining_usd(period, settings))
            if count:
                held = budgets.reserve(session, period=period, amount_usd=sum(worst[:count], Decimal(0)),
                                       job_id=chunk.job.id, settings=settings, now=now)
                if held is not None:
                    batch = items[:count]
                    return _Batch(batch, _record_calls(session, catalog, chunk.common, [r.id for r in batch]), held.id)
                continue  # another worker took it first: look again at once
            others_hold = period.reserved > 0
        if not others_hold or time.monotonic() > deadline:
            return None
        time.sleep(BUDGET_POLL_S * (1 + random.random()))


def _pause(settings: Settings, chunk: _Chunk, items: list[Any]) -> None:
    with session_scope(settings) as session:
        repo.release_items(session, [row.id for row in items])
        if repo.pause_job(session, chunk.job.id):
            period = budgets.current_period(session, team_id=chunk.job.team_id)
            budgets.record_event(session, team_id=chunk.job.team_id, period=period.period_start if period else utcnow().date(),
                                 kind="paused", detail={"job_id": chunk.job.id, "items_waiting": len(items),
                                                        "settled": str(period.settled) if period else None,
                                                        "limit": str(period.limit_amount) if period else None})


def _run_batch(settings: Settings, catalog: Catalog, chunk: _Chunk, batch: _Batch) -> tuple[int, int]:
    """Make the batch's calls (retrying what may succeed), then record outcomes, settlement and
    rollups in one transaction. Returns (done, failed) items."""
    job, model, spec, labels = chunk.job, chunk.model, chunk.spec, chunk.labels
    texts = {row.id: row.text for row in batch.items}
    pending = list(texts)
    recorded = batch.recorded
    item_rows: list[dict[str, Any]] = []
    call_updates: list[dict[str, Any]] = []
    facts: list[CallFacts] = []
    for attempt in range(MAX_ATTEMPTS):
        if attempt:
            with session_scope(settings) as session:
                repo.finish_calls(session, call_updates)  # the previous round's outcomes
                recorded = _record_calls(session, catalog, chunk.common, pending)
            call_updates = []
        price = catalog.price(model.model_id, recorded.started)
        requests = [
            (i, ChatRequest(model=model.api_model, system=spec.system, prompt=texts[i], max_output_tokens=spec.max_output_tokens))
            for i in pending
        ]
        results = runtime.run(_call_all(catalog, settings, model.provider, job.simulated, requests))
        finished = utcnow()
        retry: list[int] = []
        waits: list[float] = []
        for item_id, result, latency_s in results:
            call_id = recorded.ids[item_id]
            update: dict[str, Any] = {
                "id": call_id, "latency_ms": int(latency_s * 1000), "finished_at": finished,
                "input_tokens": 0, "cached_input_tokens": 0, "cache_write_tokens": 0, "output_tokens": 0,
                "usage_estimated": False, "cost_usd": Decimal(0), "error": None,
            }
            if isinstance(result, Completion):
                usage = result.usage
                update.update(
                    status=CallStatus.OK, input_tokens=usage.input_tokens, cached_input_tokens=usage.cached_input_tokens,
                    cache_write_tokens=usage.cache_write_tokens, output_tokens=usage.output_tokens,
                    usage_estimated=usage.estimated, cost_usd=price.cost_usd(usage),
                )
                item_rows.append(_item_outcome(item_id, call_id, result.text, job.task, labels, finished))
                usable = item_rows[-1]["status"] == ItemStatus.DONE
            else:
                usable = False
                update.update(status=CallStatus.ERROR, error=str(result)[:2000])
                if result.retryable and attempt + 1 < MAX_ATTEMPTS and (result.retry_after or 0) <= MAX_WAIT_S:
                    retry.append(item_id)
                    waits.append(result.retry_after or BACKOFF_BASE_S * 2**attempt)
                else:
                    item_rows.append(_item_row(item_id, ItemStatus.FAILED, None, str(result)[:2000], call_id, finished))
            call_updates.append(update)
            facts.append(CallFacts(recorded.started, not usable, update["input_tokens"], update["cached_input_tokens"],
                                   update["output_tokens"], update["cost_usd"], job.simulated))
        if not retry:
            break
        pending = retry
        time.sleep(min(max(waits), MAX_WAIT_S) * (1 + random.random() * 0.25))  # jitter spreads the herd
    done = sum(1 for row in item_rows if row["status"] == ItemStatus.DONE)
    failed = len(item_rows) - done
    rollups = rollup_rows(
        facts, tenant_id=job.tenant_id, team_id=job.team_id, job_id=job.id, model_id=model.model_id,
        provider=model.provider, task=job.task, purpose="run", timezone=job.timezone,
        baseline_rates=(job.baseline_input_usd_per_mtok, job.baseline_output_usd_per_mtok)
        if job.baseline_input_usd_per_mtok is not None else None,
    )
    alert = None
    with session_scope(settings) as session:
        repo.finish_batch(session, job_id=job.id, calls=call_updates, items=item_rows, done=done, failed=failed,
                          rollups=rollups, now=utcnow())
        if batch.reservation_id is not None:
            alert = budgets.settle(session, reservation_id=batch.reservation_id,
                                   actual_usd=sum((f.cost_usd for f in facts), Decimal(0)), now=utcnow())
    if alert:
        budgets.send_alert(alert, settings)
    return done, failed


@dataclass(frozen=True, slots=True)
class _Recorded:
    ids: dict[int, str]  # item id -> call id
    started: Any


def _record_calls(session: Any, catalog: Catalog, common: dict[str, Any], item_ids: list[int]) -> _Recorded:
    """Write one in-flight call row per item, priced at the rates in force now; return their ids."""
    started = utcnow()
    price = catalog.price(common["model_id"], started)
    ids = {item_id: uuid.uuid4().hex for item_id in item_ids}
    repo.insert_calls(session, common={
        **common, "started_at": started, "input_tokens": 0, "cached_input_tokens": 0, "cache_write_tokens": 0,
        "output_tokens": 0, "usage_estimated": False, "cost_usd": Decimal(0),
        "input_usd_per_mtok": price.input.base, "cached_input_usd_per_mtok": price.cached_input.base,
        "cache_write_usd_per_mtok": price.cache_write.base, "output_usd_per_mtok": price.output.base,
    }, ids=list(ids.values()), item_ids=list(ids))
    return _Recorded(ids, started)


def _item_outcome(item_id: int, call_id: str, text: str, task: str, labels: tuple[str, ...], now: Any) -> dict[str, Any]:
    if task == "classify":
        label = parse_label(text, labels)
        if label is None:
            return _item_row(item_id, ItemStatus.FAILED, None, f"answer {text[:80]!r} names no single label", call_id, now)
        return _item_row(item_id, ItemStatus.DONE, label, None, call_id, now)
    return _item_row(item_id, ItemStatus.DONE, text.strip(), None, call_id, now)


def _item_row(item_id: int, status: str, output: str | None, error: str | None, call_id: str, now: Any) -> dict[str, Any]:
    return {"id": item_id, "status": status, "output": output, "error": error, "final_call_id": call_id,
            "finished_at": now, "lease_until": None}


async def _call_all(
    catalog: Catalog, settings: Settings, provider_name: str, simulated: bool,
    requests: Sequence[tuple[int, ChatRequest]],
) -> list[tuple[int, Completion | ProviderError, float]]:
    provider = await get_provider(catalog, settings, provider_name, simulated=simulated)
    gate = runtime.gate(settings.calls_in_flight)
    return await asyncio.gather(*(_call_one(provider, gate, key, request) for key, request in requests))


async def _call_one(
    provider: Provider, gate: asyncio.Semaphore, key: int, request: ChatRequest
) -> tuple[int, Completion | ProviderError, float]:
    async with gate:
        started = time.perf_counter()
        try:
            result: Completion | ProviderError = await provider.complete(request)
        except ProviderError as exc:
            result = exc
        except Exception as exc:  # a bug or an unmapped client error must fail the item, not the chunk
            result = ProviderError(f"unexpected {type(exc).__name__}: {exc}", provider=provider.name)
        return key, result, time.perf_counter() - started


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

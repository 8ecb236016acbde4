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

from router import runtime
from router.catalog import Catalog
from router.db import session_scope
from router.errors import ProviderError
from router.ledger import repo
from router.ledger.tables import CallStatus, ItemStatus, JobStatus, utcnow
from router.prompts import PromptSpec, classify_spec, parse_label, summarize_spec
from router.providers.base import ChatRequest, Completion, Provider
from router.providers.registry import close_all, get_provider
from router.settings import Settings

# Tries per item within a chunk for retryable failures (429, 5xx, timeouts) before it is failed.
MAX_ATTEMPTS = 3
# Backoff between tries when the provider gave no Retry-After: 1 s, then 2 s, plus jitter.
BACKOFF_BASE_S = 1.0
# A Retry-After longer than this is not waited for inside a chunk: the item fails with its reason.
MAX_WAIT_S = 30.0


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
        model = catalog.model(job.model_id)
        common = {
            "job_id": job.id, "tenant_id": job.tenant_id, "team_id": job.team_id, "model_id": model.model_id,
            "provider": model.provider, "purpose": "run", "status": CallStatus.IN_FLIGHT, "simulated": job.simulated,
        }
        # The first round's call rows are committed with the claim: one transaction before any call.
        call_ids = _record_calls(session, catalog, common, [row.id for row in claimed])
    spec = prompt_spec(job)
    labels = tuple(job.labels or ())
    texts = {row.id: row.text for row in claimed}
    pending = list(texts)
    item_rows: list[dict[str, Any]] = []
    call_updates: list[dict[str, Any]] = []
    for attempt in range(MAX_ATTEMPTS):
        if attempt:
            with session_scope(settings) as session:
                repo.finish_calls(session, call_updates)  # the previous round's outcomes
                call_ids = _record_calls(session, catalog, common, pending)
            call_updates = []
        price = catalog.price(model.model_id, call_ids.started)
        requests = [
            (i, ChatRequest(model=model.api_model, system=spec.system, prompt=texts[i], max_output_tokens=spec.max_output_tokens))
            for i in pending
        ]
        results = runtime.run(_call_all(catalog, settings, model.provider, job.simulated, requests))
        finished = utcnow()
        retry: list[int] = []
        waits: list[float] = []
        for item_id, result, latency_s in results:
            call_id = call_ids.ids[item_id]
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
            else:
                update.update(status=CallStatus.ERROR, error=str(result)[:2000])
                if result.retryable and attempt + 1 < MAX_ATTEMPTS and (result.retry_after or 0) <= MAX_WAIT_S:
                    retry.append(item_id)
                    waits.append(result.retry_after or BACKOFF_BASE_S * 2**attempt)
                else:
                    item_rows.append(_item_row(item_id, ItemStatus.FAILED, None, str(result)[:2000], call_id, finished))
            call_updates.append(update)
        if not retry:
            break
        pending = retry
        time.sleep(min(max(waits), MAX_WAIT_S) * (1 + random.random() * 0.25))  # jitter spreads the herd
    done = sum(1 for row in item_rows if row["status"] == ItemStatus.DONE)
    failed = len(item_rows) - done
    with session_scope(settings) as session:
        repo.finish_calls(session, call_updates)
        repo.finish_items(session, item_rows)
        repo.count_finished(session, job_id=job_id, done=done, failed=failed, now=utcnow())
    return ChunkOutcome(len(claimed), done, failed)


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

"""Making a batch's calls, round by round: build the requests, call, parse, and move each item on.

Each round makes the calls planned so far, concurrently. What to do after a failed call or a
finished stage is policies.escalation's decision (retry, accept, escalate, hold back, fail); this
module applies it, reserves what escalations may cost, and records the next round's call rows before
it is made. It returns what happened (`Executed`) for engine/settle.py to write.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlmodel import Session

from policies.escalation import ACCEPT, ESCALATE, FAIL, HOLD, MAX_WAIT_S, after_failure, after_stage
from router.catalog import Catalog, ModelInfo, Price
from router.engine import runtime
from router.engine.batch import Batch, ChunkContext, PlannedCall, Recorded, record_calls, reserve_more, write_retrying
from router.engine.calls import call_all
from router.errors import CircuitOpen, ProviderConnectionError, ProviderError, ProviderStatusError, ProviderTimeout
from router.ledger import repo
from router.ledger.db import session_scope
from router.ledger.rollup import CallFacts
from router.ledger.tables import CallStatus, ItemStatus, utcnow
from router.prompts import parse_label
from router.providers.base import ChatRequest, Completion
from router.redact import configured_secrets, redact
from router.settings import Settings

log = logging.getLogger("pennyroute.engine")
# A failed call's error is kept on its row up to this many characters: a provider's message, not its page.
ERROR_CHARS = 2000


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
    progress = _Progress.start(chunk, batch, secrets=configured_secrets(settings))
    progress.fault_deadline = time.monotonic() + min(settings.fault_wait_s, settings.lease_s / 2)
    tries, recorded = batch.tries, batch.recorded
    while tries:
        # Looked up once a round, not once a call: the round's models and their prices at its start.
        infos = {m: catalog.model(m) for m in {t.model_id for t in tries}}
        prices = {m: catalog.price(m, recorded.started) for m in infos}
        requests = _requests(chunk, tries, recorded, infos, progress.texts)
        results = runtime.run(call_all(catalog, settings, chunk.job.simulated, requests))
        round_ = _Round(
            tries=tries, recorded=recorded, infos=infos, prices=prices, finished=utcnow(), retry=[], waits=[]
        )
        for k, result, latency_s in results:
            _record_result(catalog, chunk, progress, round_, k, result, latency_s)
        advance = _reserve_escalations(
            settings, catalog, chunk, progress, _advance_items(catalog, chunk, progress, round_)
        )
        tries = round_.retry + advance
        if tries:
            recorded = _record_next_round(settings, catalog, chunk, progress, tries)
            if round_.retry:
                time.sleep(
                    min(max(round_.waits), MAX_WAIT_S) * (1 + random.random() * 0.25)
                )  # up to 25% jitter spreads the herd
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
    secrets: frozenset[str]  # the configured API keys: redacted from every provider error kept
    fault_deadline: float = 0.0  # time.monotonic() until which transient faults are retried

    @classmethod
    def start(cls, chunk: ChunkContext, batch: Batch, *, secrets: frozenset[str]) -> _Progress:
        texts = {row.id: row.text for row in batch.items}
        stages = tuple(chunk.route.stages())
        progress = cls(
            texts=texts,
            stages=stages,
            route_models=tuple(chunk.route.models()),
            stage=dict(batch.stage),
            answers={item_id: {} for item_id in texts},
            references={},
            finished_items={},
            held_back=[],
            blocked=False,
            stopped=dict(chunk.stopped),
            newly_stopped={},
            reservation_ids=list(batch.reservation_ids),
            unwritten=[],
            facts={},
            secrets=secrets,
        )
        for item_id in texts:  # items with nothing to call at all (every provider stopped)
            if progress.stage[item_id] >= len(stages):
                progress.held_back.append(item_id)
                progress.blocked = True
        return progress

    def executed(self, batch: Batch) -> Executed:
        return Executed(
            finished_items=self.finished_items,
            answers=self.answers,
            held_back=self.held_back,
            unwritten=self.unwritten,
            facts=self.facts,
            references=self.references,
            reservation_ids=self.reservation_ids,
            newly_stopped=self.newly_stopped,
            blocked=self.blocked,
            held={row.id: row.attempts for row in batch.items},
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


def _requests(
    chunk: ChunkContext,
    tries: list[PlannedCall],
    recorded: Recorded,
    infos: dict[str, ModelInfo],
    texts: dict[int, str],
) -> list[tuple[int, str, ChatRequest]]:
    """The round's requests as (index in `tries`, provider name, request); the call row's id goes along."""
    system, max_output = chunk.spec.system, chunk.spec.max_output_tokens
    return [
        (
            k,
            infos[t.model_id].provider,
            ChatRequest(
                model=infos[t.model_id].api_model,
                system=system,
                prompt=texts[t.item_id],
                max_output_tokens=max_output,
                request_id=recorded.ids[k],
                thinking_tokens=infos[t.model_id].thinking,
                reasoning_effort=infos[t.model_id].reasoning_effort,
            ),
        )
        for k, t in enumerate(tries)
    ]


def _record_result(
    catalog: Catalog,
    chunk: ChunkContext,
    progress: _Progress,
    round_: _Round,
    k: int,
    result: Completion | ProviderError,
    latency_s: float,
) -> None:
    """Record the outcome of the round's `k`-th call: its row's update, its rollup facts, and the
    item's answer (unless another try of the same call follows)."""
    t, call_id = round_.tries[k], round_.recorded.ids[k]
    update: dict[str, Any] = {
        "id": call_id,
        "latency_ms": int(latency_s * 1000),
        "finished_at": round_.finished,
        "input_tokens": 0,
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "output_tokens": 0,
        "reasoning_tokens": 0,
        "usage_estimated": False,
        "cost_usd": Decimal(0),
        "error": None,
    }
    output: str | None = None
    error: str | None = None
    if isinstance(result, Completion):
        usage = result.usage
        update.update(
            status=CallStatus.OK,
            input_tokens=usage.input_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            output_tokens=usage.output_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            usage_estimated=usage.estimated,
            cost_usd=round_.prices[t.model_id].cost_usd(usage),
        )
        output, error = _parse(result.text, chunk.labels)
    else:
        # The one place a provider's error text enters the ledger (the call's row, the item's reason,
        # a stopped provider's reason and its events): redacted here, once, before it is shortened.
        said = redact(str(result), progress.secrets)
        if result.maybe_billed:
            # The request left and no answer came back: the provider may have answered and billed it.
            # Charged at its worst case, like a dead worker's call (the ledger may exceed the bill,
            # never fall short of it); settled against the budget out of this call's reservation.
            usage = chunk.worst_usage(catalog, t.model_id, progress.texts[t.item_id])
            said = f"sent but unanswered, so it may have been billed (charged at its worst case): {said}"
            update.update(
                status=CallStatus.UNKNOWN,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                usage_estimated=True,
                cost_usd=round_.prices[t.model_id].cost_usd(usage),
            )
        else:
            update.update(status=CallStatus.ERROR)
        error = said[:ERROR_CHARS]
        update.update(error=error)
        _after_failure(catalog, chunk, progress, round_, t, result, said)
    progress.unwritten.append(update)
    progress.facts.setdefault((t.model_id, t.purpose), []).append(
        CallFacts(
            started_at=round_.recorded.started,
            failed=output is None,
            input_tokens=update["input_tokens"],
            cached_input_tokens=update["cached_input_tokens"],
            output_tokens=update["output_tokens"],
            cost_usd=update["cost_usd"],
            simulated=chunk.job.simulated,
            reasoning_tokens=update["reasoning_tokens"],
            call_id=call_id,
        )
    )
    retry = round_.retry
    if retry and retry[-1].item_id == t.item_id and retry[-1].model_id == t.model_id and retry[-1].purpose == t.purpose:
        return  # another try of this call follows: its answer is not in yet
    if t.purpose == "drift":
        progress.references[t.item_id] = output
    else:
        progress.answers[t.item_id][t.model_id] = Answer(output, call_id, error)


def _after_failure(
    catalog: Catalog,
    chunk: ChunkContext,
    progress: _Progress,
    round_: _Round,
    t: PlannedCall,
    error: ProviderError,
    said: str,
) -> None:
    """A failed call (`said`: its error, redacted): its provider takes no more calls for the job if it
    refused us; another try on the same model follows if policies.escalation says so."""
    provider = round_.infos[t.model_id].provider
    if error.stops_provider and provider not in progress.stopped:
        progress.stopped[provider] = progress.newly_stopped[provider] = _stop_message(provider, error, said, catalog)
    if isinstance(error, CircuitOpen) and (t.purpose == "drift" or _fallback_left(catalog, chunk, progress, t)):
        return  # the provider is known to be failing: on to the item's next stage now (a drift check is skipped)
    decision = after_failure(
        attempt=t.attempt,
        retryable=error.retryable,
        retry_after=error.retry_after,
        provider_stopped=provider in progress.stopped,
        time_left_s=progress.fault_deadline - time.monotonic()
        if _deferrable(catalog, chunk, progress, t, error)
        else None,
    )
    if decision.retry:
        round_.retry.append(PlannedCall(t.item_id, t.model_id, t.purpose, t.attempt + 1))
        round_.waits.append(decision.wait_s)


def _deferrable(
    catalog: Catalog, chunk: ChunkContext, progress: _Progress, t: PlannedCall, error: ProviderError
) -> bool:
    """A transient fault of an item with no other stage to go to: it waits out the fault (until the
    chunk's fault deadline) instead of failing after MAX_ATTEMPTS. With a fallback left, it moves on."""
    return t.purpose != "drift" and _transient(error) and not _fallback_left(catalog, chunk, progress, t)


def _transient(error: ProviderError) -> bool:
    """A fault that passes: a rate limit, an overload, a 5xx, no answer, an open breaker (not a bad
    request, a refused key, or an answer we could not read)."""
    return isinstance(error, (CircuitOpen, ProviderTimeout, ProviderConnectionError)) or error.status_code in (
        429,
        500,
        502,
        503,
        504,
        529,
    )


def _fallback_left(catalog: Catalog, chunk: ChunkContext, progress: _Progress, t: PlannedCall) -> bool:
    """Whether the item has a later stage whose models can all be called now."""
    later = progress.stages[progress.stage[t.item_id] + 1 :] if t.purpose != "drift" else ()
    return any(all(chunk.callable(catalog, m, progress.stopped) for m in stage) for stage in later)


def _advance_items(catalog: Catalog, chunk: ChunkContext, progress: _Progress, round_: _Round) -> list[PlannedCall]:
    """Move every item whose current stage has all its answers (policies.escalation.after_stage):
    accept it, fail it, hold it back, or escalate it; returns the escalations' calls."""
    # Looked up once a round, not once an item: which of the route's models can be called, which are stopped.
    stopped = progress.stopped
    callable_models = frozenset(m for m in progress.route_models if chunk.callable(catalog, m, stopped))
    stopped_models = frozenset(
        m for m in progress.route_models if m in catalog.models and catalog.model(m).provider in stopped
    )
    waiting = {t.item_id for t in round_.retry if t.purpose != "drift"}
    stages, stage, finished_items, held_back = (
        progress.stages,
        progress.stage,
        progress.finished_items,
        progress.held_back,
    )
    advance: list[PlannedCall] = []
    for item_id in progress.texts:
        if item_id in finished_items or item_id in waiting or item_id in held_back:
            continue
        got, current = progress.answers[item_id], stage[item_id]
        decision = after_stage(
            stages=stages, current=current, answers=got, callable_models=callable_models, stopped_models=stopped_models
        )
        kind = decision.kind
        if kind == ACCEPT:
            first = got[stages[current][0]]
            finished_items[item_id] = _item_row(
                item_id, ItemStatus.DONE, first.output, None, first.call_id, round_.finished
            )
        elif kind == ESCALATE:
            assert decision.stage is not None  # an escalation names its stage
            stage[item_id] = decision.stage
            advance.extend(PlannedCall(item_id, m, chunk.purpose) for m in stages[decision.stage])
        elif kind == HOLD:
            held_back.append(item_id)  # a stopped provider, not the item, is at fault: keep it for later
            progress.blocked = True
        elif kind == FAIL:
            last = got[stages[current][-1]]
            finished_items[item_id] = _item_row(
                item_id, ItemStatus.FAILED, None, decision.reason, last.call_id, round_.finished
            )
    return advance


def _reserve_escalations(
    settings: Settings, catalog: Catalog, chunk: ChunkContext, progress: _Progress, advance: list[PlannedCall]
) -> list[PlannedCall]:
    """Under a budget, hold the worst case of the escalations' calls; when it cannot take them, their
    items are handed back (to run later) and no escalation is made. Returns the calls to make."""
    if not advance or not progress.reservation_ids:
        return advance
    with session_scope(settings) as session:
        extra = reserve_more(
            session, settings=settings, catalog=catalog, chunk=chunk, tries=advance, texts=progress.texts
        )
    if extra is None:  # the budget cannot take the escalation: hand those items back
        progress.held_back.extend(sorted({t.item_id for t in advance}))
        return []
    if extra:
        progress.reservation_ids.append(extra)
    return advance


def _record_next_round(
    settings: Settings, catalog: Catalog, chunk: ChunkContext, progress: _Progress, tries: list[PlannedCall]
) -> Recorded:
    """Write this round's outcomes and the next round's call rows in one transaction."""
    done_calls = progress.unwritten

    def write(session: Session) -> Recorded:
        repo.finish_calls(session, done_calls)
        return record_calls(session, catalog=catalog, common=chunk.common, tries=tries)

    recorded = write_retrying(settings, write)
    progress.unwritten = []
    return recorded


def _parse(text: str, labels: tuple[str, ...]) -> tuple[str | None, str | None]:
    """(answer, None) when the answer is usable, else (None, why): one of `labels` when the prompt
    offered labels (classify), else the text as given (a summary, a judge's verdict)."""
    if labels:
        label = parse_label(text, labels)
        if label is None:
            return None, f"answer {text[:80]!r} names no single label"
        return label, None
    return text.strip(), None


def _stop_message(provider: str, error: ProviderError, said: str, catalog: Catalog) -> str:
    """Why a provider takes no more calls for the job (`said`: its error, redacted), naming the setting to fix."""
    info = catalog.providers.get(provider)
    env = info.api_key_env if info is not None else None
    if isinstance(error, ProviderStatusError) and error.quota_exhausted:
        fix = f"the {provider} account's {error.quota}"
    elif env:
        fix = f"the key was refused: check {env}"
    else:
        fix = f"the key was refused: check provider {provider}'s settings in the catalog"
    return f"{said[:300]} ({fix}; then `pennyroute jobs resume JOB`)"


def _item_row(
    item_id: int, status: str, output: str | None, error: str | None, call_id: str, now: datetime
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

"""Making a batch's calls as a stream: build the requests, call, parse, and move each item on as
its answers come in, so a slow or retried call holds back its own item and no other.

Calls are launched on the I/O loop (runtime.Stream) and their results taken as they finish, a few
at a time (those that come within LINGER_S of each other). What to do after a failed call or a
finished stage is policies.escalation's decision (retry, accept, escalate, hold back, fail); this
module applies it, reserves what escalations may cost, and in one transaction writes the outcomes
so far (calls, the items finished, the job's counts, rollups) with the call rows of the calls it
launches next, before they are made. The batch's last outcomes, its drift counts and the
settlement of its reservations are written by engine/settle.py from what `execute` returns.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlmodel import Session

from policies.escalation import ACCEPT, ESCALATE, FAIL, HOLD, MAX_WAIT_S, after_failure, after_stage
from policies.hedging import MAX_HEDGES, hedge_after, hedges_left, worth_hedging
from router.catalog import Catalog, ModelInfo, Price
from router.engine import drift, runtime
from router.engine.batch import (
    Batch,
    ChunkContext,
    PlannedCall,
    Recorded,
    blank_update,
    record_calls,
    reserve_more,
    rollups,
    write_retrying,
)
from router.engine.calls import call, service_times
from router.errors import (
    CircuitOpen,
    MalformedResponse,
    ProviderConnectionError,
    ProviderError,
    ProviderStatusError,
    ProviderTimeout,
)
from router.ledger import budgets, repo
from router.ledger.db import session_scope
from router.ledger.rollup import CallFacts
from router.ledger.tables import CallStatus, ItemStatus, utcnow
from router.ledger.types import ClaimedItem
from router.prompts import parse_label
from router.providers.base import CUT, OUTCOME_OF_FINISH, STOP, ChatRequest, Completion
from router.providers.limits import FIRST_TRY, RETRY
from router.redact import configured_secrets, redact
from router.settings import Settings
from router.usage import TokenUsage

log = logging.getLogger("pennyroute.engine")
# A failed call's error is kept on its row up to this many characters: a provider's message, not its page.
ERROR_CHARS = 2000
# Results that come within this long of the first are handled and written together: an item is
# recorded within about this long of its last answer, in a few transactions per batch, not one per call.
LINGER_S = 0.2


@dataclass(slots=True)
class Answer:
    output: str | None  # the parsed answer; None when the call failed or its answer was unusable
    call_id: str
    error: str | None


@dataclass(slots=True)
class Executed:
    """What a batch's calls gave: what is left to write (items, calls, rollup facts) once the last call
    is back, what was written on the way (done, failed), answers per item and model, and the rest."""

    finished_items: dict[int, dict[str, Any]]  # finished, not yet written
    answers: dict[int, dict[str, Answer]]
    held_back: list[int]
    unwritten: list[dict[str, Any]]
    facts: dict[tuple[str, str], list[CallFacts]]
    baseline_calls: set[str]  # among the calls of `facts`, one per finished item: it stands for the item
    references: dict[int, str | None]
    reservation_ids: list[str]
    newly_stopped: dict[str, str]
    blocked: bool
    held: dict[int, int]  # item id -> its try count when claimed: only that holder may write it
    spent_usd: Decimal  # what every call of the batch cost, written or not ...
    settled_usd: Decimal  # ... of which settled against the budget on the way
    done: int  # items written done on the way
    failed: int  # items written failed on the way
    taken: int  # items claimed on the way (beyond the batch's own: see `execute`)
    cursor: int  # the highest seq the batch claimed
    changed: bool  # it stopped taking items because the job changed (route, budget, stopped providers)


@dataclass(frozen=True, slots=True)
class Launched:
    """A call on its way: what it is for, its ledger row's id, when that row was recorded, and its
    key in the batch's stream."""

    planned: PlannedCall
    call_id: str
    started: datetime
    key: int = -1


def execute(
    settings: Settings,
    catalog: Catalog,
    chunk: ChunkContext,
    batch: Batch,
    *,
    write_items: bool = True,
    keep: int = 0,
) -> Executed:
    """Make the batch's calls, moving each item on as its answers come in; returns what is left to
    write, for `finish`.

    A retryable failure is tried again (policies.escalation.after_failure: up to MAX_ATTEMPTS, with
    backoff, or until the fault deadline when the item has no other stage) on the same model, after
    its own wait; a final failure, or two cheap models that disagree in a cascade, moves the item to
    its next stage (the strong model, then fallbacks: policies.escalation.after_stage). A provider that
    refuses us (bad key, quota spent) takes no more calls for this job. Items finished on the way are
    written on the way (unless `write_items` is false: calibration writes only its calls). After an
    interrupt nothing more is launched, and the items it cut short are handed back.

    With `keep` (a batch without a budget), when fewer than half of `keep` items are still going, the
    job's next pending items are claimed with the next write, up to `keep`: the thread runs on while
    its last slow calls finish, instead of waiting for them (repo.claim_next)."""
    progress = _Progress.start(
        chunk,
        batch,
        secrets=configured_secrets(settings),
        write_items=write_items,
        fault_window_s=_fault_window(settings),
    )
    progress.keep = keep if write_items else 0
    stream = runtime.Stream()
    _launch(settings, catalog, chunk, progress, stream, batch.tries, batch.recorded, delays=None)
    deferred = progress.deferred  # retries waiting for their time, not yet recorded: (due, try)
    last_write = time.monotonic()
    while stream.pending or deferred:
        until = _next_write(deferred, last_write, progress) if deferred or progress.unwritten else None
        if progress.hedge_at is not None:
            until = progress.hedge_at if until is None else min(until, progress.hedge_at)
        round_ = _Round.of(catalog, progress, stream.take(LINGER_S, until=until))
        for launched, result, latency_s in round_.results:
            _record_result(catalog, chunk, progress, round_, launched, result, latency_s)
        stream.give_up(progress.giving_up)
        progress.giving_up = []
        advance = _advance_items(catalog, chunk, progress, round_)
        now = time.monotonic()
        # Each retry waits its own time (up to 25% jitter spreads the herd); the others go at once.
        deferred.extend(
            (now + min(wait, MAX_WAIT_S) * (1 + random.random() * 0.25), t)
            for t, wait in zip(round_.retry, round_.waits, strict=True)
        )
        if runtime.stopping():  # interrupted: nothing new leaves; the items it would have called go back
            _hold_back(progress, {t.item_id for t in [t for _, t in deferred] + advance if t.purpose != "drift"})
            deferred.clear()
            advance = []
        advance = _reserve_escalations(settings, catalog, chunk, progress, advance)
        hedges = _reserve_hedges(settings, catalog, chunk, progress, _stragglers(settings, catalog, chunk, progress))
        want = progress.wanted()
        if not advance and not deferred and not stream.pending and not want:
            break  # the batch's last outcomes: `finish` writes them with its settlement
        if (
            not advance
            and not hedges
            and not want
            and stream.pending
            and _write_can_wait(deferred, last_write, progress, now)
        ):
            continue  # nothing must leave yet: the next results are written with these
        due = [max(0.0, at - time.monotonic()) for at, _ in deferred]
        tries = [t for _, t in deferred] + advance
        twins = len(tries)  # where the hedges start among the tries
        tries += [t for _, t in hedges]
        moved_on = len(tries)  # retries, next stages and hedges; the items claimed on the way follow them
        deferred.clear()
        recorded, tries = _write_step(settings, catalog, chunk, progress, tries, want)
        last_write = time.monotonic()
        keys = _launch(settings, catalog, chunk, progress, stream, tries, recorded, delays=due, moved_on=moved_on)
        if keys:  # the calls just launched are looked at for stragglers too, once they have left
            progress.look_by(time.monotonic() + HEDGE_LOOK_S)
        for (key, _), hedge in zip(hedges, keys[twins:], strict=False):
            group = progress.twins.setdefault(key, {key})
            group.add(hedge)
            progress.twins[hedge] = group
    return progress.executed()


# A retry's call row is recorded this long before it is due to leave (a write takes tens of ms, and
# more when the worker is busy): retries due within it are recorded together, in one write.
WRITE_AHEAD_S = 0.25
# Outcomes are written at most this long after they came back, even when nothing else needs a write
# (finished items show in progress and results within it).
WRITE_EVERY_S = 1.0


def _next_write(deferred: list[tuple[float, PlannedCall]], last_write: float, progress: _Progress) -> float:
    """When the batch must write next, if no result comes first that needs it sooner (monotonic)."""
    at = last_write + WRITE_EVERY_S if progress.unwritten else float("inf")
    if deferred:
        at = min(at, min(due for due, _ in deferred) - WRITE_AHEAD_S)
    return at


def _write_can_wait(
    deferred: list[tuple[float, PlannedCall]], last_write: float, progress: _Progress, now: float
) -> bool:
    """Whether this round's outcomes and retries can wait for the next round's write: no retry is
    due within WRITE_AHEAD_S and no outcome has waited WRITE_EVERY_S. Retries wait their backoff
    anyway, so a batch under a fault mix writes once per backoff, not once per round: fewer, larger
    transactions on the job's rows, and less of the worker's time spent writing."""
    return _next_write(deferred, last_write, progress) > now


def _fault_window(settings: Settings) -> float:
    """How long an item with no other stage waits out transient faults, from its claim."""
    return min(settings.fault_wait_s, settings.lease_s / 2)


@dataclass(slots=True)
class _Progress:
    """A batch's state while its calls are out: answers so far, finished and held-back items, calls
    on their way, stopped providers, reservations, and the outcomes not yet written."""

    texts: dict[int, str]  # item id -> text, in claim order
    stages: tuple[tuple[str, ...], ...]
    route_models: tuple[str, ...]
    stage: dict[int, int]  # item id -> its current stage
    answers: dict[int, dict[str, Answer]]  # item id -> model -> its answer (drift checks excluded)
    references: dict[int, str | None]  # item id -> the reference model's answer (drift checks)
    finished_items: dict[int, dict[str, Any]]  # finished since the last write
    held_back: list[int]  # items handed back, to run later (budget, stopped providers, an interrupt)
    blocked: bool  # some were handed back because the providers left to them are stopped
    stopped: dict[str, str]
    newly_stopped: dict[str, str]
    reservation_ids: list[str]
    secrets: frozenset[str]  # the configured API keys: redacted from every provider error kept
    held: dict[int, int]
    write_items: bool
    fault_window_s: float
    deadline: dict[int, float]  # item id -> time.monotonic() until which its transient faults are retried
    unwritten: list[dict[str, Any]] = field(default_factory=list)  # call outcomes since the last write
    facts: dict[tuple[str, str], list[CallFacts]] = field(default_factory=dict)  # ... and their rollup facts
    baseline_calls: set[str] = field(default_factory=set)
    launched: dict[int, Launched] = field(default_factory=dict)  # stream key -> the call on its way
    outstanding: dict[int, int] = field(default_factory=dict)  # item id -> its calls on their way
    next_key: int = 0
    spent_usd: Decimal = Decimal(0)
    settled_usd: Decimal = Decimal(0)  # of which settled against the budget on the way
    done: int = 0
    failed: int = 0
    keep: int = 0  # items to keep going (0: only the batch's own)
    active: int = 0  # items neither finished nor handed back
    cursor: int = -1  # the highest seq claimed so far
    taken: int = 0
    changed: bool = False  # the job changed since the chunk read it: take no more items
    deferred: list[tuple[float, PlannedCall]] = field(
        default_factory=list
    )  # retries not yet recorded, with when they are due
    # (item id, model) -> how long its next call waits for the provider's open breaker to let it through
    until_breaker: dict[tuple[int, str], float] = field(default_factory=dict)
    # Hedged calls (policies.hedging): when each call left (stream key -> time.monotonic(), written on
    # the I/O loop), the calls made and the hedges among them, the hedged calls out (stream key -> the
    # keys of the same call out, itself included: one set shared by them), the (item, model) pairs not
    # worth a hedge, the calls given up (recorded already: their results are dropped), the calls whose
    # result is only recorded (a twin answered for the item; with the item's text when the item may
    # be gone by then), the calls to cancel, and when the next call out may become a straggler.
    sent: dict[int, float] = field(default_factory=dict)
    calls: int = 0
    hedges: int = 0
    twins: dict[int, set[int]] = field(default_factory=dict)
    unhedged: set[tuple[int, str]] = field(default_factory=set)
    given_up: set[int] = field(default_factory=set)
    record_only: dict[int, str | None] = field(default_factory=dict)
    giving_up: list[int] = field(default_factory=list)
    hedge_at: float | None = None

    @classmethod
    def start(
        cls,
        chunk: ChunkContext,
        batch: Batch,
        *,
        secrets: frozenset[str],
        write_items: bool,
        fault_window_s: float,
    ) -> _Progress:
        texts = {row.id: row.text for row in batch.items}
        until = time.monotonic() + fault_window_s
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
            secrets=secrets,
            held={row.id: row.attempts for row in batch.items},
            write_items=write_items,
            fault_window_s=fault_window_s,
            deadline=dict.fromkeys(texts, until),
            active=len(texts),
            cursor=max((row.seq for row in batch.items), default=-1),
        )
        for item_id in texts:  # items with nothing to call at all (every provider stopped)
            if progress.stage[item_id] >= len(stages):
                _hold_back(progress, {item_id})
                progress.blocked = True
        return progress

    def wanted(self) -> int:
        """How many more items to claim now: up to `keep` going, once fewer than half are."""
        if not self.keep or runtime.stopping() or self.active > self.keep // 2:
            return 0
        return self.keep - self.active

    def take(self, planned: Sequence[tuple[ClaimedItem, int, list[PlannedCall]]]) -> list[PlannedCall]:
        """Items claimed on the way join the batch, each with its first stage and first calls (their
        rows recorded already); returns those calls, in order."""
        tries: list[PlannedCall] = []
        until = time.monotonic() + self.fault_window_s
        for row, index, first in planned:
            self.texts[row.id], self.answers[row.id], self.stage[row.id] = row.text, {}, index
            self.held[row.id], self.deadline[row.id] = row.attempts, until
            self.cursor = max(self.cursor, row.seq)
            self.active += 1
            if not first:  # nothing to call: every provider left to it is stopped
                _hold_back(self, {row.id})
                self.blocked = True
            tries.extend(first)
        self.taken += len(planned)
        if not planned:
            self.keep = 0  # the job has no pending item left: run out the batch
        return tries

    def look_by(self, at: float) -> None:
        """Look for stragglers again by `at` (time.monotonic()), if not sooner already."""
        self.hedge_at = at if self.hedge_at is None else min(self.hedge_at, at)

    def forget(self, item_ids: Sequence[int]) -> None:
        """Items written finished: nothing more about them is needed (a batch that takes items on
        the way keeps only those still going)."""
        for item_id in item_ids:
            for kept in (
                self.texts,
                self.answers,
                self.stage,
                self.references,
                self.outstanding,
                self.held,
                self.deadline,
            ):
                kept.pop(item_id, None)

    def executed(self) -> Executed:
        return Executed(
            finished_items=self.finished_items,
            answers=self.answers,
            held_back=self.held_back,
            unwritten=self.unwritten,
            facts=self.facts,
            baseline_calls=self.baseline_calls,
            references=self.references,
            reservation_ids=self.reservation_ids,
            newly_stopped=self.newly_stopped,
            blocked=self.blocked,
            held=self.held,
            spent_usd=self.spent_usd,
            settled_usd=self.settled_usd,
            done=self.done,
            failed=self.failed,
            taken=self.taken,
            cursor=self.cursor,
            changed=self.changed,
        )


@dataclass(slots=True)
class _Round:
    """Results taken together, what was looked up for them once (models, prices), and the tries they
    lead to on the same models (retries), each with how long it asks to wait."""

    results: list[tuple[Launched, Completion | ProviderError, float]]
    infos: dict[str, ModelInfo]
    prices: dict[tuple[str, datetime], Price]
    finished: datetime
    retry: list[PlannedCall]
    waits: list[float]

    @classmethod
    def of(cls, catalog: Catalog, progress: _Progress, taken: list[tuple[int, Any, float]]) -> _Round:
        results = []
        for key, result, latency_s in taken:
            progress.sent.pop(key, None)
            if key in progress.given_up:  # recorded when it was given up (its twin answered)
                progress.given_up.discard(key)
                continue
            launched = progress.launched.pop(key)
            if key not in progress.record_only:  # one given up before it left was counted out then (_give_up)
                progress.outstanding[launched.planned.item_id] -= 1
            results.append((launched, result, latency_s))
        models = {launched.planned.model_id for launched, _, _ in results}
        return cls(
            results=results,
            infos={m: catalog.model(m) for m in models},
            prices={
                (launched.planned.model_id, launched.started): catalog.price(
                    launched.planned.model_id, launched.started
                )
                for launched, _, _ in results
            },
            finished=utcnow(),
            retry=[],
            waits=[],
        )


def _launch(
    settings: Settings,
    catalog: Catalog,
    chunk: ChunkContext,
    progress: _Progress,
    stream: runtime.Stream,
    tries: list[PlannedCall],
    recorded: Recorded,
    *,
    delays: list[float] | None,
    moved_on: int = 0,
) -> list[int]:
    """Send `tries` (their call rows are recorded: `recorded`), each after its delay; the first
    `moved_on` are items' retries, next stages and hedges, which wait for a provider's slot ahead of
    first tries (SharedLimits.enter). Returns their stream keys, in order."""
    infos = {m: catalog.model(m) for m in {t.model_id for t in tries}}
    requests = _requests(chunk, tries, recorded, infos, progress.texts)
    calls = []
    keys = []
    for k, (provider, request) in enumerate(requests):
        t, key = tries[k], progress.next_key
        progress.next_key += 1
        keys.append(key)
        progress.launched[key] = Launched(t, recorded.ids[k], recorded.started, key)
        progress.outstanding[t.item_id] = progress.outstanding.get(t.item_id, 0) + 1
        delay = delays[k] if delays and k < len(delays) else 0.0
        until_breaker = progress.until_breaker.pop((t.item_id, t.model_id), 0.0)
        priority = RETRY if k < moved_on else FIRST_TRY
        calls.append(
            (
                key,
                call(
                    catalog,
                    settings,
                    chunk.job.simulated,
                    key,
                    provider,
                    request,
                    delay,
                    until_breaker,
                    priority,
                    sent=progress.sent,
                ),
            )
        )
    progress.calls += len(calls)
    stream.launch(calls)
    return keys


def _requests(
    chunk: ChunkContext,
    tries: list[PlannedCall],
    recorded: Recorded,
    infos: dict[str, ModelInfo],
    texts: dict[int, str],
) -> list[tuple[str, ChatRequest]]:
    """The requests of `tries`, in order, as (provider name, request); the call row's id goes along."""
    return [
        (infos[t.model_id].provider, chunk.request(infos[t.model_id], texts[t.item_id], recorded.ids[k]))
        for k, t in enumerate(tries)
    ]


def _record_result(
    catalog: Catalog,
    chunk: ChunkContext,
    progress: _Progress,
    round_: _Round,
    launched: Launched,
    result: Completion | ProviderError,
    latency_s: float,
) -> None:
    """Record the outcome of a call: its row's update, its rollup facts, and the item's answer
    (unless another try of the same call follows). A call an interrupt kept from leaving hands its
    item back.

    A hedged call (policies.hedging) and its twin: the first to answer gives the item its answer,
    and the other is given up (_give_up); one that fails while its twin is still out is only
    recorded, and the item waits for the twin. A call given up before it left is only recorded when
    it comes back (not sent, at $0, or answered if it raced the cancel)."""
    t, call_id, key = launched.planned, launched.call_id, launched.key
    only = key in progress.record_only
    text = progress.record_only.pop(key, None) if only else None
    if text is None:
        text = progress.texts[t.item_id]
    twins = progress.twins.pop(key, set())
    twins.discard(key)
    if twins and isinstance(result, Completion):
        for twin in sorted(twins):
            _give_up(catalog, chunk, progress, twin, text)
    elif twins:  # a twin may still answer: the item waits for it, with this try counted
        only = True
        for twin in twins:
            out = progress.launched.get(twin)
            if out is not None and out.planned.attempt < t.attempt:
                progress.launched[twin] = replace(out, planned=replace(out.planned, attempt=t.attempt))
        if len(twins) == 1:  # the last one out is a call like any other again
            progress.twins.pop(next(iter(twins)), None)
    price = round_.prices[(t.model_id, launched.started)]
    update = blank_update(call_id, latency_ms=int(latency_s * 1000), finished_at=round_.finished)
    output: str | None = None
    error: str | None = None
    outcome: str | None = None
    if isinstance(result, Completion):
        # Every answer is charged as billed, usable or not (refused, filtered, blocked, cut off); one
        # that is not used is not tried again on the same model: the stage's answer is a failed one.
        update.update(status=CallStatus.OK, finish=result.finish, **_charged(result.usage, price))
        output, error = parse_answer(result, chunk.labels, chat=chunk.chat)
        if output is None:
            outcome = OUTCOME_OF_FINISH.get(result.finish)  # its own outcome in the reports
        if error is not None and result.finish != STOP:  # the call's row says why its answer was not used
            error = redact(error, progress.secrets)[:ERROR_CHARS]
            update.update(error=error)
    else:
        # The one place a provider's error text enters the ledger (the call's row, the item's reason,
        # a stopped provider's reason and its events): redacted here, once, before it is shortened.
        said = redact(str(result), progress.secrets)
        if isinstance(result, MalformedResponse) and result.usage is not None:
            # Answered and billed, but its content could not be read: charged with the tokens it reported.
            said = f"answered and billed, but unreadable (charged with its tokens): {said}"
            update.update(status=CallStatus.ERROR, **_charged(result.usage, price))
        elif result.maybe_billed:
            # The request left and no answer came back: the provider may have answered and billed it.
            # Charged at its worst case, like a dead worker's call (the ledger may exceed the bill,
            # never fall short of it); settled against the budget out of this call's reservation.
            said = f"sent but unanswered, so it may have been billed (charged at its worst case): {said}"
            update.update(_worst_case(catalog, chunk, t.model_id, text, price))
        else:
            update.update(status=CallStatus.ERROR)
            if only and isinstance(result, runtime.NotSent):
                said = GIVEN_UP_UNSENT
        error = said[:ERROR_CHARS]
        update.update(error=error)
        if only:
            pass  # its twin answers for the item
        elif isinstance(result, runtime.NotSent):
            if t.purpose != "drift":
                _hold_back(progress, {t.item_id})
        else:
            _after_failure(catalog, chunk, progress, round_, t, result, said)
    _book(chunk, progress, launched, update, answered=output is not None, outcome=outcome)
    if only:
        return
    retry = round_.retry
    if retry and retry[-1].item_id == t.item_id and retry[-1].model_id == t.model_id and retry[-1].purpose == t.purpose:
        return  # another try of this call follows: its answer is not in yet
    if t.purpose == "drift":
        progress.references[t.item_id] = output
    else:
        progress.answers[t.item_id][t.model_id] = Answer(output, call_id, error)


# Why a hedged call given up before it left has no cost: its twin answered first.
GIVEN_UP_UNSENT = "not sent: its hedged twin answered first"
# Why a hedged call given up after it left is charged at its worst case.
GIVEN_UP_SENT = "given up: its hedged twin answered first; it was sent, so it may be billed (charged at its worst case)"


def _give_up(catalog: Catalog, chunk: ChunkContext, progress: _Progress, key: int, text: str) -> None:
    """The twin `key` of a hedged call that answered: cancel it and count it out of its item. If it
    left, it may be billed: recorded now, at its worst case, and its result is dropped when it comes
    back. If it has not left, it is recorded as it comes back (not sent, or answered if it raced the
    cancel). A twin that came back in the same round is only recorded, as it is."""
    progress.twins.pop(key, None)
    out = progress.launched.get(key)
    if out is None:  # back in this round, not yet recorded: recorded as it is, not used
        progress.record_only[key] = None
        return
    progress.outstanding[out.planned.item_id] -= 1
    progress.giving_up.append(key)
    left = progress.sent.get(key)
    if left is None:
        progress.record_only[key] = text
        return
    del progress.launched[key]
    progress.given_up.add(key)
    price = catalog.price(out.planned.model_id, out.started)
    update = blank_update(out.call_id, latency_ms=int((time.monotonic() - left) * 1000), finished_at=utcnow())
    update.update(_worst_case(catalog, chunk, out.planned.model_id, text, price), error=GIVEN_UP_SENT)
    _book(chunk, progress, out, update, answered=False, outcome=None)


def _worst_case(catalog: Catalog, chunk: ChunkContext, model_id: str, text: str, price: Price) -> dict[str, Any]:
    """A call row's update for a call that was sent and may have been billed: `unknown`, at its worst case."""
    usage = chunk.worst_usage(catalog, model_id, text)
    return {
        "status": CallStatus.UNKNOWN,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "usage_estimated": True,
        "cost_usd": price.cost_usd(usage),
    }


def _book(
    chunk: ChunkContext,
    progress: _Progress,
    launched: Launched,
    update: dict[str, Any],
    *,
    answered: bool,
    outcome: str | None,
) -> None:
    """A call's outcome joins those to write: its row's update, its cost, its rollup facts."""
    t = launched.planned
    progress.unwritten.append(update)
    progress.spent_usd += update["cost_usd"]
    progress.facts.setdefault((t.model_id, t.purpose), []).append(
        CallFacts.of_update(
            update,
            started_at=launched.started,
            answered=answered,
            simulated=chunk.job.simulated,
            call_id=launched.call_id,
            outcome=outcome,
        )
    )


def _charged(usage: TokenUsage, price: Price) -> dict[str, Any]:
    """A call row's tokens and cost for an answer the provider billed with `usage`."""
    return {
        "input_tokens": usage.input_tokens,
        "cached_input_tokens": usage.cached_input_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "output_tokens": usage.output_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "usage_estimated": usage.estimated,
        "cost_usd": price.cost_usd(usage),
    }


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
        time_left_s=progress.deadline[t.item_id] - time.monotonic()
        if _deferrable(catalog, chunk, progress, t, error)
        else None,
        breaker_open=isinstance(error, CircuitOpen),
    )
    if decision.retry:
        round_.retry.append(PlannedCall(t.item_id, t.model_id, t.purpose, t.attempt + 1))
        round_.waits.append(decision.wait_s)
        if decision.until_breaker_s:  # it leaves now and waits for the breaker, woken when the provider is back
            progress.until_breaker[(t.item_id, t.model_id)] = decision.until_breaker_s


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
    waiting = {t.item_id for t in round_.retry} | {t.item_id for _, t in progress.deferred}
    stages, stage, finished_items, held_back, outstanding = (
        progress.stages,
        progress.stage,
        progress.finished_items,
        progress.held_back,
        progress.outstanding,
    )
    # The items this round's results belong to; each waits until all its calls are back (drift checks too).
    touched = dict.fromkeys(launched.planned.item_id for launched, _, _ in round_.results)
    advance: list[PlannedCall] = []
    for item_id in touched:
        if item_id in finished_items or item_id in waiting or item_id in held_back or outstanding[item_id]:
            continue
        got, current = progress.answers[item_id], stage[item_id]
        decision = after_stage(
            stages=stages, current=current, answers=got, callable_models=callable_models, stopped_models=stopped_models
        )
        kind = decision.kind
        if kind == ACCEPT:
            first = got[stages[current][0]]
            _finish_item(progress, round_, item_id, ItemStatus.DONE, first.output, None, first.call_id)
        elif kind == ESCALATE:
            assert decision.stage is not None  # an escalation names its stage
            stage[item_id] = decision.stage
            advance.extend(PlannedCall(item_id, m, chunk.purpose) for m in stages[decision.stage])
        elif kind == HOLD:
            held_back.append(item_id)  # a stopped provider, not the item, is at fault: keep it for later
            progress.blocked = True
        elif kind == FAIL:
            # The item keeps the call whose error fails it (the last one, as the policy reads them), so
            # its result's model and outcome (refused, cut off...) are that call's.
            failing = [answer for answer in got.values() if answer.error == decision.reason]
            last = failing[-1] if failing else got[stages[current][-1]]
            _finish_item(progress, round_, item_id, ItemStatus.FAILED, None, decision.reason, last.call_id)
    return advance


def _finish_item(
    progress: _Progress,
    round_: _Round,
    item_id: int,
    status: str,
    output: str | None,
    error: str | None,
    call_id: str,
) -> None:
    """An item is done or failed; `call_id` is the answer it keeps. One of its calls in this round
    (that one if it is here) stands for it in the baseline: rollups are written with their calls."""
    progress.finished_items[item_id] = _item_row(item_id, status, output, error, call_id, round_.finished)
    progress.active -= 1
    here = [launched.call_id for launched, _, _ in round_.results if launched.planned.item_id == item_id]
    progress.baseline_calls.add(call_id if call_id in here else here[-1])


def _hold_back(progress: _Progress, item_ids: set[int]) -> None:
    """Hand `item_ids` back (to run later), unless finished or handed back already."""
    for item_id in sorted(item_ids):
        if item_id not in progress.finished_items and item_id not in progress.held_back:
            progress.held_back.append(item_id)
            progress.active -= 1


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


def _stragglers(
    settings: Settings, catalog: Catalog, chunk: ChunkContext, progress: _Progress
) -> list[tuple[int, PlannedCall]]:
    """The calls out so long that they are hedged now (policies.hedging), as (stream key, the hedge's
    try), up to the batch's hedges left. A call is judged by the last of its tries out to leave (a
    hedge that straggles too is hedged in its turn, up to MAX_HEDGES out at once). Sets
    `progress.hedge_at`, when the next call out may become one (None: no call can)."""
    progress.hedge_at = None
    left = hedges_left(calls=progress.calls, hedged=progress.hedges)
    if not left or runtime.stopping():
        return []
    now = time.monotonic()
    after: dict[str, float | None] = {}
    found: list[tuple[int, PlannedCall]] = []
    soon = False  # a call that may be hedged has not left yet
    for key, launched in progress.launched.items():
        t = launched.planned
        if t.purpose == "drift" or key in progress.record_only or (t.item_id, t.model_id) in progress.unhedged:
            continue
        group = progress.twins.get(key)
        if group is not None and (key != min(group) or len(group) > MAX_HEDGES):
            continue  # a group is judged once, by its first key
        if t.model_id not in after:
            info = catalog.model(t.model_id)
            after[t.model_id] = hedge_after(service_times(info.provider, info.api_model), settings.request_timeout_s)
        wait = after[t.model_id]
        if wait is None:
            continue
        times = [progress.sent.get(k) for k in group] if group is not None else [progress.sent.get(key)]
        left_at = [at for at in times if at is not None]
        if len(left_at) < len(times):
            soon = True
            continue
        due = max(left_at) + wait
        if now < due:
            progress.look_by(due)
            continue
        text = progress.texts[t.item_id]
        if not worth_hedging(
            call_usd=chunk.worst_case_usd(catalog, t.model_id, text, launched.started),
            route_usd=sum(
                (
                    chunk.worst_case_usd(catalog, m, text, launched.started)
                    for m in (progress.stages[0] if progress.stages else ())
                ),
                Decimal(0),
            ),
            baseline_usd=chunk.baseline_worst_usd(catalog, text),
        ):
            progress.unhedged.add((t.item_id, t.model_id))
            continue
        attempt = max(progress.launched[k].planned.attempt for k in group) if group is not None else t.attempt
        found.append((key, PlannedCall(t.item_id, t.model_id, t.purpose, attempt + 1)))
        if len(found) >= left:
            break
    if soon:  # a call not yet out may leave and straggle before the next result comes: look again soon
        progress.look_by(now + HEDGE_LOOK_S)
    return found


# While any call may be hedged, the batch looks for stragglers at least this often.
HEDGE_LOOK_S = 0.25


def _reserve_hedges(
    settings: Settings,
    catalog: Catalog,
    chunk: ChunkContext,
    progress: _Progress,
    hedges: list[tuple[int, PlannedCall]],
) -> list[tuple[int, PlannedCall]]:
    """Under a budget, hold the worst case of the hedges; when it cannot take them, none is made
    (the calls they would hedge run on to their answer or their timeout). Returns the hedges to make."""
    if not hedges or not progress.reservation_ids:
        progress.hedges += len(hedges)
        return hedges
    with session_scope(settings) as session:
        extra = reserve_more(
            session, settings=settings, catalog=catalog, chunk=chunk, tries=[t for _, t in hedges], texts=progress.texts
        )
    if extra is None:  # not asked again: the calls run on to their answer or their timeout
        progress.unhedged.update((t.item_id, t.model_id) for _, t in hedges)
        return []
    if extra:
        progress.reservation_ids.append(extra)
    progress.hedges += len(hedges)
    return hedges


def _write_step(
    settings: Settings,
    catalog: Catalog,
    chunk: ChunkContext,
    progress: _Progress,
    tries: list[PlannedCall],
    want: int,
) -> tuple[Recorded, list[PlannedCall]]:
    """In one transaction: the outcomes so far (calls, the items finished, the job's counts, rollups,
    drift checks, spend settled against the budget), up to `want` more items claimed, and the call
    rows of `tries` and of those items' first calls, before they are made. Returns the rows and the
    calls to make (`tries` first)."""
    calls = progress.unwritten
    finished = progress.finished_items if progress.write_items else {}
    items = [{**row, "held": progress.held[item_id]} for item_id, row in finished.items()]
    rows = rollups(catalog, chunk.job, progress.facts, baseline_calls=progress.baseline_calls)
    checked, agreed = drift_tally(finished, progress.references)
    spent = sum((call["cost_usd"] for call in calls), Decimal(0))

    def write(session: Session) -> tuple[Recorded, list[tuple[Any, int, list[PlannedCall]]], bool]:
        now = utcnow()
        claimed: list[Any] = []
        # Items are taken only while the job is as the chunk read it: a re-route, a budget or a stopped
        # provider ends the batch, and the chunk goes on with the job as it is (engine/chunk.py).
        changed = bool(want) and repo.job_for_chunk(session, chunk.job.id) != chunk.job
        if want and not changed:
            lease_until = now + timedelta(seconds=settings.lease_s)
            claimed = repo.claim_next(
                session, job_id=chunk.job.id, after_seq=progress.cursor, limit=want, now=now, lease_until=lease_until
            )
        planned = [(row, *chunk.first_tries(catalog, row, progress.stopped)) for row in claimed]
        first = [t for _, _, calls in planned for t in calls]
        recorded = record_calls(session, catalog=catalog, common=chunk.common, tries=tries + first)
        # Last, the rows every thread running the job writes (the job's counts, its rollups, then the
        # budget, in the order every writer takes them): their row locks are held from here to the
        # commit, so the job's other writers queue behind a statement, not behind this transaction.
        # With nothing after them, they are committed in the same round trip (not after this thread's
        # next turn to run).
        settling = bool(spent and progress.reservation_ids)
        if calls or items or rows:
            last = not checked and not settling
            repo.finish_batch(
                session, job_id=chunk.job.id, calls=calls, items=items, rollups=rows, now=now, commit=last
            )
        if checked:
            repo.add_drift_counts(
                session, job_id=chunk.job.id, model_id=chunk.route.model_id, checked=checked, agreed=agreed
            )
        if settling:  # under a budget, what the calls cost is settled with them
            budgets.settle_part(session, reservation_id=progress.reservation_ids[0], actual_usd=spent)
        return recorded, planned, changed

    recorded, planned, changed = write_retrying(settings, write)
    if checked:  # judged as the checks come in: a re-route reaches the items claimed after it
        drift.check(settings, catalog, job_id=chunk.job.id)
    done = sum(1 for row in items if row["status"] == ItemStatus.DONE)
    progress.done, progress.failed = progress.done + done, progress.failed + len(items) - done
    progress.settled_usd += spent
    if progress.write_items:
        progress.forget(list(finished))
    progress.unwritten, progress.facts, progress.baseline_calls, progress.finished_items = [], {}, set(), {}
    if changed:
        progress.changed, progress.keep = True, 0
    elif want:
        tries = tries + progress.take(planned)  # none left: the batch runs out
    return recorded, tries


def drift_tally(finished_items: dict[int, dict[str, Any]], references: dict[int, str | None]) -> tuple[int, int]:
    """(checked, agreed): the items done whose reference model answered, and how many of those
    answers match the item's."""
    checked = agreed = 0
    for item_id, row in finished_items.items():
        reference = references.get(item_id)
        if reference is not None and row["status"] == ItemStatus.DONE:
            checked += 1
            agreed += row["output"] == reference
    return checked, agreed


def parse_answer(answer: Completion, labels: tuple[str, ...], *, chat: bool = False) -> tuple[str | None, str | None]:
    """(output, None) when the answer is usable, else (None, why): one of `labels` when the prompt
    offered labels (classify), else the text as given (a summary, a judge's verdict, a chat answer).

    A refused, filtered, blocked or broken answer is not usable (Completion.unusable says why). One cut
    off by the output cap is not a whole summary or verdict, so it fails with that reason; a label read
    from it stands (a label is a few tokens: the answer named it before the cap cut it off)."""
    if (why := answer.unusable) is not None:
        return None, why
    text = answer.text
    if chat:  # a chat answer is kept as it came, a cut one too (its finish says so, as OpenAI's would)
        return text, None
    if labels:
        label = parse_label(text, labels)
        if label is None:
            if answer.finish == CUT:
                return None, answer.cut_reason
            return None, f"answer {text[:80]!r} names no single label"
        return label, None
    if answer.finish == CUT:
        return None, answer.cut_reason
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

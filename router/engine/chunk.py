"""Running a chunk of a job: claim its items, then run them batch by batch (batch.py reserves and
records, rounds.py calls, settle.py writes what came back); and answering a calibration sample.

A chunk is the items of one job with seq in [lo, hi). Running it is safe to repeat: a chunk
delivered twice claims nothing the first delivery still holds, so nothing is called or charged
twice. Items a dead worker held (their lease ran out) are claimed again, and that worker's calls
in flight are charged as unknown first. Without a budget the whole chunk is one batch, its call rows
committed with the claim; under a budget it runs in as many batches as the budget takes at a time,
and the job pauses when it takes no more.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from router.catalog import Catalog
from router.engine import batch_mode, runtime
from router.engine.batch import Batch, ChunkContext, pause, reserve_batch, unbudgeted_batch
from router.engine.rounds import Answer, Executed, execute
from router.engine.settle import charge_lost, finish
from router.ledger import repo
from router.ledger.db import session_scope
from router.ledger.tables import JobStatus, utcnow
from router.ledger.types import ClaimedItem, JobSnapshot
from router.prompts import PromptSpec
from router.providers.registry import close_all
from router.route import Route
from router.settings import Settings


@dataclass(frozen=True, slots=True)
class ChunkOutcome:
    """How many items a run of a chunk claimed (its own, and the job's next ones it took on the way),
    and how many of them it finished done or failed (the rest were handed back: budget spent,
    providers stopped)."""

    claimed: int
    done: int
    failed: int


NOTHING = ChunkOutcome(claimed=0, done=0, failed=0)


def chunk_ranges(n_items: int, chunk_size: int) -> list[tuple[int, int]]:
    """The seq ranges [lo, hi) that split a job into chunks."""
    return [(lo, min(lo + chunk_size, n_items)) for lo in range(0, n_items, chunk_size)]


def run_chunk(settings: Settings, catalog: Catalog, *, job_id: str, lo: int, hi: int) -> ChunkOutcome:
    """Run the items of `job_id` with seq in [lo, hi) that nobody else holds. Safe to run twice.

    After an interrupt (runtime.stop_calls, a Ctrl-C in-process) it claims nothing, starts no new
    batch, and hands back as pending the items whose calls never left; the caller pauses the job."""
    if runtime.stopping():
        return NOTHING
    now = utcnow()
    with session_scope(settings) as session:
        job = repo.job_for_chunk(session, job_id)
        if job is None or job.status != JobStatus.RUNNING or job.model_id is None:
            return NOTHING
        claimed = repo.claim_items(
            session, job_id=job_id, lo=lo, hi=hi, now=now, lease_until=now + timedelta(seconds=settings.lease_s)
        )
        if not claimed:
            return NOTHING
        chunk = ChunkContext.build(catalog, job)
        retaken = [row for row in claimed if row.attempts > 1]
        if retaken:  # a worker died holding these: its calls in flight are recorded as unknown
            charge_lost(session, settings, catalog, chunk, retaken, now)
        # A job that can wait sends its bulk to the providers' batch APIs (engine/batch_mode.py).
        to_batch = batch_mode.stage_in_batch(catalog, chunk, 0, now)
        # No budget (the common case): the call rows are committed with the claim.
        first = (
            None
            if job.has_budget or to_batch
            else unbudgeted_batch(session, catalog=catalog, chunk=chunk, items=list(claimed))
        )
    if to_batch:
        # Items whose stage cannot go to batch now run synchronously, as any chunk's.
        left = batch_mode.submit_wave(settings, catalog, chunk, list(claimed))
        if not left:
            return ChunkOutcome(claimed=len(claimed), done=0, failed=0)
        outcome, _ = _run_items(settings, catalog, chunk, left, None)
        return ChunkOutcome(claimed=len(claimed), done=outcome.done, failed=outcome.failed)
    outcome, last = _run_items(settings, catalog, chunk, list(claimed), first)
    # The batch stopped taking the job's next items because the job changed (a re-route after drift, a
    # budget set, a provider stopped): the next ones run on the job as it is now.
    while last is not None and last.changed and not runtime.stopping():
        now = utcnow()
        with session_scope(settings) as session:
            job = repo.job_for_chunk(session, job_id)
            if job is None or job.status != JobStatus.RUNNING or job.model_id is None:
                break
            claimed = repo.claim_next(
                session,
                job_id=job_id,
                after_seq=last.cursor,
                limit=settings.chunk_size,
                now=now,
                lease_until=now + timedelta(seconds=settings.lease_s),
            )
            if not claimed:
                break
            chunk = ChunkContext.build(catalog, job)
            first = (
                None if job.has_budget else unbudgeted_batch(session, catalog=catalog, chunk=chunk, items=list(claimed))
            )
        more, last = _run_items(settings, catalog, chunk, list(claimed), first)
        outcome = ChunkOutcome(
            claimed=outcome.claimed + more.claimed, done=outcome.done + more.done, failed=outcome.failed + more.failed
        )
    return outcome


def _run_items(
    settings: Settings, catalog: Catalog, chunk: ChunkContext, claimed: list[ClaimedItem], first: Batch | None
) -> tuple[ChunkOutcome, Executed | None]:
    """Run claimed items batch by batch (`first`: the first batch, already recorded, when there is no
    budget); returns the outcome and the last batch's record."""
    done = failed = taken = 0
    pending = claimed
    executed = None
    while pending:
        if first is None and _cancelled(settings, chunk.job.id, pending):
            failed += len(pending)
            break
        if first is None and runtime.stopping():  # interrupted: no new batch; the rest go back untried
            _hand_back(settings, pending)
            break
        batch = first or reserve_batch(settings, catalog, chunk, pending)
        first = None
        if batch is None:  # the budget cannot take even one more item: hand the rest back and pause
            pause(settings, chunk, pending)
            break
        # Without a budget, the batch takes the job's next items as its own run out (engine/rounds.py).
        keep = 0 if batch.reservation_ids else settings.chunk_size
        executed = execute(
            settings, catalog, chunk, batch, keep=keep
        )  # after an interrupt, unsent items come back held
        batch_done, batch_failed = finish(settings, catalog, chunk, executed, write_items=True)
        done, failed, taken = done + batch_done, failed + batch_failed, taken + executed.taken
        pending = pending[len(batch.items) :]
    return ChunkOutcome(claimed=len(claimed) + taken, done=done, failed=failed), executed


def _hand_back(settings: Settings, items: Sequence[ClaimedItem]) -> None:
    """Interrupted: `items` go back to pending, untried."""
    with session_scope(settings) as session:
        repo.release_items(session, [(row.id, row.attempts) for row in items])


def _cancelled(settings: Settings, job_id: str, items: Sequence[ClaimedItem]) -> bool:
    """Between batches: if the job was cancelled, its claimed items not yet tried end as cancelled."""
    with session_scope(settings) as session:
        if repo.job_status(session, job_id) != JobStatus.CANCELLED:
            return False
        repo.fail_items(session, job_id=job_id, item_ids=[row.id for row in items], error="cancelled", now=utcnow())
    return True


def run_job_inline(
    settings: Settings,
    catalog: Catalog,
    *,
    job_id: str,
    ranges: Sequence[tuple[int, int]],
    progress: Callable[[int], None] | None = None,
) -> None:
    """Run the chunks `ranges` of a job in this process (the embedded default: no broker, no worker);
    `progress` hears how many of the job's items are finished, as they are written (every
    PROGRESS_POLL_S) and at the end. Usually `ranges` is chunk_ranges(n_items, settings.chunk_size)."""
    # SQLite takes one writer at a time; a server database takes as many chunks as a worker would.
    threads = 1 if settings.is_sqlite else settings.worker_threads
    with providers_in_use(), ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pennyroute-chunk") as pool:
        futures = [pool.submit(run_chunk, settings, catalog, job_id=job_id, lo=lo, hi=hi) for lo, hi in ranges]
        running = set(futures)
        while running:
            running = wait(running, timeout=PROGRESS_POLL_S).not_done
            if progress:
                progress(_finished(settings, job_id))
        for future in futures:
            future.result()  # a chunk's error is raised here


# In-process runs under way in this process: a server runs several jobs at once, each on a thread of
# its own, over the same cached providers and batch APIs (providers/registry.py). The last run to end
# closes their connections; the first to end must not close them under the others.
_in_use = 0
_in_use_lock = threading.Lock()


@contextmanager
def providers_in_use() -> Iterator[None]:
    """Hold this process's providers open for an in-process run; the last holder to leave closes
    their connections (under the lock: a run starting meanwhile waits, then builds them afresh)."""
    global _in_use
    with _in_use_lock:
        _in_use += 1
    try:
        yield
    finally:
        with _in_use_lock:
            _in_use -= 1
            if _in_use == 0:
                runtime.run(close_all())  # this process is done with providers: close their connections


# How often the in-process runner reads how many of the job's items are finished, for its progress bar.
PROGRESS_POLL_S = 0.5


def _finished(settings: Settings, job_id: str) -> int:
    with session_scope(settings) as session:
        return repo.finished_count(session, job_id)


def answer_items(
    settings: Settings,
    catalog: Catalog,
    job: JobSnapshot,
    *,
    model_id: str,
    items: list[ClaimedItem],
    purpose: str = "calibration",
    spec: PromptSpec | None = None,
) -> dict[int, Answer] | None:
    """Have `model_id` answer `items` outside the job's route (calibration), reserving, recording and
    settling like any batch, without writing the items' outcomes. Returns each item's answer (retries
    and the model's fallbacks excluded), or None when the team's budget cannot take the calls.

    Under a budget, only the leading items it takes at once are answered. `spec` replaces the job's
    prompt (a summary judge's rubric, each item's text being the message to send); its answers come
    back as the text given."""
    chunk = ChunkContext.build(catalog, job, route=Route(kind="single", model_id=model_id), purpose=purpose, spec=spec)
    if job.has_budget:
        batch = reserve_batch(settings, catalog, chunk, items)
        if batch is None:
            return None
    else:
        with session_scope(settings) as session:
            batch = unbudgeted_batch(session, catalog=catalog, chunk=chunk, items=items)
    executed = execute(settings, catalog, chunk, batch, write_items=False)
    finish(settings, catalog, chunk, executed, write_items=False)
    if runtime.stopping():  # interrupted: its answers are incomplete; the calls made are recorded
        raise runtime.Interrupted("calibration was interrupted")
    return {item_id: by_model[model_id] for item_id, by_model in executed.answers.items() if model_id in by_model}

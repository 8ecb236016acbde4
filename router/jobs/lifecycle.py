"""A job's life after submit: every rule about what follows what, in one place.

    submit --> calibrating --calibrate_then_run--> running --> done
           \\-----------------------------------> running
    running --(budget spent | every provider refused | Ctrl-C in-process)--> paused
    paused --(resume | on_budget_raised | resume_paused, beat)--> running
    no_model --resume--> calibrating (calibrated again against the current catalog and estimates)
    calibrating | running | paused | no_model --cancel--> cancelled

Interrupts in-process (no broker): a first Ctrl-C stops new calls (engine/runtime.py stop_calls),
lets the calls in flight finish, hands the items not finished back and pauses the job
("interrupted": `settle_interrupted`); a second one charges the calls still in flight at their worst
case and hands their items back (`settle_interrupted` again) before the process exits. A run that
died anyway (killed) leaves items running under its lease: in-process `resume` and `cancel` take
them back first (`recover_dead_run`), charging their calls in flight as a dead worker's.

Each shell (the CLI, the Celery tasks, the coming HTTP API) calls one function here and gets the
same behaviour. Work is handed over through a Dispatcher (jobs/dispatch.py), chosen once per process
by `dispatcher_for`: Celery when a broker is set, else `InlineDispatcher`, which does the work in
this process and reports progress to a Watcher (the CLI draws it; other callers pass none).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from router.catalog import Catalog
from router.engine import batch_mode, runtime
from router.engine.batch import ChunkContext
from router.engine.chunk import chunk_ranges, providers_in_use, run_job_inline
from router.engine.settle import charge_lost
from router.errors import NotFoundError
from router.jobs.calibrate import calibrate_job
from router.jobs.dispatch import CeleryDispatcher, Dispatcher
from router.ledger import budgets, repo
from router.ledger.db import session_scope
from router.ledger.tables import BudgetPeriod, ItemStatus, Job, JobStatus, utcnow
from router.settings import Settings

# A job in one of these states has ended: nothing resumes or cancels it (a no_model job can be
# cancelled, and resumed: it calibrates again).
ENDED = (JobStatus.DONE, JobStatus.CANCELLED)
# The pause reason of a job whose in-process run was interrupted (Ctrl-C); `jobs resume` goes on.
INTERRUPTED = "interrupted"
# When this process started: in-process (no broker, no other workers), an item claimed before it
# was claimed by a run that is gone.
PROCESS_STARTED = utcnow()
# A cutoff later than every lease: every item running is taken back.
EVERY_LEASE = timedelta(days=36_500)


class Watcher(Protocol):
    """What an in-process run shows as it goes. The CLI draws it; other callers pass none."""

    def calibrating(self) -> AbstractContextManager[None]:
        """Held while candidate models answer the calibration sample."""
        ...

    def calibrated(self, job_id: str, summary: dict[str, Any]) -> None:
        """Calibration ended (`summary` as calibrate_job returns it)."""
        ...

    def running(self, *, total: int, finished: int) -> AbstractContextManager[Callable[[int], None]]:
        """Held while chunks run; yields a function called with how many of the job's items are
        finished now (done or failed), as they are written."""
        ...


class _Unwatched:
    """The Watcher of callers that show nothing."""

    @contextmanager
    def calibrating(self) -> Iterator[None]:
        yield

    def calibrated(self, job_id: str, summary: dict[str, Any]) -> None:
        return None

    @contextmanager
    def running(self, *, total: int, finished: int) -> Iterator[Callable[[int], None]]:
        yield lambda _: None


class InlineDispatcher:
    """Does a job's work in this process, on the same code path as the workers (the embedded default)."""

    def __init__(self, settings: Settings, catalog: Catalog, watcher: Watcher | None = None) -> None:
        self._settings, self._catalog = settings, catalog
        self._watcher: Watcher = watcher or _Unwatched()

    def calibrate(self, job_id: str) -> None:
        try:
            with providers_in_use():
                calibrate_then_run(self._settings, self._catalog, job_id=job_id, dispatcher=self, watcher=self._watcher)
        except runtime.Interrupted:  # Ctrl-C while calibrating: the job stays calibrating; resume calibrates it again
            settle_interrupted(self._settings, self._catalog, job_id=job_id)

    def run(self, job_id: str, ranges: list[tuple[int, int]]) -> None:
        with session_scope(self._settings) as session:
            job = repo.get_job(session, job_id)
            total, finished = job.n_items, job.n_done + job.n_failed
        with providers_in_use(), self._watcher.running(total=total, finished=finished) as show:
            run_job_inline(
                self._settings,
                self._catalog,
                job_id=job_id,
                ranges=ranges,
                progress=show,
            )
            # What beat does for the workers: poll the job's provider batches until none is open
            # (their ingest runs what follows them: a next batch, or the rest synchronously).
            batch_mode.wait_for_batches(self._settings, self._catalog, job_id=job_id)
            show(_finished_count(self._settings, job_id))
        if runtime.stopping():  # a Ctrl-C: what the run left goes back to pending, and the job pauses
            settle_interrupted(self._settings, self._catalog, job_id=job_id)


def _finished_count(settings: Settings, job_id: str) -> int:
    with session_scope(settings) as session:
        return repo.finished_count(session, job_id)


def dispatcher_for(settings: Settings, catalog: Catalog, *, watcher: Watcher | None = None) -> Dispatcher:
    """The process's dispatcher: the broker's workers when one is configured, else this process."""
    if settings.embedded:
        return InlineDispatcher(settings, catalog, watcher)
    return CeleryDispatcher(settings)


def start(settings: Settings, *, job_id: str, dispatcher: Dispatcher) -> int:
    """Hand a committed job to its runner: its calibration first when it calibrates, else its
    chunks. Returns how many chunks were handed over (0 when calibration goes first, or when the
    job is not running)."""
    with session_scope(settings) as session:
        job = repo.get_job(session, job_id)
        status, n_items, execution = job.status, job.n_items, job.execution
    if status == JobStatus.CALIBRATING:
        dispatcher.calibrate(job_id)
        return 0
    if status != JobStatus.RUNNING:
        return 0
    # A job whose bulk goes to the providers' batch APIs is handed over in waves of batch_mode.WAVE_ITEMS
    # items (one provider batch per model for each), not in chunks of a hundred.
    size = batch_mode.WAVE_ITEMS if (execution or {}).get("bulk") == "batch" else settings.chunk_size
    ranges = chunk_ranges(n_items, max(size, settings.chunk_size))
    dispatcher.run(job_id, ranges)
    return len(ranges)


def calibrate_then_run(
    settings: Settings, catalog: Catalog, *, job_id: str, dispatcher: Dispatcher, watcher: Watcher | None = None
) -> dict[str, Any]:
    """Calibrate a job on its labelled items; when it has a route to run (proven, or the best-measured
    one under --if-unproven best; and the job was not a calibration only), hand its chunks over. Safe to run twice. Returns the calibration summary."""
    watcher = watcher or _Unwatched()
    with watcher.calibrating():
        summary = calibrate_job(settings, catalog, job_id=job_id)
    watcher.calibrated(job_id, summary)
    if summary.get("outcome") in ("chosen", "unproven"):  # unproven: --if-unproven best runs it anyway
        start(settings, job_id=job_id, dispatcher=dispatcher)  # runs nothing if the job has ended
    return summary


def resume(
    settings: Settings,
    *,
    job_id: str,
    dispatcher: Dispatcher,
    on_resumed: Callable[[Job], None] | None = None,
    catalog: Catalog | None = None,
) -> Job:
    """Resume a paused job (after its budget was raised, a new month began, or a refused key was
    fixed: its stopped providers are tried again), and hand its remaining chunks over. A running job
    is handed over again (a hint costs nothing: only items nobody holds are claimed). Returns the
    job; `on_resumed` is told just before its work is handed over.

    A job that stopped with no model (`no_model`) is calibrated again (after the reason was fixed:
    a key, the catalog, the budget), against the current catalog; a calibrating job's calibration is
    handed over again (its message was lost: a broker that was down). In-process, the items and
    calls a dead run of this job left are taken back first (`recover_dead_run`)."""
    with session_scope(settings) as session:
        if repo.recalibrate_job(session, job_id):
            repo.add_job_event(session, job_id=job_id, kind="resumed", detail={"from": JobStatus.NO_MODEL})
        job = repo.resume_job(session, job_id)
    if job.status not in (JobStatus.RUNNING, JobStatus.CALIBRATING):
        return job
    if settings.embedded and catalog is not None:
        recover_dead_run(settings, catalog, job_id=job_id)
    if on_resumed is not None:
        on_resumed(job)
    start(settings, job_id=job_id, dispatcher=dispatcher)
    return job


def dead_run_cutoff(settings: Settings, *, now: datetime | None = None) -> datetime:
    """In-process: items whose lease ends before this were claimed by a run that is gone. SQLite
    has no other process: every lease. A server database with no broker: leases taken before this
    process started, or expired."""
    now = now or utcnow()
    if settings.is_sqlite:
        return now + EVERY_LEASE
    return max(now, PROCESS_STARTED + timedelta(seconds=settings.lease_s))


def recover_dead_run(
    settings: Settings, catalog: Catalog, *, job_id: str, cutoff: datetime | None = None
) -> tuple[int, Decimal]:
    """Take back the job's items left running by a run that is gone (lease ending before `cutoff`,
    by default `dead_run_cutoff`): their calls in flight are recorded unknown at their worst case
    (charge_lost, as a dead worker's), and they go back to pending. Returns (items, USD charged)."""
    now = utcnow()
    with session_scope(settings) as session:
        dead = repo.expired_items(session, job_id=job_id, now=cutoff or dead_run_cutoff(settings, now=now))
        if not dead:
            return 0, Decimal(0)
        snapshot = repo.job_for_chunk(session, job_id)
        lost = Decimal(0)
        if snapshot is not None and snapshot.model_id:
            lost = charge_lost(session, settings, catalog, ChunkContext.build(catalog, snapshot), dead, now)
        repo.release_items(session, [(row.id, row.attempts) for row in dead])
        repo.add_job_event(
            session,
            job_id=job_id,
            kind="recovered",
            detail={"items_back_to_pending": len(dead), "lost_calls_usd": str(lost)},
        )
    return len(dead), lost


def settle_interrupted(settings: Settings, catalog: Catalog, *, job_id: str) -> Job:
    """After a Ctrl-C in-process: items this run still holds go back to pending (their calls in
    flight recorded unknown at their worst case), budget reservations left are given back, and a
    running job pauses ("interrupted"). A calibrating job stays calibrating (`resume` calibrates it
    again). Returns the job."""
    recover_dead_run(settings, catalog, job_id=job_id, cutoff=utcnow() + EVERY_LEASE)
    with session_scope(settings) as session:
        if repo.pause_job(session, job_id, reason=INTERRUPTED):
            repo.add_job_event(session, job_id=job_id, kind="paused", detail={"reason": INTERRUPTED})
        budgets.release_job(session, job_id=job_id)
        return repo.get_job(session, job_id)


def set_budget(
    settings: Settings,
    *,
    team: str,
    tenant: str | None,
    monthly: str,
    currency: str,
    soft: str | None,
    dispatcher: Dispatcher,
    on_set: Callable[[BudgetPeriod], None] | None = None,
    on_resumed: Callable[[Job], None] | None = None,
) -> BudgetPeriod:
    """Set a team's monthly budget (this month at once, and every month after), then resume the
    team's paused jobs. Returns this month's period; `on_set` is told it before any job resumes."""
    amount = budgets.parse_amount(monthly, field="--monthly")
    soft_pct = budgets.parse_soft(soft)
    with session_scope(settings) as session:
        found = repo.find_team(session, name=team, tenant=tenant)
        period = budgets.set_budget(
            session, team=found, monthly=amount, currency=currency, soft_pct=soft_pct, settings=settings
        )
        paused = repo.paused_jobs(session, team_id=found.id)  # type: ignore[arg-type]
    if on_set is not None:
        on_set(period)
    for job_id in paused:
        resume(settings, job_id=job_id, dispatcher=dispatcher, on_resumed=on_resumed)
    return period


def resume_paused(settings: Settings, *, dispatcher: Dispatcher, now: datetime | None = None) -> list[str]:
    """Resume the jobs paused for budget whose team has room again (a raised limit, or a new month
    began), and hand them over; run by beat. Returns their ids."""
    resumed = resumable(settings, now=now)
    for job_id in resumed:
        start(settings, job_id=job_id, dispatcher=dispatcher)
    return resumed


def resumable(settings: Settings, *, now: datetime | None = None) -> list[str]:
    """Mark running the jobs paused for budget whose team's budget has room again; returns their ids."""
    out: list[str] = []
    with session_scope(settings) as session:
        for job_id, team_id in repo.budget_paused_jobs(session):
            period = budgets.current_period(session, team_id=team_id, now=now)
            if period is None or period.limit_amount > period.settled + period.reserved:
                out.append(repo.resume_job(session, job_id).id)
    return out


def cancel(settings: Settings, catalog: Catalog, *, job_id: str) -> dict[str, int | str]:
    """Stop a job: no more chunks run; its pending items end as cancelled; the calls of items whose
    worker died are recorded as unknown (at their worst case); its budget reservations are given
    back. Calls in flight in live workers finish and are recorded as usual. In-process (no broker),
    the items a dead run left running are taken as dead at once (`dead_run_cutoff`). A no_model job
    ends cancelled too. Returns what happened."""
    now = utcnow()
    expired_before = dead_run_cutoff(settings, now=now) if settings.embedded else now
    with session_scope(settings) as session:
        job = repo.find_job(session, job_id, for_update=True)
        if job is None:
            raise NotFoundError(f"unknown job '{job_id}'")
        if job.status in ENDED:
            return {"status": job.status, "cancelled": 0, "lost_calls_usd": "0", "in_flight": 0, "released": "0"}
        repo.update_job(session, job_id, status=JobStatus.CANCELLED, finished_at=now)
        dead = repo.expired_items(session, job_id=job_id, now=expired_before)
        lost = Decimal(0)
        snapshot = repo.job_for_chunk(session, job_id)
        if dead and snapshot is not None and snapshot.model_id:
            lost = charge_lost(session, settings, catalog, ChunkContext.build(catalog, snapshot), dead, now)
        cancelled = repo.fail_items(
            session, job_id=job_id, item_ids=None, error="cancelled", now=now, only_status=(ItemStatus.PENDING,)
        )
        cancelled += repo.fail_items(session, job_id=job_id, item_ids=[r.id for r in dead], error="cancelled", now=now)
        in_flight = repo.count_items(session, job_id=job_id, status=ItemStatus.RUNNING)
        released = budgets.release_job(session, job_id=job_id)
        repo.add_job_event(
            session,
            job_id=job_id,
            kind="cancelled",
            detail={
                "cancelled_items": cancelled,
                "in_flight_items": in_flight,
                "lost_calls_usd": str(lost),
                "released": str(released),
            },
        )
    # Open provider batches are cancelled at the provider; the lines they finished are ingested and kept.
    asked = batch_mode.cancel_job_batches(settings, catalog, job_id=job_id)
    if settings.embedded:
        batch_mode.poll_batches(settings, catalog, job_id=job_id)
    return {
        "status": JobStatus.CANCELLED,
        "batches_cancelled": asked,
        "cancelled": cancelled,
        "lost_calls_usd": str(lost),
        "in_flight": in_flight,
        "released": str(released),
    }

"""What a job is and what it gave, as values every shell shows the same way: its state (counts,
spend, models so far), its quality facts and events, and one result record per item.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from router.ledger import figures, keys, repo, sums
from router.ledger.db import session_scope
from router.ledger.tables import ItemStatus, Job, JobStatus
from router.providers.base import CUT, OUTCOME_OF_FINISH
from router.reports.render import plain
from router.settings import Settings


@dataclass(frozen=True, slots=True)
class JobState:
    """A job row with what the ledger says of it so far."""

    job: Job
    spent_usd: Decimal  # every call of the job, retries, calibration and drift checks included
    calls_by_model: list[tuple[str, int]]  # (model id, calls), most calls first
    failures: dict[str, int]  # failed items by what failed them (refused, filtered, cut off, ...), most first
    batches: dict[str, int] = field(default_factory=dict)  # its provider batches by state (creating ... ingested)
    levers: dict[str, Decimal] = field(default_factory=dict)  # ledger.sums.job_levers: savings by lever
    batches_quiet_since: datetime | None = None  # its open provider batches were last looked at then

    @property
    def open_items(self) -> int:
        return self.job.n_items - self.job.n_done - self.job.n_failed


@dataclass(frozen=True, slots=True)
class JobQuality:
    """What the quality report reads: the job, its per-model facts, and its events in order."""

    job: Job
    facts: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]  # (kind, detail)


def job_state(settings: Settings, job_id: str) -> JobState:
    """The job's state; NotFoundError for an unknown job."""
    with session_scope(settings) as session:
        job = repo.get_job(session, job_id)
        return JobState(
            job=job,
            spent_usd=repo.job_spend(session, job_id),
            calls_by_model=repo.job_models(session, job_id),
            failures=repo.failure_kinds(session, job_id) if job.n_failed else {},
            batches=repo.job_batch_counts(session, job_id),
            levers=sums.job_levers(session, job_id=job_id),
            batches_quiet_since=repo.job_batches_quiet_since(session, job_id),
        )


def owned_job_state(
    settings: Settings, job_id: str, *, tenant_id: int, team_id: int | None, failures: bool = False
) -> JobState:
    """The job's state for a tenant (and team): NotFoundError for a job not theirs, as for an unknown
    one. Read in one session from the job row and its rollups (a status poller's read: a few rows,
    however large the job); its spend is job_state's, its calls per model the settled ones. Its
    failed items are counted by kind only when asked (`failures`: a read of every failed item)."""
    with session_scope(settings) as session:
        job = keys.owned_job(session, job_id, tenant_id=tenant_id, team_id=team_id)
        spent, by_model = figures.job_rolled(session, job_id=job_id, tenant_id=job.tenant_id, team_id=job.team_id)
        return JobState(
            job=job,
            spent_usd=spent,
            calls_by_model=by_model,
            failures=repo.failure_kinds(session, job_id) if failures and job.n_failed else {},
            batches_quiet_since=repo.job_batches_quiet_since(session, job_id),
        )


# Open provider batches not looked at for this long (or three poll intervals, if longer) mean nothing
# is polling them: beat is not running, or the process that ran the job in-process has ended.
QUIET_BATCHES_S = 120.0


def batches_unpolled(settings: Settings, state: JobState, *, now: datetime | None = None) -> str | None:
    """Why a running job's provider batches are not moving, and what to do, when nothing has looked at
    them for a while; else None. Batch mode waits silently otherwise: this makes the wait loud."""
    quiet = state.batches_quiet_since
    if quiet is None or state.job.status != JobStatus.RUNNING:
        return None
    age = ((now or datetime.now(UTC)) - quiet).total_seconds()
    if age < max(QUIET_BATCHES_S, 3 * settings.batch_poll_every_s):
        return None
    said = f"its provider batches have not been polled for {age / 60:,.0f} min"
    if settings.embedded:
        return f"{said}: the process that ran it has ended; `pennyroute jobs resume {state.job.id}` polls them here"
    return (
        f"{said}: is celery beat running? Batch mode needs it to poll them "
        "(`celery -A workers.app beat`, or `worker --beat` on one worker)"
    )


def job_quality(settings: Settings, job_id: str) -> JobQuality:
    """The job's quality facts and events; NotFoundError for an unknown job."""
    with session_scope(settings) as session:
        job = repo.get_job(session, job_id)
        facts = repo.job_quality_facts(session, job_id)
        events = [(e.kind, e.detail) for e in repo.job_events(session, job_id)]
    return JobQuality(job=job, facts=facts, events=events)


def result_records(settings: Settings, job_id: str) -> Iterator[dict[str, Any]]:
    """One record per item, in input order, streamed (a job of millions is never held whole)."""
    with session_scope(settings) as session:
        unproven = unproven_note(repo.get_job(session, job_id))
        for row, cost in repo.iter_results(session, job_id):
            record = result_record(row, cost)
            if unproven and row.model_id is not None:
                record["unproven"] = unproven
            yield record


def unproven_note(job: Job) -> str | None:
    """For a job run on a route calibration did not prove (--if-unproven best): the estimate it ran on."""
    calibration = job.calibration or {}
    measure = calibration.get("route_measure")
    if not calibration.get("unproven") or not measure:
        return None
    return (
        f"{measure['name']}: {measure['right']}/{measure['n']} right, lower bound {measure['lower']:.3f} < bar "
        f"{job.min_quality:.3f} ({calibration.get('bounds', '')})"
    )


def result_record(row: Any, cost: Decimal) -> dict[str, Any]:
    """An item's result: id, status, output, model, tokens, exact cost (retries included), tries, error,
    and the outcome of an item failed on a billed answer not used because of how it ended (refused,
    filtered, blocked, cut_off: its final call's finish), else None."""
    record = {
        "id": row.ext_id,
        "status": row.status,
        "output": row.output,
        "model": row.model_id,
        "input_tokens": (row.input_tokens or 0) + (row.cached_input_tokens or 0),
        "output_tokens": row.output_tokens,
        "cost_usd": plain(cost),
        "attempts": row.attempts,
        "error": row.error,
        "outcome": OUTCOME_OF_FINISH.get(row.finish) if row.status == ItemStatus.FAILED else None,
    }
    if row.status == ItemStatus.DONE and row.finish == CUT:
        record["finish"] = "cut"  # the answer stands (a label read from it, or a chat answer) but is not whole
    if row.gold is not None:
        record["gold"] = row.gold
        if row.status == "done" and row.model_id is None:
            record["answer_from"] = "gold label"  # labelled: its answer was known, no model was asked
    if row.simulated:
        record["simulated"] = True
    return record

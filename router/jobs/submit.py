"""Submitting a job: check it, stream its items into the ledger, route it, then hand it to workers.

Everything up to routing happens in one transaction: a job whose file is missing or empty, or that
no model can serve, leaves nothing behind. Chunks are enqueued only after the commit.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from dataclasses import dataclass, replace
from decimal import Decimal

from policies.budget_fit import fits
from policies.cheapest_qualifying import choose_model
from policies.types import Decision, JobProfile
from sqlalchemy import func, or_, select
from sqlmodel import Session

from router.ledger import budgets

from router.jobs import estimates as quality
from router.catalog import Catalog
from router.db import ensure_schema, session_scope
from router.engine.chunk import chunk_ranges
from router.errors import InputError, NotFoundError, PennyrouteError
from router.jobs.intake import JobRequest, LineError, ParsedItem, check_request, read_items
from router.ledger import repo
from router.ledger.tables import Job, JobStatus, Team
from router.prompts import spec_for
from router.candidates import candidates, decision_as_json, max_context
from router.settings import Settings
from router.route import single_route

# Items per INSERT batch: large enough to amortize round trips, small enough to keep memory flat.
INSERT_BATCH = 2000
# Rejected lines kept on the job row (all are counted; the first ones are kept to show).
KEPT_REJECTIONS = 100


class BudgetError(PennyrouteError):
    """Raised at submit when the job's expected cost does not fit its team's budget (--on-budget reject)."""


class NoModelError(PennyrouteError):
    """Raised when no model meets the job's bar and constraints; carries the decision with every reason."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.summary)
        self.decision = decision


@dataclass(frozen=True)
class Submitted:
    job_id: str
    n_items: int
    rejected: list[LineError]
    n_rejected: int
    decision: Decision
    simulated: bool
    calibrating: bool = False


def submit_job(settings: Settings, catalog: Catalog, request: JobRequest) -> Submitted:
    """Check, load and route a job; commit it. The caller dispatches its chunks (see `dispatch_job`)."""
    check_request(request)
    ensure_schema(settings)
    simulated = settings.sandbox_active
    spec = spec_for(request.task, request.labels, request.max_words)
    pool = candidates(catalog, settings, task=request.task, simulated=simulated)
    base_profile = JobProfile(
        task=request.task, min_quality=request.min_quality, n_items=0, total_input_tokens=0, max_input_tokens=0,
        output_tokens_per_item=spec.expected_output_tokens, allowed_providers=request.providers,
        allowed_models=request.models, regions=request.regions,
    )
    context_limit = max_context(base_profile, pool)
    if context_limit == 0:
        raise NoModelError(choose_model(base_profile, pool))
    job_id = uuid.uuid4().hex[:12]
    rejected: list[LineError] = []
    n_rejected = n_items = total_tokens = max_tokens = n_gold = 0
    with session_scope(settings) as session:
        team = repo.find_team(session, name=request.team, tenant=request.tenant)
        measured = quality.fresh_estimates(session, catalog, tenant_id=team.tenant_id, signature=quality.signature_of(request))
        pool = quality.with_estimates(pool, measured)
        job = Job(
            id=job_id, tenant_id=team.tenant_id, team_id=team.id, task=request.task,  # type: ignore[arg-type]
            labels=list(request.labels) or None, max_words=request.max_words, min_quality=request.min_quality,
            constraints=_constraints(request), source=str(request.path), simulated=simulated,
        )
        session.add(job)
        session.flush()
        batch: list[tuple[object, ...]] = []
        for parsed in read_items(request.path, task=request.task, labels=request.labels):
            if isinstance(parsed, ParsedItem):
                tokens = spec.input_tokens(parsed.text)
                if context_limit is not None and tokens + spec.max_output_tokens > context_limit:
                    parsed = LineError(parsed.line, "text", f"about {tokens:,} tokens: longer than every eligible "
                                       f"model's context window (the largest is {context_limit:,} tokens)")
            if isinstance(parsed, LineError):
                n_rejected += 1
                if len(rejected) < KEPT_REJECTIONS:
                    rejected.append(parsed)
                continue
            batch.append((job_id, n_items, parsed.ext_id, parsed.text, parsed.gold, "pending", 0))  # repo.ITEM_COLUMNS
            n_items += 1
            n_gold += parsed.gold is not None
            total_tokens += tokens
            max_tokens = max(max_tokens, tokens)
            if len(batch) >= INSERT_BATCH:
                repo.insert_items(session, batch)
                batch = []
        repo.insert_items(session, batch)
        if n_items == 0 and n_rejected == 0:
            raise InputError(f"{request.path} is empty: no items to run", field="FILE")
        if n_items == 0:
            detail = "; ".join(str(e) for e in rejected[:5])
            raise InputError(f"no valid items in {request.path}: all {n_rejected:,} lines were rejected: {detail}", field="FILE")
        profile = JobProfile(
            task=request.task, min_quality=request.min_quality, n_items=n_items, total_input_tokens=total_tokens,
            max_input_tokens=max_tokens, output_tokens_per_item=spec.expected_output_tokens,
            allowed_providers=request.providers, allowed_models=request.models, regions=request.regions,
        )
        if request.calibrate_only and request.quality in ("auto", "prior"):
            request = replace(request, quality="gold" if n_gold else "reference")
        mode, sample_job = quality.mode_for(session, request, n_gold=n_gold, tenant_id=team.tenant_id, pool=pool,
                                            measured=measured, profile=profile)
        # A job that calibrates first is routed on its measurements, later; now only its constraints count.
        decision = choose_model(replace(profile, min_quality=0.0) if mode != "prior" else profile, pool)
        if not decision.ok:
            raise NoModelError(decision)  # rolls the whole job back
        _check_budget(session, settings, request, team, decision)
        baseline = catalog.price(decision.baseline_model_id) if decision.baseline_model_id else None
        if baseline is not None:
            job.baseline_input_usd_per_mtok = baseline.input.base
            job.baseline_output_usd_per_mtok = baseline.output.base
        job.on_budget = request.on_budget
        job.model_id = decision.model_id
        job.route = single_route(decision).as_json()
        job.baseline_model_id = decision.baseline_model_id
        job.expected_cost_usd = decision.expected_cost_usd
        job.decision = decision_as_json(decision)
        job.n_items = n_items
        job.n_rejected = n_rejected
        job.rejected = [e.as_dict() for e in rejected]
        job.total_input_tokens = total_tokens
        job.max_input_tokens = max_tokens
        job.quality_mode = "prior" if mode == "prior" else mode
        job.status = JobStatus.RUNNING if mode == "prior" else JobStatus.CALIBRATING
        if sample_job or request.calibrate_only:
            job.calibration = {"sample_job_id": sample_job, "only": request.calibrate_only}
    return Submitted(job_id, n_items, rejected, n_rejected, decision, simulated, calibrating=mode != "prior")


def _check_budget(session: Session, settings: Settings, request: JobRequest, team: Team, decision: Decision) -> None:
    """Refuse (reject) a job whose expected cost exceeds what its team's budget has left.

    With pause, the job runs until the budget is spent and then waits. With downgrade, it runs on
    the cheapest model that meets the bar, which is what routing already chose, and then pauses
    like pause does.
    """
    period = budgets.current_period(session, team_id=team.id)  # type: ignore[arg-type]
    if period is None or decision.expected_cost_usd is None:
        return
    remaining = budgets.remaining_usd(period, settings)
    if fits(decision.expected_cost_usd, remaining) or request.on_budget != "reject":
        return
    raise BudgetError(
        f"job's expected cost ${decision.expected_cost_usd:.6f} on {decision.model_id} exceeds team {team.name}'s "
        f"remaining budget ${remaining:.6f} (limit {period.limit_amount.normalize()} {period.currency}, settled "
        f"{period.settled.normalize()}, reserved {period.reserved.normalize()}) for {period.period_start:%Y-%m}: "
        "raise it with `pennyroute budget set`, or submit with --on-budget pause"
    )


def resume_job(settings: Settings, job_id: str) -> Job:
    """Mark a paused job running again (its chunks must then be dispatched or run)."""
    with session_scope(settings) as session:
        return repo.resume_job(session, job_id)


def resumable_jobs(settings: Settings, *, now: datetime | None = None) -> list[tuple[str, int]]:
    """Paused jobs whose team's budget has room again (raised, or a new month began), marked
    running: (job id, items) for the caller to dispatch."""
    out: list[tuple[str, int]] = []
    with session_scope(settings) as session:
        waiting = select(Job.id, Job.team_id).where(  # type: ignore[call-overload]
            Job.status == JobStatus.PAUSED, or_(Job.pause_reason.is_(None), Job.pause_reason != "provider"))  # type: ignore[union-attr, arg-type]
        for job_id, team_id in session.execute(waiting).all():
            period = budgets.current_period(session, team_id=team_id, now=now)
            if period is None or period.limit_amount > period.settled + period.reserved:
                job = repo.resume_job(session, job_id)
                out.append((job.id, job.n_items))
    return out


def dispatch_job(settings: Settings, job_id: str, n_items: int) -> int:
    """Send a committed job's chunks to the broker; return how many messages were sent."""
    from router.jobs.dispatch import CeleryDispatcher

    ranges = chunk_ranges(n_items, settings.chunk_size)
    CeleryDispatcher(settings).send(job_id, ranges)
    return len(ranges)


def _constraints(request: JobRequest) -> dict[str, list[str]]:
    out = {}
    for key, value in (("regions", request.regions), ("providers", request.providers), ("models", request.models)):
        if value:
            out[key] = sorted(value)
    return out


def cancel_job(settings: Settings, catalog: Catalog, job_id: str) -> dict[str, int | str]:
    """Stop a job: no more chunks run; its pending items end as cancelled; the calls of items whose
    worker died are recorded as unknown (at their worst case); its budget reservations are given
    back. Calls in flight in live workers finish and are recorded as usual. Returns what happened."""
    from sqlalchemy import update

    from router.engine.batch import ChunkContext, charge_lost
    from router.ledger.tables import Item, ItemStatus, Reservation, utcnow

    now = utcnow()
    item, reservation = Item.__table__, Reservation.__table__  # type: ignore[attr-defined]
    with session_scope(settings) as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise NotFoundError(f"unknown job '{job_id}'")
        if job.status in (JobStatus.DONE, JobStatus.CANCELLED, JobStatus.NO_MODEL):
            return {"status": job.status, "cancelled": 0, "lost_calls_usd": "0", "in_flight": 0, "released": "0"}
        job.status = JobStatus.CANCELLED
        job.finished_at = now
        session.add(job)
        session.flush()
        dead = session.execute(select(item.c.id, item.c.seq, item.c.text, item.c.attempts).where(
            item.c.job_id == job_id, item.c.status == ItemStatus.RUNNING, item.c.lease_until < now)).all()
        lost = Decimal(0)
        row = repo.job_for_chunk(session, job_id)
        if dead and row is not None and row.model_id:
            lost = charge_lost(session, settings, catalog, ChunkContext.build(catalog, row), list(dead), now)
        cancelled = repo.fail_items(session, job_id=job_id, item_ids=None, error="cancelled", now=now,
                                    only_status=(ItemStatus.PENDING,))
        cancelled += repo.fail_items(session, job_id=job_id, item_ids=[r.id for r in dead], error="cancelled", now=now)
        in_flight = session.execute(select(func.count()).where(item.c.job_id == job_id, item.c.status == ItemStatus.RUNNING)).scalar()
        # Give back what the job holds; a batch still in flight settles its actual spend when it ends.
        held = session.execute(update(reservation).where(reservation.c.job_id == job_id, reservation.c.status == "held")
                               .values(status="expired").returning(reservation.c.amount, reservation.c.budget_period_id)).all()
        released = Decimal(0)
        for amount, period_id in held:
            budgets.release(session, period_id=period_id, amount=amount)
            released += amount
        repo.add_job_event(session, job_id=job_id, kind="cancelled", detail={
            "cancelled_items": cancelled, "in_flight_items": in_flight, "lost_calls_usd": str(lost), "released": str(released)})
    return {"status": JobStatus.CANCELLED, "cancelled": cancelled, "lost_calls_usd": str(lost), "in_flight": int(in_flight or 0),
            "released": str(released)}

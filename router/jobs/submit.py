"""Submitting a job: check it, stream its items into the ledger, route it, then hand it to workers.

Everything up to routing happens in one transaction: a job whose file is missing or empty, or that
no model can serve, leaves nothing behind. Chunks are enqueued only after the commit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlmodel import Session

from policies.budget_fit import fits
from policies.cheapest_qualifying import choose_model
from policies.execution_mode import ModeDecision, ModeInputs, decide
from policies.types import Candidate, Decision, JobProfile, QualityEstimate
from router.candidates import candidates, decision_as_json, max_context
from router.catalog import Catalog
from router.engine import batch_mode
from router.errors import BudgetError, InputError, NoModelError
from router.jobs import estimates
from router.jobs.intake import (
    JobRequest,
    LineError,
    ParsedItem,
    check_names,
    check_request,
    parse_deadline,
    read_items,
)
from router.ledger import budgets, repo
from router.ledger.db import ensure_schema, session_scope
from router.ledger.tables import Job, JobStatus, Team, utcnow
from router.prompts import PromptSpec, spec_for
from router.route import Route, single_route
from router.settings import Settings

# Items per INSERT batch: large enough to amortize round trips, small enough to keep memory flat.
INSERT_BATCH = 2000
# Rejected lines kept on the job row (all are counted; the first ones are kept to show).
KEPT_REJECTIONS = 100


@dataclass(frozen=True)
class Submitted:
    job_id: str
    n_items: int
    rejected: list[LineError]
    n_rejected: int
    decision: Decision
    simulated: bool
    calibrating: bool = False
    execution: ModeDecision | None = None  # sync or the providers' batch APIs, per stage, with the saving


def submit_job(settings: Settings, catalog: Catalog, request: JobRequest) -> Submitted:
    """Check, load and route a job; commit it. The caller starts it (jobs/lifecycle.py `start`)."""
    check_request(request)
    check_names(request, catalog)
    if request.judge is not None and request.judge not in catalog.models:
        raise InputError(
            f"--judge {request.judge}: no such model in the catalog (`pennyroute models`)", field="--judge"
        )
    ensure_schema(settings)
    simulated = settings.sandbox_active
    batch_mode.check_settings(settings, simulated=simulated)
    spec = spec_for(request.task, request.labels, request.max_words, request.max_output_tokens)
    pool = candidates(catalog, settings, task=request.task, simulated=simulated)
    base_profile = JobProfile(
        task=request.task,
        min_quality=request.min_quality,
        n_items=0,
        total_input_tokens=0,
        max_input_tokens=0,
        output_tokens_per_item=spec.expected_output_tokens,
        allowed_providers=request.providers,
        allowed_models=request.models,
        regions=request.regions,
    )
    context_limit = max_context(base_profile, pool)
    if context_limit == 0:
        raise NoModelError(choose_model(base_profile, pool))
    job_id = uuid.uuid4().hex[:12]
    with session_scope(settings) as session:
        team = repo.find_team(session, name=request.team, tenant=request.tenant)
        measured = estimates.fresh_estimates(
            session, catalog, tenant_id=team.tenant_id, signature=estimates.signature_of(request)
        )
        pool = estimates.with_estimates(pool, measured)
        job = Job(
            id=job_id,
            tenant_id=team.tenant_id,
            team_id=team.id,  # type: ignore[arg-type]
            task=request.task,
            labels=list(request.labels) or None,
            max_words=request.max_words,
            max_output_tokens=spec.max_output_tokens if request.task == "chat" else None,
            min_quality=request.min_quality,
            constraints=_constraints(request),
            source=str(request.path),
            simulated=simulated,
        )
        repo.add_job(session, job)
        loaded = _load_items(session, job_id=job_id, request=request, spec=spec, context_limit=context_limit)
        n_items, n_rejected, rejected, n_gold = loaded.n_items, loaded.n_rejected, loaded.rejected, loaded.n_gold
        total_tokens, max_tokens = loaded.total_tokens, loaded.max_tokens
        if n_items == 0 and n_rejected == 0:
            raise InputError(f"{request.path} is empty: no items to run", field="FILE")
        if n_items == 0:
            detail = "; ".join(str(e) for e in rejected[:5])
            raise InputError(
                f"no valid items in {request.path}: all {n_rejected:,} lines were rejected: {detail}", field="FILE"
            )
        profile = JobProfile(
            task=request.task,
            min_quality=request.min_quality,
            n_items=n_items,
            total_input_tokens=total_tokens,
            max_input_tokens=max_tokens,
            output_tokens_per_item=spec.expected_output_tokens,
            allowed_providers=request.providers,
            allowed_models=request.models,
            regions=request.regions,
        )
        if request.calibrate_only and request.quality in ("auto", "prior"):
            request = replace(request, quality="gold" if n_gold else "reference")
        mode, sample_job = estimates.mode_for(
            session, request, n_gold=n_gold, tenant_id=team.tenant_id, pool=pool, measured=measured, profile=profile
        )
        # A job that calibrates first is routed on its measurements, later; now only its constraints
        # count, and a model with no prior can still be measured.
        if mode != "prior":
            decision = choose_model(replace(profile, min_quality=0.0), [_measurable(c) for c in pool])
        else:
            decision = choose_model(profile, pool)
        if not decision.ok:
            raise NoModelError(decision, hint=_no_measure_hint(decision, mode))  # rolls the whole job back
        route = single_route(decision)
        deadline_at = parse_deadline(request.deadline, now=utcnow()) if request.deadline else None
        execution = execution_for(
            catalog,
            request,
            route=route,
            expected_cost_usd=decision.expected_cost_usd if mode == "prior" else None,
            simulated=simulated,
            deadline_at=deadline_at,
        )
        if execution.refused is not None:
            raise InputError(execution.refused, field="--mode")  # rolls the whole job back
        # A bulk that goes to batch is checked against the budget at the batch price.
        _check_budget(session, settings, request, team, decision, multiplier=execution.multiplier)
        baseline = catalog.price(decision.baseline_model_id) if decision.baseline_model_id else None
        repo.update_job(
            session,
            job_id,
            baseline_input_usd_per_mtok=baseline.input.base if baseline is not None else None,
            baseline_output_usd_per_mtok=baseline.output.base if baseline is not None else None,
            on_budget=request.on_budget,
            model_id=decision.model_id,
            route=route.as_json(),
            deadline_at=deadline_at,
            mode=request.mode,
            execution=execution_as_json(execution),
            baseline_model_id=decision.baseline_model_id,
            expected_cost_usd=decision.expected_cost_usd,
            decision=decision_as_json(decision),
            n_items=n_items,
            n_rejected=n_rejected,
            rejected=[e.as_dict() for e in rejected],
            total_input_tokens=total_tokens,
            max_input_tokens=max_tokens,
            quality_mode=mode,
            status=JobStatus.RUNNING if mode == "prior" else JobStatus.CALIBRATING,
            calibration={
                "sample_job_id": sample_job,
                "only": request.calibrate_only,
                "budget": request.calibration_budget,
                "run_labelled": request.run_labelled,
                "if_unproven": request.if_unproven,
                "judge": request.judge,
                "volume": request.volume,
            }
            if mode != "prior"
            else None,
        )
    return Submitted(
        job_id, n_items, rejected, n_rejected, decision, simulated, calibrating=mode != "prior", execution=execution
    )


def execution_for(
    catalog: Catalog,
    request: JobRequest,
    *,
    route: Route,
    expected_cost_usd: Decimal | None,
    simulated: bool,
    deadline_at: datetime | None,
    now: datetime | None = None,
) -> ModeDecision:
    """The job's execution mode per stage (policies/execution_mode.py), from its route's providers."""
    stages = route.stages()
    left = None if deadline_at is None else (deadline_at - (now or utcnow())).total_seconds()
    return decide(
        ModeInputs(
            requested=request.mode,
            time_left_s=left,
            region_constrained=bool(request.regions),
            bulk=batch_mode.offers(catalog, stages[0], simulated=simulated),
            escalation=batch_mode.offers(catalog, stages[1], simulated=simulated)
            if route.kind == "cascade" and len(stages) > 1
            else (),
            bulk_cost_usd=expected_cost_usd,
        )
    )


def execution_as_json(execution: ModeDecision) -> dict[str, Any]:
    """The decision as kept on the job row (Job.execution)."""
    return {
        "bulk": execution.bulk,
        "escalations": execution.escalations,
        "calibration": execution.calibration,
        "drift": execution.drift,
        "multiplier": str(execution.multiplier),
        "saving_usd": None if execution.saving_usd is None else str(execution.saving_usd),
        "reasons": list(execution.reasons),
        "summary": execution.summary,
    }


@dataclass
class _Loaded:
    """What reading a job's file gave: counts, token totals, and the first rejected lines."""

    n_items: int = 0
    n_rejected: int = 0
    n_gold: int = 0
    total_tokens: int = 0
    max_tokens: int = 0
    rejected: list[LineError] = field(default_factory=list)


def _load_items(
    session: Session, *, job_id: str, request: JobRequest, spec: PromptSpec, context_limit: int | None
) -> _Loaded:
    """Stream the file's good lines into the job's items, INSERT_BATCH at a time; count the bad ones
    (a text too long for every eligible model's context window is a bad line too)."""
    loaded = _Loaded()
    batch: list[tuple[object, ...]] = []
    for parsed in read_items(
        request.path, task=request.task, labels=request.labels, max_output_tokens=request.max_output_tokens
    ):
        if isinstance(parsed, ParsedItem):
            tokens = spec.input_tokens(parsed.text)
            if context_limit is not None and tokens + spec.max_output_tokens > context_limit:
                parsed = LineError(
                    parsed.line,
                    "text",
                    f"about {tokens:,} tokens: longer than every eligible "
                    f"model's context window (the largest is {context_limit:,} tokens)",
                )
        if isinstance(parsed, LineError):
            loaded.n_rejected += 1
            if len(loaded.rejected) < KEPT_REJECTIONS:
                loaded.rejected.append(parsed)
            continue
        batch.append(
            (job_id, loaded.n_items, parsed.ext_id, parsed.text, parsed.gold, "pending", 0)
        )  # repo.ITEM_COLUMNS
        loaded.n_items += 1
        loaded.n_gold += parsed.gold is not None
        loaded.total_tokens += tokens
        loaded.max_tokens = max(loaded.max_tokens, tokens)
        if len(batch) >= INSERT_BATCH:
            repo.insert_items(session, batch)
            batch = []
    repo.insert_items(session, batch)
    return loaded


def _check_budget(
    session: Session,
    settings: Settings,
    request: JobRequest,
    team: Team,
    decision: Decision,
    *,
    multiplier: Decimal = Decimal(1),
) -> None:
    """Refuse (reject) a job whose expected cost exceeds what its team's budget has left.

    With pause, the job runs until the budget is spent and then waits. With downgrade, it runs on
    the cheapest model that meets the bar, which is what routing already chose, and then pauses
    like pause does.
    """
    period = budgets.current_period(session, team_id=team.id)  # type: ignore[arg-type]
    if period is None or decision.expected_cost_usd is None:
        return
    remaining = budgets.remaining_usd(period, settings)
    expected = decision.expected_cost_usd * multiplier
    if fits(expected, remaining) or request.on_budget != "reject":
        return
    at = f" (at the batch price, {multiplier.normalize():f} of the standard)" if multiplier != 1 else ""
    raise BudgetError(
        f"job's expected cost ${expected:.6f}{at} on {decision.model_id} exceeds team {team.name}'s "
        f"remaining budget ${remaining:.6f} (limit {period.limit_amount.normalize():f} {period.currency}, settled "
        f"{period.settled.normalize():f}, reserved {period.reserved.normalize():f}) for {period.period_start:%Y-%m}: "
        "raise it with `pennyroute budget set`, or submit with --on-budget pause"
    )


def _measurable(candidate: Candidate) -> Candidate:
    """A candidate calibration can measure whether or not the catalog gives it a prior."""
    if candidate.quality is not None:
        return candidate
    return replace(candidate, quality=QualityEstimate(value=0.0, n=None, source="to be measured by calibration"))


def _no_measure_hint(decision: Decision, mode: str) -> str | None:
    """How to give a job a measure, when nothing qualified because no model has a quality estimate."""
    if mode != "prior" or any(v.quality_bound is not None for v in decision.verdicts if v.meets_constraints):
        return None
    return (
        "no model meeting the constraints has a quality estimate for this task, and the job cannot measure "
        'one: add labelled items (a "gold" field on some lines) to calibrate on, submit with --quality '
        "reference to measure against the strongest model, or give the models a `quality` prior in the catalog"
    )


def _constraints(request: JobRequest) -> dict[str, list[str]]:
    out = {}
    for key, value in (("regions", request.regions), ("providers", request.providers), ("models", request.models)):
        if value:
            out[key] = sorted(value)
    return out

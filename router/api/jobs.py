"""The jobs API, mirroring the CLI: submit, list, status, results, cancel, resume; month reports,
budgets, models and quality estimates. Each endpoint calls the same jobs/, reports/ and ledger
functions as its command and answers with the same JSON as its `--json` (router/cli/data.py).

Every read and write is the key's tenant's (and team's, for a team-scoped key): another tenant's
job id answers 404 with the words an unknown id gets.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from router.api.auth import require, settings_of
from router.api.errors import ApiError
from router.api.runner import catalog_of, run_resume, set_team_budget, start_job
from router.cli import data
from router.errors import NotFoundError, PennyrouteError
from router.jobs import lifecycle
from router.jobs.estimates import is_fresh
from router.jobs.intake import DEFAULT_CALIBRATION_BUDGET, JobRequest, bar_for, parse_soft_percent
from router.jobs.results import batches_unpolled, job_quality, job_state, owned_job_state, result_records
from router.jobs.submit import submit_job
from router.ledger import budgets, keys, repo
from router.ledger.db import ensure_schema, session_scope
from router.ledger.keys import Principal
from router.ledger.tables import utcnow
from router.reports import render as report_render
from router.reports.monthly import BY, monthly_report

router = APIRouter()
# An upload is copied to disk this much at a time: memory stays flat whatever the file's size.
COPY_BYTES = 1 << 20
STATES = ("calibrating", "running", "paused", "done", "no_model", "cancelled")


def _split(value: str | None) -> frozenset[str] | None:
    if not value:
        return None
    return frozenset(v.strip() for v in value.split(",") if v.strip()) or None


def _team_for(principal: Principal, team: str | None) -> str:
    """The team a write goes to: a team-scoped key's own; a tenant key must name one of its tenant's."""
    if principal.team is not None:
        if team is not None and team != principal.team:
            raise ApiError(404, f"unknown team '{team}'", kind="not_found_error", code="not_found")
        return principal.team
    if not team:
        raise ApiError(400, "team: name the team the job is billed to", param="team")
    return team


def spool(upload: UploadFile) -> Path:
    """The uploaded file, copied to a temporary file COPY_BYTES at a time (never held whole)."""
    with tempfile.NamedTemporaryFile(prefix="pennyroute-api-", suffix=".jsonl", delete=False) as handle:
        shutil.copyfileobj(upload.file, handle, COPY_BYTES)
    return Path(handle.name)


@router.post("/jobs", status_code=201, tags=["jobs"], summary="Submit a job (multipart: a JSONL file and options)")
def create_job(
    request: Request,
    file: UploadFile,
    task: Annotated[str, Form(description="classify, summarize, or chat")],
    principal: Annotated[Principal, Depends(require("jobs:write"))],
    team: Annotated[str | None, Form(description="The team billed (a team-scoped key's own by default)")] = None,
    min_quality: Annotated[float | None, Form(description="default 0.9; chat: none (0)")] = None,
    labels: Annotated[str | None, Form(description="classify: comma-separated labels")] = None,
    max_words: Annotated[int | None, Form()] = None,
    max_output_tokens: Annotated[int | None, Form(description="chat: the most output tokens an item may ask")] = None,
    region: Annotated[str | None, Form()] = None,
    providers: Annotated[str | None, Form()] = None,
    models: Annotated[str | None, Form()] = None,
    on_budget: Annotated[str, Form()] = "reject",
    quality: Annotated[str, Form(description="auto, gold, reference or prior")] = "auto",
    calibration_budget: Annotated[str, Form()] = DEFAULT_CALIBRATION_BUDGET,
    run_labelled: Annotated[bool, Form()] = False,
    if_unproven: Annotated[str, Form()] = "stop",
    judge: Annotated[str | None, Form()] = None,
) -> JSONResponse:
    """Like `pennyroute submit`: the job is loaded, routed and committed, then started (in this
    process without a broker, on the workers with one). Answers the job as `status --json` does,
    with its rejected lines."""
    settings = settings_of(request)
    path = spool(file)
    try:
        job_request = JobRequest(
            path=path,
            team=_team_for(principal, team),
            tenant=principal.tenant,
            task=task,
            min_quality=bar_for(task, min_quality),
            labels=tuple(v.strip() for v in labels.split(",")) if labels else (),
            max_words=max_words,
            max_output_tokens=max_output_tokens,
            regions=_split(region),
            providers=_split(providers),
            models=_split(models),
            on_budget=on_budget,
            quality=quality,
            calibration_budget=calibration_budget,
            run_labelled=run_labelled,
            if_unproven=if_unproven,
            judge=judge,
        )
        submitted = submit_job(settings, catalog_of(request), job_request)
    finally:
        path.unlink(missing_ok=True)  # its items are in the ledger (or nothing was written)
    start_job(request, submitted.job_id)
    state = job_state(settings, submitted.job_id)
    return JSONResponse(
        _json(
            {
                **data.job(state.job, state.spent_usd),
                "decision": submitted.decision.summary,
                "calibrating": submitted.calibrating,
                "rejected": [e.as_dict() for e in submitted.rejected],
            }
        ),
        status_code=201,
    )


def _json(value: Any) -> Any:
    """Plain JSON values, money as the CLI's exact decimal strings."""
    return json.loads(json.dumps(value, default=data.json_default))


def _answer(value: Any) -> Response:
    """`value` as a JSON answer, written once (money as the CLI's exact decimal strings)."""
    return Response(json.dumps(value, default=data.json_default), media_type="application/json")


@router.get("/jobs", tags=["jobs"], summary="List jobs, newest first (as `jobs list --json`)")
def list_jobs(
    request: Request,
    principal: Annotated[Principal, Depends(require("jobs:read"))],
    team: str | None = None,
    status: str | None = None,
    month: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Any:
    if status is not None and status not in STATES:
        raise PennyrouteError(f"--status: unknown state '{status}': use one of {', '.join(STATES)}")
    since = until = None
    if month is not None:
        first = budgets.parse_month(month)
        since = datetime(first.year, first.month, 1, tzinfo=UTC)
        until = datetime(first.year + first.month // 12, first.month % 12 + 1, 1, tzinfo=UTC)
    if principal.team is not None:
        if team is not None and team != principal.team:
            return []
        team = principal.team
    with session_scope(settings_of(request)) as session:
        rows = repo.list_jobs(
            session, tenant=principal.tenant, team=team, status=status, since=since, until=until, limit=limit
        )
    return _answer(data.jobs(rows))


def _owned(request: Request, principal: Principal, job_id: str) -> None:
    with session_scope(settings_of(request)) as session:
        keys.owned_job(session, job_id, tenant_id=principal.tenant_id, team_id=principal.team_id)


# A job's status answer is kept this long by the process that read it: many pollers of one job then
# cost one ledger read per half second between them, not one each. Cancel and resume forget it.
STATUS_FRESH_S = 0.5
# While one request reads a job's status again, the others are answered from the kept one if it is
# at most this old (one read at a time per job and process: a herd of pollers arriving as the kept
# answer goes stale would each start a ledger read, queue for the database's connections, and wait
# hundreds of milliseconds together).
STATUS_STALE_S = 5.0


@dataclass(frozen=True, slots=True)
class _Status:
    read_at: float
    tenant_id: int
    team_id: int
    body: bytes


def _status_cache(request: Request) -> dict[str, _Status]:
    cache: dict[str, _Status] = request.app.state.job_status
    return cache


def _kept_for(kept: _Status, principal: Principal, job_id: str) -> Response:
    if kept.tenant_id != principal.tenant_id or principal.team_id not in (None, kept.team_id):
        raise NotFoundError(f"unknown job '{job_id}'")
    return Response(kept.body, media_type="application/json")


@router.get("/jobs/{job_id}", tags=["jobs"], summary="A job's state (as `status --json`)")
async def get_job(
    request: Request,
    job_id: str,
    principal: Annotated[Principal, Depends(require("jobs:read"))],
    failures: Annotated[bool, Query(description="Also count failed items by kind (reads each failed item).")] = False,
) -> Any:
    """As `status --json`, with the calls per model and the rejected lines (and, with failures=true,
    the failed items by kind). Cheap to poll: the job row and its rollups, read at most every
    STATUS_FRESH_S per server process and by one request at a time (the others meanwhile get the
    answer kept, up to STATUS_STALE_S old); a kept answer is served on the event loop, with no
    thread hop."""
    if failures:
        status = await run_in_threadpool(_read_status, request, principal, job_id, True)
        return Response(status.body, media_type="application/json")
    cache, now = _status_cache(request), time.monotonic()
    kept = cache.get(job_id)
    if kept is not None and now - kept.read_at < STATUS_FRESH_S:
        return _kept_for(kept, principal, job_id)
    reading: dict[str, asyncio.Future[_Status]] = request.app.state.job_status_reads
    underway = reading.get(job_id)
    if underway is not None:
        if kept is not None and now - kept.read_at < STATUS_STALE_S:
            return _kept_for(kept, principal, job_id)
        try:
            return _kept_for(await asyncio.shield(underway), principal, job_id)
        except NotFoundError:  # that read was by a key the job is not theirs: this one reads for itself
            status = await run_in_threadpool(_read_status, request, principal, job_id, False)
            return Response(status.body, media_type="application/json")
    future: asyncio.Future[_Status] = asyncio.get_running_loop().create_future()
    reading[job_id] = future
    try:
        status = await run_in_threadpool(_read_status, request, principal, job_id, False)
    except BaseException as exc:
        if not future.done():
            future.set_exception(exc)
            future.exception()  # retrieved: waiters get it raised; nobody waiting is no warning
        raise
    else:
        if len(cache) > 10_000:  # a bound on memory: forget them all
            cache.clear()
        cache[job_id] = status
        future.set_result(status)
    finally:
        reading.pop(job_id, None)
    return Response(status.body, media_type="application/json")


def _read_status(request: Request, principal: Principal, job_id: str, failures: bool) -> _Status:
    state = owned_job_state(
        settings_of(request), job_id, tenant_id=principal.tenant_id, team_id=principal.team_id, failures=failures
    )
    body = json.dumps(
        {
            **data.job(state.job, state.spent_usd, batches_unpolled=batches_unpolled(settings_of(request), state)),
            "calls_by_model": dict(state.calls_by_model),
            "failures": state.failures,
            "rejected": state.job.rejected or [],
        },
        default=data.json_default,
    ).encode()
    return _Status(time.monotonic(), state.job.tenant_id, state.job.team_id, body)


@router.get("/jobs/{job_id}/quality", tags=["jobs"], summary="A job's quality facts (as `status --quality`)")
def job_quality_report(
    request: Request, job_id: str, principal: Annotated[Principal, Depends(require("jobs:read"))]
) -> Response:
    """What `status --quality` shows, as data: the bar and where the estimates came from, what
    calibration measured, who answered the items, calls and spend by purpose and model, the run items'
    cost on the baseline model, and the job's events (drift, providers stopped, pauses)."""
    _owned(request, principal, job_id)
    report = job_quality(settings_of(request), job_id)
    job, facts = report.job, report.facts
    return _answer(
        {
            "job_id": job.id,
            "min_quality": job.min_quality,
            "quality_mode": job.quality_mode,
            "route": job.route,
            "baseline_model_id": job.baseline_model_id,
            "calibration": job.calibration,
            "drift": {"checked": job.n_drift_checked, "agreed": job.n_drift_agreed},
            "answered_by": facts["answered"],
            "calls": [
                {"purpose": purpose, "model_id": model, "calls": n, "cost_usd": cost}
                for purpose, model, n, cost in facts["calls"]
            ],
            "baseline_usd": facts["baseline_usd"],
            "events": [{"kind": kind, "detail": detail} for kind, detail in report.events],
        }
    )


@router.get("/jobs/{job_id}/results", tags=["jobs"], summary="Per item results, streamed JSONL (as `results`)")
def job_results(
    request: Request, job_id: str, principal: Annotated[Principal, Depends(require("jobs:read"))]
) -> StreamingResponse:
    _owned(request, principal, job_id)
    settings = settings_of(request)

    def lines() -> Iterator[bytes]:
        for record in result_records(settings, job_id):
            yield (json.dumps(record) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/jsonl")


@router.post("/jobs/{job_id}/cancel", tags=["jobs"], summary="Cancel a job (as `jobs cancel`)")
def cancel_job(request: Request, job_id: str, principal: Annotated[Principal, Depends(require("jobs:write"))]) -> Any:
    _owned(request, principal, job_id)
    settings = settings_of(request)
    done = lifecycle.cancel(settings, catalog_of(request), job_id=job_id)
    _status_cache(request).pop(job_id, None)
    return {"job_id": job_id, **done}


@router.post("/jobs/{job_id}/resume", tags=["jobs"], summary="Resume a paused job (as `jobs resume`)")
def resume_job(request: Request, job_id: str, principal: Annotated[Principal, Depends(require("jobs:write"))]) -> Any:
    _owned(request, principal, job_id)
    job = run_resume(request, job_id)
    _status_cache(request).pop(job_id, None)
    return {"job_id": job_id, "status": job.status}


# -- reports, budgets, models, quality ---------------------------------------------------------------


@router.get("/reports/{month}", tags=["reports"], summary="The month's cost report: json, csv or html")
def month_report(
    request: Request,
    month: str,
    principal: Annotated[Principal, Depends(require("reports:read"))],
    by: str = "team",
    format: str = "json",
) -> Response:
    """As `pennyroute report --tenant <the key's tenant>`. A team-scoped key is refused (403): a
    month report is its tenant's, every team in it."""
    if principal.team is not None:
        raise ApiError(
            403,
            "a month report covers the whole tenant: use a key that is not team-scoped",
            kind="permission_error",
            code="insufficient_scope",
        )
    renderers = {"csv": report_render.render_csv, "json": report_render.render_json, "html": report_render.render_html}
    if format not in renderers:
        raise PennyrouteError(f"--format: unknown format '{format}': use csv, json or html")
    if by not in BY:
        raise PennyrouteError(f"--by: unknown grouping '{by}': use one of {', '.join(BY)}")
    with session_scope(settings_of(request)) as session:
        result = monthly_report(session, month=month, tenant=principal.tenant, by=by)
    media = {"csv": "text/csv", "json": "application/json", "html": "text/html"}[format]
    return Response(renderers[format](result), media_type=media)


@router.get("/budgets", tags=["budgets"], summary="The tenant's (or the key's team's) budgets for a month")
def list_budgets(
    request: Request, principal: Annotated[Principal, Depends(require("reports:read"))], month: str | None = None
) -> Any:
    with session_scope(settings_of(request)) as session:
        rows = repo.budget_rows(session, month=month)
    mine = [r for r in rows if r.tenant == principal.tenant and (principal.team is None or r.team == principal.team)]
    return _json(data.budgets(mine))


class BudgetSet(BaseModel):
    monthly: str
    currency: str = "USD"
    soft: str | None = None


@router.put("/budgets/{team}", tags=["budgets"], summary="Set a team's monthly budget (as `budget set`)")
def set_budget(
    request: Request,
    team: str,
    body: BudgetSet,
    principal: Annotated[Principal, Depends(require("budgets:write"))],
) -> Any:
    name = _team_for(principal, team)
    soft = (
        None if body.soft is None else f"{parse_soft_percent(body.soft)!r}%"
    )  # 0.8 and 80% are 80%, as the CLI reads them
    period = set_team_budget(
        request, team=name, tenant=principal.tenant, monthly=body.monthly, currency=body.currency, soft=soft
    )
    return _json(
        {
            "tenant": principal.tenant,
            "team": name,
            "month": f"{period.period_start:%Y-%m}",
            "limit": period.limit_amount,
            "currency": period.currency,
            "settled": period.settled,
            "reserved": period.reserved,
            "soft_pct": period.soft_pct,
        }
    )


@router.get("/models", tags=["catalog"], summary="The catalog's models and prices (as `models --json`)")
def list_models(request: Request, principal: Annotated[Principal, Depends(require("reports:read"))]) -> Any:
    return _answer(data.models(catalog_of(request)))


@router.get("/quality", tags=["catalog"], summary="The tenant's measured quality estimates (as `quality --json`)")
def quality_estimates(request: Request, principal: Annotated[Principal, Depends(require("reports:read"))]) -> Any:
    catalog = catalog_of(request)
    settings = settings_of(request)
    ensure_schema(settings)
    with session_scope(settings) as session:
        rows = repo.quality_estimates(session, tenant_id=principal.tenant_id)
        now = utcnow()
        return _json(data.estimates(rows, {r.id: is_fresh(r, catalog, now) for r in rows}))

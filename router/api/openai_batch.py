"""OpenAI Batch-compatible intake under /v1, so the official openai SDK works with a changed base_url:

    POST /v1/files                  multipart, purpose=batch; written to the ledger a piece at a time
    GET  /v1/files/{id}             the FileObject
    GET  /v1/files/{id}/content     the input file, or a batch's output or error file (made from results)
    POST /v1/batches                validated whole, then one pennyroute job per model named
    GET  /v1/batches/{id}           status and request_counts from the jobs, usage once completed
    POST /v1/batches/{id}/cancel    cancels its jobs
    GET  /v1/batches                newest first, `after` and `limit`

The rules (what a line means, how it runs, what the files hold) are router/jobs/openai_batches.py's.
A create the SDK retries (it sends no idempotency key and retries POSTs on timeouts and 5xx) answers
the batch the first one made: same tenant, input file, endpoint and metadata within
PENNYROUTE_BATCH_DEDUPE_S. Errors are in OpenAI's shape (router/api/errors.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request, UploadFile
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlmodel import Session

from router.api.auth import require, settings_of
from router.api.errors import ApiError
from router.api.runner import catalog_of, start_job
from router.errors import PennyrouteError
from router.jobs import lifecycle
from router.jobs import openai_batches as intake
from router.ledger import batches, repo
from router.ledger.db import session_scope
from router.ledger.keys import Principal
from router.ledger.tables import ApiBatch, ApiFile, utcnow
from router.settings import Settings

router = APIRouter(tags=["openai batch"])
# An upload is written to the ledger in pieces this large: memory stays flat whatever the file's size.
PIECE_BYTES = 1 << 20


@router.post("/files", summary="Upload a batch input file (multipart, purpose=batch)")
def create_file(
    request: Request,
    file: UploadFile,
    purpose: Annotated[str, Form()],
    principal: Annotated[Principal, Depends(require("jobs:write"))],
) -> dict[str, Any]:
    if purpose != "batch":
        raise ApiError(400, f"purpose '{purpose}' is not supported: use batch", param="purpose", code="invalid_value")
    settings = settings_of(request)
    size = 0
    with session_scope(settings) as session:
        row = batches.add_file(
            session,
            ApiFile(
                id=intake.new_id("file"),
                tenant_id=principal.tenant_id,
                team_id=principal.team_id,
                filename=file.filename or "batch.jsonl",
                purpose="batch",
            ),
        )
        seq = 0
        while piece := file.file.read(PIECE_BYTES):
            batches.add_piece(session, file_id=row.id, seq=seq, data=piece)
            size += len(piece)
            seq += 1
        batches.set_file_bytes(session, file_id=row.id, size=size)
        row.bytes = size
    return intake.file_object(row)


@router.get("/files/{file_id}", summary="A file's FileObject")
def get_file(
    request: Request, file_id: str, principal: Annotated[Principal, Depends(require("jobs:read"))]
) -> dict[str, Any]:
    with session_scope(settings_of(request)) as session:
        row = batches.owned_file(session, file_id, tenant_id=principal.tenant_id, team_id=principal.team_id)
    return intake.file_object(row)


@router.get("/files/{file_id}/content", summary="A file's bytes: an input file, or a batch's output or error file")
def file_content(
    request: Request, file_id: str, principal: Annotated[Principal, Depends(require("jobs:read"))]
) -> StreamingResponse:
    settings = settings_of(request)
    with session_scope(settings) as session:
        row = batches.owned_file(session, file_id, tenant_id=principal.tenant_id, team_id=principal.team_id)
        batch = (
            batches.owned_batch(session, row.batch_id, tenant_id=principal.tenant_id, team_id=None)
            if row.batch_id
            else None
        )

    def stored() -> Iterator[bytes]:
        with session_scope(settings) as session:
            yield from batches.pieces(session, file_id)

    def made(found: ApiBatch) -> Iterator[bytes]:
        for line in intake.output_lines(settings, found, errors=row.kind == "error"):
            yield (json.dumps(line) + "\n").encode()
        if row.kind == "error":
            for line in intake.rejected_lines(settings, found):
                yield (json.dumps(line) + "\n").encode()

    return StreamingResponse(stored() if batch is None else made(batch), media_type="application/octet-stream")


class CreateBatch(BaseModel):
    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None


@router.post("/batches", summary="Create a batch from an uploaded file")
def create_batch(
    request: Request, body: CreateBatch, principal: Annotated[Principal, Depends(require("jobs:write"))]
) -> dict[str, Any]:
    settings, catalog = settings_of(request), catalog_of(request)
    metadata = dict(body.metadata or {})
    if len(metadata) > intake.MAX_METADATA:
        raise ApiError(400, f"metadata holds at most {intake.MAX_METADATA} pairs", param="metadata")
    if body.endpoint != intake.ENDPOINT:
        raise ApiError(400, f"endpoint '{body.endpoint}' is not supported: use {intake.ENDPOINT}", param="endpoint")
    if body.completion_window != "24h":
        raise ApiError(400, "completion_window: only 24h is supported", param="completion_window")
    team = principal.team or metadata.get("team")
    if not team:
        raise ApiError(400, "metadata.team: name the team billed (or use a team-scoped key)", param="metadata")
    if principal.team is not None and metadata.get("team", team) != team:
        raise ApiError(404, f"unknown team '{metadata['team']}'", kind="not_found_error", code="not_found")
    key = intake.dedupe_key(input_file_id=body.input_file_id, endpoint=body.endpoint, metadata=metadata)
    with session_scope(settings) as session:
        # The file's row lock makes concurrent retries of one create wait for each other: the
        # second finds the first's batch.
        batches.owned_file(
            session, body.input_file_id, tenant_id=principal.tenant_id, team_id=principal.team_id, for_update=True
        )
        since = utcnow() - timedelta(seconds=settings.batch_dedupe_s)
        found = batches.recent_batch(session, tenant_id=principal.tenant_id, dedupe_key=key, since=since)
        if found is not None:
            return intake.as_openai(*intake.refresh(settings, found))
        team_row = _team(session, principal, team)
        batch = batches.add_batch(
            session,
            ApiBatch(
                id=intake.new_id("batch"),
                tenant_id=principal.tenant_id,
                team_id=team_row,
                input_file_id=body.input_file_id,
                endpoint=body.endpoint,
                completion_window=body.completion_window,
                batch_metadata=metadata or None,
                dedupe_key=key,
            ),
        )
    with session_scope(settings) as session:
        split = intake.split_file(batches.pieces(session, body.input_file_id), endpoint=body.endpoint, catalog=catalog)
    now = utcnow()
    if split.errors:
        return _failed(settings, batch, split.errors)
    try:
        made = intake.submit_split(settings, catalog, split, team=team, tenant=principal.tenant, metadata=metadata)
    except PennyrouteError as exc:
        said = {"code": "invalid_request", "line": None, "message": str(exc), "param": getattr(exc, "field", None)}
        return _failed(settings, batch, [said])
    with session_scope(settings) as session:
        files = {}
        for kind in ("output", "error"):
            files[kind] = batches.add_file(
                session,
                ApiFile(
                    id=intake.new_id("file"),
                    tenant_id=principal.tenant_id,
                    team_id=batch.team_id,  # the billed team's: its team-scoped keys read them too
                    filename=f"{batch.id}_{kind}.jsonl",
                    purpose="batch_output",
                    batch_id=batch.id,
                    kind=kind,
                ),
            ).id
        changes = {
            "status": "in_progress",
            "in_progress_at": now,
            "job_ids": list(made.values()),
            "lines": {"jobs": made, "counts": split.counts},
            "n_total": split.total,
            "output_file_id": files["output"],
            "error_file_id": files["error"],
        }
        batches.update_batch(session, batch.id, **changes)
    for name, value in changes.items():
        setattr(batch, name, value)
    for job_id in made.values():
        start_job(request, job_id)
    return intake.as_openai(*intake.refresh(settings, batch))


def _team(session: Session, principal: Principal, team: str) -> int:
    """The billed team's id: the key's team, or the tenant's team the metadata names."""
    if principal.team_id is not None:
        return principal.team_id
    found = repo.find_team(session, name=team, tenant=principal.tenant)
    assert found.id is not None
    return found.id


def _failed(settings: Settings, batch: ApiBatch, errors: list[dict[str, Any]]) -> dict[str, Any]:
    now = utcnow()
    with session_scope(settings) as session:
        batches.update_batch(session, batch.id, status="failed", failed_at=now, errors=errors)
    batch.status, batch.failed_at, batch.errors = "failed", now, errors
    return intake.as_openai(batch, [])


@router.get("/batches/{batch_id}", summary="A batch, its status and request counts")
def get_batch(
    request: Request, batch_id: str, principal: Annotated[Principal, Depends(require("jobs:read"))]
) -> dict[str, Any]:
    settings = settings_of(request)
    with session_scope(settings) as session:
        batch = batches.owned_batch(session, batch_id, tenant_id=principal.tenant_id, team_id=principal.team_id)
    batch, jobs = intake.refresh(settings, batch)
    usage = intake.usage_of(settings, batch) if batch.status == "completed" else None
    return intake.as_openai(batch, jobs, usage=usage)


@router.post("/batches/{batch_id}/cancel", summary="Cancel a batch: its jobs stop")
def cancel_batch(
    request: Request, batch_id: str, principal: Annotated[Principal, Depends(require("jobs:write"))]
) -> dict[str, Any]:
    settings, catalog = settings_of(request), catalog_of(request)
    with session_scope(settings) as session:
        batch = batches.owned_batch(
            session, batch_id, tenant_id=principal.tenant_id, team_id=principal.team_id, for_update=True
        )
        if batch.status in ("validating", "in_progress"):
            batches.update_batch(session, batch_id, status="cancelling", cancelling_at=utcnow())
            batch.status = "cancelling"
    if batch.status == "cancelling":
        for job_id in batch.job_ids:
            lifecycle.cancel(settings, catalog, job_id=job_id)
    return intake.as_openai(*intake.refresh(settings, batch))


@router.get("/batches", summary="The key's batches, newest first")
def list_batches(
    request: Request,
    principal: Annotated[Principal, Depends(require("jobs:read"))],
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    settings = settings_of(request)
    with session_scope(settings) as session:
        rows = batches.list_batches(
            session, tenant_id=principal.tenant_id, team_id=principal.team_id, after=after, limit=limit + 1
        )
    data = [intake.as_openai(*intake.refresh(settings, row)) for row in rows[:limit]]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(rows) > limit,
    }

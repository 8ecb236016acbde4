"""OpenAI Batch-compatible intake under /v1, so the official openai SDK works with a changed base_url:

    POST /v1/files                  multipart, purpose=batch; read as it arrives, written to the ledger a
                                    piece at a time, refused (413) past PENNYROUTE_MAX_UPLOAD_MB
    GET  /v1/files                  newest first (or `order=asc`), `purpose`, `after` and `limit`
    GET  /v1/files/{id}             the FileObject
    DELETE /v1/files/{id}           content removed, 404 after; refused (409) while a running batch uses it
    GET  /v1/files/{id}/content     the input file, or a batch's output or error file (made from results)
    POST /v1/batches                validated whole, then one pennyroute job per model named
    GET  /v1/batches/{id}           status and request_counts from the jobs, usage once completed
    POST /v1/batches/{id}/cancel    cancels its jobs
    GET  /v1/batches                newest first, `after` and `limit`

The rules (what a line means, how it runs, what the files hold, when a create is a retry) are
router/jobs/openai_batches.py's. Errors are in OpenAI's shape (router/api/errors.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from router.api.auth import require, settings_of
from router.api.multipart import StreamedForm, body_chunks
from router.api.runner import catalog_of, start_job
from router.errors import InputError, TooLargeError
from router.jobs import openai_batches as intake
from router.ledger import batches
from router.ledger.db import session_scope
from router.ledger.keys import Principal

router = APIRouter(tags=["openai batch"])


def _owner(principal: Principal) -> intake.Owner:
    return intake.Owner(principal.tenant_id, principal.tenant, principal.team_id, principal.team)


# Room for a form's boundaries, part headers and purpose field beside the file, when a request's
# Content-Length is compared with the upload cap before its body is read.
FORM_OVERHEAD_BYTES = 64 * 1024
# The upload's form, as the OpenAPI description shows it (the endpoint reads the body itself).
UPLOAD_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": ["batch"]},
                    },
                }
            }
        },
    }
}


@router.post("/files", summary="Upload a batch input file (multipart: file, purpose=batch)", openapi_extra=UPLOAD_FORM)
def create_file(request: Request, principal: Annotated[Principal, Depends(require("jobs:write"))]) -> dict[str, Any]:
    """The body is read as it arrives (router/api/multipart.py), never whole before it is counted: an
    upload over PENNYROUTE_MAX_UPLOAD_MB is refused (413) once past it, or at once when its
    Content-Length says so; the rest of the body is read and dropped (up to the cap's size again) so
    the client reads the answer."""
    settings = settings_of(request)
    cap = settings.max_upload_bytes
    form = StreamedForm(request.headers.get("content-type"), body_chunks(request))
    declared = request.headers.get("content-length")
    try:
        if declared and declared.isdigit() and int(declared) > cap + FORM_OVERHEAD_BYTES:
            raise intake.too_large(cap)
        found = form.next_file()
        if found is None:
            raise InputError("the upload has no file part: send file (and purpose=batch)", field="file")
        row = intake.add_input_file(
            settings,
            _owner(principal),
            filename=found[1] or "batch.jsonl",
            purpose_of=lambda: form.fields.get("purpose"),
            pieces=form.file_pieces(),
            max_bytes=cap,
        )
    except TooLargeError:
        form.drain(cap)
        raise
    return intake.file_object(row)


@router.get("/files", summary="The key's files, newest first")
def list_files(
    request: Request,
    principal: Annotated[Principal, Depends(require("jobs:read"))],
    purpose: str | None = None,
    after: str | None = None,
    limit: int = intake.MAX_LIST_FILES,
    order: str = "desc",
) -> dict[str, Any]:
    return intake.list_files(
        settings_of(request), _owner(principal), purpose=purpose, after=after, limit=limit, order=order
    )


@router.delete("/files/{file_id}", summary="Delete a file (refused while a running batch uses it)")
def delete_file(
    request: Request, file_id: str, principal: Annotated[Principal, Depends(require("jobs:write"))]
) -> dict[str, Any]:
    return intake.delete_file(settings_of(request), catalog_of(request), _owner(principal), file_id=file_id)


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
    return StreamingResponse(intake.file_lines(settings, row), media_type="application/octet-stream")


class CreateBatch(BaseModel):
    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None


@router.post("/batches", summary="Create a batch from an uploaded file")
def create_batch(
    request: Request, body: CreateBatch, principal: Annotated[Principal, Depends(require("jobs:write"))]
) -> dict[str, Any]:
    settings = settings_of(request)
    batch, to_start = intake.create_batch(
        settings,
        catalog_of(request),
        _owner(principal),
        input_file_id=body.input_file_id,
        endpoint=body.endpoint,
        completion_window=body.completion_window,
        metadata=dict(body.metadata or {}),
    )
    for job_id in to_start:
        start_job(request, job_id)
    return intake.view(settings, catalog_of(request), batch)


@router.get("/batches/{batch_id}", summary="A batch, its status and request counts")
def get_batch(
    request: Request, batch_id: str, principal: Annotated[Principal, Depends(require("jobs:read"))]
) -> dict[str, Any]:
    settings = settings_of(request)
    with session_scope(settings) as session:
        batch = batches.owned_batch(session, batch_id, tenant_id=principal.tenant_id, team_id=principal.team_id)
    return intake.view(settings, catalog_of(request), batch)


@router.post("/batches/{batch_id}/cancel", summary="Cancel a batch: its jobs stop")
def cancel_batch(
    request: Request, batch_id: str, principal: Annotated[Principal, Depends(require("jobs:write"))]
) -> dict[str, Any]:
    return intake.cancel_batch(settings_of(request), catalog_of(request), _owner(principal), batch_id=batch_id)


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
    data = [intake.as_openai(*intake.refresh(settings, catalog_of(request), row)) for row in rows[:limit]]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(rows) > limit,
    }

"""Mistral's batch jobs: the BatchAPI beside router.providers.mistral.MistralProvider, over the same
client (base_url https://api.mistral.ai/v1).

    upload   POST /files, multipart, purpose=batch: JSONL of {custom_id, body}; the body is what the
             synchronous path sends (router.providers.mistral's request_body) less `model`, which a job
             sets once ("There are no method/url fields, and the model is set once per job")
    create   POST /batch/jobs {input_files: [file id], model, endpoint: "/v1/chat/completions",
             metadata: {pennyroute_batch: <tag>}, timeout_hours: 24}
    get      GET /batch/jobs/{id}: QUEUED -> RUNNING -> SUCCESS, or FAILED, TIMEOUT_EXCEEDED,
             CANCELLATION_REQUESTED -> CANCELLED
    results  GET /files/{output_file}/content, then /files/{error_file}/content, streamed; lines as
             OpenAI's ({custom_id, response: {status_code, body}, error}), read by the same parser
    cancel   POST /batch/jobs/{id}/cancel
    find     GET /batch/jobs?page=N&page_size=100, matched on metadata.pennyroute_batch

Requests go as a file, never inline (`requests`): the API takes both, but where the answers to inline
requests come back is not in the notes we verified, while the file path is.

Limits, chosen from Mistral's "Known limitations" page (docs.mistral.ai/resources/known-limitations):
100,000 requests and 512 MB per batch file (the batch guide says "up to 1M requests"; the stricter
figure wins); window 24 h, the default timeout_hours that `create` sends.

Not verified against a live job (batch-apis-and-intake.md 1.3 "Gaps"): the exact shape of an error
line. A line whose `error.code` names a timeout or expiry is EXPIRED, one that names a cancellation
CANCELED, anything else ERRORED.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from router.providers import mistral
from router.providers.base import ChatRequest
from router.providers.batch_api import (
    CANCELED,
    ENDED,
    ERRORED,
    EXPIRED,
    FAILED,
    PENDING,
    RUNNING,
    BatchLimits,
    BatchLine,
    BatchState,
)
from router.providers.batch_http import LIST_PAGE_SIZE, MAX_LIST_PAGES, check_lines, safe_id, said
from router.providers.http import ErrorReading
from router.providers.openai_batch import ENDPOINT, MB, TAG_KEY, OpenAIBatchAPI

LIMITS = BatchLimits(max_lines=100_000, max_bytes=512 * MB, window_s=24 * 3600)
TIMEOUT_HOURS = 24
STATES = {
    "QUEUED": PENDING,
    "RUNNING": RUNNING,
    "CANCELLATION_REQUESTED": RUNNING,
    "SUCCESS": ENDED,
    "TIMEOUT_EXCEEDED": ENDED,
    "CANCELLED": ENDED,
    "FAILED": FAILED,
}


class MistralBatchAPI(OpenAIBatchAPI):
    """Mistral's batch jobs over chat completions; it owns (and closes) the client it is given."""

    limits = LIMITS
    what = "Mistral chat completion"

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        return mistral.request_body(request)

    def read_error(self, status: int, headers: Mapping[str, str], body: Any) -> ErrorReading:
        return mistral.read_error(status, headers, body)

    def wire_line(self, line: BatchLine) -> dict[str, Any]:
        body = self.request_body(line.request)
        body.pop("model", None)  # the job's model
        return {"custom_id": line.custom_id, "body": body}

    async def create(self, lines: Sequence[BatchLine], *, model: str, tag: str) -> BatchState:
        check_lines(lines, model=model)
        file_id = await self.upload(lines, tag=tag)
        job = await self._call(
            "POST",
            "/batch/jobs",
            json={
                "input_files": [file_id],
                "model": model,
                "endpoint": ENDPOINT,
                "metadata": {TAG_KEY: tag},
                "timeout_hours": TIMEOUT_HOURS,
            },
        )
        return self.state(job)

    def batch_path(self, batch_id: str) -> str:
        return f"/batch/jobs/{safe_id(batch_id)}"

    async def find(self, tag: str) -> BatchState | None:
        """The job whose metadata.pennyroute_batch is `tag`, paging through the job list."""
        for page in range(MAX_LIST_PAGES):
            listed = await self._call(
                "GET", "/batch/jobs", params={"page": str(page), "page_size": str(LIST_PAGE_SIZE)}
            )
            jobs = [j for j in listed.get("data") or [] if isinstance(j, dict)]
            for job in jobs:
                if (job.get("metadata") or {}).get(TAG_KEY) == tag:
                    return self.state(job)
            total = int(listed.get("total") or 0)
            if len(jobs) < LIST_PAGE_SIZE or (page + 1) * LIST_PAGE_SIZE >= total:
                return None
        return None

    def result_files(self, batch: dict[str, Any]) -> list[str]:
        return [str(batch[key]) for key in ("output_file", "error_file") if batch.get(key)]

    def read_batch(self, batch: Any) -> BatchState:
        status = str(batch.get("status") or "")
        total = int(batch.get("total_requests") or 0)
        failed = int(batch.get("failed_requests") or 0)
        done = int(batch.get("completed_requests") or (int(batch.get("succeeded_requests") or 0) + failed))
        errors = [e for e in batch.get("errors") or [] if isinstance(e, dict)]
        error = "; ".join(said(e, self._secrets) for e in errors[:3]) or None
        return BatchState(
            batch_id=str(batch["id"]),
            state=STATES.get(status, RUNNING),
            vendor_status=status,
            total=total,
            done=done,
            failed=failed,
            error=error if STATES.get(status) == FAILED else None,
        )

    def line_outcome(self, code: str) -> str:
        lowered = code.lower()
        if "timeout" in lowered or "expire" in lowered:
            return EXPIRED
        if "cancel" in lowered:
            return CANCELED
        return ERRORED

"""OpenAI's Batch API (and any OpenAI-compatible server that serves /v1/batches): the BatchAPI beside
router.providers.openai.OpenAIProvider, over the same client (base_url ending in /v1).

    upload   POST /files, multipart, purpose=batch: JSONL of {custom_id, method: "POST",
             url: "/v1/chat/completions", body}; the body is exactly what the synchronous path sends
             (router.providers.openai.request_body)
    create   POST /batches {input_file_id, endpoint, completion_window: "24h",
             metadata: {pennyroute_batch: <tag>}}
    get      GET /batches/{id}: validating -> in_progress -> finalizing -> completed, or failed
             (validation refused the file: no line ran), expired (the 24 h window closed), cancelling
             -> cancelled
    results  GET /files/{output_file_id}/content, then /files/{error_file_id}/content (both can exist),
             streamed; lines {id, custom_id, response: {status_code, request_id, body}, error}, in no
             order. A 2xx body is read by router.providers.openai.parse_completion (finish reasons,
             refusals, usage with cached and reasoning tokens); a non-2xx one by `read_error`. A line
             with `error.code` batch_expired (OpenAI's Batch guide, "Batch expiration") is EXPIRED,
             batch_cancelled CANCELED; any usage such a line reports was billed and is kept.
    cancel   POST /batches/{id}/cancel: cancelling for up to 10 minutes, then cancelled, with the
             lines already done in the output file
    find     GET /batches?limit=100&after=<last id>, newest first, matched on metadata.pennyroute_batch

Limits (OpenAI's Batch guide and SDK, batch_create_params.py): 50,000 requests and 200 MB per input
file, completion window 24 h.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx

from router.providers import openai
from router.providers.base import ChatRequest, Completion
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
    LineResult,
)
from router.providers.batch_http import (
    LIST_PAGE_SIZE,
    MAX_LIST_PAGES,
    answered,
    call_json,
    check_lines,
    encode,
    line_error,
    read_state,
    safe_id,
    said,
    stream_lines,
    usage_or_none,
)
from router.providers.http import ErrorReading, credentials

log = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
# The metadata key a batch carries pennyroute's batch id under (OpenAI keeps up to 16 pairs).
TAG_KEY = "pennyroute_batch"
MB = 1024 * 1024
LIMITS = BatchLimits(max_lines=50_000, max_bytes=200 * MB, window_s=24 * 3600)
STATES = {
    "validating": PENDING,
    "in_progress": RUNNING,
    "finalizing": RUNNING,
    "cancelling": RUNNING,
    "completed": ENDED,
    "expired": ENDED,
    "cancelled": ENDED,
    "failed": FAILED,
}
# error.code of a line that never ran, by why (OpenAI's Batch guide; batch_cancelled by the same rule).
LINE_CODES = {"batch_expired": EXPIRED, "batch_cancelled": CANCELED}


class OpenAIBatchAPI:
    """OpenAI's Batch API over chat completions; it owns (and closes) the client it is given."""

    simulated: bool
    limits = LIMITS
    what = "chat completion"

    def __init__(self, *, name: str, client: httpx.AsyncClient, api_key: str | None, simulated: bool = False) -> None:
        self.name = name
        self.simulated = simulated
        self._client = client
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._secrets = credentials(self._headers)

    # -- the vendor's shapes (Mistral's module overrides these) ----------------------------------

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        return openai.request_body(request)

    def parse(self, body: Any, request: ChatRequest) -> Completion:
        return openai.parse_completion(body, request)

    def read_error(self, status: int, headers: Mapping[str, str], body: Any) -> ErrorReading:
        return openai.read_error(status, headers, body)

    def wire_line(self, line: BatchLine) -> dict[str, Any]:
        """One line of the input file."""
        return {"custom_id": line.custom_id, "method": "POST", "url": ENDPOINT, "body": self.request_body(line.request)}

    def line_bytes(self, line: BatchLine) -> int:
        return len(encode(self.wire_line(line))) + 1  # and its newline

    # -- the calls -------------------------------------------------------------------------------

    async def create(self, lines: Sequence[BatchLine], *, model: str, tag: str) -> BatchState:
        check_lines(lines, model=model)
        file_id = await self.upload(lines, tag=tag)
        batch = await self._call(
            "POST",
            "/batches",
            json={
                "input_file_id": file_id,
                "endpoint": ENDPOINT,
                "completion_window": "24h",
                "metadata": {TAG_KEY: tag},
            },
        )
        return self.state(batch)

    async def upload(self, lines: Sequence[BatchLine], *, tag: str) -> str:
        """Upload the lines as a JSONL file (purpose=batch); the file's id."""
        data = b"".join(encode(self.wire_line(line)) + b"\n" for line in lines)
        uploaded = await self._call(
            "POST",
            "/files",
            files={"file": (f"{tag}.jsonl", data, "application/jsonl")},
            data={"purpose": "batch"},
        )
        return str(uploaded["id"])

    def batch_path(self, batch_id: str) -> str:
        return f"/batches/{safe_id(batch_id)}"

    async def get(self, batch_id: str) -> BatchState:
        return self.state(await self._call("GET", self.batch_path(batch_id)))

    async def cancel(self, batch_id: str) -> BatchState:
        return self.state(await self._call("POST", f"{self.batch_path(batch_id)}/cancel"))

    async def find(self, tag: str) -> BatchState | None:
        """The newest batch whose metadata.pennyroute_batch is `tag`, listing newest first."""
        after: str | None = None
        for _ in range(MAX_LIST_PAGES):
            params = {"limit": str(LIST_PAGE_SIZE), **({"after": after} if after else {})}
            page = await self._call("GET", "/batches", params=params)
            batches = [b for b in page.get("data") or [] if isinstance(b, dict)]
            for batch in batches:
                if (batch.get("metadata") or {}).get(TAG_KEY) == tag:
                    return self.state(batch)
            last = batches[-1].get("id") if batches else None
            if not page.get("has_more") or not last or last == after:
                return None
            after = str(last)
        return None

    async def results(self, batch_id: str) -> AsyncIterator[LineResult]:
        """The output file's lines, then the error file's, streamed; each custom_id once."""
        batch = await self._call("GET", self.batch_path(batch_id))
        seen: set[str] = set()
        for file_id in self.result_files(batch):
            async for raw in stream_lines(
                self._client,
                f"/files/{safe_id(file_id)}/content",
                provider=self.name,
                headers=self._headers,
                secrets=self._secrets,
                reader=self.read_error,
            ):
                result = self.read_line(raw, model=str(batch.get("model") or ""))
                if result is None or result.custom_id in seen:
                    continue
                seen.add(result.custom_id)
                yield result

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- reading ---------------------------------------------------------------------------------

    def result_files(self, batch: dict[str, Any]) -> list[str]:
        return [str(batch[key]) for key in ("output_file_id", "error_file_id") if batch.get(key)]

    def state(self, batch: Any) -> BatchState:
        """The batch object as a BatchState (MalformedResponse when unreadable)."""
        return read_state(self.read_batch, batch, provider=self.name)

    def read_batch(self, batch: Any) -> BatchState:
        status = str(batch.get("status") or "")
        counts = batch.get("request_counts") or {}
        completed, failed = int(counts.get("completed") or 0), int(counts.get("failed") or 0)
        errors = [e for e in ((batch.get("errors") or {}).get("data") or []) if isinstance(e, dict)]
        error = "; ".join(said(e, self._secrets) for e in errors[:3]) or None
        return BatchState(
            batch_id=str(batch["id"]),
            state=STATES.get(status, RUNNING),  # a status we do not know yet: still going, poll again
            vendor_status=status,
            total=int(counts.get("total") or 0),
            done=completed + failed,
            failed=failed,
            error=error if STATES.get(status) == FAILED else None,
        )

    def read_line(self, raw: str, *, model: str) -> LineResult | None:
        """One result line: {custom_id, response: {status_code, body} | null, error: {code, message} | null}."""
        try:
            line = json.loads(raw)
            custom_id = str(line["custom_id"])
        except (ValueError, KeyError, TypeError):
            log.warning("%s: a batch result line without a custom_id was skipped: %.200s", self.name, raw)
            return None
        response = line.get("response") if isinstance(line.get("response"), dict) else {}
        body = response.get("body")
        usage = usage_or_none(openai.read_usage, body.get("usage") if isinstance(body, dict) else None)
        error = line.get("error")
        if error:
            code = str(error.get("code") or "") if isinstance(error, dict) else ""
            return LineResult(
                custom_id=custom_id,
                outcome=self.line_outcome(code),
                usage=usage,
                error=said(error, self._secrets),
            )
        status = int(response.get("status_code") or 0)
        if 200 <= status < 300:
            return answered(custom_id, body, self.parse, what=self.what, model=model)
        text, retryable = line_error(status, body, provider=self.name, secrets=self._secrets, reader=self.read_error)
        return LineResult(custom_id=custom_id, outcome=ERRORED, usage=usage, error=text, retryable=retryable)

    def line_outcome(self, code: str) -> str:
        return LINE_CODES.get(code, ERRORED)

    async def _call(self, method: str, url: str, **kwargs: Any) -> Any:
        return await call_json(
            self._client,
            method,
            url,
            provider=self.name,
            headers=self._headers,
            secrets=self._secrets,
            reader=self.read_error,
            **kwargs,
        )

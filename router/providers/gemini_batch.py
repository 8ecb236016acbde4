"""Gemini's Batch Mode (Gemini Developer API): the BatchAPI beside router.providers.gemini.GeminiProvider,
over the same client (base_url https://generativelanguage.googleapis.com) and the same auth: the key
goes in the x-goog-api-key header, never as ?key= in a URL that could be logged.

    create   POST /v1beta/models/{model}:batchGenerateContent {batch: {displayName: <tag>, inputConfig}}.
             Small batches go inline, inputConfig {requests: {requests: [{request, metadata: {key}}]}};
             larger ones as a JSONL file of {key, request} uploaded first (resumable upload: POST
             /upload/v1beta/files with X-Goog-Upload-Command start, then upload, finalize to the URL
             it answers), inputConfig {fileName}. Each request is exactly what the synchronous path
             sends (router.providers.gemini.request_body); key is the line's custom_id
    get      GET /v1beta/batches/{id}: a long-running operation whose metadata (the batch) holds
             state BATCH_STATE_PENDING -> RUNNING -> SUCCEEDED, or FAILED, CANCELLED, EXPIRED, and
             batchStats {requestCount, successfulRequestCount, failedRequestCount, pendingRequestCount}
    results  inline batches: the batch's output.inlinedResponses.inlinedResponses, each {response |
             error, metadata: {key}}; file batches: output.responsesFile, downloaded from
             /download/v1beta/{file}:download?alt=media and streamed, each line {key, response | error}.
             A response is read by router.providers.gemini.parse_generate_content (finish reasons,
             blocks, usageMetadata with cached and thought tokens); an error is a google.rpc.Status,
             read by `read_error` at the HTTP status its code stands for. A Status with code 4
             (DEADLINE_EXCEEDED) is EXPIRED and code 1 (CANCELLED) CANCELED: how the Batch API marks
             lines of an expired or cancelled batch is not documented, so this is our reading (and the
             fake's); usageMetadata beside an error was billed and is kept
    cancel   POST /v1beta/batches/{id}:cancel
    find     GET /v1beta/batches?pageSize=100&pageToken=..., matched on the batch's displayName

Inline answers come back inside the batch resource, which is read whole; so only batches of at most
INLINE_MAX_BYTES go inline (Google allows 20 MB of requests), and anything larger goes as a file whose
results stream. Limits: Google documents no request count; MAX_LINES is ours. A JSONL input file may
hold up to 2 GB. A batch "running or pending for more than 48 hours" expires (batch-apis-and-intake.md
1.4, quoted from LiteLLM; Google's own target is 24 h).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from router.errors import MalformedResponse
from router.providers import gemini
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
    send,
    stream_lines,
    usage_or_none,
)
from router.providers.http import credentials, status_error

log = logging.getLogger(__name__)

API = f"/{gemini.API_VERSION}"
MB = 1024 * 1024
# Batches this small go inline: their answers come back inside the batch resource, read whole, so it
# stays far below Google's 20 MB inline cap; larger ones go as a file, whose results stream.
INLINE_MAX_BYTES = 1 * MB
# Google documents no request count per batch: a count the engine can split to, like OpenAI's order.
MAX_LINES = 100_000
LIMITS = BatchLimits(max_lines=MAX_LINES, max_bytes=2 * 1024 * MB, window_s=48 * 3600)
STATES = {
    "BATCH_STATE_PENDING": PENDING,
    "BATCH_STATE_RUNNING": RUNNING,
    "BATCH_STATE_SUCCEEDED": ENDED,
    "BATCH_STATE_CANCELLED": ENDED,
    "BATCH_STATE_EXPIRED": ENDED,
    "BATCH_STATE_FAILED": FAILED,
    # The SDK's names for the same states, should the REST API ever answer with them.
    "JOB_STATE_PENDING": PENDING,
    "JOB_STATE_QUEUED": PENDING,
    "JOB_STATE_RUNNING": RUNNING,
    "JOB_STATE_SUCCEEDED": ENDED,
    "JOB_STATE_PARTIALLY_SUCCEEDED": ENDED,
    "JOB_STATE_CANCELLED": ENDED,
    "JOB_STATE_EXPIRED": ENDED,
    "JOB_STATE_FAILED": FAILED,
}
# google.rpc.Code -> the HTTP status it maps to (google/rpc/code.proto), for reading a line's error.
RPC_STATUS = {1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 7: 403, 8: 429, 9: 400, 10: 409, 13: 500, 14: 503, 16: 401}
CANCELLED_CODE, DEADLINE_EXCEEDED_CODE = 1, 4


class GeminiBatchAPI:
    """Gemini's Batch Mode over generateContent; it owns (and closes) the client it is given."""

    limits = LIMITS
    what = "generateContent answer"

    def __init__(
        self,
        *,
        name: str,
        client: httpx.AsyncClient,
        api_key: str | None,
        simulated: bool = False,
        inline_max_bytes: int = INLINE_MAX_BYTES,
    ) -> None:
        self.name = name
        self.simulated = simulated
        self.inline_max_bytes = inline_max_bytes
        self._client = client
        self._headers = {"x-goog-api-key": api_key} if api_key else {}
        self._secrets = credentials(self._headers)

    def wire_line(self, line: BatchLine) -> dict[str, Any]:
        """One line of the JSONL input file (an inline request carries the same request)."""
        return {"key": line.custom_id, "request": gemini.request_body(line.request)}

    def line_bytes(self, line: BatchLine) -> int:
        return len(encode(self.wire_line(line))) + 1  # and its newline

    async def create(self, lines: Sequence[BatchLine], *, model: str, tag: str) -> BatchState:
        check_lines(lines, model=model)
        encoded = [encode(self.wire_line(line)) for line in lines]
        if sum(len(e) + 1 for e in encoded) <= self.inline_max_bytes:
            requests = [
                {"request": gemini.request_body(line.request), "metadata": {"key": line.custom_id}} for line in lines
            ]
            config: dict[str, Any] = {"requests": {"requests": requests}}
        else:
            config = {"fileName": await self.upload(b"".join(e + b"\n" for e in encoded), tag=tag)}
        operation = await self._call(
            "POST",
            f"{API}/models/{safe_id(model)}:batchGenerateContent",
            json={"batch": {"displayName": tag, "inputConfig": config}},
        )
        return self.state(operation)

    async def upload(self, data: bytes, *, tag: str) -> str:
        """Upload a JSONL file by Google's resumable protocol; the file's name ("files/...")."""
        start = await send(
            self._client,
            "POST",
            f"/upload{API}/files",
            provider=self.name,
            headers={
                **self._headers,
                "X-Goog-Upload-Protocol": "resumable",
                "X-Goog-Upload-Command": "start",
                "X-Goog-Upload-Header-Content-Length": str(len(data)),
                "X-Goog-Upload-Header-Content-Type": "application/jsonl",
            },
            json={"file": {"displayName": f"{tag}.jsonl"}},
        )
        if not start.is_success:
            raise status_error(start, provider=self.name, secrets=self._secrets, reader=gemini.read_error)
        upload_url = start.headers.get("x-goog-upload-url")
        base = urlsplit(str(self._client.base_url))
        if not upload_url or urlsplit(upload_url).netloc not in ("", base.netloc):
            # The key goes along with the bytes: never to a host other than the API's own.
            raise MalformedResponse("file upload answered no upload URL on the API's own host", provider=self.name)
        uploaded = await self._call(
            "POST",
            upload_url,
            extra_headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"},
            content=data,
        )
        return str((uploaded.get("file") or uploaded)["name"])

    async def get(self, batch_id: str) -> BatchState:
        return self.state(await self._call("GET", self.batch_path(batch_id)))

    async def cancel(self, batch_id: str) -> BatchState:
        await self._call("POST", f"{self.batch_path(batch_id)}:cancel")
        return await self.get(batch_id)

    async def find(self, tag: str) -> BatchState | None:
        """The batch whose displayName is `tag`, paging through the batch list."""
        token: str | None = None
        for _ in range(MAX_LIST_PAGES):
            params = {"pageSize": str(LIST_PAGE_SIZE), **({"pageToken": token} if token else {})}
            page = await self._call("GET", f"{API}/batches", params=params)
            for operation in page.get("operations") or page.get("batches") or []:
                if isinstance(operation, dict) and batch_of(operation).get("displayName") == tag:
                    return self.state(operation)
            next_token = page.get("nextPageToken")
            if not next_token or next_token == token:
                return None
            token = str(next_token)
        return None

    async def results(self, batch_id: str) -> AsyncIterator[LineResult]:
        operation = await self._call("GET", self.batch_path(batch_id))
        batch = batch_of(operation)
        model = str(batch.get("model") or "").removeprefix("models/")
        output = batch.get("output") or {}
        seen: set[str] = set()
        inline = (output.get("inlinedResponses") or {}).get("inlinedResponses")
        if inline is not None:
            for entry in inline:
                key = (entry.get("metadata") or {}).get("key") if isinstance(entry, dict) else None
                result = self.read_entry(entry, key=key, model=model)
                if result is not None and result.custom_id not in seen:
                    seen.add(result.custom_id)
                    yield result
            return
        responses_file = output.get("responsesFile")
        if not responses_file:
            return
        async for raw in stream_lines(
            self._client,
            f"/download{API}/{file_path(str(responses_file))}:download",
            params={"alt": "media"},
            provider=self.name,
            headers=self._headers,
            secrets=self._secrets,
            reader=gemini.read_error,
        ):
            try:
                entry = json.loads(raw)
            except ValueError:
                log.warning("%s: an unreadable batch result line was skipped: %.200s", self.name, raw)
                continue
            result = self.read_entry(entry, key=entry.get("key") if isinstance(entry, dict) else None, model=model)
            if result is not None and result.custom_id not in seen:
                seen.add(result.custom_id)
                yield result

    async def aclose(self) -> None:
        await self._client.aclose()

    def batch_path(self, batch_id: str) -> str:
        prefix, _, rest = batch_id.partition("/")
        if prefix != "batches":
            raise ValueError(f"not a batch name: {batch_id!r} (expected batches/...)")
        return f"{API}/batches/{safe_id(rest)}"

    def state(self, operation: Any) -> BatchState:
        """The batch operation as a BatchState (MalformedResponse when unreadable)."""
        return read_state(self.read_batch, operation, provider=self.name)

    def read_batch(self, operation: Any) -> BatchState:
        batch = batch_of(operation)
        status = str(batch.get("state") or "")
        stats = batch.get("batchStats") or {}
        total = int(stats.get("requestCount") or 0)  # int64 counts come as JSON strings
        failed = int(stats.get("failedRequestCount") or 0)
        succeeded = int(stats.get("successfulRequestCount") or 0)
        error = operation.get("error") if isinstance(operation, dict) else None
        return BatchState(
            batch_id=str(operation.get("name") or batch.get("name")),
            state=STATES.get(status, RUNNING if status else PENDING),
            vendor_status=status,
            total=total,
            done=succeeded + failed,
            failed=failed,
            error=said(error, self._secrets) if error and STATES.get(status) == FAILED else None,
        )

    def read_entry(self, entry: Any, *, key: Any, model: str) -> LineResult | None:
        """One answer: {response} or {error: google.rpc.Status}, under `key` (our custom_id)."""
        if not isinstance(entry, dict) or not key:
            log.warning("%s: a batch result without a key was skipped", self.name)
            return None
        custom_id = str(key)
        response = entry.get("response") if isinstance(entry.get("response"), dict) else None
        error = entry.get("error") if isinstance(entry.get("error"), dict) else None
        if error is None and response is not None:
            return answered(custom_id, response, gemini.parse_generate_content, what=self.what, model=model)
        usage = usage_or_none(gemini.read_usage, (response or {}).get("usageMetadata"))
        code = int(error.get("code") or 0) if error else 0
        if code == DEADLINE_EXCEEDED_CODE:
            return LineResult(custom_id=custom_id, outcome=EXPIRED, usage=usage, error=said(error, self._secrets))
        if code == CANCELLED_CODE:
            return LineResult(custom_id=custom_id, outcome=CANCELED, usage=usage, error=said(error, self._secrets))
        text, retryable = line_error(
            RPC_STATUS.get(code, 500),
            {"error": error or {"message": "a result with neither response nor error"}},
            provider=self.name,
            secrets=self._secrets,
            reader=gemini.read_error,
        )
        return LineResult(custom_id=custom_id, outcome=ERRORED, usage=usage, error=text, retryable=retryable)

    async def _call(self, method: str, url: str, *, extra_headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
        return await call_json(
            self._client,
            method,
            url,
            provider=self.name,
            headers={**self._headers, **(extra_headers or {})},
            secrets=self._secrets,
            reader=gemini.read_error,
            **kwargs,
        )


def batch_of(operation: Any) -> dict[str, Any]:
    """The batch inside an operation (its `metadata`, or its `response` once done), or the batch itself."""
    if not isinstance(operation, dict):
        return {}
    for key in ("metadata", "response"):
        inner = operation.get(key)
        if isinstance(inner, dict) and "state" in inner:
            return inner
    return operation


def file_path(name: str) -> str:
    """A file's resource name ("files/abc") as a path, refused if it could leave it."""
    prefix, _, rest = name.partition("/")
    if prefix != "files":
        raise ValueError(f"not a file name: {name!r} (expected files/...)")
    return f"files/{safe_id(rest)}"

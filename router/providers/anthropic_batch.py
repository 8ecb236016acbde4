"""Anthropic's Message Batches: the BatchAPI beside router.providers.anthropic.AnthropicProvider, over
the same client (base_url https://api.anthropic.com) and the same headers (x-api-key, anthropic-version).

    create   POST /v1/messages/batches {requests: [{custom_id, params}]}, inline (no file); `params` is
             exactly what the synchronous path sends (router.providers.anthropic.request_body).
             custom_id must match [a-zA-Z0-9_-]{1,64}: any other is refused here with a ValueError,
             before anything is sent
    get      GET /v1/messages/batches/{id}: processing_status in_progress -> ended, or canceling ->
             ended; request_counts {processing, succeeded, errored, canceled, expired} (the last four
             are zero until the whole batch has ended)
    results  GET /v1/messages/batches/{id}/results (the batch's results_url; always this path on our
             own client, so the key never goes to a host named in a response), streamed JSONL of
             {custom_id, result: {type: succeeded | errored | canceled | expired, ...}}, in no order.
             A succeeded line's message is read by router.providers.anthropic.parse_message (stop
             reasons, refusals, usage with cache reads and writes, thinking blocks skipped); an errored
             line's error ({type: "error", error: {type, message}}) by `read_error`, at the status its
             type stands for
    cancel   POST /v1/messages/batches/{id}/cancel: canceling, then ended; lines already done stay
    find     None, always: Anthropic keeps no metadata on a batch (the create body takes only
             `requests`), so a batch cannot be looked up by our tag; the engine then treats the lines
             of a batch whose id it never stored as maybe sent

Limits (Anthropic's batch-processing guide): 100,000 requests or 256 MB per batch, whichever comes
first; a batch expires if not done within 24 h. All usage is charged at 50% of standard prices.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

from router.providers import anthropic
from router.providers.batch_api import (
    CANCELED,
    ENDED,
    ERRORED,
    EXPIRED,
    RUNNING,
    BatchLimits,
    BatchLine,
    BatchState,
    LineResult,
)
from router.providers.batch_http import (
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
from router.providers.http import credentials

log = logging.getLogger(__name__)

PATH = "/v1/messages/batches"
MB = 1024 * 1024
LIMITS = BatchLimits(max_lines=100_000, max_bytes=256 * MB, window_s=24 * 3600)
# What a line that never ran says, by its result type.
NOT_RUN = {
    "canceled": "canceled: the batch was canceled before this request ran",
    "expired": "expired: the batch's 24 h window closed before this request ran",
}
STATES = {"in_progress": RUNNING, "canceling": RUNNING, "ended": ENDED}
# The HTTP status each error type stands for (Claude API errors page), so that an errored line is read
# by the same `read_error` as a synchronous call's error.
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class AnthropicBatchAPI:
    """Anthropic's Message Batches; it owns (and closes) the client it is given."""

    limits = LIMITS
    what = "message"
    # Anthropic keeps no metadata on a batch: `find` cannot tell ours, so a batch whose creation may
    # have reached Anthropic is treated as maybe sent (charged at its worst case, its lines run again).
    can_find = False

    def __init__(self, *, name: str, client: httpx.AsyncClient, api_key: str | None, simulated: bool = False) -> None:
        self.name = name
        self.simulated = simulated
        self._client = client
        self._headers = {"anthropic-version": anthropic.ANTHROPIC_VERSION}
        if api_key:
            self._headers["x-api-key"] = api_key
        self._secrets = credentials(self._headers)

    def wire_line(self, line: BatchLine) -> dict[str, Any]:
        return {"custom_id": line.custom_id, "params": anthropic.request_body(line.request)}

    def line_bytes(self, line: BatchLine) -> int:
        return len(encode(self.wire_line(line))) + 1  # and the comma between requests

    async def create(self, lines: Sequence[BatchLine], *, model: str, tag: str) -> BatchState:
        """Create the batch inline; `tag` is not sent (Anthropic keeps no metadata: see `find`)."""
        check_lines(lines, model=model, strict_ids=True)
        body = b'{"requests":[' + b",".join(encode(self.wire_line(line)) for line in lines) + b"]}"
        batch = await self._call("POST", PATH, content=body, extra_headers={"content-type": "application/json"})
        return self.state(batch)

    async def get(self, batch_id: str) -> BatchState:
        return self.state(await self._call("GET", f"{PATH}/{safe_id(batch_id)}"))

    async def cancel(self, batch_id: str) -> BatchState:
        return self.state(await self._call("POST", f"{PATH}/{safe_id(batch_id)}/cancel"))

    async def find(self, tag: str) -> BatchState | None:
        """Always None: Anthropic keeps no metadata or name on a batch to find it by."""
        return None

    async def results(self, batch_id: str) -> AsyncIterator[LineResult]:
        seen: set[str] = set()
        async for raw in stream_lines(
            self._client,
            f"{PATH}/{safe_id(batch_id)}/results",
            provider=self.name,
            headers=self._headers,
            secrets=self._secrets,
            reader=anthropic.read_error,
        ):
            result = self.read_line(raw)
            if result is None or result.custom_id in seen:
                continue
            seen.add(result.custom_id)
            yield result

    async def aclose(self) -> None:
        await self._client.aclose()

    def state(self, batch: Any) -> BatchState:
        """The batch object as a BatchState (MalformedResponse when unreadable)."""
        return read_state(self.read_batch, batch, provider=self.name)

    def read_batch(self, batch: Any) -> BatchState:
        status = str(batch.get("processing_status") or "")
        counts = {k: int(v or 0) for k, v in (batch.get("request_counts") or {}).items() if k != "processing"}
        processing = int((batch.get("request_counts") or {}).get("processing") or 0)
        total = processing + sum(counts.values())
        return BatchState(
            batch_id=str(batch["id"]),
            state=STATES.get(status, RUNNING),
            vendor_status=status,
            total=total,
            done=total - processing,
            failed=sum(counts.get(k, 0) for k in ("errored", "canceled", "expired")),
        )

    def read_line(self, raw: str) -> LineResult | None:
        """One result line: {custom_id, result: {type, message | error}}."""
        try:
            line = json.loads(raw)
            custom_id = str(line["custom_id"])
            result = line["result"]
            kind = str(result["type"])
        except (ValueError, KeyError, TypeError):
            log.warning("%s: a batch result line without custom_id or result was skipped: %.200s", self.name, raw)
            return None
        message = result.get("message") if isinstance(result.get("message"), dict) else {}
        # Usage where a line that did not succeed still reports it (billed, so charged).
        usage = usage_or_none(anthropic.read_usage, result.get("usage") or message.get("usage"))
        if kind == "succeeded":
            return answered(
                custom_id, message, anthropic.parse_message, what=self.what, model=str(message.get("model") or "")
            )
        if kind in ("canceled", "expired"):
            outcome = CANCELED if kind == "canceled" else EXPIRED
            return LineResult(custom_id=custom_id, outcome=outcome, usage=usage, error=NOT_RUN[kind])
        error: dict[str, Any] = result["error"] if isinstance(result.get("error"), dict) else {}
        inner: dict[str, Any] = error["error"] if isinstance(error.get("error"), dict) else error
        status = ERROR_STATUS.get(str(inner.get("type") or ""))
        if status is None:
            return LineResult(
                custom_id=custom_id, outcome=ERRORED, usage=usage, error=said(inner or result, self._secrets)
            )
        text, retryable = line_error(
            status,
            error if "error" in error else {"type": "error", "error": inner},
            provider=self.name,
            secrets=self._secrets,
            reader=anthropic.read_error,
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
            reader=anthropic.read_error,
            **kwargs,
        )

"""What the four batch modules share: JSON calls of any method, result files streamed line by line,
a line's body encoded as it is counted, and a line's answer read by the synchronous path's own parser.

Every failure maps onto router.errors exactly as a synchronous call's does (router.providers.http:
`transport_error`, `status_error` with the vendor's `read_error`); a line's error text is the vendor's
own message with the key redacted (`error_message`, `redact`), so it can go into a ledger row as is.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

import httpx

from router.errors import MalformedResponse, ProviderError, ProviderStatusError
from router.providers.base import ChatRequest, Completion, UnreadableAnswer
from router.providers.batch_api import ERRORED, SUCCEEDED, BatchLine, LineResult
from router.providers.http import ErrorReader, error_message, status_error, transport_error
from router.redact import redact
from router.usage import TokenUsage

# The custom_id every vendor accepts: Anthropic's rule ([a-zA-Z0-9_-]{1,64}), the strictest of the four.
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# A page of a vendor's batch list: the most each of OpenAI (limit), Mistral (page_size) and Gemini
# (pageSize) hands out at once.
LIST_PAGE_SIZE = 100
# `find` stops after this many pages (10,000 batches back): a recent batch sits in the first page, and
# a cursor that never ends (a buggy server) must not keep a worker listing forever.
MAX_LIST_PAGES = 100
# Parser failures a line's body can give: the synchronous path catches the same ones.
PARSE_ERRORS = (KeyError, IndexError, TypeError, ValueError, AttributeError)

Parser = Callable[[Any, ChatRequest], Completion]
T = TypeVar("T")


def encode(value: Any) -> bytes:
    """JSON as it goes on the wire, compact: `line_bytes` counts exactly these bytes."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def check_lines(lines: Sequence[BatchLine], *, model: str, strict_ids: bool = False) -> None:
    """Refuse (ValueError) an empty batch, a repeated custom_id, a line for another model, and, with
    `strict_ids`, a custom_id outside [a-zA-Z0-9_-]{1,64} (Anthropic's rule)."""
    if not lines:
        raise ValueError("a batch needs at least one line")
    seen: set[str] = set()
    for line in lines:
        if strict_ids and not CUSTOM_ID.match(line.custom_id):
            raise ValueError(f"custom_id {line.custom_id!r} does not match [a-zA-Z0-9_-]{{1,64}}")
        if not line.custom_id:
            raise ValueError("a line's custom_id is empty")
        if line.custom_id in seen:
            raise ValueError(f"custom_id {line.custom_id!r} appears twice in one batch")
        seen.add(line.custom_id)
        if line.request.model != model:
            raise ValueError(f"line {line.custom_id!r} is for model {line.request.model!r}, the batch for {model!r}")


async def call_json(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    provider: str,
    headers: Mapping[str, str],
    secrets: Collection[str],
    reader: ErrorReader,
    **kwargs: Any,
) -> dict[str, Any]:
    """One call (`kwargs` as httpx takes them: json, params, files, data, content) and its decoded 2xx
    JSON object ({} for an empty body). Raises what `post_json` raises, for the same reasons; a 2xx body
    that is not a JSON object is a MalformedResponse."""
    response = await send(client, method, url, provider=provider, headers=headers, **kwargs)
    if not response.is_success:
        raise status_error(response, provider=provider, secrets=secrets, reader=reader)
    if not response.content:
        return {}
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if not isinstance(body, dict):  # every batch endpoint answers a JSON object
        raise MalformedResponse(
            f"HTTP {response.status_code} body is not a JSON object: {error_message(response.content, secrets)[:200]}",
            provider=provider,
        )
    return body


async def send(
    client: httpx.AsyncClient, method: str, url: str, *, provider: str, headers: Mapping[str, str], **kwargs: Any
) -> httpx.Response:
    """One call whose response is read whole; transport failures become ProviderErrors."""
    try:
        return await client.request(method, url, headers=headers, **kwargs)
    except Exception as exc:
        if (mapped := transport_error(exc, provider=provider)) is None:
            raise
        raise mapped from exc


async def stream_lines(
    client: httpx.AsyncClient,
    url: str,
    *,
    provider: str,
    headers: Mapping[str, str],
    secrets: Collection[str],
    reader: ErrorReader,
    params: Mapping[str, str] | None = None,
) -> AsyncIterator[str]:
    """The non-empty lines of a result file as they arrive (`client.stream` + `aiter_lines`): the file
    is never held whole. A non-2xx answer raises its ProviderStatusError before any line; a connection
    that breaks mid-file raises ProviderConnectionError (the lines already yielded stay yielded)."""
    try:
        async with client.stream("GET", url, headers=headers, params=params) as response:
            if not response.is_success:
                await response.aread()  # an error body is small: read it to quote it
                raise status_error(response, provider=provider, secrets=secrets, reader=reader)
            async for line in response.aiter_lines():
                if line.strip():
                    yield line
    except ProviderError:
        raise
    except Exception as exc:
        if (mapped := transport_error(exc, provider=provider)) is None:
            raise
        raise mapped from exc


def placeholder(model: str) -> ChatRequest:
    """The request a result line is parsed against: a result does not repeat its prompt, so a line that
    reports no usage gets an estimate of its answer only (flagged estimated=True). Every vendor's batch
    result reports usage."""
    return ChatRequest(model=model, system="", prompt="", max_output_tokens=0)


def answered(custom_id: str, body: Any, parse: Parser, *, what: str, model: str = "") -> LineResult:
    """A 2xx line's body read by the synchronous path's parser: SUCCEEDED with its Completion (finish,
    refusal, usage, thinking as a synchronous call reads them), or ERRORED when unreadable (with the
    usage when that could be read: billed, so charged, and not retried)."""
    try:
        completion = parse(body, placeholder(model))
    except PARSE_ERRORS as exc:
        usage = exc.usage if isinstance(exc, UnreadableAnswer) else None
        return LineResult(
            custom_id=custom_id,
            outcome=ERRORED,
            usage=usage,
            error=f"unreadable {what} ({type(exc).__name__}: {str(exc)[:200]})",
            retryable=usage is None,
        )
    return LineResult(custom_id=custom_id, outcome=SUCCEEDED, completion=completion, usage=completion.usage)


def line_error(
    status: int, body: Any, *, provider: str, secrets: Collection[str], reader: ErrorReader
) -> tuple[str, bool]:
    """(error text, retryable) for a line the vendor answered with an HTTP error inside the result: read
    by the vendor's own `read_error`, as a synchronous call's error is, the key redacted."""
    try:
        reading = reader(status, {}, body)
    except PARSE_ERRORS:
        reading = None
    error = ProviderStatusError(
        f"HTTP {status}: {error_message(encode(body), secrets)}",
        provider=provider,
        status_code=status,
        quota=reading.quota if reading else None,
        key_refused=reading.key_refused if reading else False,
        code=reading.code if reading else None,
    )
    return redact(str(error), secrets), error.retryable


def said(error: Any, secrets: Collection[str]) -> str:
    """A line-level error object ({code, message} or a google.rpc.Status) as one redacted line of text."""
    if not isinstance(error, dict):
        return redact(str(error)[:300], secrets)
    code = error.get("code") or error.get("status") or error.get("type")
    message = str(error.get("message") or "")[:300]
    return redact(f"{code}: {message}" if code else message, secrets)


def read_state(read: Callable[[Any], T], body: Any, *, provider: str) -> T:
    """A batch object read by `read`; MalformedResponse when the body is not the shape the vendor
    documents (as a synchronous call's unreadable 2xx body is)."""
    try:
        return read(body)
    except PARSE_ERRORS as exc:
        raise MalformedResponse(
            f"unreadable batch ({type(exc).__name__}: {str(exc)[:200]})", provider=provider
        ) from exc


def usage_or_none(read: Callable[[Any], TokenUsage | None], value: Any) -> TokenUsage | None:
    """A usage block read by the vendor's own reader, or None when absent or unreadable."""
    try:
        return read(value) if value else None
    except PARSE_ERRORS:
        return None


def safe_id(part: str) -> str:
    """An id as one path segment; ValueError if it could leave its segment (a batch or file id comes
    from our own ledger or the vendor, never from a user, but a path is no place to trust either)."""
    if not part or any(c in part for c in "/?#\\") or part in (".", ".."):
        raise ValueError(f"not a batch or file id: {part!r}")
    return part

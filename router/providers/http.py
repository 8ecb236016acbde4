"""The one place that builds HTTP clients, and the one place that turns HTTP outcomes into errors.

Two backends give the same `httpx.AsyncClient` interface:

    "aiohttp"  httpx on top of aiohttp's connection pool and parser (httpx_aiohttp.AiohttpTransport);
               the default, because it makes the same calls at a markedly higher rate (bench/clients.py).
    "httpx"    plain httpx with its own pool (httpcore); pure Python, no aiohttp at all.

`ClientPool` spreads calls over several clients round-robin, for setups that want more than one
pool per process (bench/clients.py measures whether that helps).

Clients belong to one event loop. Build them inside the running loop that will use them, and close
them (`aclose`) before that loop ends: aiohttp binds its session and connector to the running loop at
construction, and a connection made on one loop cannot be used from another. A Celery task that runs
`asyncio.run(...)` per chunk therefore builds its clients inside that `asyncio.run`, per chunk.
`build_client` refuses to run outside a running loop so that the mistake fails at once, loudly.

Timeouts are per phase (connect, each read, each write, waiting for a pooled connection), as in httpx:
neither backend bounds the whole call. A server that trickles bytes can outlast `timeout_s`.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import itertools
import json
import ssl
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport, HttpxAiohttpClient

from router.errors import (
    QUOTA_SPENT,
    ConfigError,
    MalformedResponse,
    ProviderConnectionError,
    ProviderError,
    ProviderStatusError,
    ProviderTimeout,
)
from router.prompts import MESSAGE_OVERHEAD_TOKENS, estimate_tokens
from router.providers.base import ChatRequest, Completion, UnreadableAnswer
from router.redact import redact
from router.usage import TokenUsage

Backend = Literal["aiohttp", "httpx"]
BACKENDS: tuple[Backend, ...] = ("aiohttp", "httpx")

# A TCP (and TLS) handshake takes well under a second even across oceans; after 10 s the host is
# down or unreachable, and waiting the full LLM timeout (minutes) for that would stall a chunk.
CONNECT_TIMEOUT_S = 10.0
# Idle pooled connections are dropped after 30 s: below the 60 s idle timeout of common load
# balancers (AWS ALB, nginx's 75 s), so we close first instead of reusing a socket the far end
# has just closed (which fails the next call with a connection reset).
KEEPALIVE_EXPIRY_S = 30.0
# Error bodies are quoted in exception messages up to this many characters: enough for any
# provider's one-line error message, short enough for a log line or a ledger row.
MAX_QUOTED_BODY_CHARS = 300
# Headers that carry a provider's key: their values are redacted from the error bodies it quotes.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "x-goog-api-key", "api-key"})


def build_client(
    *,
    base_url: str,
    headers: dict[str, str],
    timeout_s: float,
    max_connections: int,
    backend: Backend = "aiohttp",
) -> httpx.AsyncClient:
    """Build one `httpx.AsyncClient` for one provider; call it inside the loop that will use it.

    `base_url` is joined with the relative paths the providers post to (httpx keeps a trailing
    slash on it, so ".../v1" + "/chat/completions" gives ".../v1/chat/completions").
    `timeout_s` bounds each phase of a call (see the module docstring); the connect phase is
    capped at CONNECT_TIMEOUT_S. `max_connections` is the most connections open at once; calls
    beyond it wait for a free connection for up to `timeout_s`. Raises RuntimeError when no event
    loop is running.
    """
    asyncio.get_running_loop()  # raises RuntimeError outside a running loop: see the module docstring
    timeout = httpx.Timeout(
        timeout_s,
        connect=min(timeout_s, CONNECT_TIMEOUT_S),
        # Waiting for a pooled connection counts against the same budget as the call itself:
        # a call that waited one whole call's time for a connection is better retried later.
        pool=timeout_s,
    )
    # Keep every connection the pool may open: a batch keeps all of them busy, and httpx's default
    # (20 kept alive) would close and re-handshake every connection above 20 after each call.
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=KEEPALIVE_EXPIRY_S,
    )
    if backend == "httpx":
        return httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout, limits=limits)
    if backend == "aiohttp":
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=max_connections,
                limit_per_host=0,  # 0 = no per-host cap: one client talks to one host anyway
                keepalive_timeout=KEEPALIVE_EXPIRY_S,
                ssl=_ssl_context(),
            ),
            # httpx keeps the cookies (and sends them in the headers it hands to the transport);
            # a second jar in aiohttp would send them twice.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        # HttpxAiohttpClient (not plain AsyncClient) so that proxies taken from the environment
        # also go through aiohttp rather than silently falling back to httpx's own transport.
        return HttpxAiohttpClient(
            base_url=base_url,
            headers=headers,
            timeout=timeout,
            limits=limits,
            transport=AiohttpTransport(client=session, limits=limits),
        )
    raise ConfigError(f"unknown HTTP backend {backend!r}; expected one of {BACKENDS}")


@lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    """httpx's default context (certifi's CAs), built once: both backends trust the same CAs."""
    return httpx.create_ssl_context()


class ClientPool:
    """Several clients used round-robin, with the `post` and `aclose` the providers need."""

    def __init__(self, clients: Sequence[httpx.AsyncClient]) -> None:
        if not clients:
            raise ValueError("a ClientPool needs at least one client")
        self.clients = tuple(clients)
        self._next = itertools.cycle(self.clients)

    @classmethod
    def build(
        cls,
        *,
        k: int,
        base_url: str,
        headers: dict[str, str],
        timeout_s: float,
        max_connections: int,
        backend: Backend = "httpx",
    ) -> ClientPool:
        """Build `k` clients with `build_client`; `max_connections` is shared out between them.

        Like `build_client`, call it inside the running loop that will use the pool.
        """
        per_client = max(1, -(-max_connections // k))  # ceiling division: never fewer in total
        return cls(
            [
                build_client(
                    base_url=base_url,
                    headers=headers,
                    timeout_s=timeout_s,
                    max_connections=per_client,
                    backend=backend,
                )
                for _ in range(k)
            ]
        )

    async def post(
        self, url: str | httpx.URL, *, json: Any = None, headers: Mapping[str, str] | None = None
    ) -> httpx.Response:
        """POST with the next client in turn; same meaning as `httpx.AsyncClient.post`."""
        return await next(self._next).post(url, json=json, headers=headers)

    async def aclose(self) -> None:
        """Close every client."""
        await asyncio.gather(*(client.aclose() for client in self.clients))


class JsonApiProvider(ABC):
    """What every HTTP provider shares: post one JSON body, read one JSON answer, map failures.

    A vendor module subclasses it and gives `path`, `what` (for error messages), `headers`,
    `request_body` and `parse`; it knows endpoint, auth and mapping, nothing else.
    """

    path: str
    what: str

    def __init__(self, *, name: str, client: httpx.AsyncClient | ClientPool, simulated: bool = False) -> None:
        self.name = name
        self.simulated = simulated
        self._client = client
        self._headers: dict[str, str] = {}
        self._endpoints: dict[str, httpx.URL] = {}  # path -> its absolute URL

    def url(self, request: ChatRequest) -> str:
        """The path this call posts to (most vendors: one path for every model)."""
        return self.path

    @abstractmethod
    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The vendor's JSON body for one call."""

    @abstractmethod
    def parse(self, body: Any, request: ChatRequest) -> Completion:
        """The vendor's answer as a Completion (raise KeyError/TypeError/... when unreadable)."""

    def read_error(self, status: int, headers: Mapping[str, str], body: Any) -> ErrorReading:
        """What the vendor's error response says, from its own codes (see ErrorReading); a vendor
        module overrides it. `body` is the decoded JSON, or None."""
        return read_generic_error(status, headers, body)

    async def complete(self, request: ChatRequest) -> Completion:
        """Make one call; raise a ProviderError subclass (router.errors) on failure."""
        headers = (
            self._headers
            if request.request_id is None
            else {**self._headers, "X-Client-Request-Id": request.request_id}
        )
        body = await post_json(
            self._client,
            self._endpoint(self.url(request)),
            body=self.request_body(request),
            headers=headers,
            provider=self.name,
            secrets=credentials(self._headers),
            reader=self.read_error,
        )
        try:
            return self.parse(body, request)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedResponse(
                f"unreadable {self.what} ({type(exc).__name__}: {exc})",
                provider=self.name,
                usage=exc.usage if isinstance(exc, UnreadableAnswer) else None,  # read first: it was billed
            ) from exc

    def _endpoint(self, path: str) -> httpx.URL:
        """`path` under the client's base URL, merged as httpx merges it, once per path: httpx would
        parse and merge the path again on every call (a tenth of the I/O loop's time under load)."""
        url = self._endpoints.get(path)
        if url is None:
            client = self._client.clients[0] if isinstance(self._client, ClientPool) else self._client
            base, merge = client.base_url, httpx.URL(path)
            url = (
                base.copy_with(raw_path=base.raw_path + merge.raw_path.lstrip(b"/")) if merge.is_relative_url else merge
            )
            self._endpoints[path] = url
        return url

    async def aclose(self) -> None:
        """Close the client and its connections."""
        await self._client.aclose()


def credentials(headers: Mapping[str, str]) -> tuple[str, ...]:
    """The key values in `headers` (CREDENTIAL_HEADERS), with and without their scheme ("Bearer ...")."""
    found: list[str] = []
    for name, value in headers.items():
        if name.lower() in CREDENTIAL_HEADERS and value:
            found.append(value)
            scheme, _, token = value.partition(" ")
            if token and scheme.lower() in ("bearer", "basic", "token"):
                found.append(token.strip())
    return tuple(found)


def estimated_usage(request: ChatRequest, text: str) -> TokenUsage:
    """Usage for an answer whose body reported none: estimated from lengths, and flagged so."""
    return TokenUsage(
        input_tokens=estimate_tokens(request.system) + estimate_tokens(request.prompt) + MESSAGE_OVERHEAD_TOKENS,
        output_tokens=estimate_tokens(text),
        estimated=True,
    )


async def post_json(
    client: httpx.AsyncClient | ClientPool,
    path: str | httpx.URL,
    *,
    body: dict[str, Any],
    headers: Mapping[str, str],
    provider: str,
    secrets: Collection[str] = (),
    reader: ErrorReader | None = None,
) -> Any:
    """POST `body` as JSON to `path` and return the decoded 2xx body.

    Raises ProviderTimeout, ProviderConnectionError, ProviderStatusError (non-2xx, with the
    provider's own error message, its request id and wait, decided by `reader`: see status_error)
    or MalformedResponse (2xx that is not JSON).
    A body quoted in an error has `secrets` (the call's own key) redacted before it is shortened:
    the engine redacts every stored error again, but a key cut in half would no longer match.
    """
    try:
        response = await client.post(path, json=body, headers=headers)
    except Exception as exc:
        if (mapped := transport_error(exc, provider=provider)) is None:
            raise
        raise mapped from exc
    if not response.is_success:
        raise status_error(response, provider=provider, secrets=secrets, reader=reader or read_generic_error)
    try:
        return json.loads(response.content)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise MalformedResponse(
            f"HTTP {response.status_code} body is not JSON: {_quote(response.content, secrets)}", provider=provider
        ) from exc


def transport_error(exc: BaseException, *, provider: str) -> ProviderError | None:
    """The ProviderError for an exception raised while sending a request or reading its answer
    (ProviderTimeout, ProviderConnectionError, MalformedResponse for a body that does not decode),
    or None when `exc` is no transport failure (the caller re-raises it)."""
    if isinstance(exc, httpx.TimeoutException):
        # httpx_aiohttp maps every aiohttp ClientConnectionError (refused, reset, server gone) to
        # httpx.ConnectTimeout; only a real aiohttp timeout is a timeout.
        cause = exc.__cause__
        sent = not unsent(exc)
        if isinstance(cause, aiohttp.ClientError) and not isinstance(cause, TimeoutError):
            return ProviderConnectionError(_describe(cause), provider=provider, sent=sent)
        return ProviderTimeout(f"no answer within the timeout ({_describe(exc)})", provider=provider, sent=sent)
    if isinstance(exc, TimeoutError):  # a bare timeout leaking from aiohttp (TimeoutError is an OSError too)
        return ProviderTimeout(
            f"no answer within the timeout ({_describe(exc)})", provider=provider, sent=not unsent(exc)
        )
    if isinstance(exc, (httpx.TransportError, aiohttp.ClientError, OSError)):
        # aiohttp errors outside httpx_aiohttp's map (e.g. an unparsable HTTP response) leak through.
        return ProviderConnectionError(_describe(exc), provider=provider, sent=not unsent(exc))
    if isinstance(exc, httpx.DecodingError):  # a body whose Content-Encoding does not decode
        return MalformedResponse(_describe(exc), provider=provider)
    return None


# Failures that happen before a request can leave: no connection was ever made (refused, DNS, TLS,
# a connect timeout, or no free connection in the pool). Anything else may have reached the provider.
_UNSENT_AIOHTTP = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
_UNSENT_HTTPX = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def unsent(exc: BaseException) -> bool:
    """Whether the request certainly never reached the provider (so it cannot have been billed).

    httpx_aiohttp maps every aiohttp connection error to httpx.ConnectTimeout, so the aiohttp cause,
    when there is one, decides; a plain httpx transport's connect errors are pre-send by definition."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    native = [e for e in chain if isinstance(e, (aiohttp.ClientError, ConnectionRefusedError))]
    if native:
        return isinstance(native[-1], (*_UNSENT_AIOHTTP, ConnectionRefusedError))
    return isinstance(exc, _UNSENT_HTTPX)


@dataclass(frozen=True, slots=True)
class ErrorReading:
    """What one provider's error response says, read from its codes by the provider's own module
    (`JsonApiProvider.read_error`). Headers every provider shares (Retry-After, retry-after-ms,
    x-should-retry, x-request-id / request-id) are read here, by `status_error`."""

    code: str | None = None  # the provider's own code: "insufficient_quota", "RESOURCE_EXHAUSTED", ...
    quota: str | None = None  # set when the account's allowance is spent: what is spent and what to do
    key_refused: bool = False  # the key is refused (401 and 403 always are; Gemini says it with a 400)
    retry_after: float | None = None  # a wait the provider gives outside Retry-After (Gemini's RetryInfo)
    window_reset_s: float | None = None  # time until the rate window is full again: not a wait
    request_id: str | None = None  # the provider's request id, when only the body carries it


ErrorReader = Callable[[int, Mapping[str, str], Any], ErrorReading]
"""(status, headers, decoded JSON body or None) -> ErrorReading."""


def read_generic_error(status: int, headers: Mapping[str, str], body: Any) -> ErrorReading:
    """The reading for a server with no dialect of its own: only 402 Payment Required says that the
    account's credit is spent (OpenRouter and other gateways answer it so)."""
    if status == 402:
        return ErrorReading(code="402", quota=f"credit is spent (HTTP 402 payment required): {QUOTA_SPENT}")
    return ErrorReading()


def error_body(content: bytes) -> Any:
    """The decoded JSON of an error body, or None when it is not JSON. Google APIs sometimes wrap
    the error object in a one-element list; it is unwrapped."""
    try:
        body = json.loads(content)
    except ValueError:
        return None
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    return body


def status_error(
    response: httpx.Response,
    *,
    provider: str,
    secrets: Collection[str] = (),
    reader: ErrorReader = read_generic_error,
) -> ProviderError:
    """A ProviderStatusError for a non-2xx response, quoting the provider's own error message
    (`secrets` redacted) and its request id, and decided by `reader` (the provider's own codes).

    The wait is Retry-After (or retry-after-ms) when given, else the one the reader found elsewhere
    (Gemini's RetryInfo in the body, Anthropic's reset headers). `x-should-retry` ("true"/"false", the
    header OpenAI's and Anthropic's SDKs obey before the status) is kept and wins over the status.
    """
    headers = response.headers
    body = error_body(response.content)
    try:
        reading = reader(response.status_code, headers, body)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        reading = ErrorReading()  # a body in no shape we know: the status decides
    request_id = headers.get("x-request-id") or headers.get("request-id") or reading.request_id
    should_retry = {"true": True, "false": False}.get((headers.get("x-should-retry") or "").strip().lower())
    explicit = retry_after_s(headers)
    where = f" (request {request_id})" if request_id else ""
    return ProviderStatusError(
        f"HTTP {response.status_code}{where}: {error_message(response.content, secrets)}",
        provider=provider,
        status_code=response.status_code,
        retry_after=explicit if explicit is not None else reading.retry_after,
        quota=reading.quota,
        key_refused=reading.key_refused,
        code=reading.code,
        request_id=request_id,
        should_retry=should_retry,
        window_reset_s=reading.window_reset_s,
    )


def reset_in_s(value: str, *, now: float | None = None) -> float | None:
    """Seconds from now until an RFC 3339 time ("2026-11-22T10:00:05Z"); 0.0 if past, None if unreadable."""
    try:
        when = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_fields(body: Any) -> dict[str, Any]:
    """The `error` object of an error body ({"error": {...}}), or {} when there is none."""
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def text_field(fields: Any, name: str) -> str | None:
    """`fields[name]` when `fields` is a dict and that value a non-empty string, else None."""
    value = fields.get(name) if isinstance(fields, dict) else None
    return value if isinstance(value, str) and value else None


def error_message(content: bytes, secrets: Collection[str] = ()) -> str:
    """The provider's error message from an error body, else the body itself (redacted, then shortened).

    Reads {"error": {"type": ..., "message": ...}} (OpenAI and Anthropic; OpenAI's `code` follows the
    type), {"error": {"status": ..., "message": ...}} (Gemini), {"error": "..."} (Ollama, some vLLM
    versions), {"object": "error", "message", "type", "code"} and {"message": ...} (Mistral) and
    {"detail": ...} (FastAPI-based servers).
    """
    body = error_body(content)
    if body is None:
        return _quote(content, secrets)
    if isinstance(body, dict):
        error = body.get("error")
        if body.get("object") == "error":  # Mistral: the error's fields at the top level
            error = body
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            kinds = [
                k for k in (error.get("type") or error.get("status"), error.get("code")) if isinstance(k, str) and k
            ]
            kind = "/".join(dict.fromkeys(kinds))  # "requests/rate_limit_exceeded"; one when type == code
            message = redact(error["message"], secrets)
            return f"{kind}: {message}" if kind else message
        for key in ("error", "message", "detail"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return _quote(content, secrets)


def retry_after_s(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the provider asks us to wait, from retry-after-ms or Retry-After; None if absent.

    retry-after-ms (OpenAI, Azure) is read first, being more precise. Retry-After is either
    delta-seconds or an HTTP date (RFC 9110 section 10.2.3). A date in the past gives 0.0. The
    value is not capped here: whether a long wait is worth it is the caller's decision.
    """
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms) / 1000
            if value >= 0:
                return value
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
        return value if value >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" parses as naive; HTTP dates are always GMT (UTC)
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _quote(content: bytes, secrets: Collection[str] = ()) -> str:
    text = redact(content.decode("utf-8", errors="replace").strip(), secrets)
    if not text:
        return "(empty body)"
    return text if len(text) <= MAX_QUOTED_BODY_CHARS else text[:MAX_QUOTED_BODY_CHARS] + "..."

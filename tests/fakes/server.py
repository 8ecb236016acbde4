"""A local fake provider: OpenAI's, Anthropic's and Gemini's wire formats on aiohttp.web, for tests and benches.

    POST /v1/chat/completions   OpenAI chat completions (so an OpenAI client's base_url is <url>/v1);
                                Mistral's own API speaks the same format
    POST /v1/messages           Anthropic Messages (an Anthropic client's base_url is <url>)
    POST /v1beta/models/M:generateContent   Gemini (a Gemini client's base_url is <url>); also under /v1,
                                the stable version, as the real API serves both
    GET  /v1/organization/usage/completions   OpenAI's usage export of the bill (admin key; start_time,
                                end_time, bucket_width 1m/1h/1d, group_by=model, limit, page)
    GET  /v1/organization/costs OpenAI's costs export of the bill (group_by=line_item: "<model>, input",
                                "<model>, cached input", "<model>, output"), priced from the default catalog
    batch APIs                  OpenAI /v1/files + /v1/batches, Mistral /v1/batch/jobs, Anthropic
                                /v1/messages/batches, Gemini :batchGenerateContent + /v1beta/batches,
                                with knobs (POST /_batch) and a bill at batch prices (GET /_batch_bill):
                                tests/fakes/batches.py
    GET  /_stats                the server's own bill: calls answered and tokens, per model; and
                                "in_flight_max", the most API calls it held at once since the reset, "refused" (/_capacity)
    GET  /_bill                 the bill call by call: {"calls": {X-Client-Request-Id: {...}}, "unidentified": N}
    POST /_faults               a seeded fault mix for every call from now on (see tests/fakes/faults.py)
    POST /_reset                zero the bill and drop scripted faults, the fault mix and the capacity
    POST /_capacity             a small server's limit: {"max_in_flight": 50, "refuse": "reset"}: an API
                                call beyond 50 held at once has its connection reset (or, with
                                "refuse": "503", is answered 503 as Ollama does past its queue);
                                {"max_in_flight": null} lifts it
    POST /_fail                 script the next answers: {"status": 429, "count": 1, "retry_after": "2",
                                "retry_after_ms": null, "body": <JSON or text>, "hang_s": null,
                                "path": null, "headers": {}, "for_s": null, "preset": null}
                                (`for_s`: every matching call for that many seconds, an outage;
                                `preset`: a real error response by name, tests/fakes/faults.py PRESETS,
                                with its options, e.g. {"preset": "gemini.per_minute", "retry_delay": "0.2s"});
                                or {"answer": "refusal", "count": 1, "path": null}: the next answers
                                in one of the vendors' own dialects (ANSWER_DIALECTS), billed as usual

The usage and costs exports are built from the calls the fake actually answered (and billed), late
ones included, bucketed by when each was answered (UTC). Models are named as OpenAI bills them: a
dated snapshot for an alias it knows (SNAPSHOTS: gpt-4o-mini is billed as gpt-4o-mini-2024-07-18).
They take the admin key (`admin_key`, else the API key) and refuse any other with OpenAI's 401.

Answers come from an answer function `(model, system, prompt, max_output_tokens) -> Completion`,
by default the sandbox's `simulate`. Only those answers are billed; scripted answers are not. A
call whose client gave up (a timeout) is still billed once answered, as real providers bill it.

A scripted fault applies to the next `count` API calls (on `path` if given, else on either API):
`hang_s` delays the answer; `status` (default 200) and `body` replace it; a 200 with a `body` that
is a string serves that string as is, which is how a test gets a malformed body. A fault with only
`hang_s` delays a normal, billed answer.

Answer dialects, chosen per call by a scripted {"answer": KIND} (or drawn by the fault mix), are
billed answers in each vendor's own words: "cut" (the cap is spent and the text stops short:
finish_reason "length", stop_reason "max_tokens", finishReason "MAX_TOKENS"), "refusal" (OpenAI
`message.refusal` with null content; Anthropic stop_reason "refusal"; Gemini finishReason "SAFETY"),
"filtered" (OpenAI "content_filter"; Gemini "PROHIBITED_CONTENT"; Anthropic's refusal), "blocked"
(Gemini: no candidates, promptFeedback.blockReason "SAFETY" and only the prompt's tokens; elsewhere
a filtered answer with no output) and "chunks" (Mistral's list of content chunks, a thinking chunk
then the text; Anthropic a thinking block; Gemini a thought part). Mistral's Magistral models
always answer in chunks, as the real ones do.

The Anthropic path plays API versions 2023-06-01 and 2026-10-21 (anything else is a 400); under
2026-10-21 any temperature, top_p or top_k is a 400, as the real API answers.

Thinking models are played as their vendors ship them. OpenAI's reasoning models (o1, o3, o4-mini,
gpt-5; not gpt-5-chat) refuse `max_tokens` and any temperature but 1 with OpenAI's own 400s, and
spend reasoning tokens (by `reasoning_effort`) inside `max_completion_tokens`. Gemini 2.5 models think
unless thinkingBudget is 0 (Pro refuses 0), their thoughts inside maxOutputTokens; Gemini 3 and later
think by thinkingLevel and refuse thinkingBudget (and 2.5 refuses thinkingLevel). A cap that the
thinking uses up gives an empty, billed answer, as the real APIs do.

Run it: `python -m tests.fakes.server --port 8765 --latency-ms 0`. In tests: `start_in_thread()`, or
`async with serve() as base_url`. It listens on 127.0.0.1 only, unless told otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import importlib
import itertools
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from aiohttp import web

from router.catalog import Catalog, load_catalog
from router.providers.base import Completion
from router.providers.sandbox import simulate
from router.usage import TokenUsage
from tests.fakes.batches import BatchKnobs, FakeBatches
from tests.fakes.faults import HANG_S, PRESETS, Dialect, FaultMix, gemini_429, mix_error, vendor_error

AnswerFn = Callable[[str, str, str, int], Completion]

OPENAI_PATH = "/v1/chat/completions"
USAGE_PATH = "/v1/organization/usage/completions"
COSTS_PATH = "/v1/organization/costs"
# How OpenAI names an alias's calls in its usage and costs exports: the snapshot that answered.
SNAPSHOTS = {"gpt-4o-mini": "gpt-4o-mini-2024-07-18", "gpt-4o": "gpt-4o-2024-08-06"}
BUCKET_WIDTHS_S = {"1m": 60, "1h": 3_600, "1d": 86_400}
# OpenAI's limits on buckets per page: (default, most) by width; costs take 1d only, up to 180.
USAGE_LIMITS = {"1m": (60, 1_440), "1h": (24, 168), "1d": (7, 31)}
COSTS_LIMITS = (7, 180)
ANTHROPIC_PATH = "/v1/messages"
GEMINI_PATH = "/v1beta/models/{model_action}"
GEMINI_V1_PATH = "/v1/models/{model_action}"
# Thinking tokens a thinking model spends per call when nothing bounds it lower: a few hundred is
# what Gemini 2.5 spends on its own ("dynamic" thinking) even on a one-word classification.
GEMINI_DYNAMIC_THOUGHTS = 200
# OpenAI reasoning tokens per call by reasoning_effort (None: the API's default, medium).
OPENAI_REASONING_TOKENS = {
    "none": 0,
    "minimal": 0,
    "low": 64,
    "medium": 192,
    "high": 512,
    "xhigh": 1024,
    "max": 2048,
    None: 192,
}
OPENAI_REASONING_MODEL = re.compile(r"^(o\d|gpt-5)(?!.*chat)")
# The efforts OpenAI's own 400s hold each family to (its docs and error bodies): the fake's own table.
OPENAI_EFFORTS = (
    (re.compile(r"^o\d"), ("low", "medium", "high")),
    (re.compile(r"^gpt-5-pro"), ("high",)),
    (re.compile(r"^gpt-5\.1(?!-codex-max)"), ("none", "low", "medium", "high")),
    (re.compile(r"^gpt-5(-mini|-nano)?(-\d{4}-\d{2}-\d{2})?$"), ("minimal", "low", "medium", "high")),
)
# Gemini 3 and later think by level: thoughts per call by thinkingLevel (None: their default, high).
GEMINI_LEVEL_THOUGHTS = {
    "minimal": 0,
    "low": 64,
    "medium": 128,
    "high": GEMINI_DYNAMIC_THOUGHTS,
    None: GEMINI_DYNAMIC_THOUGHTS,
}
GEMINI_LEVEL_MODEL = re.compile(r"^gemini-(?:[3-9]|\d\d)")
# The Anthropic API versions the fake knows; the second removed the sampling parameters.
ANTHROPIC_VERSIONS = ("2023-06-01", "2026-10-21")
# Answer dialects a call can be given (POST /_fail {"answer": KIND}, or the fault mix): see the docstring.
ANSWER_DIALECTS = ("cut", "refusal", "filtered", "blocked", "chunks")
REFUSAL_TEXT = "I'm sorry, but I can't help with that."
THINKING_TEXT = "Let me work out which answer fits."
MISTRAL_REASONING_MODEL = re.compile(r"^magistral")
# What a chat completion gets when it names no output cap: OpenAI's own default is "the model's
# maximum"; 4096 is a common one and keeps the sandbox's answers unchanged.
DEFAULT_MAX_TOKENS = 4096
# The largest request body the fake reads: a batch input file or inline batch (OpenAI takes 200 MB,
# Anthropic 256 MB); aiohttp's default of 1 MB would refuse a 20,000-line batch.
MAX_BODY_BYTES = 512 * 1024 * 1024
# GET /_asked keeps the bodies of this many calls answered last (enough for a test's job, bounded for benches).
ASKED_KEPT = 2000
# A stopping server waits this long for calls still being answered (a scripted hang may last far
# longer), so that a test's teardown never waits on a fault it scripted.
SHUTDOWN_TIMEOUT_S = 0.5


@dataclass
class Fault:
    """One scripted answer, used for the next `count` matching calls."""

    count: int = 1
    status: int = 200
    body: Any = None  # JSON-able value, or a str served as is; None: the vendor's error body
    headers: dict[str, str] = field(default_factory=dict)
    hang_s: float | None = None
    path: str | None = None
    until: float | None = None  # time.monotonic() after which it no longer applies (an outage of `for_s`)
    answer: str | None = None  # an answer dialect (ANSWER_DIALECTS): answered and billed, in that dialect


@dataclass(frozen=True)
class Billed:
    """One call answered and billed, for the usage and costs exports."""

    at: float  # time.time() when answered
    model: str  # as requested
    input_tokens: int  # cached excluded (TokenUsage's way)
    cached_input_tokens: int
    output_tokens: int


@dataclass
class Bill:
    """Per model: calls answered and tokens, as the answers reported them."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0


class FakeProvider:
    """The server's state: answer function, latency, bill and scripted faults."""

    def __init__(
        self,
        *,
        latency_ms: float = 0,
        answer: AnswerFn | None = None,
        api_key: str | None = None,
        admin_key: str | None = None,
    ) -> None:
        self.answer = answer or simulate
        self.latency_s = latency_ms / 1000
        self.api_key = api_key
        self.admin_key = admin_key
        self.billed: list[Billed] = []
        self._catalog: Catalog | None = None
        self.generation = 0  # bumped by /_reset
        self.bills: dict[str, Bill] = {}
        self.faults: list[Fault] = []
        self.faults_served = 0
        self.mix: FaultMix | None = None
        self.calls_by_id: dict[str, dict[str, Any]] = {}
        self.unidentified = 0
        self._ids = itertools.count(1)
        self.in_flight = 0
        self.in_flight_max = 0
        self.capacity: int | None = None  # POST /_capacity: calls held at once beyond this are refused
        self.refuse = "reset"
        self.refused = 0
        self.batches = FakeBatches(self)  # the four batch APIs (tests/fakes/batches.py)
        # GET /_asked: the bodies of the calls answered last (synchronous calls and batch lines alike).
        self.asked: collections.deque[Asked] = collections.deque(maxlen=ASKED_KEPT)

    def app(self) -> web.Application:
        """The aiohttp application serving this state."""
        app = web.Application(middlewares=[self._count_in_flight], client_max_size=MAX_BODY_BYTES)
        app.router.add_post(OPENAI_PATH, self.openai)
        app.router.add_post(ANTHROPIC_PATH, self.anthropic)
        app.router.add_post(GEMINI_PATH, self.gemini)
        app.router.add_post(GEMINI_V1_PATH, self.gemini)
        app.router.add_get(USAGE_PATH, self.usage_export)
        app.router.add_get(COSTS_PATH, self.costs_export)
        app.router.add_get("/_stats", self.stats)
        app.router.add_get("/_bill", self.bill)
        app.router.add_get("/_asked", self.asked_bodies)
        app.router.add_post("/_faults", self.faults_mix)
        app.router.add_post("/_reset", self.reset)
        app.router.add_post("/_fail", self.fail)
        app.router.add_post("/_capacity", self.set_capacity)
        self.batches.routes(app)
        return app

    @web.middleware
    async def _count_in_flight(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Count the API calls held at once (admin paths, under /_, are not counted)."""
        if request.path.startswith("/_"):
            return await handler(request)  # type: ignore[no-any-return]
        if self.capacity is not None and self.in_flight >= self.capacity:
            self.refused += 1  # a small server past its limit: not answered, not billed
            if self.refuse == "503":
                return _json(503, {"error": "server busy, please try again. maximum pending requests exceeded"})
            if request.transport is not None:
                request.transport.abort()  # the connection is reset under the client's request
            raise web.HTTPServiceUnavailable()  # never reaches the client: its connection is gone
        self.in_flight += 1
        self.in_flight_max = max(self.in_flight_max, self.in_flight)
        try:
            return await handler(request)  # type: ignore[no-any-return]
        finally:
            self.in_flight -= 1

    # -- the three wire formats -----------------------------------------------------------
    # Each is read (`read_<vendor>`: an Asked, or the vendor's own 400), answered (`answer_for`), and
    # shaped (`<vendor>_reply`) by functions the batch APIs (tests/fakes/batches.py) call too, so that
    # a batch line gets the very answer, usage and wording a synchronous call gets.

    async def openai(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/chat/completions."""
        if (scripted := await self._scripted(request, vendor="openai")) is not None:
            return scripted
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(
                "openai",
                401,
                "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
            )
        try:
            body = json.loads(await request.read())
        except ValueError as exc:
            return _error("openai", 400, f"Invalid request: {exc!r}")
        asked = read_openai(body)
        if not isinstance(asked, Asked):
            return _respond(asked)
        if (faulty := await self._mixed(request, vendor="openai")) is not None:
            return faulty
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        dialect = request.get("dialect") or asked.dialect
        done = self.answer_for(asked, dialect=dialect)
        self._bill(request, asked.model, done)
        return _json(200, openai_reply(asked, done, dialect=dialect, call_id=f"chatcmpl-fake-{next(self._ids)}"))

    async def anthropic(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/messages."""
        if (scripted := await self._scripted(request, vendor="anthropic")) is not None:
            return scripted
        # The key as x-api-key (pennyroute, the API reference) or as a Bearer token (the anthropic SDK 2.x).
        keys = (request.headers.get("x-api-key"), request.headers.get("Authorization", "").removeprefix("Bearer "))
        if self.api_key and self.api_key not in keys:
            return _error("anthropic", 401, "invalid x-api-key")
        version = request.headers.get("anthropic-version")
        if (refused := check_anthropic_version(version)) is not None:
            return _respond(refused)
        try:
            body = json.loads(await request.read())
        except ValueError as exc:
            return _error("anthropic", 400, f"Invalid request: {exc!r}")
        asked = read_anthropic(body, version=str(version))
        if not isinstance(asked, Asked):
            return _respond(asked)
        if (faulty := await self._mixed(request, vendor="anthropic")) is not None:
            return faulty
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        dialect = request.get("dialect")
        done = self.answer_for(asked, dialect=dialect)
        self._bill(request, asked.model, done)
        return _json(200, anthropic_reply(asked, done, dialect=dialect, call_id=f"msg_fake_{next(self._ids)}"))

    async def gemini(self, request: web.Request) -> web.StreamResponse:
        """POST /v1beta/models/{model}:generateContent (or /v1/models/...); :batchGenerateContent is
        served by tests/fakes/batches.py."""
        model, _, action = request.match_info["model_action"].partition(":")
        if action == "batchGenerateContent":
            return await self.batches.gemini_create(request, model)
        if action != "generateContent":
            return _error("gemini", 404, f"unknown method {action!r}")
        if (scripted := await self._scripted(request, vendor="gemini")) is not None:
            return scripted
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if self.api_key and key != self.api_key:
            return _error("gemini", 400, "API key not valid. Please pass a valid API key.", code="API_KEY_INVALID")
        try:
            body = json.loads(await request.read())
        except ValueError as exc:
            return _error("gemini", 400, f"Invalid JSON payload received: {exc!r}")
        asked = read_gemini(body, model=model)
        if not isinstance(asked, Asked):
            return _respond(asked)
        if (faulty := await self._mixed(request, vendor="gemini")) is not None:
            return faulty
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        dialect = request.get("dialect")
        done = self.answer_for(asked, dialect=dialect)
        self._bill(request, asked.model, done)
        return _json(200, gemini_reply(asked, done, dialect=dialect, call_id=f"fake-{next(self._ids)}"))

    def answer_for(self, asked: Asked, *, dialect: str | None = None) -> Completion:
        """The answer function's answer, with `asked.thoughts` thinking tokens spent first inside the cap,
        and shaped by the answer `dialect` (ANSWER_DIALECTS): what the call is billed for."""
        self.asked.append(asked)
        cap = asked.cap
        thoughts = min(asked.thoughts, cap)
        done = self.answer(asked.model, asked.system, asked.prompt, max(cap - thoughts, 1))
        if thoughts:
            left = cap - thoughts  # thinking used up the cap: nothing is left for the answer
            text, answer_tokens = (done.text, done.usage.output_tokens) if left > 0 else ("", 0)
            done = Completion(
                text,
                TokenUsage(
                    input_tokens=done.usage.input_tokens,
                    output_tokens=answer_tokens + thoughts,
                    cached_input_tokens=done.usage.cached_input_tokens,
                    cache_write_tokens=done.usage.cache_write_tokens,
                    reasoning_tokens=thoughts,
                ),
            )
        return _in_dialect(done, dialect, cap)

    def read_call(self, vendor: str, body: Any, *, model: str = "", version: str = "") -> Asked | Dialect:
        """A batch line's body read as the synchronous path reads it (Mistral's as OpenAI's)."""
        if vendor == "anthropic":
            return read_anthropic(body, version=version)
        if vendor == "gemini":
            return read_gemini(body, model=model)
        return read_openai(body)

    def reply(
        self, vendor: str, asked: Asked, done: Completion, *, dialect: str | None, call_id: str
    ) -> dict[str, Any]:
        """A batch line's answer body, as the synchronous path shapes it."""
        if vendor == "anthropic":
            return anthropic_reply(asked, done, dialect=dialect, call_id=call_id)
        if vendor == "gemini":
            return gemini_reply(asked, done, dialect=dialect, call_id=call_id)
        return openai_reply(asked, done, dialect=dialect, call_id=call_id)

    def check_version(self, version: str | None) -> Dialect | None:
        return check_anthropic_version(version)

    async def scripted(self, request: web.Request, *, vendor: str) -> web.StreamResponse | None:
        """A scripted fault for this call (POST /_fail), as the synchronous paths serve them."""
        return await self._scripted(request, vendor=vendor)

    def _bill(self, request: web.Request, model: str, done: Completion) -> None:
        """Bill one synchronous call answered (its sync bill, OpenAI's exports, its call id)."""
        if request.get("generation", self.generation) != self.generation:
            return  # a call that came in before the last /_reset: the new bill does not hold it
        bill = self.bills.get(model)
        if bill is None:
            bill = self.bills[model] = Bill()
        bill.calls += 1
        bill.input_tokens += done.usage.input_tokens
        bill.output_tokens += done.usage.output_tokens
        bill.cached_input_tokens += done.usage.cached_input_tokens
        if request.path == OPENAI_PATH:  # OpenAI's exports hold the chat completions it answered
            self.billed.append(
                Billed(
                    time.time(),
                    model,
                    done.usage.input_tokens,
                    done.usage.cached_input_tokens,
                    done.usage.output_tokens,
                )
            )
        request_id = request.headers.get("X-Client-Request-Id")
        if request_id:
            # A call id billed twice would be a double charge: the ledger sends each try under a new id.
            repeats = self.calls_by_id[request_id]["repeats"] + 1 if request_id in self.calls_by_id else 0
            self.calls_by_id[request_id] = {
                "model": model,
                "input_tokens": done.usage.input_tokens,
                "output_tokens": done.usage.output_tokens,
                "cached_input_tokens": done.usage.cached_input_tokens,
                "cache_write_tokens": done.usage.cache_write_tokens,
                "reasoning_tokens": done.usage.reasoning_tokens,
                "repeats": repeats,
            }
        else:
            self.unidentified += 1

    async def _mixed(self, request: web.Request, *, vendor: str) -> web.StreamResponse | None:
        """Apply the fault mix, if one is set: a fault's response, or None to answer (after its latency)."""
        if self.mix is None:
            return None
        if (refused := self.mix.over_rpm()) is not None:
            if vendor == "gemini":  # the wait in the body's RetryInfo, never in a header
                wait_s = float(refused["retry-after-ms"]) / 1000
                return _respond(gemini_429(per="Minute", retry_delay=f"{wait_s:g}s"))
            response = _error(vendor, 429, "Rate limit reached for requests per minute")
            response.headers.update(refused)
            return response
        kind, delay = self.mix.decide()
        if delay:
            await asyncio.sleep(delay)
        if kind is None:
            return None
        if kind in ANSWER_DIALECTS:
            request["dialect"] = kind  # a billed answer in that dialect, not a fault
            return None
        if kind == "hang":
            await asyncio.sleep(HANG_S)
            return _error(vendor, 504, "hung")
        if kind == "truncated":
            cut = {
                "openai": '{"id": "chatcmpl-fake", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assis',
                "anthropic": '{"id": "msg_fake", "type": "message", "content": [{"type": "text", "text": "B',
                "gemini": '{"candidates": [{"content": {"parts": [{"text": "B',
            }[vendor]
            return web.Response(status=200, text=cut, content_type="application/json")
        if kind == "malformed":
            return _json(200, {"object": "list", "data": [], "note": "not a chat answer"})
        status = int(kind)
        message = "Rate limit reached for requests" if status == 429 else f"fault mix: HTTP {status}"
        return _respond(mix_error(vendor, status, message, retry_after_s=self.mix.retry_after_s))

    async def _scripted(self, request: web.Request, *, vendor: str) -> web.StreamResponse | None:
        """Serve the first scripted fault that matches this call, if any; None to answer normally."""
        request["generation"] = self.generation  # the bill this call belongs to (see reset)
        if not self.faults:  # the fast path: a list check per call
            return None
        now = time.monotonic()
        self.faults = [f for f in self.faults if f.until is None or f.until > now]
        fault = next((f for f in self.faults if f.path in (None, request.path)), None)
        if fault is None:
            return None
        fault.count -= 1
        if fault.count <= 0:
            self.faults.remove(fault)
        self.faults_served += 1
        if fault.hang_s:
            await request.read()  # a provider has the whole request before it works on it (aiohttp keeps it)
            await asyncio.sleep(fault.hang_s)
        if fault.answer is not None:
            request["dialect"] = fault.answer  # answered (and billed) normally, in that dialect
            return None
        if fault.status == 200 and fault.body is None:
            return None  # only a delay: answer (and bill) normally
        if fault.body is None:
            response = _error(vendor, fault.status, f"scripted HTTP {fault.status}")
        elif isinstance(fault.body, str):
            response = web.Response(status=fault.status, text=fault.body, content_type="application/json")
        else:
            response = _json(fault.status, fault.body)
        response.headers.update(fault.headers)
        return response

    # -- OpenAI's usage and costs exports of the bill ----------------------------------------

    async def usage_export(self, request: web.Request) -> web.Response:
        """GET /v1/organization/usage/completions: the bill in OpenAI's usage shape."""
        width = request.query.get("bucket_width", "1d")
        if width not in BUCKET_WIDTHS_S:
            return _error("openai", 400, f"Invalid bucket_width {width!r}: use 1m, 1h or 1d")
        window = self._window(request, width=width, limits=USAGE_LIMITS[width])
        if isinstance(window, web.Response):
            return window
        by_model = "model" in _group_by(request)
        data = []
        for start, end in window[0]:
            groups: dict[str | None, list[int]] = {}
            for b in self._billed_in(start, end):
                total = groups.setdefault(_billed_as(b.model) if by_model else None, [0, 0, 0, 0])
                total[0] += 1
                total[1] += b.input_tokens + b.cached_input_tokens  # OpenAI counts cached inside
                total[2] += b.cached_input_tokens
                total[3] += b.output_tokens
            results = [
                {
                    "object": "organization.usage.completions.result",
                    "input_tokens": n_in,
                    "output_tokens": n_out,
                    "input_cached_tokens": n_cached,
                    "input_audio_tokens": 0,
                    "output_audio_tokens": 0,
                    "num_model_requests": n,
                    "project_id": None,
                    "user_id": None,
                    "api_key_id": None,
                    "model": model,
                    "batch": None,
                    "service_tier": None,
                }
                for model, (n, n_in, n_cached, n_out) in sorted(groups.items(), key=lambda kv: str(kv[0]))
            ]
            data.append({"object": "bucket", "start_time": start, "end_time": end, "results": results})
        return _json(200, {"object": "page", "data": data, "has_more": window[1] is not None, "next_page": window[1]})

    async def costs_export(self, request: web.Request) -> web.Response:
        """GET /v1/organization/costs: the bill in OpenAI's costs shape, priced at the default catalog's
        prices (genai-prices) when each call was answered; models the catalog cannot price are left out."""
        if request.query.get("bucket_width", "1d") != "1d":
            return _error("openai", 400, "Invalid bucket_width: only 1d is supported")
        window = self._window(request, width="1d", limits=COSTS_LIMITS)
        if isinstance(window, web.Response):
            return window
        by_item = "line_item" in _group_by(request)
        data = []
        for start, end in window[0]:
            amounts: dict[str | None, Decimal] = {}
            for b in self._billed_in(start, end):
                price = self._price(b)
                if price is None:
                    continue
                name = _billed_as(b.model)
                for kind, tokens, per_mtok in (
                    ("input", b.input_tokens, price[0]),
                    ("cached input", b.cached_input_tokens, price[1]),
                    ("output", b.output_tokens, price[2]),
                ):
                    if tokens:
                        item = f"{name}, {kind}" if by_item else None
                        amounts[item] = amounts.get(item, Decimal(0)) + tokens * per_mtok / 1_000_000
            results = [
                {
                    "object": "organization.costs.result",
                    "amount": {"value": format(amount, "f"), "currency": "usd"},  # a decimal string, as observed
                    "line_item": item,
                    "project_id": None,
                }
                for item, amount in sorted(amounts.items(), key=lambda kv: str(kv[0]))
            ]
            data.append({"object": "bucket", "start_time": start, "end_time": end, "results": results})
        return _json(200, {"object": "page", "data": data, "has_more": window[1] is not None, "next_page": window[1]})

    def _window(
        self, request: web.Request, *, width: str, limits: tuple[int, int]
    ) -> tuple[list[tuple[int, int]], str | None] | web.Response:
        """This page's buckets [(start, end)] and the next page's cursor, or an OpenAI error response."""
        key = self.admin_key or self.api_key
        if key and request.headers.get("Authorization") != f"Bearer {key}":
            return _error("openai", 401, "Incorrect API key provided: the usage API needs an admin key.")
        try:
            start = int(request.query["start_time"])
            end = int(request.query.get("end_time") or time.time() + 1)
            limit = int(request.query.get("limit") or limits[0])
            page = request.query.get("page")
            if page:
                start = int(base64.urlsafe_b64decode(page.removeprefix("page_")).decode())
        except (KeyError, ValueError):
            return _error("openai", 400, "Invalid query: start_time (Unix seconds) is required; end_time, limit, page")
        if not 1 <= limit <= limits[1]:
            return _error("openai", 400, f"Invalid limit {limit}: from 1 to {limits[1]}")
        step = BUCKET_WIDTHS_S[width]
        first = start - start % step  # buckets sit on UTC boundaries of their width
        edges = list(range(first, end, step))
        shown = edges[:limit]
        cursor = None
        if len(edges) > limit:
            cursor = "page_" + base64.urlsafe_b64encode(str(edges[limit]).encode()).decode()
        return [(b, b + step) for b in shown], cursor

    def _billed_in(self, start: int, end: int) -> list[Billed]:
        return [b for b in self.billed if start <= b.at < end]

    def _price(self, billed: Billed) -> tuple[Decimal, Decimal, Decimal] | None:
        """USD per million input, cached input and output tokens of an OpenAI model when answered."""
        if self._catalog is None:
            self._catalog = load_catalog()
        model = next(
            (m for m in self._catalog.models.values() if m.provider == "openai" and m.api_model == billed.model), None
        )
        if model is None:
            return None
        price = self._catalog.price(model.model_id, datetime.fromtimestamp(billed.at, UTC))
        return price.input.base, price.cached_input.base, price.output.base

    # -- admin ----------------------------------------------------------------------------

    async def stats(self, request: web.Request) -> web.Response:
        """GET /_stats: calls answered and tokens, per model and in total."""
        models = {name: vars(bill) for name, bill in sorted(self.bills.items())}
        totals = {key: sum(b[key] for b in models.values()) for key in vars(Bill())}
        return _json(
            200,
            {
                **totals,
                "faults_served": self.faults_served,
                "in_flight_max": self.in_flight_max,
                "refused": self.refused,
                "models": models,
            },
        )

    async def bill(self, request: web.Request) -> web.Response:
        """GET /_bill: every billed call by its X-Client-Request-Id, and how many came without one."""
        served = dict(self.mix.served) if self.mix else {}
        return _json(200, {"calls": self.calls_by_id, "unidentified": self.unidentified, "faults_served": served})

    async def faults_mix(self, request: web.Request) -> web.Response:
        """POST /_faults: set the fault mix (tests/fakes/faults.py); an empty body clears it."""
        spec = await request.json()
        try:
            self.mix = FaultMix.from_json(spec) if spec else None
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            return _json(400, {"error": str(exc)})
        return _json(200, {"ok": True})

    async def asked_bodies(self, request: web.Request) -> web.Response:
        """GET /_asked: the calls answered since the last reset (at most ASKED_KEPT), oldest first:
        their model, the system and user text as read, the cap, and the body as it came."""
        return _json(
            200,
            [
                {"model": a.model, "system": a.system, "prompt": a.prompt, "cap": a.cap, "body": a.body}
                for a in self.asked
            ],
        )

    async def reset(self, request: web.Request) -> web.Response:
        """POST /_reset: zero the bill, drop scripted faults and the fault mix; calls still being
        answered (a hang past a client's timeout) are answered but no longer billed."""
        self.generation += 1
        self.bills.clear()
        self.faults.clear()
        self.faults_served = 0
        self.mix = None
        self.calls_by_id.clear()
        self.billed.clear()
        self.unidentified = 0
        self.in_flight_max = self.in_flight
        self.capacity, self.refuse, self.refused = None, "reset", 0
        self.asked.clear()
        self.batches.reset()
        return _json(200, {"ok": True})

    async def set_capacity(self, request: web.Request) -> web.Response:
        """POST /_capacity: how many API calls the server holds at once before it refuses more."""
        spec = await request.json()
        limit, refuse = spec.get("max_in_flight"), spec.get("refuse", "reset")
        if (limit is not None and (not isinstance(limit, int) or limit < 1)) or refuse not in ("reset", "503"):
            return _json(400, {"error": 'expected {"max_in_flight": N >= 1 or null, "refuse": "reset" | "503"}'})
        self.capacity, self.refuse = limit, refuse
        return _json(200, {"ok": True})

    async def fail(self, request: web.Request) -> web.Response:
        """POST /_fail: script the next answers (see the module docstring)."""
        spec = await request.json()
        preset = spec.get("preset")
        if preset is not None and preset not in PRESETS:
            return _json(400, {"error": f"unknown preset {preset!r}; known: {', '.join(PRESETS)}"})
        headers = {str(k): str(v) for k, v in (spec.get("headers") or {}).items()}
        if spec.get("retry_after") is not None:
            headers["Retry-After"] = str(spec["retry_after"])
        if spec.get("retry_after_ms") is not None:
            headers["retry-after-ms"] = str(spec["retry_after_ms"])
        status, body = int(spec.get("status", 200)), spec.get("body")
        if preset is not None:  # built once: every call it answers gets the same response, request id included
            options = {k: spec[k] for k in ("retry_delay", "retry_after", "code") if k in spec}
            status, body, preset_headers = PRESETS[preset](**options)
            headers = {**preset_headers, **headers}
        fault = Fault(
            count=int(spec.get("count", 1)),
            status=status,
            body=body,
            headers=headers,
            hang_s=spec.get("hang_s"),
            path=spec.get("path"),
            until=time.monotonic() + float(spec["for_s"]) if spec.get("for_s") is not None else None,
            answer=spec.get("answer"),
        )
        if fault.answer is not None and fault.answer not in ANSWER_DIALECTS:
            return _json(400, {"error": f"unknown answer {fault.answer!r}; known: {', '.join(ANSWER_DIALECTS)}"})
        if fault.until is not None and "count" not in spec:
            fault.count = 10**12  # an outage of `for_s` seconds: every call until then
        self.faults.append(fault)
        return _json(200, {"ok": True, "pending": len(self.faults)})


# -- the three wire formats, read and shaped (shared by the synchronous paths and the batch APIs) --------


@dataclass(frozen=True)
class Asked:
    """One chat call as the fake read it from a vendor's body."""

    model: str
    system: str
    prompt: str
    cap: int
    thoughts: int = 0  # thinking tokens the model spends first, inside the cap
    dialect: str | None = None  # the answer dialect the model always answers in (Magistral: "chunks")
    body: Any = field(default=None, compare=False)  # the request (or batch line) body as it came, for GET /_asked


def read_openai(body: Any) -> Asked | Dialect:
    """A chat completions body read, or OpenAI's own 400 for it."""
    try:
        model = body["model"]
        system = "".join(_text(m["content"]) for m in body["messages"] if m["role"] in ("system", "developer"))
        prompt = "\n".join(_text(m["content"]) for m in body["messages"] if m["role"] == "user")
        cap = int(body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return vendor_error("openai", 400, f"Invalid request: {exc!r}")
    thoughts = 0
    name = model.rsplit("/", 1)[-1]
    if OPENAI_REASONING_MODEL.match(name):
        if "max_tokens" in body:
            return vendor_error(
                "openai",
                400,
                "Unsupported parameter: 'max_tokens' is not supported with this model. "
                "Use 'max_completion_tokens' instead.",
            )
        if body.get("temperature", 1) != 1:
            return vendor_error(
                "openai",
                400,
                f"Unsupported value: 'temperature' does not support {body['temperature']} "
                "with this model. Only the default (1) value is supported.",
            )
        effort = body.get("reasoning_effort")
        allowed = next((efforts for pattern, efforts in OPENAI_EFFORTS if pattern.match(name)), None)
        if effort not in OPENAI_REASONING_TOKENS or (effort is not None and allowed and effort not in allowed):
            supported = ", ".join(f"'{e}'" for e in allowed or OPENAI_REASONING_TOKENS if e)
            return vendor_error(
                "openai",
                400,
                f"Unsupported value: {effort!r} is not supported with the '{name}' model. "
                f"Supported values are: {supported}.",
            )
        thoughts = OPENAI_REASONING_TOKENS[effort]
    dialect = "chunks" if MISTRAL_REASONING_MODEL.match(name) else None
    return Asked(model, system, prompt, cap, thoughts=thoughts, dialect=dialect, body=body)


def openai_reply(asked: Asked, done: Completion, *, dialect: str | None, call_id: str) -> dict[str, Any]:
    """A chat completion body for `done`."""
    usage = done.usage
    prompt_tokens = usage.input_tokens + usage.cached_input_tokens  # OpenAI counts cached inside
    message: dict[str, Any] = {"role": "assistant", "content": done.text}
    finish = "length" if usage.output_tokens >= asked.cap else "stop"
    if dialect == "chunks":  # Mistral's reasoning models: a thinking chunk, then the answer's text chunk
        message["content"] = [
            {"type": "thinking", "thinking": [{"type": "text", "text": THINKING_TEXT}]},
            {"type": "text", "text": done.text},
        ]
    elif dialect == "refusal":
        message.update(content=None, refusal=REFUSAL_TEXT)
        finish = "stop"
    elif dialect in ("filtered", "blocked"):
        message["content"] = None
        finish = "content_filter"
    return {
        "id": call_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": asked.model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": prompt_tokens + usage.output_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
            "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        },
    }


def check_anthropic_version(version: str | None) -> Dialect | None:
    """Anthropic's 400 for a missing or unknown anthropic-version header, or None."""
    if version is None:
        return vendor_error("anthropic", 400, "anthropic-version: header is required")
    if version not in ANTHROPIC_VERSIONS:
        return vendor_error("anthropic", 400, f"anthropic-version: {version!r} is not a valid version")
    return None


def read_anthropic(body: Any, *, version: str) -> Asked | Dialect:
    """A Messages body read (under API `version`), or Anthropic's own 400 for it."""
    try:
        model = body["model"]
        cap = int(body["max_tokens"])
        system = _text(body.get("system") or "")
        prompt = "\n".join(_text(m["content"]) for m in body["messages"] if m["role"] == "user")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return vendor_error("anthropic", 400, f"Invalid request: {exc!r}")
    sampling = [key for key in ("temperature", "top_p", "top_k") if key in body]
    if version >= "2026-10-21" and sampling:
        return vendor_error("anthropic", 400, f"{sampling[0]}: is not supported in API version {version}")
    return Asked(model, system, prompt, cap, body=body)


def anthropic_reply(asked: Asked, done: Completion, *, dialect: str | None, call_id: str) -> dict[str, Any]:
    """A Messages body for `done`."""
    usage = done.usage
    content: list[dict[str, Any]] = [{"type": "text", "text": done.text}]
    stop_reason, stop_details = ("max_tokens" if usage.output_tokens >= asked.cap else "end_turn"), None
    if dialect == "chunks":
        content.insert(0, {"type": "thinking", "thinking": THINKING_TEXT, "signature": "fake-signature"})
    elif dialect in ("refusal", "filtered", "blocked"):  # Anthropic's one way to decline: stop_reason refusal
        content, stop_reason = [], "refusal"
        stop_details = {"type": "refusal", "category": "general_harms", "explanation": None}
    return {
        "id": call_id,
        "type": "message",
        "role": "assistant",
        "model": asked.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        **({"stop_details": stop_details} if stop_details else {}),
        "usage": {
            "input_tokens": usage.input_tokens,  # Anthropic counts cache reads and writes apart
            "output_tokens": usage.output_tokens,
            "cache_read_input_tokens": usage.cached_input_tokens,
            "cache_creation_input_tokens": usage.cache_write_tokens,
        },
    }


def read_gemini(body: Any, *, model: str) -> Asked | Dialect:
    """A generateContent body for `model` read, or Gemini's own 400 for it."""
    try:
        system = "".join(p.get("text", "") for p in (body.get("systemInstruction") or {}).get("parts", []))
        prompt = "\n".join(
            p.get("text", "") for c in body["contents"] if c.get("role", "user") == "user" for p in c["parts"]
        )
        config = body.get("generationConfig") or {}
        cap = int(config.get("maxOutputTokens") or DEFAULT_MAX_TOKENS)
        thinking = config.get("thinkingConfig") or {}
        budget = thinking.get("thinkingBudget")
        budget = None if budget is None else int(budget)
        level = thinking.get("thinkingLevel")
        level = None if level is None else str(level).lower()
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return vendor_error("gemini", 400, f"Invalid JSON payload received: {exc!r}")
    by_level = bool(GEMINI_LEVEL_MODEL.match(model))
    thinks = "2.5" in model or by_level
    if budget is not None and level is not None:
        return vendor_error("gemini", 400, "You can only set one of thinking budget and thinking level.")
    if (budget is not None or level is not None) and not thinks:
        return vendor_error("gemini", 400, "Thinking is not supported for this model.")
    if budget is not None and by_level:
        return vendor_error(
            "gemini", 400, "Thinking budget is not supported for this model. Use thinking level instead."
        )
    if level is not None and not by_level:
        return vendor_error("gemini", 400, "Thinking level is not supported for this model.")
    if level is not None and level not in GEMINI_LEVEL_THOUGHTS:
        return vendor_error(
            "gemini", 400, f"Invalid value at 'generation_config.thinking_config.thinking_level': {level}"
        )
    if budget == 0 and "pro" in model:
        return vendor_error("gemini", 400, "Budget 0 is invalid. This model only works in thinking mode.")
    # -1 (or nothing) is dynamic thinking; a budget bounds it; a level sets it.
    thoughts = (
        0
        if not thinks
        else GEMINI_LEVEL_THOUGHTS[level]
        if by_level
        else GEMINI_DYNAMIC_THOUGHTS
        if budget in (None, -1)
        else min(budget, GEMINI_DYNAMIC_THOUGHTS)
    )
    return Asked(model, system, prompt, cap, thoughts=thoughts, body=body)


def gemini_reply(asked: Asked, done: Completion, *, dialect: str | None, call_id: str) -> dict[str, Any]:
    """A generateContent body for `done`."""
    usage = done.usage
    answer_tokens = usage.output_tokens - usage.reasoning_tokens
    metadata: dict[str, Any] = {
        "promptTokenCount": usage.input_tokens + usage.cached_input_tokens,  # Gemini counts cached inside
        "totalTokenCount": usage.input_tokens + usage.cached_input_tokens + usage.output_tokens,
    }
    if dialect != "blocked":
        metadata["candidatesTokenCount"] = answer_tokens  # thoughts are reported apart
    if usage.reasoning_tokens:
        metadata["thoughtsTokenCount"] = usage.reasoning_tokens
    if usage.cached_input_tokens:
        metadata["cachedContentTokenCount"] = usage.cached_input_tokens
    answered: dict[str, Any] = {"usageMetadata": metadata, "modelVersion": asked.model, "responseId": call_id}
    if dialect == "blocked":  # the prompt never reached the model: no candidates, only the prompt's tokens
        ratings = [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}]
        return {"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": ratings}, **answered}
    parts = [{"text": done.text}] if done.text else []
    if dialect == "chunks":
        parts.insert(0, {"text": THINKING_TEXT, "thought": True})
    finish = "MAX_TOKENS" if usage.output_tokens >= asked.cap else "STOP"
    if dialect in ("refusal", "filtered"):
        parts, finish = [], "SAFETY" if dialect == "refusal" else "PROHIBITED_CONTENT"
    return {
        # A cap that thinking used up leaves a candidate with no content at all, as Gemini gives it.
        "candidates": [
            {**({"content": {"parts": parts, "role": "model"}} if parts else {}), "finishReason": finish, "index": 0}
        ],
        **answered,
    }


def _group_by(request: web.Request) -> set[str]:
    """group_by as given: repeated (group_by=model&group_by=batch), bracketed, or comma-separated."""
    values = request.query.getall("group_by", []) + request.query.getall("group_by[]", [])
    return {part.strip() for value in values for part in value.split(",") if part.strip()}


def _billed_as(model: str) -> str:
    """The name OpenAI's exports give a model's calls: its snapshot, for an alias."""
    return SNAPSHOTS.get(model, model)


def _in_dialect(done: Completion, dialect: str | None, cap: int) -> Completion:
    """An answer as the dialect bills it: "cut" spends the whole cap and stops the text short; "refusal"
    bills a refusal's few tokens; "filtered" bills what was generated and withheld; "blocked" bills the
    prompt only; "chunks" (and none) leave it as it is."""
    usage = done.usage
    if dialect == "cut":
        words = done.text.split()
        text = " ".join(words[: len(words) // 2]) if len(words) > 1 else done.text[: max(1, len(done.text) // 2)]
        return Completion(text, replace(usage, output_tokens=cap))
    if dialect == "refusal":
        return Completion("", replace(usage, output_tokens=min(cap, usage.reasoning_tokens + len(REFUSAL_TEXT) // 4)))
    if dialect == "filtered":
        return Completion("", usage)
    if dialect == "blocked":
        return Completion("", replace(usage, output_tokens=0, reasoning_tokens=0))
    return done


def _text(content: Any) -> str:
    """A message's text: a string, or the text blocks of a list of content blocks."""
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content if isinstance(block, dict))


def _json(status: int, body: Any) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json")


def _error(vendor: str, status: int, message: str, *, code: str | None = None) -> web.Response:
    """An error body shaped as the vendor shapes it (tests/fakes/faults.py vendor_error)."""
    return _respond(vendor_error(vendor, status, message, code=code))


def _respond(dialect: Dialect) -> web.Response:
    status, body, headers = dialect
    response = _json(status, body)
    response.headers.update(headers)
    return response


def make_app(
    *,
    latency_ms: float = 0,
    answer: AnswerFn | None = None,
    api_key: str | None = None,
    mix: FaultMix | None = None,
    admin_key: str | None = None,
    batch: BatchKnobs | None = None,
) -> web.Application:
    """A fresh fake provider application (each has its own bill); `batch`: the batch APIs' first knobs."""
    state = FakeProvider(latency_ms=latency_ms, answer=answer, api_key=api_key, admin_key=admin_key)
    state.mix = mix
    if batch is not None:
        state.batches.knobs = batch
    return state.app()


@contextlib.asynccontextmanager
async def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    latency_ms: float = 0,
    answer: AnswerFn | None = None,
    api_key: str | None = None,
    mix: FaultMix | None = None,
    admin_key: str | None = None,
    batch: BatchKnobs | None = None,
) -> AsyncIterator[str]:
    """Serve on the running loop; yields the base URL ("http://127.0.0.1:<port>", no /v1)."""
    runner = web.AppRunner(
        make_app(latency_ms=latency_ms, answer=answer, api_key=api_key, mix=mix, admin_key=admin_key, batch=batch),
        access_log=None,  # an access log line per call would cost more than the answer itself
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    try:
        yield f"http://{host}:{site.port}"
    finally:
        await runner.cleanup()


def start_in_thread(
    port: int = 0,
    latency_ms: float = 0,
    answer: AnswerFn | None = None,
    *,
    api_key: str | None = None,
    admin_key: str | None = None,
    batch: BatchKnobs | None = None,
) -> tuple[str, Callable[[], None]]:
    """Serve from a daemon thread with its own loop; returns (base URL, stop). Port 0 picks a free one."""
    ready = threading.Event()
    stopping: dict[str, Any] = {}

    async def main() -> None:
        async with serve(
            port=port, latency_ms=latency_ms, answer=answer, api_key=api_key, admin_key=admin_key, batch=batch
        ) as url:
            stopping["url"], stopping["event"] = url, asyncio.Event()
            stopping["loop"] = asyncio.get_running_loop()
            ready.set()
            await stopping["event"].wait()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # reported to the caller waiting on `ready`
            stopping["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, name="fakeserver", daemon=True)
    thread.start()
    # Starting takes milliseconds; 10 s means something is wrong, not slow.
    if not ready.wait(timeout=10) or "error" in stopping:
        raise RuntimeError(f"fake server did not start: {stopping.get('error')!r}")

    def stop() -> None:
        loop: asyncio.AbstractEventLoop = stopping["loop"]
        if thread.is_alive():
            loop.call_soon_threadsafe(stopping["event"].set)
            thread.join(timeout=5)  # cleanup waits at most SHUTDOWN_TIMEOUT_S for open calls

    return stopping["url"], stop


def main(argv: list[str] | None = None) -> None:
    """Command line: serve until interrupted; prints "listening on <url>" once ready."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.server", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port (see the printed URL)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before every answer")
    parser.add_argument(
        "--answer",
        choices=("sandbox", "echo"),
        default="sandbox",
        help="sandbox: simulated answers; echo: a fixed one-word answer, cheapest for benchmarks",
    )
    parser.add_argument("--api-key", default=None, help="require this key (Bearer or x-api-key)")
    parser.add_argument("--admin-key", default=None, help="the usage and costs exports' key (default: --api-key)")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (must be installed; benches only)")
    parser.add_argument(
        "--faults", default=None, help='a fault mix as JSON, e.g. \'{"seed": 1, "rates": {"429": 0.05}}\''
    )
    parser.add_argument(
        "--batch",
        default=None,
        help="the batch APIs' knobs as JSON (tests/fakes/batches.py BatchKnobs), e.g. "
        '\'{"delay_s": 30, "errored": 0.05, "expired": 0.02, "expired_billed": true}\'',
    )
    args = parser.parse_args(argv)
    mix = FaultMix.from_json(json.loads(args.faults)) if args.faults else None
    batch = BatchKnobs.from_json(json.loads(args.batch)) if args.batch else None
    answer = echo_answer if args.answer == "echo" else None

    async def run() -> None:
        async with serve(
            host=args.host,
            port=args.port,
            latency_ms=args.latency_ms,
            answer=answer,
            api_key=args.api_key,
            mix=mix,
            admin_key=args.admin_key,
            batch=batch,
        ) as url:
            print(f"listening on {url}", flush=True)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        if args.uvloop:
            # Not a project dependency: imported by name only when asked for, to measure with it.
            importlib.import_module("uvloop").run(run())
        else:
            asyncio.run(run())


def echo_answer(model: str, system: str, prompt: str, max_output_tokens: int) -> Completion:
    """A fixed answer with length-based token counts: the cheapest answer function."""
    return Completion(
        text="ok",
        # about four characters a token, like the sandbox; "ok" is one token
        usage=TokenUsage(input_tokens=(len(system) + len(prompt)) // 4 + 1, output_tokens=min(1, max_output_tokens)),
    )


if __name__ == "__main__":
    main()

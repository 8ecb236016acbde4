"""The fake provider's four batch APIs, with knobs a test or a bench sets, and their own bill at batch prices.

    OpenAI     POST /v1/files (multipart, purpose=batch)      GET /v1/files/{id}/content (streamed)
               POST /v1/batches   GET /v1/batches[?after=&limit=]   GET /v1/batches/{id}
               POST /v1/batches/{id}/cancel
    Mistral    the same files; POST /v1/batch/jobs (input_files or inline requests)
               GET /v1/batch/jobs[?page=&page_size=]   GET /v1/batch/jobs/{id}   POST .../{id}/cancel
    Anthropic  POST /v1/messages/batches   GET /v1/messages/batches   GET /v1/messages/batches/{id}
               POST .../{id}/cancel   GET .../{id}/results (streamed)
    Gemini     POST /v1beta/models/{model}:batchGenerateContent (inline, or inputConfig.fileName)
               POST /upload/v1beta/files (resumable: start, then upload, finalize)
               GET /download/v1beta/files/{id}:download?alt=media (streamed)
               GET /v1beta/batches[?pageToken=&pageSize=]   GET /v1beta/batches/{id}   POST .../{id}:cancel

    POST /_batch           set knobs (any of BatchKnobs' fields; {"reset": true} first restores the
                           defaults); answers the knobs in force. A batch keeps the knobs in force
                           when it was created; the stream knobs (chunk_lines, hold_after_lines,
                           cut_after_lines) apply to the result streams served after they are set.
    GET  /_batch           the knobs, and "holding": whether a result stream is held (hold_after_lines)
    POST /_batch/release   let a held result stream go on
    GET  /_batch_bill      the batch bill, line by line: {"lines": {custom_id: {vendor, model, batch_id,
                           outcome, input_tokens, cached_input_tokens, cache_write_tokens, output_tokens,
                           reasoning_tokens, multiplier, repeats}} (the latest billing of that id;
                           `repeats` counts the billings before it: the ledger sends each try under a
                           new id, so anything but 0 is a double charge), "models": {model: {lines,
                           input_tokens, cached_input_tokens, output_tokens}}, "multipliers": {vendor:
                           "0.5"}, "batches": {id: {vendor, status, lines}}}
    POST /_reset           (the server's) also drops every batch, file, the batch bill and the knobs

From a test or a bench: `set_knobs(base_url, errored=0.05, expired=0.02)` and `read_bill(base_url)`
(below), or the same calls with any HTTP client; `python -m tests.fakes.server --batch '{...}'` starts a
server with knobs in force.

A batch line is answered exactly as the synchronous path answers the same body (the server's
`read_call`, `answer_for` and `reply`): same text, same usage, same finish; a body the synchronous path
refuses with a 400 is an errored line with that 400. Billed lines (succeeded ones, and expired ones
when `expired_billed`) go on the batch bill with their usage and the vendor's batch multiplier (0.5
for all four), never on the synchronous bill (/_stats, /_bill). Errored and canceled lines are not billed.

Timing: a batch ends `delay_s` after it was created (0: the first poll sees it ended); its lines are
done evenly over that time, `started_done` of them at once. Cancel: the lines done by then keep their
outcome, the others become canceled; the next poll sees the batch ended (cancelled). Outcomes: of a
batch's n lines, round(n * errored) are answered with a 500 and round(n * expired) expire (the batch
then ends expired / TIMEOUT_EXCEEDED / BATCH_STATE_EXPIRED), drawn on `seed` and the batch's id.
`drop_create` ("before" or "after"): the next `drop_creates` creates have their connection broken with no
answer, before the batch is registered (the fake has nothing) or after (it has the batch, findable by
its tag). `fail`: every batch created is refused as a whole (OpenAI `failed` at validation, Mistral FAILED,
Gemini BATCH_STATE_FAILED; Anthropic validates at create, so its create is a 400); no line is billed.

Result files are written in chunks of `chunk_lines` lines (an aiohttp StreamResponse), built as they
are written: a 50,000-line result is never one string. `hold_after_lines` stops a stream after that
many lines until POST /_batch/release (or HOLD_MAX_S), so a test can see a client read lines before
the file has ended; `cut_after_lines` breaks the connection after that many lines.

How a vendor marks an unrun line, where its documentation says nothing, is the fake's (and
router/providers/<vendor>_batch.py's) reading: OpenAI error-file lines with error.code batch_expired
(documented) or batch_cancelled; Mistral error-file lines with error.code timeout_exceeded or
cancelled; Gemini a google.rpc.Status with code 4 (DEADLINE_EXCEEDED) or 1 (CANCELLED). A billed
expired line carries its usage where the vendor's answer carries it (OpenAI and Mistral
response.body.usage, Anthropic result.usage, Gemini response.usageMetadata).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

import httpx
from aiohttp import web

from router.providers.base import Completion
from tests.fakes.faults import Dialect, vendor_error

# The batch price as a share of the standard one, per vendor (each sells batch at 50%).
BATCH_MULTIPLIERS = {vendor: Decimal("0.5") for vendor in ("openai", "anthropic", "mistral", "gemini")}
# A held result stream waits at most this long for /_batch/release: a test that forgot it still ends.
HOLD_MAX_S = 10.0
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
CHAT_ENDPOINT = "/v1/chat/completions"
# google.rpc.Code by HTTP status, for a Gemini line's error (google/rpc/code.proto).
RPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 429: 8, 500: 13, 503: 14, 504: 4}
RPC_NAMES = {1: "CANCELLED", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 8: "RESOURCE_EXHAUSTED", 13: "INTERNAL"}
SUCCEEDED, ERRORED, EXPIRED, CANCELED = "succeeded", "errored", "expired", "canceled"


@dataclass
class BatchKnobs:
    """What the fake does to the batches created while these are in force."""

    delay_s: float = 0.0  # seconds from create until the batch ends; 0: ended at the first poll
    started_done: float = 0.0  # share of lines done as soon as the batch is created (before cancel)
    errored: float = 0.0  # share of lines answered with an error (a 500 in the vendor's words)
    expired: float = 0.0  # share of lines that expire
    expired_billed: bool = False  # an expired line still reports (and bills) its usage
    shuffle: bool = True  # result lines out of input order
    fail: bool = False  # the whole batch is refused (see the module docstring)
    seed: int = 0
    chunk_lines: int = 500  # result lines per chunk written
    hold_after_lines: int | None = None  # stop a result stream after this many lines until released
    cut_after_lines: int | None = None  # break the connection after this many result lines (once per stream)
    error_message: str = "fake batch: the server had an error while processing this request"
    # A create's connection breaks with no answer (as a stale keep-alive connection does): "before" the
    # batch is registered (the provider has nothing) or "after" (it has the batch); for the next
    # `drop_creates` creates, then creates are answered again.
    drop_create: str | None = None
    drop_creates: int = 1

    @classmethod
    def from_json(cls, spec: dict[str, Any], base: BatchKnobs | None = None) -> BatchKnobs:
        known = {f.name for f in fields(cls)}
        unknown = set(spec) - known - {"reset"}
        if unknown:
            raise ValueError(f"unknown batch knobs {sorted(unknown)}; known: {sorted(known)}")
        start = cls() if base is None or spec.get("reset") else base
        values = {**asdict(start), **{k: v for k, v in spec.items() if k != "reset"}}
        knobs = cls(**values)
        if not (0 <= knobs.errored <= 1 and 0 <= knobs.expired <= 1 and knobs.errored + knobs.expired <= 1):
            raise ValueError("errored and expired are shares: each in [0, 1], together at most 1")
        if not 0 <= knobs.started_done <= 1 or knobs.delay_s < 0 or knobs.chunk_lines < 1:
            raise ValueError("started_done in [0, 1], delay_s >= 0, chunk_lines >= 1")
        if knobs.drop_create not in (None, "before", "after") or knobs.drop_creates < 0:
            raise ValueError("drop_create is before, after or null; drop_creates >= 0")
        return knobs


class Answering(Protocol):
    """What the batch APIs use of the fake server (tests/fakes/server.py FakeProvider)."""

    api_key: str | None

    def read_call(self, vendor: str, body: Any, *, model: str = "", version: str = "") -> Any: ...
    def answer_for(self, asked: Any, *, dialect: str | None = None) -> Completion: ...
    def reply(self, vendor: str, asked: Any, done: Completion, *, dialect: str | None, call_id: str) -> Any: ...
    async def scripted(self, request: web.Request, *, vendor: str) -> web.StreamResponse | None: ...
    def check_version(self, version: str | None) -> Dialect | None: ...


@dataclass
class Line:
    """One line of a fake batch: how it was asked, its answer (or the error it gets), and its fate."""

    custom_id: str
    fate: str  # SUCCEEDED, ERRORED or EXPIRED, drawn at create; CANCELED when a cancel beat it
    asked: Any = None  # the server's Asked, None when the body was refused
    done: Completion | None = None
    dialect: str | None = None
    error: Dialect | None = None  # the vendor's error for an errored line
    done_at: float = 0.0  # time.time() when the line has its outcome (expired lines: at the end)


@dataclass
class Batch:
    """A fake batch of any vendor."""

    vendor: str
    id: str
    model: str
    tag: str | None
    metadata: dict[str, Any]
    lines: list[Line]
    created: float
    ends_at: float
    output_order: list[int]
    failed: str | None = None
    cancel_at: float | None = None
    ended: bool = False
    ended_at: float | None = None
    input_file: str | None = None
    inline: bool = True
    files: dict[str, str] = field(default_factory=dict)  # "output" / "error" -> file id
    knobs: BatchKnobs = field(default_factory=BatchKnobs)  # those in force when it was created


class FakeBatches:
    """The batch APIs' state: knobs, batches, files and the batch bill."""

    def __init__(self, provider: Answering) -> None:
        self.provider = provider
        self.knobs = BatchKnobs()
        self.batches: dict[str, Batch] = {}
        self.files: dict[str, bytes | tuple[str, str]] = {}  # uploaded bytes, or (batch id, "output"/"error")
        self.uploads: dict[str, str] = {}  # Gemini resumable upload id -> display name
        self.bill: dict[str, dict[str, Any]] = {}
        self.holding = False
        self.release = asyncio.Event()
        self._ids = itertools.count(1)
        self.creates_dropped = 0  # creates whose connection was broken under the drop_create knob

    def routes(self, app: web.Application) -> None:
        add = app.router
        add.add_post("/v1/files", self.upload)
        add.add_get("/v1/files/{file_id}/content", self.file_content)
        add.add_post("/v1/batches", self.openai_create)
        add.add_get("/v1/batches", self.openai_list)
        add.add_get("/v1/batches/{batch_id}", self.openai_get)
        add.add_post("/v1/batches/{batch_id}/cancel", self.openai_cancel)
        add.add_post("/v1/batch/jobs", self.mistral_create)
        add.add_get("/v1/batch/jobs", self.mistral_list)
        add.add_get("/v1/batch/jobs/{batch_id}", self.mistral_get)
        add.add_post("/v1/batch/jobs/{batch_id}/cancel", self.mistral_cancel)
        add.add_post("/v1/messages/batches", self.anthropic_create)
        add.add_get("/v1/messages/batches", self.anthropic_list)
        add.add_get("/v1/messages/batches/{batch_id}", self.anthropic_get)
        add.add_post("/v1/messages/batches/{batch_id}/cancel", self.anthropic_cancel)
        add.add_get("/v1/messages/batches/{batch_id}/results", self.anthropic_results)
        add.add_post("/upload/v1beta/files", self.gemini_upload)
        add.add_get("/download/v1beta/files/{file_action}", self.gemini_download)
        add.add_get("/v1beta/batches", self.gemini_list)
        add.add_get("/v1beta/batches/{batch_action}", self.gemini_get)
        add.add_post("/v1beta/batches/{batch_action}", self.gemini_cancel)
        add.add_get("/_batch", self.get_knobs)
        add.add_post("/_batch", self.set_knobs)
        add.add_post("/_batch/release", self.release_hold)
        add.add_get("/_batch_bill", self.bill_view)

    def reset(self) -> None:
        self.knobs = BatchKnobs()
        self.batches.clear()
        self.files.clear()
        self.uploads.clear()
        self.bill.clear()
        self.creates_dropped = 0
        self.release.set()  # a held stream goes on
        self.release = asyncio.Event()

    # -- creating a batch, whatever the vendor ----------------------------------------------------

    def new_batch(
        self,
        vendor: str,
        batch_id: str,
        *,
        model: str,
        bodies: list[tuple[str, Any]],
        tag: str | None,
        metadata: dict[str, Any],
        version: str = "",
        failed: str | None = None,
    ) -> Batch:
        """Read and answer every line now (as the synchronous path would), and draw the fates."""
        knobs = self.knobs
        now = time.time()
        rng = random.Random(f"{knobs.seed}:{batch_id}")
        n = len(bodies)
        n_errored, n_expired = round(n * knobs.errored), round(n * knobs.expired)
        drawn = rng.sample(range(n), n_errored + n_expired) if n else []
        fates = dict.fromkeys(drawn[:n_errored], ERRORED) | dict.fromkeys(drawn[n_errored:], EXPIRED)
        progress = list(range(n))
        rng.shuffle(progress)
        at_once = round(n * knobs.started_done)
        lines: list[Line] = []
        for index, (custom_id, body) in enumerate(bodies):
            asked = self.provider.read_call(vendor, body, model=model, version=version)
            line = Line(custom_id=custom_id, fate=fates.get(index, SUCCEEDED))
            if isinstance(asked, tuple):  # the synchronous path's 400 for this body
                line.fate, line.error = ERRORED, asked
            else:
                line.asked, line.dialect = asked, asked.dialect
                line.done = self.provider.answer_for(asked, dialect=asked.dialect)
                if line.fate == ERRORED:
                    line.error = vendor_error(vendor, 500, knobs.error_message)
            lines.append(line)
        for rank, index in enumerate(progress):
            share = 0.0 if rank < at_once else (rank - at_once + 1) / max(n - at_once, 1)
            lines[index].done_at = now + knobs.delay_s * share
        order = list(range(n))
        if knobs.shuffle:
            rng.shuffle(order)
        batch = Batch(
            vendor=vendor,
            id=batch_id,
            model=model,
            tag=tag,
            metadata=metadata,
            lines=lines,
            created=now,
            ends_at=now + knobs.delay_s,
            output_order=order,
            knobs=knobs,
            failed=failed or ("fake batch: refused at validation (knob fail)" if knobs.fail else None),
        )
        self.batches[batch_id] = batch
        return batch

    def advance(self, batch: Batch) -> None:
        """End the batch if its time has come (or a cancel was asked), billing its lines once."""
        if batch.ended or batch.failed:
            return
        now = time.time()
        if batch.cancel_at is None and now < batch.ends_at:
            return
        batch.ended, batch.ended_at = True, now
        for line in batch.lines:
            if batch.cancel_at is not None and (line.fate == EXPIRED or line.done_at > batch.cancel_at):
                line.fate = CANCELED
            if line.fate == SUCCEEDED or (line.fate == EXPIRED and batch.knobs.expired_billed):
                self.bill_line(batch, line)
        if any(line.fate == SUCCEEDED for line in batch.lines):
            batch.files["output"] = self.file_id(batch.vendor)
        if any(line.fate != SUCCEEDED for line in batch.lines):
            batch.files["error"] = self.file_id(batch.vendor)
        for kind, file_id in batch.files.items():
            self.files[file_id] = (batch.id, kind)

    def bill_line(self, batch: Batch, line: Line) -> None:
        assert line.done is not None
        usage = line.done.usage
        repeats = self.bill[line.custom_id]["repeats"] + 1 if line.custom_id in self.bill else 0
        self.bill[line.custom_id] = {
            "vendor": batch.vendor,
            "model": batch.model,
            "batch_id": batch.id,
            "outcome": line.fate,
            "input_tokens": usage.input_tokens,
            "cached_input_tokens": usage.cached_input_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "output_tokens": usage.output_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "multiplier": str(BATCH_MULTIPLIERS[batch.vendor]),
            "repeats": repeats,
        }

    def file_id(self, vendor: str) -> str:
        n = next(self._ids)
        if vendor == "openai":
            return f"file-fake{n:06d}"
        return f"fake{n:06d}" if vendor == "gemini" else f"{n:08x}-0000-4000-8000-00000000fake"

    def counts(self, batch: Batch) -> dict[str, int]:
        """Lines by outcome so far (done ones only, until the batch ends)."""
        now = time.time()
        out = {SUCCEEDED: 0, ERRORED: 0, EXPIRED: 0, CANCELED: 0, "processing": 0}
        for line in batch.lines:
            if batch.ended:
                out[line.fate] += 1
            elif line.fate != EXPIRED and line.done_at <= now:
                out[line.fate] += 1
            else:
                out["processing"] += 1
        return out

    def ended_as(self, batch: Batch) -> str:
        """ "cancelled", "expired" or "completed": how an ended batch ended."""
        if batch.cancel_at is not None:
            return "cancelled"
        return "expired" if any(line.fate == EXPIRED for line in batch.lines) else "completed"

    # -- result lines, streamed -------------------------------------------------------------------

    def result_lines(self, batch: Batch, kind: str | None) -> Iterator[bytes]:
        """The encoded result lines of `kind` ("output": succeeded; "error": the rest; None: all)."""
        for index in batch.output_order:
            line = batch.lines[index]
            if kind == "output" and line.fate != SUCCEEDED or kind == "error" and line.fate == SUCCEEDED:
                continue
            yield json.dumps(self.result_line(batch, line), separators=(",", ":")).encode() + b"\n"

    def result_line(self, batch: Batch, line: Line) -> dict[str, Any]:
        vendor = batch.vendor
        billed = line.fate == SUCCEEDED or (line.fate == EXPIRED and batch.knobs.expired_billed)
        answer = (
            self.provider.reply(vendor, line.asked, line.done, dialect=line.dialect, call_id=f"{line.custom_id}-answer")
            if billed and line.done is not None
            else None
        )
        if vendor == "anthropic":
            if line.fate == SUCCEEDED:
                return {"custom_id": line.custom_id, "result": {"type": "succeeded", "message": answer}}
            if line.fate == ERRORED:
                assert line.error is not None
                return {"custom_id": line.custom_id, "result": {"type": "errored", "error": line.error[1]}}
            result: dict[str, Any] = {"type": line.fate}
            if answer is not None:
                result["usage"] = answer["usage"]
            return {"custom_id": line.custom_id, "result": result}
        if vendor == "gemini":
            entry: dict[str, Any] = {"key": line.custom_id}
            if line.fate == SUCCEEDED:
                entry["response"] = answer
                return entry
            if line.fate == ERRORED:
                assert line.error is not None
                status, body = line.error[0], line.error[1]
                code = RPC_CODES.get(status, 2)
                entry["error"] = {
                    "code": code,
                    "message": body["error"]["message"],
                    "status": RPC_NAMES.get(code, "UNKNOWN"),
                }
                return entry
            code = 4 if line.fate == EXPIRED else 1
            message = "the batch expired before this request ran" if code == 4 else "the batch was cancelled"
            entry["error"] = {"code": code, "message": message, "status": RPC_NAMES[code]}
            if answer is not None:
                entry["response"] = {"usageMetadata": answer["usageMetadata"]}
            return entry
        out: dict[str, Any] = {
            "id": f"batch_req_{line.custom_id}",
            "custom_id": line.custom_id,
            "response": None,
            "error": None,
        }
        if line.fate == SUCCEEDED:
            out["response"] = {"status_code": 200, "request_id": f"req_{line.custom_id}", "body": answer}
        elif line.fate == ERRORED:
            assert line.error is not None
            out["response"] = {
                "status_code": line.error[0],
                "request_id": f"req_{line.custom_id}",
                "body": line.error[1],
            }
        else:
            if vendor == "openai":
                code = "batch_expired" if line.fate == EXPIRED else "batch_cancelled"
            else:
                code = "timeout_exceeded" if line.fate == EXPIRED else "cancelled"
            message = (
                "This request could not be executed before the completion window expired."
                if line.fate == EXPIRED
                else "This request was not executed: the batch was cancelled."
            )
            out["error"] = {"code": code, "message": message}
            if answer is not None:
                out["response"] = {"status_code": 200, "request_id": f"req_{line.custom_id}", "body": answer}
        return out

    async def stream(self, request: web.Request, lines: Iterator[bytes], content_type: str) -> web.StreamResponse:
        """Write `lines` in chunks of `chunk_lines`, holding after `hold_after_lines` if set."""
        response = web.StreamResponse(status=200, headers={"Content-Type": content_type})
        await response.prepare(request)
        knobs, written, held = self.knobs, 0, False
        while chunk := list(itertools.islice(lines, knobs.chunk_lines)):
            if knobs.hold_after_lines is not None and not held and written + len(chunk) > knobs.hold_after_lines:
                first = chunk[: max(knobs.hold_after_lines - written, 0)]
                held, self.holding = True, True  # before the lines go: a client that has them sees it
                await response.write(b"".join(first))
                written += len(first)
                chunk = chunk[len(first) :]
                try:
                    await asyncio.wait_for(self.release.wait(), timeout=HOLD_MAX_S)
                except TimeoutError:
                    pass
                finally:
                    self.holding = False
            if knobs.cut_after_lines is not None and written + len(chunk) > knobs.cut_after_lines:
                await response.write(b"".join(chunk[: max(knobs.cut_after_lines - written, 0)]))
                if request.transport is not None:
                    request.transport.abort()  # the connection breaks mid-file, as a network fault does
                return response
            await response.write(b"".join(chunk))
            written += len(chunk)
        await response.write_eof()
        return response

    # -- admin --------------------------------------------------------------------------------------

    async def get_knobs(self, request: web.Request) -> web.Response:
        return _json(200, {**asdict(self.knobs), "holding": self.holding, "batches": len(self.batches)})

    async def set_knobs(self, request: web.Request) -> web.Response:
        try:
            self.knobs = BatchKnobs.from_json(await request.json(), self.knobs)
        except (ValueError, TypeError) as exc:
            return _json(400, {"error": str(exc)})
        self.release = asyncio.Event()
        self.creates_dropped = 0
        return _json(200, asdict(self.knobs))

    async def release_hold(self, request: web.Request) -> web.Response:
        self.release.set()
        return _json(200, {"ok": True})

    async def bill_view(self, request: web.Request) -> web.Response:
        models: dict[str, dict[str, int]] = {}
        for line in self.bill.values():
            total = models.setdefault(
                line["model"], {"lines": 0, "input_tokens": 0, "cached_input_tokens": 0, "output_tokens": 0}
            )
            total["lines"] += 1
            for key in ("input_tokens", "cached_input_tokens", "output_tokens"):
                total[key] += line[key]
        batches = {
            b.id: {
                "vendor": b.vendor,
                "status": self.ended_as(b) if b.ended else "failed" if b.failed else "open",
                "lines": len(b.lines),
            }
            for b in self.batches.values()
        }
        return _json(
            200,
            {
                "lines": self.bill,
                "models": models,
                "multipliers": {k: str(v) for k, v in BATCH_MULTIPLIERS.items()},
                "batches": batches,
            },
        )

    # -- auth, shared ------------------------------------------------------------------------------

    async def refused(self, request: web.Request, vendor: str) -> web.StreamResponse | None:
        """A scripted fault, or the vendor's answer to a wrong key; None to go on."""
        if (scripted := await self.provider.scripted(request, vendor=vendor)) is not None:
            return scripted
        key = self.provider.api_key
        if not key:
            return None
        if vendor in ("openai", "mistral") and request.headers.get("Authorization") != f"Bearer {key}":
            return _respond(vendor_error(vendor, 401, "Incorrect API key provided."))
        if vendor == "anthropic":
            if request.headers.get("x-api-key") != key:
                return _respond(vendor_error("anthropic", 401, "invalid x-api-key"))
            if (bad := self.provider.check_version(request.headers.get("anthropic-version"))) is not None:
                return _respond(bad)
        if vendor == "gemini" and (request.headers.get("x-goog-api-key") or request.query.get("key")) != key:
            return _respond(
                vendor_error("gemini", 400, "API key not valid. Please pass a valid API key.", code="API_KEY_INVALID")
            )
        return None

    def dropping(self, when: str) -> bool:
        """Whether this create's connection breaks now ("before" or "after" registering its batch)."""
        if self.knobs.drop_create != when or self.creates_dropped >= self.knobs.drop_creates:
            return False
        self.creates_dropped += 1
        return True

    @staticmethod
    def drop(request: web.Request) -> web.StreamResponse:
        """Break the connection with no answer: the client sent its request and hears nothing back."""
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=500)

    def find(self, vendor: str, batch_id: str) -> Batch | None:
        batch = self.batches.get(batch_id)
        return batch if batch is not None and batch.vendor == vendor else None

    # -- files (OpenAI and Mistral) ----------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.StreamResponse:
        vendor = "openai"
        if (refused := await self.refused(request, vendor)) is not None:
            return refused
        form = await request.post()
        upload = form.get("file")
        if form.get("purpose") != "batch" or not isinstance(upload, web.FileField):
            return _respond(vendor_error(vendor, 400, "expected a multipart upload: file, purpose=batch"))
        data = upload.file.read()
        file_id = self.file_id(vendor)
        self.files[file_id] = data
        return _json(
            200,
            {
                "id": file_id,
                "object": "file",
                "bytes": len(data),
                "created_at": int(time.time()),
                "filename": upload.filename,
                "purpose": "batch",
            },
        )

    async def file_content(self, request: web.Request) -> web.StreamResponse:
        if (refused := await self.refused(request, "openai")) is not None:
            return refused
        stored = self.files.get(request.match_info["file_id"])
        if stored is None:
            return _respond(vendor_error("openai", 404, "No such File object"))
        if isinstance(stored, bytes):
            return web.Response(body=stored, content_type="application/jsonl")
        batch_id, kind = stored
        return await self.stream(request, self.result_lines(self.batches[batch_id], kind), "application/jsonl")

    def jsonl_bodies(self, data: bytes, *, mistral: bool, model: str = "") -> tuple[list[tuple[str, Any]], str | None]:
        """(custom_id, body) per input line, and why the file is refused, if it is."""
        bodies: list[tuple[str, Any]] = []
        seen: set[str] = set()
        for number, raw in enumerate(data.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
                custom_id, body = str(line["custom_id"]), dict(line["body"])
                if not mistral and (line.get("method") != "POST" or line.get("url") != CHAT_ENDPOINT):
                    return [], f"line {number}: method must be POST and url {CHAT_ENDPOINT}"
            except (ValueError, KeyError, TypeError) as exc:
                return [], f"line {number}: invalid JSON line ({exc!r})"
            if custom_id in seen:
                return [], f"line {number}: duplicate custom_id {custom_id!r}"
            seen.add(custom_id)
            if mistral:
                body["model"] = model
            bodies.append((custom_id, body))
        return bodies, None if bodies else "the input file has no lines"

    # -- OpenAI -------------------------------------------------------------------------------------

    async def openai_create(self, request: web.Request) -> web.StreamResponse:
        if (refused := await self.refused(request, "openai")) is not None:
            return refused
        spec = await request.json()
        if self.dropping("before"):
            return self.drop(request)
        data = self.files.get(str(spec.get("input_file_id")))
        if not isinstance(data, bytes):
            return _respond(vendor_error("openai", 400, f"No such input file: {spec.get('input_file_id')!r}"))
        if spec.get("endpoint") != CHAT_ENDPOINT or spec.get("completion_window") != "24h":
            return _respond(vendor_error("openai", 400, "endpoint must be /v1/chat/completions, completion_window 24h"))
        bodies, why = self.jsonl_bodies(data, mistral=False)
        metadata = dict(spec.get("metadata") or {})
        model = str(bodies[0][1].get("model")) if bodies else ""
        batch = self.new_batch(
            "openai",
            f"batch_fake{next(self._ids):06d}",
            model=model,
            bodies=bodies,
            tag=None,
            metadata=metadata,
            failed=why,
        )
        batch.input_file, batch.inline = str(spec["input_file_id"]), False
        if self.dropping("after"):
            return self.drop(request)
        return _json(200, self.openai_view(batch, status="validating"))

    def openai_view(self, batch: Batch, *, status: str | None = None) -> dict[str, Any]:
        if status is None:
            self.advance(batch)
            if batch.failed:
                status = "failed"
            elif batch.ended:
                status = self.ended_as(batch)
            else:
                status = "cancelling" if batch.cancel_at is not None else "in_progress"
        counts = self.counts(batch)
        errors = {
            "object": "list",
            "data": [{"code": "invalid_request", "message": batch.failed, "line": None, "param": None}],
        }
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": CHAT_ENDPOINT,
            "model": batch.model,
            "errors": errors if batch.failed and status == "failed" else None,
            "input_file_id": batch.input_file,
            "completion_window": "24h",
            "status": status,
            "output_file_id": batch.files.get("output"),
            "error_file_id": batch.files.get("error"),
            "created_at": int(batch.created),
            "expires_at": int(batch.created) + 24 * 3600,
            "completed_at": int(batch.ended_at) if batch.ended_at and status == "completed" else None,
            "cancelled_at": int(batch.ended_at) if batch.ended_at and status == "cancelled" else None,
            "request_counts": {
                "total": len(batch.lines),
                "completed": counts[SUCCEEDED],
                "failed": counts[ERRORED] + counts[EXPIRED] + counts[CANCELED],
            },
            "metadata": batch.metadata,
        }

    async def openai_get(self, request: web.Request) -> web.StreamResponse:
        if (refused := await self.refused(request, "openai")) is not None:
            return refused
        batch = self.find("openai", request.match_info["batch_id"])
        if batch is None:
            return _respond(vendor_error("openai", 404, "No such Batch object"))
        return _json(200, self.openai_view(batch))

    async def openai_cancel(self, request: web.Request) -> web.StreamResponse:
        if (refused := await self.refused(request, "openai")) is not None:
            return refused
        batch = self.find("openai", request.match_info["batch_id"])
        if batch is None:
            return _respond(vendor_error("openai", 404, "No such Batch object"))
        self.advance(batch)
        if not batch.ended and not batch.failed:
            batch.cancel_at = time.time()
            return _json(200, self.openai_view(batch, status="cancelling"))
        return _json(200, self.openai_view(batch))

    async def openai_list(self, request: web.Request) -> web.StreamResponse:
        if (refused := await self.refused(request, "openai")) is not None:
            return refused
        newest_first = [b for b in reversed(self.batches.values()) if b.vendor == "openai"]
        after = request.query.get("after")
        if after:
            ids = [b.id for b in newest_first]
            newest_first = newest_first[ids.index(after) + 1 :] if after in ids else []
        limit = int(request.query.get("limit") or 20)
        page = newest_first[:limit]
        return _json(
            200,
            {
                "object": "list",
                "data": [self.openai_view(b) for b in page],
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": len(newest_first) > limit,
            },
        )

    # -- Mistral ------------------------------------------------------------------------------------

    async def mistral_create(self, request: web.Request) -> web.StreamResponse:
        if (refused := await self.refused(request, "mistral")) is not None:
            return refused
        spec = await request.json()
        if self.dropping("before"):
            return self.drop(request)
        model = str(spec.get("model") or "")
        if not model or spec.get("endpoint") != CHAT_ENDPOINT:
            return _respond(vendor_error("mistral", 400, "model and endpoint /v1/chat/completions are required"))
        if spec.get("input_files"):
            stored = [self.files.get(str(f)) for f in spec["input_files"]]
            data = b"\n".join(f for f in stored if isinstance(f, bytes))
            bodies, why = self.jsonl_bodies(data, mistral=True, model=model)
        else:
            requests = spec.get("requests") or []
            bodies, why = self.jsonl_bodies(
                b"\n".join(json.dumps(r).encode() for r in requests), mistral=True, model=model
            )
        batch_id = f"{next(self._ids):08x}-0000-4000-8000-0000batchfake"
        batch = self.new_batch(
            "mistral",
            batch_id,
            model=model,
            bodies=bodies,
            tag=None,
            metadata=dict(spec.get("metadata") or {}),
            failed=why,
        )
        batch.inline = not spec.get("input_files")
        batch.input_file = (spec.get("input_files") or [None])[0]
        if self.dropping("after"):
            return self.drop(request)
        return _json(200, self.mistral_view(batch, status="QUEUED"))

    def mistral_view(self, batch: Batch, *, status: str | None = None) -> dict[str, Any]:
        if status is None:
            self.advance(batch)
            if batch.failed:
                status = "FAILED"
            elif batch.ended:
                status = {"cancelled": "CANCELLED", "expired": "TIMEOUT_EXCEEDED", "completed": "SUCCESS"}[
                    self.ended_as(batch)
                ]
            else:
                status = "CANCELLATION_REQUESTED" if batch.cancel_at is not None else "RUNNING"
        counts = self.counts(batch)
        failed = counts[ERRORED] + counts[EXPIRED] + counts[CANCELED]
        return {
            "id": batch.id,
            "object": "batch",
            "input_files": [batch.input_file] if batch.input_file else [],
            "endpoint": CHAT_ENDPOINT,
            "model": batch.model,
            "metadata": batch.metadata,
            "output_file": batch.files.get("output"),
            "error_file": batch.files.get("error"),
            "errors": [{"message": batch.failed, "count": 1}] if batch.failed and status == "FAILED" else [],
            "status": status,
            "created_at": int(batch.created),
            "total_requests": len(batch.lines),
            "completed_requests": counts[SUCCEEDED] + failed,
            "succeeded_requests": counts[SUCCEEDED],
            "failed_requests": failed,
        }

    async def mistral_get(self, request: web.Request) -> web.StreamResponse:
        if (refused := await self.refused(request, "mistral")) is not None:
            return refused
        batch = self.find("mistral", request.match_info["batch_id"])
        if batch is None:
            return _respond(vendor_error("mistral", 404, "Batch job not found"))
        return _json(200, self.mistral_view(batch))

    async def mistral_cancel(self, request: web.Request) -> web.StreamResponse:
        if (refused := await self.refused(request, "mistral")) is not None:
            return refused
        batch = self.find("mistral", request.match_info["batch_id"])
        if batch is None:
            return _respond(vendor_error("mistral", 404, "Batch job not found"))
        self.advance(batch)
        if not batch.ended and not batch.failed:
            batch.cancel_at = time.time()
            return _json(200, self.mistral_view(batch, status="CANCELLATION_REQUESTED"))
        return _json(200, self.mistral_view(batch))

    async def mistral_list(self, request: web.Request) -> web.StreamResponse:
        if (refused := await self.refused(request, "mistral")) is not None:
            return refused
        newest_first = [b for b in reversed(self.batches.values()) if b.vendor == "mistral"]
        page, size = int(request.query.get("page") or 0), int(request.query.get("page_size") or 100)
        shown = newest_first[page * size : (page + 1) * size]
        return _json(200, {"object": "list", "data": [self.mistral_view(b) for b in shown], "total": len(newest_first)})

    # -- Anthropic ----------------------------------------------------------------------------------

    async def anthropic_create(self, request: web.Request) -> web.StreamResponse:
        if (refused := await self.refused(request, "anthropic")) is not None:
            return refused
        spec = await request.json()
        if self.dropping("before"):
            return self.drop(request)
        requests = spec.get("requests")
        if not isinstance(requests, list) or not requests:
            return _respond(vendor_error("anthropic", 400, "requests: at least one request is required"))
        seen: set[str] = set()
        for entry in requests:
            custom_id = str(entry.get("custom_id"))
            if not CUSTOM_ID.match(custom_id):
                return _respond(
                    vendor_error(
                        "anthropic", 400, f"requests.custom_id: {custom_id!r} must match ^[a-zA-Z0-9_-]{{1,64}}$"
                    )
                )
            if custom_id in seen:
                return _respond(vendor_error("anthropic", 400, f"requests: custom_id {custom_id!r} is not unique"))
            seen.add(custom_id)
        if self.knobs.fail:
            return _respond(vendor_error("anthropic", 400, "fake batch: refused at validation (knob fail)"))
        model = str((requests[0].get("params") or {}).get("model") or "")
        batch = self.new_batch(
            "anthropic",
            f"msgbatch_fake{next(self._ids):06d}",
            model=model,
            bodies=[(str(e["custom_id"]), e.get("params")) for e in requests],
            tag=None,
            metadata={},
            version=str(request.headers.get("anthropic-version")),
        )
        if self.dropping("after"):
            return self.drop(request)
        return _json(200, self.anthropic_view(batch, request, status="in_progress"))

    def anthropic_view(self, batch: Batch, request: web.Request, *, status: str | None = None) -> dict[str, Any]:
        if status is None:
            self.advance(batch)
            status = "ended" if batch.ended else "canceling" if batch.cancel_at is not None else "in_progress"
        counts = self.counts(batch)
        ended = status == "ended"
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": {
                "processing": 0 if ended else len(batch.lines),
                # zero until the whole batch has ended, as Anthropic reports them
                **{k: counts[k] if ended else 0 for k in ("succeeded", "errored", "canceled", "expired")},
            },
            "created_at": _rfc3339(batch.created),
            "expires_at": _rfc3339(batch.created + 24 * 3600),
            "ended_at": _rfc3339(batch.ended_at) if ended and batch.ended_at else None,
            "cancel_initiated_at": _rfc3339(batch.cancel_at) if batch.cancel_at else None,
            "archived_at": None,
            "results_url": f"{request.scheme}://{request.host}/v1/messages/batches/{batch.id}/results"
            if ended
            else None,
        }

    async def anthropic_get(self, request: web.Request) -> web.StreamResponse:
        if (refused := await self.refused(request, "anthropic")) is not None:
            return refused
        batch = self.find("anthropic", request.match_info["batch_id"])
        if batch is None:
            return _respond(vendor_error("anthropic", 404, "Message batch not found"))
        return _json(200, self.anthropic_view(batch, request))

    async def anthropic_cancel(self, request: web.Request) -> web.StreamResponse:
        if (refused := await self.refused(request, "anthropic")) is not None:
            return refused
        batch = self.find("anthropic", request.match_info["batch_id"])
        if batch is None:
            return _respond(vendor_error("anthropic", 404, "Message batch not found"))
        self.advance(batch)
        if not batch.ended:
            batch.cancel_at = time.time()
            return _json(200, self.anthropic_view(batch, request, status="canceling"))
        return _json(200, self.anthropic_view(batch, request))

    async def anthropic_list(self, request: web.Request) -> web.StreamResponse:
        if (refused := await self.refused(request, "anthropic")) is not None:
            return refused
        shown = [self.anthropic_view(b, request) for b in reversed(self.batches.values()) if b.vendor == "anthropic"]
        return _json(200, {"data": shown[:20], "has_more": len(shown) > 20, "first_id": None, "last_id": None})

    async def anthropic_results(self, request: web.Request) -> web.StreamResponse:
        if (refused := await self.refused(request, "anthropic")) is not None:
            return refused
        batch = self.find("anthropic", request.match_info["batch_id"])
        if batch is not None:
            self.advance(batch)
        if batch is None or not batch.ended:
            return _respond(vendor_error("anthropic", 404, "Message batch results are not available yet"))
        return await self.stream(request, self.result_lines(batch, None), "application/jsonl")

    # -- Gemini -------------------------------------------------------------------------------------

    async def gemini_create(self, request: web.Request, model: str) -> web.StreamResponse:
        """POST /v1beta/models/{model}:batchGenerateContent (routed here by the server's gemini handler)."""
        if (refused := await self.refused(request, "gemini")) is not None:
            return refused
        spec = (await request.json()).get("batch") or {}
        if self.dropping("before"):
            return self.drop(request)
        config = spec.get("inputConfig") or {}
        why = None
        if "fileName" in config:
            data = self.files.get(str(config["fileName"]))
            if not isinstance(data, bytes):
                return _respond(vendor_error("gemini", 400, f"file {config['fileName']!r} not found"))
            bodies: list[tuple[str, Any]] = []
            for raw in data.splitlines():
                if raw.strip():
                    line = json.loads(raw)
                    bodies.append((str(line.get("key")), line.get("request")))
        else:
            entries = (config.get("requests") or {}).get("requests") or []
            bodies = [(str((e.get("metadata") or {}).get("key")), e.get("request")) for e in entries]
        if not bodies:
            return _respond(vendor_error("gemini", 400, "batch.inputConfig: no requests"))
        model = model.removeprefix("models/")
        batch = self.new_batch(
            "gemini",
            f"batches/fake{next(self._ids):06d}",
            model=model,
            bodies=bodies,
            tag=str(spec.get("displayName") or ""),
            metadata={},
            failed=why,
        )
        batch.inline = "fileName" not in config
        if self.dropping("after"):
            return self.drop(request)
        return _json(200, self.gemini_view(batch, state="BATCH_STATE_PENDING"))

    def gemini_view(self, batch: Batch, *, state: str | None = None) -> dict[str, Any]:
        if state is None:
            self.advance(batch)
            if batch.failed:
                state = "BATCH_STATE_FAILED"
            elif batch.ended:
                state = {
                    "cancelled": "BATCH_STATE_CANCELLED",
                    "expired": "BATCH_STATE_EXPIRED",
                    "completed": "BATCH_STATE_SUCCEEDED",
                }[self.ended_as(batch)]
            else:
                state = "BATCH_STATE_RUNNING"
        counts = self.counts(batch)
        failed = counts[ERRORED] + counts[EXPIRED] + counts[CANCELED]
        inner: dict[str, Any] = {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatch",
            "model": f"models/{batch.model}",
            "name": batch.id,
            "displayName": batch.tag,
            "state": state,
            "createTime": _rfc3339(batch.created),
            "batchStats": {  # int64 counts are JSON strings
                "requestCount": str(len(batch.lines)),
                "successfulRequestCount": str(counts[SUCCEEDED]),
                "failedRequestCount": str(failed),
                "pendingRequestCount": str(counts["processing"]),
            },
        }
        if batch.ended:
            if batch.inline:
                entries = []
                for index in range(len(batch.lines)):  # inline responses come in input order
                    entry = self.result_line(batch, batch.lines[index])
                    entry["metadata"] = {"key": entry.pop("key")}
                    entries.append(entry)
                inner["output"] = {"inlinedResponses": {"inlinedResponses": entries}}
            else:
                inner["output"] = {
                    "responsesFile": f"files/{batch.files.get('all') or self.gemini_results_file(batch)}"
                }
        operation: dict[str, Any] = {"name": batch.id, "metadata": inner, "done": batch.ended or bool(batch.failed)}
        if batch.failed and state == "BATCH_STATE_FAILED":
            operation["error"] = {"code": 3, "message": batch.failed}
        return operation

    def gemini_results_file(self, batch: Batch) -> str:
        file_id = self.file_id("gemini")
        batch.files["all"] = file_id
        self.files[file_id] = (batch.id, "all")
        return file_id

    async def gemini_upload(self, request: web.Request) -> web.StreamResponse:
        if (refused := await self.refused(request, "gemini")) is not None:
            return refused
        command = request.headers.get("X-Goog-Upload-Command", "")
        if command == "start":
            upload_id = f"upload{next(self._ids):06d}"
            self.uploads[upload_id] = ""
            url = f"{request.scheme}://{request.host}/upload/v1beta/files?upload_id={upload_id}"
            return _json(200, {}, headers={"X-Goog-Upload-URL": url, "X-Goog-Upload-Status": "active"})
        upload_id = request.query.get("upload_id", "")
        if "finalize" not in command or upload_id not in self.uploads:
            return _respond(vendor_error("gemini", 400, "unknown upload, or not an upload, finalize command"))
        del self.uploads[upload_id]
        file_id = self.file_id("gemini")
        self.files[f"files/{file_id}"] = await request.read()
        return _json(200, {"file": {"name": f"files/{file_id}", "mimeType": "application/jsonl", "state": "ACTIVE"}})

    async def gemini_download(self, request: web.Request) -> web.StreamResponse:
        if (refused := await self.refused(request, "gemini")) is not None:
            return refused
        file_id, _, action = request.match_info["file_action"].partition(":")
        stored = self.files.get(file_id)
        if action != "download" or request.query.get("alt") != "media" or not isinstance(stored, tuple):
            return _respond(vendor_error("gemini", 404, f"file {file_id!r} not found"))
        return await self.stream(request, self.result_lines(self.batches[stored[0]], None), "application/jsonl")

    async def gemini_get(self, request: web.Request) -> web.StreamResponse:
        if (refused := await self.refused(request, "gemini")) is not None:
            return refused
        batch = self.find("gemini", f"batches/{request.match_info['batch_action']}")
        if batch is None:
            return _respond(vendor_error("gemini", 404, "Requested entity was not found."))
        return _json(200, self.gemini_view(batch))

    async def gemini_cancel(self, request: web.Request) -> web.StreamResponse:
        if (refused := await self.refused(request, "gemini")) is not None:
            return refused
        name, _, action = request.match_info["batch_action"].partition(":")
        batch = self.find("gemini", f"batches/{name}")
        if batch is None or action != "cancel":
            return _respond(vendor_error("gemini", 404, "Requested entity was not found."))
        self.advance(batch)
        if not batch.ended and not batch.failed:
            batch.cancel_at = time.time()
        return _json(200, {})

    async def gemini_list(self, request: web.Request) -> web.StreamResponse:
        if (refused := await self.refused(request, "gemini")) is not None:
            return refused
        newest_first = [b for b in reversed(self.batches.values()) if b.vendor == "gemini"]
        start = int(request.query.get("pageToken") or 0)
        size = int(request.query.get("pageSize") or 50)
        shown = newest_first[start : start + size]
        body: dict[str, Any] = {"operations": [self.gemini_view(b) for b in shown]}
        if start + size < len(newest_first):
            body["nextPageToken"] = str(start + size)
        return _json(200, body)


def set_knobs(base_url: str, **knobs: Any) -> dict[str, Any]:
    """Set the fake's batch knobs (POST /_batch; `reset=True` first restores the defaults); the knobs now."""
    response = httpx.post(f"{base_url}/_batch", json=knobs)
    response.raise_for_status()
    answer: dict[str, Any] = response.json()
    return answer


def read_bill(base_url: str) -> dict[str, Any]:
    """The fake's batch bill (GET /_batch_bill)."""
    response = httpx.get(f"{base_url}/_batch_bill")
    response.raise_for_status()
    bill: dict[str, Any] = response.json()
    return bill


def _rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def _json(status: int, body: Any, *, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json", headers=headers)


def _respond(dialect: Dialect) -> web.Response:
    status, body, headers = dialect
    response = _json(status, body)
    response.headers.update(headers)
    return response

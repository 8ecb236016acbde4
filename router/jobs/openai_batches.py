"""OpenAI Batch files as pennyroute jobs: the rules of the /v1 intake, for any shell.

A batch's input file is validated whole before anything runs (OpenAI's all-or-nothing contract), at
most MAX_REQUESTS (50,000) requests:
each line `{"custom_id", "method": "POST", "url": <the batch's endpoint>, "body": {"model", "messages"}}`,
custom_ids unique. Its lines are then split by the model they name, one pennyroute job per model:

- a catalog model: the line runs as sent, on that model: its messages (system, user and assistant
  turns), max_tokens (or max_completion_tokens), temperature, top_p and stop (router/chat.py says what
  a line may carry; tools, images, response_format and n > 1 are refused by name). One chat job per
  model (task `chat`, no quality bar), ledgered and budgeted like any job; its answer is the model's
  text as it came, with finish_reason "length" when the cap cut it;
- `pennyroute-auto`: routed. The batch's metadata gives the bar (`min_quality`, required), and
  optionally `task` (classify or summarize), `labels` (comma-separated, for classify) and
  `max_words`; its quality is measured against the strongest eligible model (reference mode),
  unless earlier work of this kind measured it already (fresh stored estimates: routed on them).

A pennyroute-auto item's text is the text of the line's user messages; the job's task (classify when
the metadata gives labels, else summarize) decides the prompt, as for any pennyroute job. The team billed is the
key's team, or the metadata's `team`. The output and error files are written from the jobs' results
in OpenAI's line shape, whichever provider answered.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import secrets
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from router.catalog import Catalog
from router.chat import CHAT_DEFAULT_MAX_TOKENS, ChatError, read_chat
from router.errors import ConflictError, InputError, NotFoundError, PennyrouteError, TooLargeError
from router.jobs import estimates, lifecycle
from router.jobs.intake import JobRequest
from router.jobs.results import result_records
from router.jobs.submit import submit_job
from router.ledger import batches, repo
from router.ledger.db import session_scope
from router.ledger.tables import ApiBatch, ApiFile, Job, JobStatus, utcnow
from router.settings import Settings

log = logging.getLogger("pennyroute.jobs")

AUTO = "pennyroute-auto"
ENDPOINT = "/v1/chat/completions"
ENDED = (JobStatus.DONE, JobStatus.NO_MODEL, JobStatus.CANCELLED)
# An upload is written to the ledger in pieces this large: memory stays flat whatever the file's size.
PIECE_BYTES = 1 << 20
# OpenAI's limits for a batch's metadata: 16 pairs, keys up to 64 characters, values up to 512.
MAX_METADATA = 16
# OpenAI's limit on the requests of one batch's input file (its Batch guide): a file with more fails
# validation whole, with error code too_many_tasks, as OpenAI's does.
MAX_REQUESTS = 50_000


def new_id(kind: str) -> str:
    return f"{kind}-{secrets.token_hex(12)}" if kind == "file" else f"{kind}_{secrets.token_hex(12)}"


def dedupe_key(*, input_file_id: str, endpoint: str, metadata: dict[str, Any] | None) -> str:
    """What makes two creates the same request: the file, the endpoint and the metadata."""
    text = json.dumps([input_file_id, endpoint, metadata or {}], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Split:
    """A validated batch file: per model, a pennyroute JSONL file of its lines; or the line errors."""

    files: dict[str, Path] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    caps: dict[str, int] = field(default_factory=dict)  # a catalog model's lines: the largest output cap asked

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def discard(self) -> None:
        for path in self.files.values():
            path.unlink(missing_ok=True)


def _lines(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """The lines of a file given in pieces, without holding more than a piece and a line."""
    rest = b""
    for piece in pieces:
        rest += piece
        *whole, rest = rest.split(b"\n")
        yield from whole
    if rest:
        yield rest


def _user_text(messages: Any) -> str | None:
    """The text of a chat request's user messages (string contents, or their text parts)."""
    if not isinstance(messages, list):
        return None
    texts = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    text = "\n\n".join(t for t in texts if t)
    return text or None


def split_file(pieces: Iterable[bytes], *, endpoint: str, catalog: Catalog) -> Split:
    """Validate every line; write each model's items to a JSONL file of its own ({"id", "text"})."""
    split = Split()
    handles: dict[str, Any] = {}
    seen: set[str] = set()

    def error(line: int, code: str, message: str, param: str | None = None) -> None:
        if len(split.errors) < 100:
            split.errors.append({"code": code, "line": line, "message": message, "param": param})

    requests = 0
    try:
        for number, raw in enumerate(_lines(pieces), start=1):
            if not raw.strip():
                continue
            requests += 1
            if requests > MAX_REQUESTS:
                split.errors.insert(
                    0,
                    {
                        "code": "too_many_tasks",
                        "line": number,
                        "message": f"The input file holds more than {MAX_REQUESTS:,} requests, the most one batch "
                        "takes (as OpenAI's Batch API): split it into several batches.",
                        "param": None,
                    },
                )
                break
            try:
                line = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError):
                error(number, "invalid_json_line", "This line is not parseable as valid JSON.")
                continue
            if not isinstance(line, dict):
                error(number, "invalid_json_line", "A line must be a JSON object.")
                continue
            custom_id = line.get("custom_id")
            if not isinstance(custom_id, str) or not custom_id:
                error(number, "missing_required_parameter", "custom_id is required (a string).", "custom_id")
                continue
            if custom_id in seen:
                error(number, "duplicate_custom_id", f"custom_id '{custom_id}' repeats an earlier line.", "custom_id")
                continue
            seen.add(custom_id)
            if line.get("method", "POST") != "POST":
                error(number, "invalid_method", "Only POST is supported.", "method")
                continue
            if line.get("url") != endpoint:
                error(number, "mismatched_endpoint", f"The url must be the batch's endpoint {endpoint}.", "url")
                continue
            body = line.get("body")
            model = body.get("model") if isinstance(body, dict) else None
            if not isinstance(model, str) or not model:
                error(number, "missing_required_parameter", "body.model is required.", "body.model")
                continue
            if model != AUTO and model not in catalog.models:
                error(
                    number,
                    "model_not_found",
                    f"The model '{model}' is not in pennyroute's catalog; name one of GET /models, or {AUTO}.",
                    "body.model",
                )
                continue
            if model == AUTO:
                if body.get("stream"):  # type: ignore[union-attr]
                    error(number, "invalid_value", "stream is not supported in a batch.", "body.stream")
                    continue
                text = _user_text(body.get("messages"))  # type: ignore[union-attr]
                if text is None:
                    error(number, "missing_required_parameter", "body.messages needs a user message.", "body.messages")
                    continue
                item: dict[str, Any] = {"id": custom_id, "text": text}
            else:  # a catalog model: the line's own conversation and parameters, sent as given
                try:
                    chat = read_chat(body)  # type: ignore[arg-type]
                except ChatError as exc:
                    error(number, "invalid_value", f"body.{exc.field}: {exc.reason}", f"body.{exc.field}")
                    continue
                item = {"id": custom_id, **json.loads(chat.canonical())}
                split.caps[model] = max(split.caps.get(model, 0), chat.max_tokens or CHAT_DEFAULT_MAX_TOKENS)
            if model not in handles:
                handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed below, after the last line)
                    "w", prefix="pennyroute-v1-", suffix=".jsonl", delete=False
                )
                handles[model] = handle
                split.files[model] = Path(handle.name)
                split.counts[model] = 0
            handles[model].write(json.dumps(item) + "\n")
            split.counts[model] += 1
    finally:
        for handle in handles.values():
            handle.close()
    if not split.errors and not split.counts:
        split.errors.append(
            {"code": "empty_file", "line": None, "message": "The input file has no requests.", "param": None}
        )
    if split.errors:
        split.discard()
    return split


# The only completion window OpenAI's Batch API takes, and so the one this intake takes.
COMPLETION_WINDOW = "24h"
# How a batch's jobs run when its metadata names no `mode` (sync, batch or auto, as `submit --mode`).
DEFAULT_MODE = "auto"
# That window in seconds: a batch still in progress this long after its create expires, as OpenAI's
# does (its unfinished jobs cancelled, its unanswered lines in the error file as batch_expired).
WINDOW_S = 24 * 3600
EXPIRED_CODE = "batch_expired"
# OpenAI's words for a line its batch's window closed on (the Batch guide, "Batch expiration").
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."


def job_request(
    path: Path, *, model: str, team: str, tenant: str, metadata: dict[str, Any], max_output_tokens: int | None = None
) -> JobRequest:
    """The pennyroute job for one model's lines of a batch (see the module's docstring)."""
    # The batch's completion window is the job's deadline. Metadata `mode` (as `submit --mode`) says
    # how it runs: auto by default, as an OpenAI Batch user expects (the providers' batch APIs at the
    # batch price where the 24h window allows: policies/execution_mode.py); batch asks for them, sync
    # refuses them. A provider create that fails ambiguously is found or sent again at once
    # (engine/batch_submit.py create_again), so a small batch is not held up by it.
    common: dict[str, Any] = {
        "path": path,
        "team": team,
        "tenant": tenant,
        "deadline": COMPLETION_WINDOW,
        "mode": str(metadata.get("mode") or DEFAULT_MODE),
        "on_budget": str(metadata.get("on_budget") or "reject"),
    }
    if model != AUTO:  # each line's conversation runs as sent, on the model it names
        return JobRequest(
            **common,
            task="chat",
            min_quality=0.0,
            models=frozenset({model}),
            quality="prior",
            max_output_tokens=max_output_tokens,
        )
    labels = tuple(v.strip() for v in str(metadata.get("labels") or "").split(",") if v.strip())
    if "min_quality" not in metadata:
        raise InputError(f"{AUTO} lines need the bar: metadata min_quality, e.g. 0.9", field="metadata.min_quality")
    return JobRequest(
        **common,
        task=str(metadata.get("task") or ("classify" if labels else "summarize")),
        labels=labels,
        max_words=_number(metadata, "max_words", int) if metadata.get("max_words") else None,
        min_quality=_number(metadata, "min_quality", float),
        quality="reference",
    )


def _number(metadata: dict[str, Any], key: str, kind: type) -> Any:
    try:
        return kind(metadata[key])
    except (TypeError, ValueError):
        raise InputError(f"'{metadata[key]}' is not a number", field=f"metadata.{key}") from None


def submit_split(
    settings: Settings, catalog: Catalog, split: Split, *, team: str, tenant: str, metadata: dict[str, Any]
) -> dict[str, str]:
    """Submit one job per model of a validated batch file; {model: job id}. All or nothing: when one
    cannot be submitted (no model, budget), those already submitted are cancelled before the error
    goes on. The files are removed."""
    made: dict[str, str] = {}
    try:
        for model, path in split.files.items():
            request = job_request(
                path, model=model, team=team, tenant=tenant, metadata=metadata, max_output_tokens=split.caps.get(model)
            )
            if model == AUTO and _measured_before(settings, catalog, request):
                request = replace(request, quality="auto")  # route on what earlier batches measured
            made[model] = submit_job(settings, catalog, request).job_id
    except Exception:
        for job_id in made.values():
            lifecycle.cancel(settings, catalog, job_id=job_id)
        raise
    finally:
        split.discard()
    return made


def _measured_before(settings: Settings, catalog: Catalog, request: JobRequest) -> bool:
    """Whether the tenant has fresh quality estimates for this kind of job (an earlier batch or job
    measured them): then a pennyroute-auto batch is routed on them rather than measured again."""
    with session_scope(settings) as session:
        tenant = repo.get_tenant(session, name=request.tenant or "")
        assert tenant.id is not None
        found = estimates.fresh_estimates(
            session, catalog, tenant_id=tenant.id, signature=estimates.signature_of(request)
        )
    return bool(found)


# -- a batch as OpenAI shows it -------------------------------------------------------------------------


def _ts(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def past_window(batch: ApiBatch, now: datetime) -> bool:
    """Whether the batch's completion window (WINDOW_S from its create) has closed."""
    if batch.created_at is None:
        return False
    created = batch.created_at if batch.created_at.tzinfo is not None else batch.created_at.replace(tzinfo=UTC)
    return now >= created + timedelta(seconds=WINDOW_S)


def refresh(settings: Settings, catalog: Catalog, batch: ApiBatch) -> tuple[ApiBatch, list[Job]]:
    """The batch with its status brought up to date from its jobs (written back when it moved on); a
    batch whose window closed before its jobs ended expires (`expire`)."""
    with session_scope(settings) as session:
        jobs = [repo.get_job(session, job_id) for job_id in batch.job_ids]
    ended = all(job.status in ENDED for job in jobs)
    now = utcnow()
    if batch.status == "in_progress" and (batch.expired_at is not None or (not ended and past_window(batch, now))):
        expire(settings, catalog, batch, now=now)
        with session_scope(settings) as session:
            jobs = [repo.get_job(session, job_id) for job_id in batch.job_ids]
        return batch, jobs
    with session_scope(settings) as session:
        changes: dict[str, Any] = {}
        if batch.status in ("in_progress", "cancelling") and ended:
            if batch.status == "cancelling":
                changes.update(status="cancelled", cancelled_at=now)
            else:
                changes.update(status="completed", finalizing_at=now, completed_at=now)
        if changes:
            batches.update_batch(session, batch.id, **changes)
            for key, value in changes.items():
                setattr(batch, key, value)
    return batch, jobs


def expire(settings: Settings, catalog: Catalog, batch: ApiBatch, *, now: datetime) -> None:
    """The batch's window closed: `expired_at` is written first (under the batch's row lock: one
    caller does it), then its jobs are cancelled through the lifecycle (calls in flight finish and are
    recorded, calls made stay charged, reservations are released), then the status is `expired`. A
    caller that dies between those steps leaves `expired_at` set: the next refresh finishes the work."""
    with session_scope(settings) as session:
        row = batches.owned_batch(session, batch.id, tenant_id=batch.tenant_id, team_id=None, for_update=True)
        if row.status != "in_progress":
            batch.status, batch.expired_at = row.status, row.expired_at
            return
        if row.expired_at is None:
            batches.update_batch(session, batch.id, expired_at=now)
        batch.expired_at = row.expired_at or now
    for job_id in batch.job_ids:
        lifecycle.cancel(settings, catalog, job_id=job_id)
    with session_scope(settings) as session:
        batches.update_batch(session, batch.id, status="expired")
    batch.status = "expired"
    log.info("batch %s expired: its %s window closed before its lines were done", batch.id, batch.completion_window)


def expire_overdue(settings: Settings, catalog: Catalog, *, now: datetime | None = None) -> int:
    """Expire every tenant's batches still in progress past their window, read or not (beat's sweep
    runs this, so a batch nobody polls still expires on time); returns how many expired."""
    now = now or utcnow()
    with session_scope(settings) as session:
        overdue = batches.in_progress_since(session, before=now - timedelta(seconds=WINDOW_S))
        session.expunge_all()
    expired = 0
    for batch in overdue:
        refresh(settings, catalog, batch)
        expired += batch.status == "expired"
    return expired


def as_openai(batch: ApiBatch, jobs: list[Job], *, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    """The OpenAI `Batch` object for this batch."""
    completed = sum(job.n_done for job in jobs)
    # A job that ended (done, no route proven, cancelled) answers no more: what it did not answer failed.
    failed = sum((job.n_items - job.n_done if job.status in ENDED else job.n_failed) + job.n_rejected for job in jobs)
    ended = batch.status in ("completed", "cancelled", "failed", "expired")
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "model": None,
        "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": batch.status,
        "output_file_id": batch.output_file_id if ended and batch.job_ids else None,
        "error_file_id": batch.error_file_id if ended and batch.job_ids else None,
        "created_at": _ts(batch.created_at),
        "in_progress_at": _ts(batch.in_progress_at),
        "expires_at": _ts(batch.created_at + timedelta(seconds=WINDOW_S)) if batch.created_at else None,
        "finalizing_at": _ts(batch.finalizing_at),
        "completed_at": _ts(batch.completed_at),
        "failed_at": _ts(batch.failed_at),
        "expired_at": _ts(batch.expired_at),
        "cancelling_at": _ts(batch.cancelling_at),
        "cancelled_at": _ts(batch.cancelled_at),
        "request_counts": {"total": batch.n_total, "completed": completed, "failed": failed},
        "metadata": batch.batch_metadata,
        "usage": usage,
    }


def output_lines(settings: Settings, batch: ApiBatch, *, errors: bool) -> Iterator[dict[str, Any]]:
    """The batch's output file (answered lines) or error file (failed lines), in OpenAI's line shape,
    streamed from the jobs' results."""
    created = _ts(batch.created_at) or 0
    for job_id in batch.job_ids:
        with session_scope(settings) as session:
            job = repo.get_job(session, job_id)
        for seq, record in enumerate(result_records(settings, job_id)):
            line_id = f"batch_req_{job_id}_{seq}"
            done = record["status"] == "done"
            # An answer goes to the output file; a failure, or a line its ended job never ran, to errors.
            if errors == done or (record["status"] != "failed" and not done and job.status not in ENDED):
                continue
            if not done:
                ran = record["status"] == "failed" and record.get("error") != "cancelled"
                if batch.status == "expired" and not ran:  # the window closed before it was answered
                    yield {
                        "id": line_id,
                        "custom_id": record["id"],
                        "response": None,
                        "error": {"code": EXPIRED_CODE, "message": EXPIRED_MESSAGE},
                    }
                    continue
                ran = record["status"] == "failed"
                yield {
                    "id": line_id,
                    "custom_id": record["id"],
                    "response": None,
                    "error": {
                        "code": record.get("outcome") or ("request_failed" if ran else job.status),
                        "message": record.get("error")
                        or (job.calibration or {}).get("message")
                        or f"not run: the job is {job.status}",
                    },
                }
                continue
            prompt, completion = int(record["input_tokens"] or 0), int(record["output_tokens"] or 0)
            yield {
                "id": line_id,
                "custom_id": record["id"],
                "response": {
                    "status_code": 200,
                    "request_id": line_id,
                    "body": {
                        "id": f"chatcmpl-{job_id}-{seq}",
                        "object": "chat.completion",
                        "created": created,
                        "model": record["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": record["output"], "refusal": None},
                                "finish_reason": "length" if record.get("finish") == "cut" else "stop",
                                "logprobs": None,
                            }
                        ],
                        "usage": {
                            "prompt_tokens": prompt,
                            "completion_tokens": completion,
                            "total_tokens": prompt + completion,
                        },
                        "pennyroute": {"cost_usd": record["cost_usd"], "attempts": record["attempts"]},
                    },
                },
                "error": None,
            }


def rejected_lines(settings: Settings, batch: ApiBatch) -> Iterator[dict[str, Any]]:
    """Error lines for the batch's lines that its jobs' intake rejected (a text longer than every
    eligible model's context window): found again by reading the input file, since a job keeps the
    line numbers of its own file, which holds its model's lines in the input's order. A job keeps its
    first rejections only (jobs/submit.py KEPT_REJECTIONS); request_counts counts them all."""
    wanted: dict[str, dict[int, str]] = {}
    with session_scope(settings) as session:
        for model, job_id in ((batch.lines or {}).get("jobs") or {}).items():
            job = repo.get_job(session, job_id)
            if job.rejected:
                wanted[model] = {int(r["line"]): str(r["reason"]) for r in job.rejected}
    if not wanted:
        return
    seen: dict[str, int] = {}
    with session_scope(settings) as session:
        for raw in _lines(batches.pieces(session, batch.input_file_id)):
            if not raw.strip():
                continue
            line = json.loads(raw)  # validated when the batch was made
            model = line["body"]["model"]
            seen[model] = seen.get(model, 0) + 1
            reason = wanted.get(model, {}).get(seen[model])
            if reason is not None:
                yield {
                    "id": f"batch_req_{batch.id}_{line['custom_id']}",
                    "custom_id": line["custom_id"],
                    "response": None,
                    "error": {"code": "invalid_request", "message": reason},
                }


def usage_of(settings: Settings, batch: ApiBatch) -> dict[str, Any]:
    """The batch's usage (OpenAI's BatchUsage): the answered lines' tokens. Summed once, when the
    batch has ended, and kept with it (a poller's reads do not sum a large batch again)."""
    kept = (batch.lines or {}).get("usage")
    if kept is not None:
        return dict(kept)
    inputs = outputs = 0
    for line in output_lines(settings, batch, errors=False):
        usage = line["response"]["body"]["usage"]
        inputs += usage["prompt_tokens"]
        outputs += usage["completion_tokens"]
    usage = {
        "input_tokens": inputs,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": outputs,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": inputs + outputs,
    }
    if batch.status in ("completed", "cancelled", "failed", "expired"):
        lines = {**(batch.lines or {}), "usage": usage}
        with session_scope(settings) as session:
            batches.update_batch(session, batch.id, lines=lines)
        batch.lines = lines
    return usage


def file_object(file: ApiFile) -> dict[str, Any]:
    """The OpenAI `FileObject` for a file."""
    return {
        "id": file.id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": _ts(file.created_at),
        "filename": file.filename,
        "purpose": file.purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


# -- what the /v1 endpoints do (router/api/openai_batch.py calls these) -----------------------------


@dataclass(frozen=True, slots=True)
class Owner:
    """Whose request it is: the key's tenant, and its team for a team-scoped key."""

    tenant_id: int
    tenant: str
    team_id: int | None
    team: str | None


def too_large(max_bytes: int) -> TooLargeError:
    """The refusal of an upload over the cap, naming it."""
    return TooLargeError(
        f"the file is larger than this server's upload limit of {max_bytes / (1 << 20):,.0f} MB "
        "(PENNYROUTE_MAX_UPLOAD_MB; OpenAI's Batch API takes input files up to 200 MB): split it into "
        "several batches",
        field="file",
    )


def add_input_file(
    settings: Settings,
    owner: Owner,
    *,
    filename: str,
    purpose_of: Callable[[], str | None],
    pieces: Iterable[bytes],
    max_bytes: int,
) -> ApiFile:
    """Store an uploaded batch input file, from `pieces` as they arrive, into the ledger PIECE_BYTES at
    a time. Past `max_bytes` it stops and raises TooLargeError: the pieces written are rolled back
    with the file's row. `purpose_of` gives the form's purpose as known so far: checked before the
    first piece when it came before the file, and again after the last (it may follow the file)."""

    def check_purpose(required: bool) -> None:
        purpose = purpose_of()
        if purpose is None and not required:
            return
        if purpose != "batch":
            raise InputError(f"purpose '{purpose or ''}' is not supported: use batch", field="purpose")

    check_purpose(required=False)
    with session_scope(settings) as session:
        row = batches.add_file(
            session,
            ApiFile(
                id=new_id("file"), tenant_id=owner.tenant_id, team_id=owner.team_id, filename=filename, purpose="batch"
            ),
        )
        size = seq = 0
        held = bytearray()
        for data in itertools.chain(pieces, [b""]):
            size += len(data)
            if size > max_bytes:
                raise too_large(max_bytes)  # the session rolls back: the row and every piece written
            held += data
            while len(held) >= PIECE_BYTES or (not data and held):
                batches.add_piece(session, file_id=row.id, seq=seq, data=bytes(held[:PIECE_BYTES]))
                del held[:PIECE_BYTES]
                seq += 1
        check_purpose(required=True)
        batches.set_file_bytes(session, file_id=row.id, size=size)
        row.bytes = size
    return row


def create_batch(
    settings: Settings,
    catalog: Catalog,
    owner: Owner,
    *,
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    metadata: dict[str, str],
) -> tuple[ApiBatch, list[str]]:
    """Make a batch from an uploaded file: (the batch, the ids of the jobs to start now). A create
    repeated within settings.batch_dedupe_s (same tenant, file, endpoint and metadata) answers the
    first one's batch and starts nothing. A file that fails validation, or whose jobs cannot be
    submitted (no model qualifies, the budget cannot take them), makes a failed batch."""
    if len(metadata) > MAX_METADATA:
        raise InputError(f"metadata holds at most {MAX_METADATA} pairs", field="metadata")
    if endpoint != ENDPOINT:
        raise InputError(f"endpoint '{endpoint}' is not supported: use {ENDPOINT}", field="endpoint")
    if completion_window != COMPLETION_WINDOW:
        raise InputError("only 24h is supported", field="completion_window")
    team = owner.team or metadata.get("team")
    if not team:
        raise InputError("name the team billed in metadata.team (or use a team-scoped key)", field="metadata.team")
    if owner.team is not None and metadata.get("team", team) != team:
        raise NotFoundError(f"unknown team '{metadata['team']}'")
    key = dedupe_key(input_file_id=input_file_id, endpoint=endpoint, metadata=metadata)
    with session_scope(settings) as session:
        # The file's row lock makes concurrent retries of one create wait for each other: the
        # second finds the first's batch.
        batches.owned_file(session, input_file_id, tenant_id=owner.tenant_id, team_id=owner.team_id, for_update=True)
        since = utcnow() - timedelta(seconds=settings.batch_dedupe_s)
        found = batches.recent_batch(session, tenant_id=owner.tenant_id, dedupe_key=key, since=since)
        if found is not None:
            return found, []
        team_id = owner.team_id or repo.find_team(session, name=team, tenant=owner.tenant).id
        assert team_id is not None
        batch = batches.add_batch(
            session,
            ApiBatch(
                id=new_id("batch"),
                tenant_id=owner.tenant_id,
                team_id=team_id,
                input_file_id=input_file_id,
                endpoint=endpoint,
                completion_window=completion_window,
                batch_metadata=metadata or None,
                dedupe_key=key,
            ),
        )
    with session_scope(settings) as session:
        split = split_file(batches.pieces(session, input_file_id), endpoint=endpoint, catalog=catalog)
    if split.errors:
        return _failed(settings, batch, split.errors), []
    try:
        made = submit_split(settings, catalog, split, team=team, tenant=owner.tenant, metadata=metadata)
    except PennyrouteError as exc:
        said = {"code": "invalid_request", "line": None, "message": str(exc), "param": getattr(exc, "field", None)}
        return _failed(settings, batch, [said]), []
    with session_scope(settings) as session:
        files = {
            kind: batches.add_file(
                session,
                ApiFile(
                    id=new_id("file"),
                    tenant_id=owner.tenant_id,
                    team_id=team_id,  # the billed team's: its team-scoped keys read them too
                    filename=f"{batch.id}_{kind}.jsonl",
                    purpose="batch_output",
                    batch_id=batch.id,
                    kind=kind,
                ),
            ).id
            for kind in ("output", "error")
        }
        changes = {
            "status": "in_progress",
            "in_progress_at": utcnow(),
            "job_ids": list(made.values()),
            "lines": {"jobs": made, "counts": split.counts},
            "n_total": split.total,
            "output_file_id": files["output"],
            "error_file_id": files["error"],
        }
        batches.update_batch(session, batch.id, **changes)
    for name, value in changes.items():
        setattr(batch, name, value)
    return batch, list(made.values())


def _failed(settings: Settings, batch: ApiBatch, errors: list[dict[str, Any]]) -> ApiBatch:
    now = utcnow()
    with session_scope(settings) as session:
        batches.update_batch(session, batch.id, status="failed", failed_at=now, errors=errors)
    batch.status, batch.failed_at, batch.errors = "failed", now, errors
    return batch


def view(settings: Settings, catalog: Catalog, batch: ApiBatch) -> dict[str, Any]:
    """The batch as OpenAI shows it, brought up to date (its usage once it has completed or expired)."""
    batch, jobs = refresh(settings, catalog, batch)
    usage = usage_of(settings, batch) if batch.status in ("completed", "expired") else None
    return as_openai(batch, jobs, usage=usage)


def cancel_batch(settings: Settings, catalog: Catalog, owner: Owner, *, batch_id: str) -> dict[str, Any]:
    """Cancel a batch: cancelling, its jobs cancelled (lifecycle.cancel), then cancelled once they ended."""
    with session_scope(settings) as session:
        batch = batches.owned_batch(
            session, batch_id, tenant_id=owner.tenant_id, team_id=owner.team_id, for_update=True
        )
        if batch.status in ("validating", "in_progress"):
            batches.update_batch(session, batch_id, status="cancelling", cancelling_at=utcnow())
            batch.status = "cancelling"
    if batch.status == "cancelling":
        for job_id in batch.job_ids:
            lifecycle.cancel(settings, catalog, job_id=job_id)
    return view(settings, catalog, batch)


# A batch in one of these states still reads its files (its input for rejected lines, its output and
# error files as they fill).
RUNNING = ("validating", "in_progress", "finalizing", "cancelling")
# OpenAI's list files endpoint: `limit` from 1 to 10,000, 10,000 by default.
MAX_LIST_FILES = 10_000


def list_files(
    settings: Settings, owner: Owner, *, purpose: str | None, after: str | None, limit: int, order: str
) -> dict[str, Any]:
    """The key's files as OpenAI's `GET /v1/files` lists them: newest first (`order` desc) or oldest
    first (asc), of `purpose` if given, after the file `after`, `limit` at most, with has_more."""
    if order not in ("asc", "desc"):
        raise InputError(f"order '{order}' is not one of asc, desc", field="order")
    if not 1 <= limit <= MAX_LIST_FILES:
        raise InputError(f"limit must be from 1 to {MAX_LIST_FILES}", field="limit")
    with session_scope(settings) as session:
        rows = batches.list_files(
            session,
            tenant_id=owner.tenant_id,
            team_id=owner.team_id,
            purpose=purpose,
            after=after,
            limit=limit + 1,
            newest_first=order == "desc",
        )
    data = [file_object(row) for row in rows[:limit]]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(rows) > limit,
    }


def delete_file(settings: Settings, catalog: Catalog, owner: Owner, *, file_id: str) -> dict[str, Any]:
    """Delete a file: its content is removed and it is gone for its tenant (404 after). A file that a
    batch still running reads (its input, its output or error file) is refused (ConflictError,
    file_in_use): cancel the batch, or wait for it to end."""
    with session_scope(settings) as session:
        batches.owned_file(session, file_id, tenant_id=owner.tenant_id, team_id=owner.team_id)
        using = [b for b in batches.batches_using(session, file_id) if b.status in RUNNING]
        session.expunge_all()
    for batch in using:
        refresh(settings, catalog, batch)  # a batch whose jobs have ended is no longer running
        if batch.status in RUNNING:
            raise ConflictError(
                f"File {file_id} is used by batch {batch.id}, which is {batch.status}: cancel the batch "
                "or wait for it to end, then delete the file",
                code="file_in_use",
            )
    with session_scope(settings) as session:
        batches.owned_file(session, file_id, tenant_id=owner.tenant_id, team_id=owner.team_id, for_update=True)
        batches.delete_file(session, file_id, now=utcnow())
    return {"id": file_id, "object": "file", "deleted": True}


def file_lines(settings: Settings, file: ApiFile) -> Iterator[bytes]:
    """A file's bytes: an input file's as uploaded; a batch's output or error file made from its results."""
    if file.batch_id is None:
        with session_scope(settings) as session:
            yield from batches.pieces(session, file.id)
        return
    with session_scope(settings) as session:
        batch = batches.owned_batch(session, file.batch_id, tenant_id=file.tenant_id, team_id=None)
    lines = output_lines(settings, batch, errors=file.kind == "error")
    if file.kind == "error":
        lines = itertools.chain(lines, rejected_lines(settings, batch))
    for line in lines:
        yield (json.dumps(line) + "\n").encode()

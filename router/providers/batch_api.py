"""The seam between the engine and a provider's asynchronous batch API: plain frozen values, no vendor types.

A provider that sells a batch API (OpenAI Batch, Anthropic Message Batches, Mistral batch jobs, Gemini
batchGenerateContent) gets a `BatchAPI` beside its `Provider`, in its own module
(providers/<vendor>.py): it knows that vendor's endpoints and line shapes and nothing else. The engine
(router/engine/) decides what goes to batch, writes every line's ledger row before `create`, polls,
ingests `results` one line at a time, and settles each line at its own usage times the batch price.

    create   one batch of lines (each line's custom_id is its ledger call id, already provider-safe:
             [a-zA-Z0-9_-]{1,64}); returns the provider's batch id and its first state
    get      the batch's state now (pennyroute's words plus the vendor's own status)
    results  the ended batch's lines as they are read, out of order, streamed: a 50,000-line result
             file is never held whole in memory; each custom_id at most once
    cancel   ask the provider to stop; lines already done stay done and are still read by `results`
    find     a batch created under `tag` (our own batch row id, sent as metadata or display name), so a
             worker that died between `create` and writing the provider's id does not create it twice;
             None where the vendor cannot be asked; such a vendor's class sets `can_find = False`, and
             the engine then treats the lines of a batch that may have been created as maybe sent
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from router.providers.base import ChatRequest, Completion
from router.usage import TokenUsage

# A batch's state in pennyroute's terms; each vendor module maps its own statuses onto these.
PENDING = "pending"  # accepted, not yet running (OpenAI validating, Mistral QUEUED, Gemini PENDING)
RUNNING = "running"  # lines being answered (in_progress, finalizing, RUNNING, cancelling ...)
ENDED = "ended"  # every line has its outcome; `results` can be read (completed, expired, cancelled, ended)
FAILED = "failed"  # the batch as a whole was refused (OpenAI failed: validation); no line ran, none billed
BATCH_STATES = (PENDING, RUNNING, ENDED, FAILED)

# A line's outcome in pennyroute's terms.
SUCCEEDED = "succeeded"  # answered: `completion` holds the text, its usage and how it ended
ERRORED = "errored"  # the provider answered the line with an error (`error`, `retryable`)
EXPIRED = "expired"  # not done before the batch's window closed
CANCELED = "canceled"  # not done because the batch was cancelled
LINE_OUTCOMES = (SUCCEEDED, ERRORED, EXPIRED, CANCELED)


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One request of a batch: its ledger call id (the custom_id on the wire) and the chat call."""

    custom_id: str
    request: ChatRequest


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """How much one batch may hold, per the vendor's documentation (the engine splits work to fit)."""

    max_lines: int
    max_bytes: int  # of the encoded input (file or inline JSON body)
    window_s: int  # the vendor's completion window: a line not done by then expires


@dataclass(frozen=True, slots=True)
class BatchState:
    """A batch as the provider reports it now."""

    batch_id: str  # the provider's id (OpenAI batch_..., Anthropic msgbatch_..., Mistral uuid, Gemini batches/...)
    state: str  # one of BATCH_STATES
    vendor_status: str  # the provider's own word for it (in_progress, ended, TIMEOUT_EXCEEDED, BATCH_STATE_...)
    total: int = 0
    done: int = 0  # lines with an outcome so far, where the vendor says
    failed: int = 0
    error: str | None = None  # why a FAILED batch was refused


@dataclass(frozen=True, slots=True)
class LineResult:
    """One line of an ended batch.

    `usage` is what the provider billed for the line, whatever its outcome: a SUCCEEDED line carries it
    in `completion.usage` (and here too); an EXPIRED or ERRORED line that still reports usage was billed
    and is charged. None means the vendor reported no usage (not billed).
    """

    custom_id: str
    outcome: str  # one of LINE_OUTCOMES
    completion: Completion | None = None
    usage: TokenUsage | None = None
    error: str | None = None  # the vendor's error, redacted of credentials
    retryable: bool = True  # whether running the line again (next batch, or sync) may succeed


class BatchAPI(Protocol):
    """A vendor's batch API. One per provider module; built by the registry beside the Provider."""

    name: str  # the catalog's provider name
    simulated: bool
    limits: BatchLimits

    def line_bytes(self, line: BatchLine) -> int:
        """The encoded size of one line, as the vendor counts it against `limits.max_bytes`."""
        ...

    async def create(self, lines: Sequence[BatchLine], *, model: str, tag: str) -> BatchState:
        """Submit one batch (upload, then create, where the vendor needs a file); `model` is the
        provider's own model id; `tag` is pennyroute's batch id, sent where the vendor keeps it."""
        ...

    async def get(self, batch_id: str) -> BatchState:
        """The batch's state now; raise a ProviderError subclass (router.errors) on failure."""
        ...

    def results(self, batch_id: str) -> AsyncIterator[LineResult]:
        """The ended batch's lines, streamed as read (never the whole file in memory)."""
        ...

    async def cancel(self, batch_id: str) -> BatchState:
        """Ask the provider to cancel; finished lines stay billed and readable."""
        ...

    async def find(self, tag: str) -> BatchState | None:
        """The batch created under `tag`, if the vendor can be asked and it exists."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def can_find(api: BatchAPI) -> bool:
    """Whether the vendor can be asked for a batch by its tag (a class that cannot sets `can_find = False`:
    Anthropic keeps no metadata)."""
    return bool(getattr(api, "can_find", True))

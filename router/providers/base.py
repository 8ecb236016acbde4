"""What every provider takes and gives back: plain frozen values, no vendor types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from router.usage import TokenUsage


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat call: a system instruction, one user message, and an output cap.

    `max_output_tokens` caps the answer. A thinking model spends tokens reasoning before it answers,
    counted inside the same cap on the wire, so `thinking_tokens` says what to do about it (the
    catalog's `thinking` for the model): None, the model does not think and nothing is sent; 0, switch
    its thinking off; N, let it think up to N tokens, sent on top of the answer's cap.
    """

    model: str  # the provider's own name for the model (its API model id)
    system: str
    prompt: str
    max_output_tokens: int
    temperature: float = 0.0
    request_id: str | None = None  # the ledger's call id, sent as X-Client-Request-Id where a provider takes it
    thinking_tokens: int | None = None
    reasoning_effort: str | None = None  # OpenAI reasoning models: "minimal", "low", ... sent as given

    @property
    def output_cap(self) -> int:
        """The most output tokens this call can be billed for: the answer's cap plus any thinking allowed."""
        return self.max_output_tokens + (self.thinking_tokens or 0)


@dataclass(frozen=True, slots=True)
class Completion:
    """A successful answer."""

    text: str
    usage: TokenUsage


class Provider(Protocol):
    """A vendor API. One module per vendor knows endpoint, auth and mapping, nothing else."""

    name: str
    simulated: bool

    async def complete(self, request: ChatRequest) -> Completion:
        """Make one call; raise a ProviderError subclass (router.errors) on failure."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...

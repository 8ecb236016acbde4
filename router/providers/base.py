"""What every provider takes and gives back: plain frozen values, no vendor types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat call: a system instruction, one user message, and an output cap."""

    model: str  # the provider's own name for the model (its API model id)
    system: str
    prompt: str
    max_output_tokens: int
    temperature: float = 0.0
    request_id: str | None = None  # the ledger's call id, sent as X-Client-Request-Id where a provider takes it


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Tokens as the provider reported them (input excludes cached input)."""

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0  # thinking tokens; already counted in output_tokens (billed as output)
    estimated: bool = False  # true when the response lacked usage and it was estimated


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

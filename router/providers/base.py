"""What every provider takes and gives back: plain frozen values, no vendor types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from router.chat import Message
from router.usage import TokenUsage


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat call: a system instruction, one user message, and an output cap; or, for a chat item,
    a whole conversation (`messages`, sent as given in place of `system` and `prompt`).

    `max_output_tokens` caps the answer. A thinking model spends tokens reasoning before it answers,
    counted inside the same cap on the wire, so `thinking_tokens` says what to do about it (the
    catalog's `thinking` for the model): None, the model does not think and nothing is sent; 0, switch
    its thinking off; N, let it think up to N tokens, sent on top of the answer's cap.
    """

    model: str  # the provider's own name for the model (its API model id)
    system: str
    prompt: str
    max_output_tokens: int
    temperature: float | None = 0.0  # None: the provider's default (nothing sent)
    request_id: str | None = None  # the ledger's call id, sent as X-Client-Request-Id where a provider takes it
    thinking_tokens: int | None = None
    # OpenAI reasoning models: reasoning_effort; Gemini 3 and later: thinkingLevel. Sent as given.
    reasoning_effort: str | None = None
    messages: tuple[Message, ...] = ()  # a chat item's conversation: when given, system and prompt are not used
    top_p: float | None = None  # sent where the model takes it
    stop: tuple[str, ...] = ()

    def conversation(self) -> tuple[Message, ...]:
        """The turns to send: the chat item's messages, or the system instruction (when not empty) and
        the one user message."""
        if self.messages:
            return self.messages
        user = Message("user", self.prompt)
        return (Message("system", self.system), user) if self.system else (user,)

    def system_text(self) -> str:
        """The system turns joined (for a vendor that takes the system instruction apart)."""
        return "\n\n".join(m.content for m in self.conversation() if m.role == "system")

    def turns(self) -> tuple[Message, ...]:
        """The conversation without its system turns."""
        return tuple(m for m in self.conversation() if m.role != "system")

    @property
    def output_cap(self) -> int:
        """The most output tokens this call can be billed for: the answer's cap plus any thinking allowed."""
        return self.max_output_tokens + (self.thinking_tokens or 0)


# How an answer ended, in pennyroute's terms; each provider module maps its vendor's words onto these.
STOP = "stop"  # a whole answer (OpenAI/Mistral "stop", Anthropic "end_turn", Gemini "STOP")
CUT = "cut"  # cut off by the output cap (OpenAI/Mistral "length", Anthropic "max_tokens", Gemini "MAX_TOKENS")
REFUSED = "refused"  # the model declined (Anthropic "refusal", OpenAI `message.refusal`)
FILTERED = "filtered"  # the provider's filter withheld or cut the answer (OpenAI "content_filter", Gemini "SAFETY"...)
BLOCKED = "blocked"  # the prompt was blocked before any answer (Gemini `promptFeedback.blockReason`)
BROKEN = "broken"  # the provider ended the answer in error (Mistral "error", Gemini "OTHER"...)
FINISHES = (STOP, CUT, REFUSED, FILTERED, BLOCKED, BROKEN)
# An answer not used because of how it ended is its own outcome in results and reports (named as
# router.ledger.rollup.OUTCOMES names them); a BROKEN one is counted as a plain failure.
OUTCOME_OF_FINISH = {REFUSED: "refused", FILTERED: "filtered", BLOCKED: "blocked", CUT: "cut_off"}


@dataclass(frozen=True, slots=True)
class Completion:
    """An answer the provider gave, and billed: its text, its usage, and how it ended.

    `finish` says how it ended (STOP, CUT, REFUSED, FILTERED, BLOCKED, BROKEN); `finish_reason` is
    the vendor's own value for it ("length", "max_tokens", "SAFETY", ...) and `detail` anything the
    vendor said beside it (a refusal's text, a block's reason). Only a STOP answer is whole; any other
    is still charged with its usage (the provider billed it), and `unusable` says why it is not used.
    """

    text: str
    usage: TokenUsage
    finish: str = STOP
    finish_reason: str | None = None
    detail: str | None = None

    @property
    def unusable(self) -> str | None:
        """Why this answer cannot be used whatever the task, or None. A CUT answer is not whole, but a
        label read from it may stand (the caller decides): it is described by `cut_reason`."""
        said = f"{self.finish_reason}" + (f": {self.detail}" if self.detail else "")
        if self.finish == REFUSED:
            return f"refused by the model ({said}); charged, not retried on the same model"
        if self.finish == FILTERED:
            return f"withheld by the provider's content filter ({said}); charged, not retried on the same model"
        if self.finish == BLOCKED:
            return f"prompt blocked by the provider before any answer ({said}); charged, not retried on the same model"
        if self.finish == BROKEN:
            return f"the provider ended the answer in error ({said}); charged"
        return None

    @property
    def cut_reason(self) -> str:
        """The reason a CUT answer is failed: it names the cap and the vendor's finish reason."""
        return (
            f"cut off by the output cap ({self.finish_reason}, {self.usage.output_tokens} output tokens billed); "
            "a larger cap would need a new reservation, so it is not retried on the same model"
        )


class UnreadableAnswer(ValueError):
    """Raised by a provider's parser when a 2xx body's content cannot be read but its usage could:
    the provider billed it, so the caller records `usage` (router.errors.MalformedResponse)."""

    def __init__(self, message: str, *, usage: TokenUsage) -> None:
        super().__init__(message)
        self.usage = usage


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

"""A chat item: a conversation sent as given, with its own output cap and sampling parameters.

A job of task `chat` runs each item's messages as they are, on the model its route names, and keeps
the answer's text as the item's output (no label read, no summary judged: its quality is not measured,
so a chat job has no quality bar and names its model, or takes the cheapest eligible one). The /v1
intake makes one from each line that names a catalog model; `pennyroute submit --task chat` from a
JSONL of `{"id", "messages", ...}` lines.

What a chat item may carry, checked by `read_chat` with a reason naming the field:

    messages                 required: [{"role": "system"|"developer"|"user"|"assistant", "content"}],
                             content a string or a list of text parts ({"type": "text", "text"});
                             at least one user message. "developer" is sent as "system".
    max_tokens               the answer's cap in tokens (max_completion_tokens is the same field);
                             default CHAT_DEFAULT_MAX_TOKENS, at most the job's cap
    temperature, top_p       sent where the model takes them (a model that refuses sampling
                             parameters, such as Anthropic's under API 2026-10-21, or a reasoning
                             model, is sent none: the provider modules decide)
    stop                     a string or up to MAX_STOP strings

Anything else that would change the answer (tools, response_format, n > 1, logprobs, images, audio)
is refused by name rather than dropped without a word; fields that do not change it (user, metadata,
store, seed, service_tier, n = 1) are accepted and not sent. The item is stored as canonical JSON in
the item's text (`canonical`), and read back for each call (`stored`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

# A line that gives no cap of its own may answer this long (OpenAI lets a model run to its own
# maximum; a bound is needed here because every call's worst case is reserved against the budget).
CHAT_DEFAULT_MAX_TOKENS = 4096
# The most stop sequences a line may give (OpenAI takes up to 4; Gemini 5).
MAX_STOP = 4
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# Fields that do not change the answer: taken and not sent.
IGNORED = frozenset({"model", "user", "metadata", "store", "seed", "service_tier", "n", "stream", "stream_options"})
SENT = frozenset({"messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop"})


@dataclass(frozen=True, slots=True)
class Message:
    """One turn of a conversation: role "system", "user" or "assistant", and its text."""

    role: str
    content: str


@dataclass(frozen=True, slots=True)
class ChatItem:
    """A conversation and how it is to be answered."""

    messages: tuple[Message, ...]
    max_tokens: int | None = None  # None: the job's cap
    temperature: float | None = None  # None: the provider's default, not sent
    top_p: float | None = None
    stop: tuple[str, ...] = ()

    def canonical(self) -> str:
        """The item as stored in its text: compact JSON, only what is sent."""
        body: dict[str, Any] = {"messages": [{"role": m.role, "content": m.content} for m in self.messages]}
        for key in ("max_tokens", "temperature", "top_p"):
            if getattr(self, key) is not None:
                body[key] = getattr(self, key)
        if self.stop:
            body["stop"] = list(self.stop)
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


class ChatError(ValueError):
    """A chat body that cannot be run as given: `field` names where (e.g. "messages[2].content")."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def read_chat(body: dict[str, Any], *, cap: int | None = None) -> ChatItem:
    """The chat item of a request body (a /v1 line's body, or a chat job's line); ChatError naming the
    field when it cannot be run as given. `cap` bounds the answer's cap when the job has one."""
    for key in body:
        if key not in SENT and key not in IGNORED:
            raise ChatError(key, "is not supported by pennyroute (the answer would differ from what was asked)")
    n = body.get("n", 1)
    if n is not None and n != 1:
        raise ChatError("n", "only 1 answer per request is supported")
    if body.get("stream"):
        raise ChatError("stream", "is not supported in a batch")
    messages = _messages(body.get("messages"))
    max_tokens = _max_tokens(body, cap)
    temperature = _number(body, "temperature", low=0.0, high=2.0)
    top_p = _number(body, "top_p", low=0.0, high=1.0)
    return ChatItem(messages, max_tokens, temperature, top_p, _stop(body.get("stop")))


def stored(text: str) -> ChatItem:
    """A chat item back from its stored text (written by `ChatItem.canonical`, so already checked)."""
    body = json.loads(text)
    return ChatItem(
        messages=tuple(Message(m["role"], m["content"]) for m in body["messages"]),
        max_tokens=body.get("max_tokens"),
        temperature=body.get("temperature"),
        top_p=body.get("top_p"),
        stop=tuple(body.get("stop") or ()),
    )


def _messages(value: Any) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        raise ChatError("messages", "must be a non-empty list of {role, content} objects")
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ChatError(where, "must be an object with role and content")
        role = message.get("role")
        if role not in ROLES:
            if role in ("tool", "function"):
                raise ChatError(f"{where}.role", f"'{role}' messages are not supported (no tools)")
            raise ChatError(f"{where}.role", f"must be one of {', '.join(ROLES)}")
        if message.get("tool_calls") or message.get("function_call"):
            raise ChatError(f"{where}.tool_calls", "tool calls are not supported")
        out.append(Message(ROLES[role], _content(message.get("content"), f"{where}.content")))
    if not any(m.role == "user" for m in out):
        raise ChatError("messages", "needs a user message")
    return tuple(out)


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        if "\x00" in value:
            raise ChatError(where, "contains a NUL character")
        return value
    if isinstance(value, list):
        texts = []
        for j, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ChatError(f"{where}[{j}]", f"only text parts are supported (got {kind!r})")
            texts.append(part["text"])
        return _content("".join(texts), where)
    raise ChatError(where, "must be a string or a list of text parts")


def _max_tokens(body: dict[str, Any], cap: int | None) -> int | None:
    given = [k for k in ("max_completion_tokens", "max_tokens") if body.get(k) is not None]
    if not given:
        return None
    key = given[0]
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ChatError(key, "must be a whole number of tokens, at least 1")
    if cap is not None and value > cap:
        raise ChatError(key, f"{value:,} is above the job's cap of {cap:,} output tokens")
    return value


def _number(body: dict[str, Any], key: str, *, low: float, high: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ChatError(key, "must be a number")
    if not low <= value <= high:
        raise ChatError(key, f"must be between {low:g} and {high:g}")
    return float(value)


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise ChatError("stop", "must be a string or a list of non-empty strings")
    if len(stops) > MAX_STOP:
        raise ChatError("stop", f"at most {MAX_STOP} sequences")
    return tuple(stops)

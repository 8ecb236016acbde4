"""The sandbox: a simulated provider that needs no network and no key.

It answers for any catalog model, deterministically: the same model and text always get the same
answer, and a model with a higher quality answers correctly more often. Token counts follow the
text's length, and the engine prices them at the model's real catalog price. Everything that shows
a sandbox result labels it SIMULATED.

Its notion of the right label is a small keyword lexicon plus the label's own name; the demo data is
written with the same words, so a simulated model's accuracy on it is close to its quality.

Its summaries are the text's leading words, fewer for a weaker model. Asked to judge a summary
(router.prompts.JUDGE_SYSTEM), it checks the summary's words against the source's (`summary_verdict`)
and reports that verdict as often as the judging model's quality says, erring on the same hard
items other judges err on.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from router.chat import Message
from router.errors import ProviderStatusError
from router.prompts import (
    CHARS_PER_TOKEN,
    MESSAGE_OVERHEAD_TOKENS,
    estimate_tokens,
    is_judge_system,
    judge_parts,
    judgement_text,
    labels_from_system,
)
from router.providers.base import CUT, STOP, ChatRequest, Completion
from router.providers.batch_api import (
    CANCELED,
    ENDED,
    ERRORED,
    EXPIRED,
    RUNNING,
    SUCCEEDED,
    BatchLimits,
    BatchLine,
    BatchState,
    LineResult,
)
from router.usage import TokenUsage

SIMULATED_LABEL = "SIMULATED"

# Words that point to a label, for the labels the demo and tests use.
LEXICON: dict[str, tuple[str, ...]] = {
    "billing": ("invoice", "charged", "refund", "payment", "card", "price", "subscription", "receipt"),
    "bug": ("crash", "error", "broken", "fails", "exception", "freezes", "blank", "500"),
    "account": ("password", "login", "locked", "email", "two-factor", "username", "sign"),
    "feature": ("wish", "would", "add", "support for", "request", "dark mode", "export"),
    "other": ("thanks", "hello", "question", "office", "hiring", "partnership"),
}


def _unit(*parts: str) -> float:
    """A deterministic number in [0, 1) from the parts."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def default_quality(model: str) -> float:
    """A stable quality in [0.70, 0.97) for a model the caller gave no quality for."""
    return 0.70 + 0.27 * _unit("quality", model)


def true_label(text: str, labels: tuple[str, ...]) -> str:
    """The label the sandbox holds to be right: most lexicon hits, else a stable pick."""
    lowered = text.lower()
    best, best_hits = None, 0
    for label in labels:
        words = (label.lower(), *LEXICON.get(label.lower(), ()))
        hits = sum(1 for w in words if re.search(rf"\b{re.escape(w)}\b", lowered))
        if hits > best_hits:
            best, best_hits = label, hits
    if best is None:
        return labels[int(_unit("truth", text) * len(labels))]
    return best


def simulate(model: str, system: str, prompt: str, max_output_tokens: int, quality: float | None = None) -> Completion:
    """Answer one chat call as `model` would in the sandbox."""
    q = default_quality(model) if quality is None else quality
    labels = labels_from_system(system)
    parts = judge_parts(prompt) if is_judge_system(system) else None
    if parts is not None:
        text = _judgement(model, prompt, parts, q)
    elif labels:
        text = _classify_answer(model, prompt, labels, q)
    else:
        text = _summary(model, prompt, system, q)
    output_tokens = min(estimate_tokens(text), max_output_tokens)
    input_tokens = estimate_tokens(system) + estimate_tokens(prompt) + MESSAGE_OVERHEAD_TOKENS
    return Completion(text=text, usage=TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens))


# A simulated chat answer repeats at most this many words of the conversation's last user turn.
CHAT_REPLY_WORDS = 40


def simulate_chat(request: ChatRequest) -> Completion:
    """Answer a chat item's conversation in the sandbox: a marked, simulated reply (the last user turn's
    first words), cut at the cap as a real model's would be."""
    last = next(m.content for m in reversed(request.messages) if m.role == "user")
    text = f"[simulated reply by {request.model}] " + " ".join(last.split()[:CHAT_REPLY_WORDS])
    tokens = estimate_tokens(text)
    cut = tokens > request.max_output_tokens
    if cut:
        text = text[: request.max_output_tokens * CHARS_PER_TOKEN]
    input_tokens = sum(estimate_tokens(m.content) + MESSAGE_OVERHEAD_TOKENS for m in request.messages)
    return Completion(
        text=text,
        usage=TokenUsage(input_tokens=input_tokens, output_tokens=min(tokens, request.max_output_tokens)),
        finish=CUT if cut else STOP,
        finish_reason="length" if cut else "stop",
    )


# Errors correlate across models, as real ones do: each item has a difficulty every model shares,
# and a model's answer is right when a mix of that difficulty (this weight) and its own luck is
# below its quality. The mix is mapped through its own distribution, so a model's accuracy over
# many items stays its quality; strong models miss only the hardest items, weak ones more.
DIFFICULTY_WEIGHT = 0.6
# A wrong answer is, this often, the item's one plausible wrong label (models then err alike);
# otherwise a label of the model's own.
SHARED_MISTAKE = 0.5


def _mix_cdf(x: float, a: float = DIFFICULTY_WEIGHT) -> float:
    """P(a*U1 + (1-a)*U2 <= x) for independent uniforms (a >= 1/2): a trapezoid's distribution."""
    b = 1 - a
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x < b:
        return x * x / (2 * a * b)
    if x <= a:
        return (x - b / 2) / a
    return 1 - (1 - x) ** 2 / (2 * a * b)


def is_right(model: str, prompt: str, quality: float) -> bool:
    """Whether `model` answers `prompt` right in the sandbox (correlated with other models' errors)."""
    mix = DIFFICULTY_WEIGHT * _unit("difficulty", prompt) + (1 - DIFFICULTY_WEIGHT) * _unit("correct", model, prompt)
    return _mix_cdf(mix) < quality


def _classify_answer(model: str, prompt: str, labels: tuple[str, ...], quality: float) -> str:
    truth = true_label(prompt, labels)
    if len(labels) == 1 or is_right(model, prompt, quality):
        chosen = truth
    else:
        others = [label for label in labels if label != truth]
        shared = _unit("mistake", model, prompt) < SHARED_MISTAKE
        pick = _unit("wrong", prompt) if shared else _unit("wrong", model, prompt)
        chosen = others[int(pick * len(others))]
    index = labels.index(chosen)
    letter = chr(ord("A") + index) if index < 26 else chosen
    # Real models answer in several shapes; the parser must read them all.
    shape = int(_unit("shape", model, prompt) * 4)
    return (letter, f"{letter})", f"The answer is {letter}.", chosen)[shape]


def _summary(model: str, prompt: str, system: str, quality: float) -> str:
    match = re.search(r"at most (\d+) words", system)
    limit = int(match.group(1)) if match else 60
    words = prompt.split()
    # A weaker model keeps fewer of the leading words: a crude but model-dependent summary.
    keep = max(1, min(limit, int(len(words) * quality * 0.5) or 1))
    return " ".join(words[:keep])


# How the sandbox judges a summary (the truth its simulated judges report, or miss).
# faithful: at least this share of the summary's words occur in the source; a summary that drifts
# brings words of its own.
FAITHFUL_SHARE = 0.9
# covers: the key points are the source's lead, its first min(limit, half its words) words, which
# the sandbox's best summarizer keeps whole (one of quality q keeps about q of it, see `_summary`).
# The summary must hold a share of the lead's distinct words that is the item's own demand, drawn
# between COVER_MIN and COVER_MIN + COVER_SPREAD, so its chance of passing rises with the share it
# keeps: about (q - 0.6) / 0.35 for a summarizer of quality q (0.51 at 0.78, 0.97 at 0.94).
COVER_MIN = 0.6
COVER_SPREAD = 0.35
# Words of fewer letters ("the", "and", "of") carry no point of their own and are not counted as
# the lead's words (unless the lead has no other).
KEY_WORD_LETTERS = 4
# This share of a judge's answers come inside a ```json code fence, as some real models write them.
JUDGE_FENCED = 0.25


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def summary_verdict(source: str, summary: str, max_words: int) -> tuple[bool, bool, bool]:
    """(faithful, covers, length): the sandbox's own judgement of `summary` of `source`."""
    said, known = _words(summary), set(_words(source))
    faithful = bool(said) and sum(1 for w in said if w in known) >= FAITHFUL_SHARE * len(said)
    source_words = _words(source)
    lead = source_words[: max(1, min(max_words, len(source_words) // 2))]
    keys = {w for w in lead if len(w) >= KEY_WORD_LETTERS} or set(lead)
    demand = COVER_MIN + COVER_SPREAD * _unit("cover", source)
    covers = bool(keys) and len(keys & set(said)) >= demand * len(keys)
    length = len(summary.split()) <= max_words
    return faithful, covers, length


def _judgement(model: str, prompt: str, parts: tuple[str, int, str], quality: float) -> str:
    """A judge's verdict: the sandbox's own (summary_verdict) when the judge is right on this
    (source, summary), else the other verdict: a passing summary failed on one criterion, or a
    failing one passed on all."""
    source, max_words, summary = parts
    faithful, covers, length = summary_verdict(source, summary, max_words)
    if not is_right(model, prompt, quality):
        if faithful and covers and length:
            missed = int(_unit("missed", model, prompt) * 3)
            faithful, covers, length = missed != 0, missed != 1, missed != 2
        else:
            faithful = covers = length = True
    text = judgement_text(faithful=faithful, covers=covers, length=length)
    return f"```json\n{text}\n```" if _unit("fence", model, prompt) < JUDGE_FENCED else text


class SandboxProvider:
    """A provider that simulates every model it is asked for, offline and free of charge."""

    simulated = True

    def __init__(self, *, name: str = "sandbox", qualities: dict[tuple[str, str], float] | None = None) -> None:
        self.name = name
        self._qualities = qualities or {}  # (api model, task kind) -> quality

    async def complete(self, request: ChatRequest) -> Completion:
        if request.messages:
            return simulate_chat(request)
        # A judge of summaries judges as well as it summarizes: the catalog has no quality of its own for it.
        task = "classify" if labels_from_system(request.system) else "summarize"
        done = simulate(
            request.model,
            request.system,
            request.prompt,
            request.max_output_tokens,
            self._qualities.get((request.model, task)),
        )
        if not request.thinking_tokens:
            return done
        # A thinking model is taken to use all the thinking it is allowed (Gemini 2.5 Pro at a small
        # budget does), billed as output like the real ones.
        thoughts = request.thinking_tokens
        return Completion(
            text=done.text,
            usage=replace(done.usage, output_tokens=done.usage.output_tokens + thoughts, reasoning_tokens=thoughts),
        )

    async def aclose(self) -> None:
        return None


# -- the sandbox's batch API (simulated) ------------------------------------------------------------

# Lines the sandbox's batch API shuffles together when it answers out of order: results are still
# streamed, a block at a time, never the whole batch in memory.
OUT_OF_ORDER_BLOCK = 1000


@dataclass(frozen=True, slots=True)
class SandboxBatchKnobs:
    """How the sandbox's batch API behaves (Settings.sandbox_batch, "key=value,..."):

    delay_s       seconds from create until the batch has ended (lines finish spread over that time)
    errors        share of lines answered with an error (retryable), not billed
    expired       share of lines not done within the window (expired)
    bill_expired  whether an expired line is billed all the same (it was answered, then dropped)
    out_of_order  results come in an order of their own, not the input's
    max_lines     lines one batch may hold (the engine splits work to fit)
    max_bytes     encoded bytes one batch may hold (likewise)
    window_s      the batch's completion window
    """

    delay_s: float = 0.0
    errors: float = 0.0
    expired: float = 0.0
    bill_expired: bool = False
    out_of_order: bool = True
    max_lines: int = 50_000
    max_bytes: int = 200 * 1024 * 1024  # OpenAI's input file limit
    window_s: int = 24 * 3600

    @classmethod
    def parse(cls, text: str) -> SandboxBatchKnobs:
        """Knobs from "key=value,..." (empty: the defaults); ValueError naming a bad key or value."""
        values: dict[str, Any] = {}
        known = {f.name: f.type for f in fields(cls)}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, _, raw = part.partition("=")
            key, raw = key.strip(), raw.strip()
            if key not in known:
                raise ValueError(f"sandbox_batch: unknown knob '{key}' (knobs: {', '.join(known)})")
            if key in ("bill_expired", "out_of_order"):
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(f"sandbox_batch: {key} must be true or false, not {raw!r}")
                values[key] = raw.lower() in ("true", "1")
            elif key in ("max_lines", "max_bytes", "window_s"):
                values[key] = int(raw)
            else:
                values[key] = float(raw)
        knobs = cls(**values)
        if not (0 <= knobs.errors <= 1 and 0 <= knobs.expired <= 1 and knobs.errors + knobs.expired <= 1):
            raise ValueError("sandbox_batch: errors and expired are shares of the lines, together at most 1")
        if knobs.delay_s < 0 or knobs.max_lines < 1 or knobs.max_bytes < 1 or knobs.window_s < 1:
            raise ValueError("sandbox_batch: delay_s must be 0 or more, max_lines, max_bytes and window_s positive")
        return knobs


def default_batch_dir() -> Path:
    """Where the sandbox's batch API keeps its batches when not told (one directory per user)."""
    return Path(tempfile.gettempdir()) / f"pennyroute-sandbox-batches-{os.getuid()}"


class SandboxBatchAPI:
    """A simulated provider batch API, in process, answering every line as the sandbox's synchronous
    calls do (SandboxProvider): SIMULATED, free of charge, no network.

    Each batch is two files in `directory` (so any process can poll it, and a restarted one finds it):
    `<tag>.json` (its facts and knobs, fixed at create) and `<tag>.jsonl` (its lines). A line's outcome
    and the moment it finishes are drawn from its custom_id, so reading the results twice gives the
    same answers. `billed(batch_id)` is the sandbox's own bill: each billed line's usage."""

    simulated = True

    def __init__(
        self,
        *,
        name: str = "sandbox",
        provider: SandboxProvider | None = None,
        knobs: SandboxBatchKnobs | None = None,
        directory: Path | None = None,
    ) -> None:
        self.name = name
        self._provider = provider or SandboxProvider()
        self.knobs = knobs or SandboxBatchKnobs()
        self._dir = directory or default_batch_dir()
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.limits = BatchLimits(
            max_lines=self.knobs.max_lines, max_bytes=self.knobs.max_bytes, window_s=self.knobs.window_s
        )

    # -- files --

    def _meta_path(self, tag: str) -> Path:
        return self._dir / f"{tag}.json"

    def _read_meta(self, batch_id: str) -> dict[str, Any]:
        tag = batch_id.removeprefix(BATCH_ID_PREFIX)
        try:
            return dict(json.loads(self._meta_path(tag).read_text()))
        except FileNotFoundError:
            raise ProviderStatusError(
                f"sandbox batch {batch_id}: no such batch", provider=self.name, status_code=404
            ) from None

    def _write_meta(self, meta: dict[str, Any]) -> None:
        path = self._meta_path(meta["tag"])
        scratch = path.with_suffix(".json.tmp")
        scratch.write_text(json.dumps(meta))
        scratch.replace(path)  # atomic: a reader sees the old facts or the new, never half

    def line_bytes(self, line: BatchLine) -> int:
        return len(_line_json(line).encode())

    async def create(self, lines: Sequence[BatchLine], *, model: str, tag: str) -> BatchState:
        if not lines:
            raise ProviderStatusError("sandbox batch: no lines", provider=self.name, status_code=400)
        if sum(self.line_bytes(line) for line in lines) > self.limits.max_bytes:
            raise ProviderStatusError(
                f"sandbox batch: more than {self.limits.max_bytes} bytes", provider=self.name, status_code=400
            )
        if len(lines) > self.limits.max_lines:
            raise ProviderStatusError(
                f"sandbox batch: {len(lines)} lines, more than {self.limits.max_lines}",
                provider=self.name,
                status_code=400,
            )
        data_path = self._dir / f"{tag}.jsonl"
        with data_path.open("w") as out:
            for line in lines:
                out.write(_line_json(line) + "\n")
        meta = {
            "tag": tag,
            "batch_id": BATCH_ID_PREFIX + tag,
            "model": model,
            "total": len(lines),
            "created": time.time(),
            "cancelled_at": None,
            "knobs": asdict(self.knobs),
        }
        self._write_meta(meta)
        return self._state(meta)

    async def get(self, batch_id: str) -> BatchState:
        return self._state(self._read_meta(batch_id))

    async def cancel(self, batch_id: str) -> BatchState:
        meta = self._read_meta(batch_id)
        if meta["cancelled_at"] is None and not self._ended(meta, time.time()):
            meta["cancelled_at"] = time.time()
            self._write_meta(meta)
        return self._state(meta)

    async def find(self, tag: str) -> BatchState | None:
        try:
            meta = dict(json.loads(self._meta_path(tag).read_text()))
        except FileNotFoundError:
            return None
        return self._state(meta)

    async def results(self, batch_id: str) -> AsyncIterator[LineResult]:
        meta = self._read_meta(batch_id)
        if not self._ended(meta, time.time()):
            raise ProviderStatusError(f"sandbox batch {batch_id}: not ended yet", provider=self.name, status_code=409)
        knobs = SandboxBatchKnobs(**meta["knobs"])
        with (self._dir / f"{meta['tag']}.jsonl").open() as lines:
            block: list[dict[str, Any]] = []
            for raw in lines:
                block.append(json.loads(raw))
                if len(block) >= OUT_OF_ORDER_BLOCK:
                    for result in await self._answer_block(meta, knobs, block):
                        yield result
                    block = []
            for result in await self._answer_block(meta, knobs, block):
                yield result

    async def billed(self, batch_id: str) -> dict[str, TokenUsage]:
        """The sandbox's bill for an ended batch: each billed line's usage, by custom_id (priced by the
        caller at the model's price times the provider's batch multiplier)."""
        meta = self._read_meta(batch_id)
        knobs = SandboxBatchKnobs(**meta["knobs"])
        out: dict[str, TokenUsage] = {}
        with (self._dir / f"{meta['tag']}.jsonl").open() as lines:
            for raw in lines:
                line = json.loads(raw)
                outcome = self._outcome(meta, knobs, line["custom_id"])
                if outcome == SUCCEEDED or (outcome == EXPIRED and knobs.bill_expired):
                    out[line["custom_id"]] = (await self._provider.complete(_request(line))).usage
        return out

    async def aclose(self) -> None:
        return None

    # -- the simulation --

    def _ended(self, meta: dict[str, Any], now: float) -> bool:
        return meta["cancelled_at"] is not None or now >= meta["created"] + meta["knobs"]["delay_s"]

    def _state(self, meta: dict[str, Any]) -> BatchState:
        now = time.time()
        ended = self._ended(meta, now)
        cancelled = meta["cancelled_at"] is not None
        vendor = "cancelled" if cancelled else ("ended" if ended else "in_progress")
        return BatchState(
            batch_id=meta["batch_id"],
            state=ENDED if ended else RUNNING,
            vendor_status=f"{vendor} (SIMULATED)",
            total=meta["total"],
            done=meta["total"] if ended else 0,
        )

    def _outcome(self, meta: dict[str, Any], knobs: SandboxBatchKnobs, custom_id: str) -> str:
        """A line's outcome: drawn from its custom_id; a cancelled batch's lines not yet done are cancelled."""
        cancelled_at = meta["cancelled_at"]
        if cancelled_at is not None:
            done_at = meta["created"] + knobs.delay_s * _unit("done-at", custom_id)
            if knobs.delay_s == 0 or done_at > cancelled_at:
                return CANCELED
        draw = _unit("batch-outcome", custom_id)
        if draw < knobs.errors:
            return ERRORED
        if draw < knobs.errors + knobs.expired:
            return EXPIRED
        return SUCCEEDED

    async def _answer_block(
        self, meta: dict[str, Any], knobs: SandboxBatchKnobs, block: list[dict[str, Any]]
    ) -> list[LineResult]:
        if knobs.out_of_order:
            block = sorted(block, key=lambda line: _unit("order", line["custom_id"]))
        out = []
        for line in block:
            custom_id = line["custom_id"]
            outcome = self._outcome(meta, knobs, custom_id)
            if outcome == SUCCEEDED:
                completion = await self._provider.complete(_request(line))
                out.append(LineResult(custom_id, SUCCEEDED, completion=completion, usage=completion.usage))
            elif outcome == ERRORED:
                out.append(LineResult(custom_id, ERRORED, error="server_error: simulated line error (SIMULATED)"))
            elif outcome == EXPIRED:
                usage = (await self._provider.complete(_request(line))).usage if knobs.bill_expired else None
                out.append(LineResult(custom_id, EXPIRED, usage=usage, error="batch_expired (SIMULATED)"))
            else:
                out.append(LineResult(custom_id, CANCELED, error="batch cancelled (SIMULATED)"))
        return out


BATCH_ID_PREFIX = "sandbox_batch_"


def _line_json(line: BatchLine) -> str:
    r = line.request
    return json.dumps(
        {
            "custom_id": line.custom_id,
            "model": r.model,
            "system": r.system,
            "prompt": r.prompt,
            "max_output_tokens": r.max_output_tokens,
            "thinking_tokens": r.thinking_tokens,
            "reasoning_effort": r.reasoning_effort,
            "messages": [[m.role, m.content] for m in r.messages],
            "temperature": r.temperature,
            "top_p": r.top_p,
            "stop": list(r.stop),
        }
    )


def _request(line: dict[str, Any]) -> ChatRequest:
    return ChatRequest(
        model=line["model"],
        system=line["system"],
        prompt=line["prompt"],
        max_output_tokens=line["max_output_tokens"],
        request_id=line["custom_id"],
        thinking_tokens=line["thinking_tokens"],
        reasoning_effort=line["reasoning_effort"],
        messages=tuple(Message(role, content) for role, content in line.get("messages") or ()),
        temperature=line.get("temperature", 0.0),
        top_p=line.get("top_p"),
        stop=tuple(line.get("stop") or ()),
    )

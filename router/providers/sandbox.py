"""The sandbox: a simulated provider that needs no network and no key.

It answers for any catalog model, deterministically: the same model and text always get the same
answer, and a model with a higher quality answers correctly more often. Token counts follow the
text's length, and the engine prices them at the model's real catalog price. Everything that shows
a sandbox result labels it SIMULATED.

Its notion of the right label is a small keyword lexicon plus the label's own name; the demo data is
written with the same words, so a simulated model's accuracy on it is close to its quality.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace

from router.prompts import MESSAGE_OVERHEAD_TOKENS, estimate_tokens, labels_from_system
from router.providers.base import ChatRequest, Completion
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
    if labels:
        text = _classify_answer(model, prompt, labels, q)
    else:
        text = _summary(model, prompt, system, q)
    output_tokens = min(estimate_tokens(text), max_output_tokens)
    input_tokens = estimate_tokens(system) + estimate_tokens(prompt) + MESSAGE_OVERHEAD_TOKENS
    return Completion(text=text, usage=TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens))


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


class SandboxProvider:
    """A provider that simulates every model it is asked for, offline and free of charge."""

    simulated = True

    def __init__(self, *, name: str = "sandbox", qualities: dict[tuple[str, str], float] | None = None) -> None:
        self.name = name
        self._qualities = qualities or {}  # (api model, task kind) -> quality

    async def complete(self, request: ChatRequest) -> Completion:
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

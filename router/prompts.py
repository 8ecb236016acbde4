"""Prompts for each task kind, and reading answers back.

Classification shows the labels as lettered options and asks for one letter. Answers come back in
many shapes ("B", "B)", "(b) bug", "The answer is B", "bug"); `parse_label` maps them to exactly one
label or to None when the answer names none or several.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

LETTERS = string.ascii_uppercase
# Labels beyond 26 have no letter; they are still matched by name.
MAX_LETTERED_LABELS = len(LETTERS)

# A classification answer is one letter or one label: a few tokens, with room for "The answer is B."
CLASSIFY_MAX_OUTPUT_TOKENS = 8
# English prose runs about 1.3 tokens a word; the cap leaves room for a slightly long summary.
TOKENS_PER_WORD = 1.3
SUMMARY_CAP_FACTOR = 1.5
DEFAULT_SUMMARY_WORDS = 60
# About four characters a token in English text (the usual rule of thumb for BPE tokenizers).
CHARS_PER_TOKEN = 4
# Chat formats wrap each message in a few tokens of their own.
MESSAGE_OVERHEAD_TOKENS = 7


def estimate_tokens(text: str) -> int:
    """Rough token count of `text`: intake's estimate, and the sandbox's tokenizer."""
    return len(text) // CHARS_PER_TOKEN + 1


@dataclass(frozen=True, slots=True)
class PromptSpec:
    """The fixed part of a job's prompt: built once per job, applied to every item."""

    system: str
    max_output_tokens: int
    expected_output_tokens: int

    def input_tokens(self, text: str) -> int:
        """Estimated input tokens of one item's call."""
        return estimate_tokens(self.system) + estimate_tokens(text) + MESSAGE_OVERHEAD_TOKENS


def classify_spec(labels: tuple[str, ...]) -> PromptSpec:
    """Prompt for choosing exactly one of `labels`, answered with a letter."""
    options = "\n".join(f"{_letter(i)}) {label}" for i, label in enumerate(labels))
    system = (
        f"You classify texts. Choose exactly one of these labels:\n{options}\nAnswer with the letter of the label only."
    )
    return PromptSpec(system=system, max_output_tokens=CLASSIFY_MAX_OUTPUT_TOKENS, expected_output_tokens=2)


def summarize_spec(max_words: int | None) -> PromptSpec:
    """Prompt for a summary of at most `max_words` words."""
    words = max_words or DEFAULT_SUMMARY_WORDS
    system = f"Summarize the text in at most {words} words. Answer with the summary only, in the language of the text."
    expected = int(words * TOKENS_PER_WORD)
    return PromptSpec(
        system=system, max_output_tokens=int(expected * SUMMARY_CAP_FACTOR) + 8, expected_output_tokens=expected
    )


def _letter(i: int) -> str:
    return LETTERS[i] if i < MAX_LETTERED_LABELS else str(i + 1)


_LEAD_INS = re.compile(
    r"^(?:the\s+)?(?:answer|label|category|class|choice|option)(?:\s+is)?\s*[:\-]?\s*", re.IGNORECASE
)
_LONE_LETTER = re.compile(r"^\(?([A-Za-z])\s*[\).:\]]?(?:\s|$)")


def parse_label(answer: str, labels: tuple[str, ...]) -> str | None:
    """Map a model's answer to exactly one of `labels`, or None when it names none or several."""
    text = answer.strip().strip("*`'\"").strip()
    if not text:
        return None
    lowered = {label.lower(): label for label in labels}
    if text.lower().rstrip(".!") in lowered:
        return lowered[text.lower().rstrip(".!")]
    body = _LEAD_INS.sub("", text, count=1).strip().strip("*`'\"").strip()
    if body.lower().rstrip(".!") in lowered:
        return lowered[body.lower().rstrip(".!")]
    match = _LONE_LETTER.match(body)
    if match:
        index = LETTERS.index(match.group(1).upper())
        rest = body[match.end() :].strip().lower().rstrip(".!")
        # "B", "B)" or "B) bug" name label B; "B) billing" contradicts itself, and "A lot of ..." is prose.
        if index < min(len(labels), MAX_LETTERED_LABELS) and rest in ("", labels[index].lower()):
            return labels[index]
    # Last resort: exactly one label named as a whole word somewhere in the answer.
    found = {label for label in labels if re.search(rf"(?<![\w-]){re.escape(label.lower())}(?![\w-])", text.lower())}
    if len(found) == 1:
        return found.pop()
    sentence = re.search(r"\b(?:answer|label|option|choice)\s+is\s*[:\-]?\s*\(?([A-Za-z])\b", text, re.IGNORECASE)
    if sentence:
        index = LETTERS.index(sentence.group(1).upper())
        if index < len(labels):
            return labels[index]
    return None


def labels_from_system(system: str) -> tuple[str, ...]:
    """Recover the labels from a classification system prompt (the sandbox reads its own prompts)."""
    return tuple(m.group(1) for m in re.finditer(r"^(?:[A-Z]|\d+)\) (.+)$", system, re.MULTILINE))


def spec_for(task: str, labels: tuple[str, ...] | list[str] | None, max_words: int | None) -> PromptSpec:
    """The prompt of a job's task: a classification over `labels`, or a summary of `max_words`."""
    if task == "classify":
        return classify_spec(tuple(labels or ()))
    return summarize_spec(max_words)

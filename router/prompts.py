"""Prompts for each task kind, and reading answers back.

Classification shows the labels as lettered options and asks for one letter. Answers come back in
many shapes ("B", "B)", "(b) bug", "The answer is B", "bug"); `parse_label` maps them to exactly one
label or to None when the answer names none or several.

A summary is judged against its source by a model on a fixed rubric (faithful, covers the key points,
within the length asked: `JUDGE_SPEC`, `judge_message`), answering one JSON object that
`parse_judgement` reads back as pass, fail, or None when it cannot be read.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass

from router.chat import CHAT_DEFAULT_MAX_TOKENS

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


# A chat answer's length is not known before it comes: cost estimates made before a chat job runs
# take half its cap, at most this many tokens (what it is charged is what the provider bills).
CHAT_EXPECTED_OUTPUT_TOKENS = 400


def chat_spec(max_output_tokens: int | None) -> PromptSpec:
    """A chat job's spec: no system prompt of its own (each item carries its conversation), its cap."""
    cap = max_output_tokens or CHAT_DEFAULT_MAX_TOKENS
    return PromptSpec(
        system="", max_output_tokens=cap, expected_output_tokens=max(1, min(cap // 2, CHAT_EXPECTED_OUTPUT_TOKENS))
    )


def spec_for(
    task: str, labels: tuple[str, ...] | list[str] | None, max_words: int | None, max_output_tokens: int | None = None
) -> PromptSpec:
    """The prompt of a job's task: a classification over `labels`, a summary of `max_words`, or a chat
    job's conversations under `max_output_tokens`."""
    if task == "classify":
        return classify_spec(tuple(labels or ()))
    if task == "chat":
        return chat_spec(max_output_tokens)
    return summarize_spec(max_words)


# -- judging a summary against its source (calibration of summarize jobs) --------------------------

# The rubric's name and version, in the judge's system prompt: a changed rubric is a different
# measurement, and the sandbox recognises a judge's prompt by it.
JUDGE_RUBRIC = "summary-judge/v1"
JUDGE_CRITERIA = ("faithful", "covers", "length")
JUDGE_SYSTEM = (
    f"You judge a candidate summary against its source text (rubric {JUDGE_RUBRIC}).\n"
    "Check three criteria, taking the source text as the only evidence:\n"
    "- faithful: every claim in the summary is supported by the source; nothing is added, changed or contradicted.\n"
    "- covers: the summary states the source's key points.\n"
    "- length: the summary has no more words than the maximum given.\n"
    'The verdict is "PASS" when all three hold, else "FAIL".\n'
    "Answer with one JSON object and nothing else, in exactly this form:\n"
    '{"faithful": true|false, "covers": true|false, "length": true|false, "verdict": "PASS"|"FAIL"}'
)
# The verdict object is about 20-25 tokens in common BPE tokenizers (JSON punctuation splits finely);
# the cap leaves room for a code fence around it, not for an essay.
JUDGE_EXPECTED_OUTPUT_TOKENS = 24
JUDGE_MAX_OUTPUT_TOKENS = 64
JUDGE_SPEC = PromptSpec(
    system=JUDGE_SYSTEM, max_output_tokens=JUDGE_MAX_OUTPUT_TOKENS, expected_output_tokens=JUDGE_EXPECTED_OUTPUT_TOKENS
)
# The user message: the length asked, then the source and the summary, each between its own tags.
_JUDGE_MESSAGE = "Maximum words: {words}\n\n<source>\n{source}\n</source>\n\n<summary>\n{summary}\n</summary>"
_JUDGE_PARTS = re.compile(
    r"\AMaximum words: (\d+)\n\n<source>\n(.*)\n</source>\n\n<summary>\n(.*)\n</summary>\Z", re.DOTALL
)
# The frame of the judge's message around the source and the summary, in tokens (for cost estimates).
JUDGE_FRAME_TOKENS = estimate_tokens(_JUDGE_MESSAGE.format(words=DEFAULT_SUMMARY_WORDS, source="", summary=""))


def judge_message(*, source: str, summary: str, max_words: int | None) -> str:
    """The judge's user message for one candidate `summary` of `source` (asked in `max_words`)."""
    return _JUDGE_MESSAGE.format(words=max_words or DEFAULT_SUMMARY_WORDS, source=source, summary=summary)


def judge_parts(message: str) -> tuple[str, int, str] | None:
    """(source, max words, summary) from a judge's user message; None if it is not one (the sandbox
    reads its own prompts)."""
    match = _JUDGE_PARTS.match(message)
    if match is None:
        return None
    return match.group(2), int(match.group(1)), match.group(3)


def is_judge_system(system: str) -> bool:
    """Whether `system` is the summary judge's rubric."""
    return f"(rubric {JUDGE_RUBRIC})" in system


def judgement_text(*, faithful: bool, covers: bool, length: bool) -> str:
    """A verdict in the rubric's form (the sandbox's answers, and tests)."""
    verdict = "PASS" if faithful and covers and length else "FAIL"
    flags = {"faithful": faithful, "covers": covers, "length": length}
    return "{" + ", ".join(f'"{k}": {str(v).lower()}' for k, v in flags.items()) + f', "verdict": "{verdict}"}}'


_JSON_OBJECT = re.compile(r"\{[^{}]*\}")
# "faithful: yes" and the like; a value followed by "|" is the rubric's own schema echoed back, not an answer.
_JUDGE_LINE = re.compile(r"\b(faithful|covers|length|verdict)\b\W{0,3}[:=]\W{0,3}(\w+)\b(?!\W{0,2}\|)", re.IGNORECASE)
_YES = frozenset({"true", "yes", "pass"})
_NO = frozenset({"false", "no", "fail"})


def parse_judgement(text: str) -> bool | None:
    """Whether a judge's answer passes the summary: True when faithful, covers and length all hold,
    False when one does not, None when the answer cannot be read.

    The rubric asks for one JSON object; a code fence or prose around it, values written yes/no, and
    lines such as "faithful: yes" are read too. Unreadable: a criterion missing or not yes/no, a
    criterion given twice with different values, or a verdict that contradicts the criteria."""
    found = _JSON_OBJECT.search(text)
    pairs: list[tuple[str, object]] = []
    if found is not None:
        try:
            loaded = json.loads(found.group(0))
        except ValueError:
            loaded = None
        if isinstance(loaded, dict):
            pairs = [(str(key), value) for key, value in loaded.items()]
    if not pairs:
        pairs = [(m.group(1), m.group(2)) for m in _JUDGE_LINE.finditer(text)]
    flags: dict[str, bool] = {}
    for key, value in pairs:
        name = key.strip().lower()
        if name not in (*JUDGE_CRITERIA, "verdict"):
            continue
        flag = _yes_no(value)
        if flag is None or flags.setdefault(name, flag) != flag:
            return None
    if any(name not in flags for name in JUDGE_CRITERIA):
        return None
    passed = all(flags[name] for name in JUDGE_CRITERIA)
    if flags.get("verdict", passed) != passed:
        return None
    return passed


def _yes_no(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _YES:
            return True
        if word in _NO:
            return False
    return None

"""Prompt building and reading classification answers back."""

from __future__ import annotations

import pytest

from router.prompts import classify_spec, labels_from_system, parse_label, summarize_spec

LABELS = ("billing", "bug", "other")


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("B", "bug"),
        ("B)", "bug"),
        ("b.", "bug"),
        ("(B)", "bug"),
        ("**B**", "bug"),
        ("B) bug", "bug"),
        ("The answer is B", "bug"),
        ("The answer is B.", "bug"),
        ("Answer: C", "other"),
        ("Label: billing", "billing"),
        ("bug", "bug"),
        ("Billing.", "billing"),
        ("  other\n", "other"),
        ("I think it is a bug", "bug"),
        ("D", None),
        ("", None),
        ("billing or bug", None),
        ("none of these", None),
    ],
)
def test_parse_label(answer: str, expected: str | None) -> None:
    assert parse_label(answer, LABELS) == expected


def test_classify_prompt_lists_lettered_labels_and_round_trips() -> None:
    spec = classify_spec(LABELS)
    assert "A) billing\nB) bug\nC) other" in spec.system
    assert labels_from_system(spec.system) == LABELS
    assert spec.max_output_tokens <= 16


def test_summary_prompt_names_the_length() -> None:
    spec = summarize_spec(40)
    assert "at most 40 words" in spec.system
    assert labels_from_system(spec.system) == ()
    assert spec.max_output_tokens > spec.expected_output_tokens >= 40

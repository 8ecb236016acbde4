"""The summary judge: its prompt, reading its verdicts back, the sandbox's simulated judges, and
the expected cost of a judge call."""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace

import pytest

from router.catalog import load_catalog
from router.jobs.judge import judge_cost_per_item
from router.prompts import (
    JUDGE_SPEC,
    is_judge_system,
    judge_message,
    judge_parts,
    judgement_text,
    labels_from_system,
    parse_judgement,
    summarize_spec,
)
from router.providers.sandbox import simulate, summary_verdict
from tests.helpers import contract_sentences

SOURCE = (
    "The supplier must deliver the ordered pumps within thirty days of the purchase order. "
    "Late delivery costs the supplier two percent of the order value per week of delay. "
    "Either party may end the contract with ninety days of written notice."
)
FAITHFUL = (
    "The supplier must deliver the ordered pumps within thirty days of the purchase order; late delivery "
    "costs two percent of the order value per week."
)
DRIFTING = "The buyer pays a bonus to the vendor for early shipping and may renegotiate prices yearly."


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ('{"faithful": true, "covers": true, "length": true, "verdict": "PASS"}', True),
        ('{"faithful": true, "covers": false, "length": true, "verdict": "FAIL"}', False),
        ('{"faithful": true, "covers": true, "length": true}', True),
        ('```json\n{"faithful": true, "covers": true, "length": false, "verdict": "FAIL"}\n```', False),
        ('Here is my verdict: {"Faithful": "yes", "Covers": "yes", "Length": "yes"}', True),
        ("faithful: yes\ncovers: yes\nlength: yes\nverdict: PASS", True),
        ("Faithful: no, covers: yes, length: yes, verdict: FAIL", False),
        # the verdict contradicts the criteria, in either direction
        ('{"faithful": true, "covers": true, "length": true, "verdict": "FAIL"}', None),
        ('{"faithful": false, "covers": true, "length": true, "verdict": "PASS"}', None),
        # a criterion missing, or not yes/no
        ('{"faithful": true, "covers": true, "verdict": "PASS"}', None),
        ('{"faithful": "mostly", "covers": true, "length": true}', None),
        # the same criterion given twice, differently
        ("faithful: yes\ncovers: yes\nlength: yes\nfaithful: no", None),
        ("PASS", None),
        ("", None),
        # the rubric's own schema, echoed back, is not an answer
        (JUDGE_SPEC.system, None),
    ],
)
def test_parse_judgement(answer: str, expected: bool | None) -> None:
    assert parse_judgement(answer) is expected


@pytest.mark.parametrize(
    ("faithful", "covers", "length"),
    [(True, True, True), (False, True, True), (True, False, True), (True, True, False)],
)
def test_the_canonical_verdict_reads_back(faithful: bool, covers: bool, length: bool) -> None:
    text = judgement_text(faithful=faithful, covers=covers, length=length)
    assert parse_judgement(text) is (faithful and covers and length)
    assert len(text) // 4 + 1 <= JUDGE_SPEC.expected_output_tokens <= JUDGE_SPEC.max_output_tokens


def test_judge_prompt_carries_the_rubric_and_round_trips_its_parts() -> None:
    assert is_judge_system(JUDGE_SPEC.system)
    assert not is_judge_system(summarize_spec(60).system)
    assert labels_from_system(JUDGE_SPEC.system) == ()  # never mistaken for a classification
    for criterion in ("faithful", "covers", "length"):
        assert f"- {criterion}:" in JUDGE_SPEC.system
    source = "Line one.\n\nLine two, with </summary> in it."
    message = judge_message(source=source, summary="Two lines.", max_words=40)
    assert "Maximum words: 40" in message
    assert judge_parts(message) == (source, 40, "Two lines.")
    assert judge_parts(judge_message(source="x", summary="y", max_words=None)) == ("x", 60, "y")
    assert judge_parts("Summarize this text") is None


def _judge(model: str, source: str, summary: str, quality: float, max_words: int = 40) -> bool | None:
    message = judge_message(source=source, summary=summary, max_words=max_words)
    done = simulate(model, JUDGE_SPEC.system, message, JUDGE_SPEC.max_output_tokens, quality)
    assert 0 < done.usage.output_tokens <= JUDGE_SPEC.max_output_tokens
    return parse_judgement(done.text)


def test_the_sandbox_passes_a_summary_that_keeps_the_lead_and_fails_one_that_drifts_or_runs_long() -> None:
    assert summary_verdict(SOURCE, FAITHFUL, 40) == (True, True, True)
    assert summary_verdict(SOURCE, DRIFTING, 40)[0] is False
    assert summary_verdict(SOURCE, "The supplier must deliver.", 40)[1] is False  # misses the key points
    assert summary_verdict(SOURCE, FAITHFUL, 12)[2] is False  # 25 words, 12 asked
    # A perfect judge reports exactly that, every time.
    assert _judge("any-judge", SOURCE, FAITHFUL, 1.0) is True
    assert _judge("any-judge", SOURCE, DRIFTING, 1.0) is False
    assert _judge("any-judge", SOURCE, FAITHFUL, 1.0, max_words=12) is False


def _sources(n: int) -> list[str]:
    return [" ".join(contract_sentences(k)) for k in range(n)]


def test_a_sandbox_judge_is_right_as_often_as_its_quality_and_deterministic() -> None:
    sources = _sources(300)
    cases = [(s, " ".join(s.split()[:25])) for s in sources] + [(s, DRIFTING) for s in sources]
    truth = [all(summary_verdict(s, summary, 40)) for s, summary in cases]
    assert 0 < sum(truth) < len(cases)
    for quality in (0.75, 0.95):
        said = [_judge("judge", s, summary, quality) for s, summary in cases]
        assert all(v is not None for v in said)  # every answer, fenced or not, reads back
        accuracy = sum(v == t for v, t in zip(said, truth, strict=True)) / len(cases)
        assert abs(accuracy - quality) < 0.05
    assert [_judge("judge", s, x, 0.8) for s, x in cases[:50]] == [_judge("judge", s, x, 0.8) for s, x in cases[:50]]


def test_a_better_sandbox_summarizer_passes_the_judge_more_often() -> None:
    spec = summarize_spec(40)
    sources = _sources(300)
    rates = []
    for quality in (0.78, 0.86, 0.94):
        summaries = [simulate("writer", spec.system, s, spec.max_output_tokens, quality).text for s in sources]
        rates.append(sum(bool(_judge("judge", s, x, 0.95)) for s, x in zip(sources, summaries, strict=True)))
    assert rates[0] < rates[1] < rates[2]


def test_judge_cost_per_item_counts_the_rubric_source_summary_and_verdict() -> None:
    catalog = load_catalog(None)
    job = SimpleNamespace(max_words=60)
    cost = judge_cost_per_item(catalog, job, "gpt-4o", avg_text_tokens=500, summary_tokens=80)
    price = catalog.price("gpt-4o")
    # at least the source, the summary and the verdict, at gpt-4o's rates
    floor = (
        Decimal(580) * price.input.base + Decimal(JUDGE_SPEC.expected_output_tokens) * price.output.base
    ) / Decimal(1_000_000)
    assert floor < cost < floor * Decimal("1.5")
    assert judge_cost_per_item(catalog, job, "gpt-4o", avg_text_tokens=1500, summary_tokens=80) > cost
    assert judge_cost_per_item(catalog, job, "gpt-4o-mini", avg_text_tokens=500, summary_tokens=80) < cost
    # by default the summary is as long as the job asks
    assert judge_cost_per_item(catalog, SimpleNamespace(max_words=200), "gpt-4o", avg_text_tokens=500) > cost

"""Judging summaries: a model scores each candidate summary against its source on a fixed rubric.

Calibration of a summarize job needs to know whether a candidate model's summary of an item is
right. Word overlap with a reference summary (policies.scoring) rewards copying the reference's
words; a judge reads the source and says whether the summary is faithful to it, covers its key
points and keeps to the length asked (router.prompts.JUDGE_SPEC). A summary passes when all three
hold. Judge calls are ledgered like any calibration call (purpose "calibration"), and priced ahead
by `judge_cost_per_item` so that a calibration plan can count them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from router.catalog import Catalog
from router.engine.chunk import answer_items
from router.ledger.types import ClaimedItem, JobSnapshot
from router.prompts import (
    JUDGE_FRAME_TOKENS,
    JUDGE_SPEC,
    MESSAGE_OVERHEAD_TOKENS,
    estimate_tokens,
    judge_message,
    parse_judgement,
    summarize_spec,
)
from router.settings import Settings


class SourceItem(Protocol):
    """An item to judge a summary of: its id and its text (the source)."""

    @property
    def id(self) -> int: ...

    @property
    def text(self) -> str: ...


class SummaryJob(Protocol):
    """What pricing a judge needs of a job: the summary length it asks for."""

    @property
    def max_words(self) -> int | None: ...


@dataclass(frozen=True, slots=True)
class JudgeCall:
    """One judge call, shaped as the item the engine sends (router.ledger.types.ClaimedItem): the
    judged item's id, and the judge's message as its text."""

    id: int
    text: str
    seq: int = 0  # seq only places an item in a route's drift sample; a judge's route has none
    attempts: int = 0  # not claimed: the judge writes no item outcome


def judge_summaries(
    settings: Settings,
    catalog: Catalog,
    job: JobSnapshot,
    *,
    judge_id: str,
    items: Sequence[SourceItem],
    summaries: Mapping[int, str | None],
) -> dict[int, bool] | None:
    """Have model `judge_id` judge each item's candidate summary (`summaries`, by item id) against
    the item's text, on the rubric of router.prompts.JUDGE_SPEC; every call ledgered with purpose
    "calibration". Returns item id -> whether the summary passes.

    An item with no summary (None, or absent) is not judged: False. An item the judge did not
    answer readably (its verdict unreadable, its call failed for good, its provider stopped) is left
    out: the judge's failure measures nothing about the summary. Under a budget the calls run in as
    many batches as it takes; None when the team's budget cannot take them (calls made before are
    ledgered and settled)."""
    verdicts: dict[int, bool] = {}
    pending: list[ClaimedItem] = []
    for row in items:
        summary = summaries.get(row.id)
        if summary is None:
            verdicts[row.id] = False
        else:
            pending.append(
                JudgeCall(id=row.id, text=judge_message(source=row.text, summary=summary, max_words=job.max_words))
            )
    while pending:
        answers = answer_items(settings, catalog, job, model_id=judge_id, items=pending, spec=JUDGE_SPEC)
        if answers is None:
            return None
        for item_id, answer in answers.items():
            passed = parse_judgement(answer.output) if answer.output is not None else None
            if passed is not None:
                verdicts[item_id] = passed
        asked = len(pending)
        pending = [call for call in pending if call.id not in answers]
        if len(pending) == asked:  # nothing was answered (every provider left to the judge stopped)
            break
    return verdicts


def judge_cost_per_item(
    catalog: Catalog,
    job: SummaryJob,
    judge_id: str,
    avg_text_tokens: float,
    summary_tokens: float | None = None,
) -> Decimal:
    """Expected cost of judging one item's summary on `judge_id`, at the prices in force now: input
    the rubric, the source (`avg_text_tokens`) and the summary (`summary_tokens`, by default the
    length the job asks for), output the verdict (and the judge's thinking, billed as output)."""
    if summary_tokens is None:
        summary_tokens = summarize_spec(job.max_words).expected_output_tokens
    tokens = (
        avg_text_tokens
        + summary_tokens
        + estimate_tokens(JUDGE_SPEC.system)
        + JUDGE_FRAME_TOKENS
        + MESSAGE_OVERHEAD_TOKENS
    )
    price = catalog.price(judge_id)
    output = catalog.model(judge_id).output_cap(JUDGE_SPEC.expected_output_tokens)
    return (Decimal(int(tokens)) * price.input.base + Decimal(output) * price.output.base) / Decimal(1_000_000)

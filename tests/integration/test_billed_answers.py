"""Every billed answer is charged, readable or not, and only a whole one is done (issue 13, findings 4
and 7): the engine against the fake provider speaking each vendor's answer dialects (tests/fakes/server.py).

Each test runs a chunk in-process on real Postgres, with the fake told (POST /_fail {"answer": KIND})
how to answer, and checks the ledger against the fake's own bill, call id by call id.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from router.catalog import Catalog
from router.engine import runtime
from router.engine.chunk import run_chunk
from router.jobs.intake import JobRequest
from router.jobs.results import job_state
from router.jobs.submit import submit_job
from router.ledger.repo import FAILURE_KINDS
from router.ledger.tables import Call, CallStatus, ItemStatus
from router.providers.registry import close_all
from router.settings import Settings
from tests.helpers import FAKE_KEY, ledger, priced, tickets, write_jsonl

LABELS = ("billing", "bug", "other")
N = 4


@pytest.fixture(autouse=True)
def _reset_fake(fake_provider: str) -> Iterator[None]:
    httpx.post(f"{fake_provider}/_reset").raise_for_status()
    yield
    # The process caches providers by name, not by settings: leave none built with these settings
    # behind for a later test that sets its own timeout (test_billed_timeouts.py).
    runtime.run(close_all())


@pytest.fixture
def settings(live_settings: Settings) -> Settings:
    """Keys for all four vendors (the fake accepts one key for all)."""
    keys = {
        name: SecretStr(FAKE_KEY)
        for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "MISTRAL_API_KEY")
    }
    return live_settings.model_copy(update={"api_keys": keys})


def run(
    settings: Settings,
    catalog: Catalog,
    tmp_path: Path,
    team: tuple[str, str],
    fake: str,
    *,
    model: str,
    answer: str | None,
    task: str = "classify",
) -> tuple[list[Call], list[Any], dict[str, Any]]:
    """Run N items on `model`, the fake answering every call in the `answer` dialect; returns the job's
    call rows, item rows and the fake's bill by call id."""
    path = write_jsonl(tmp_path / "items.jsonl", tickets(N))
    request = JobRequest(
        path=path, team=team[1], tenant=team[0], task=task, labels=LABELS if task == "classify" else (),
        max_words=None if task == "classify" else 12, min_quality=0.5, models=frozenset({model}), quality="prior",
    )  # fmt: skip
    job_id = submit_job(settings, catalog, request).job_id
    if answer is not None:
        httpx.post(f"{fake}/_fail", json={"answer": answer, "count": 100}).raise_for_status()
    run_chunk(settings, catalog, job_id=job_id, lo=0, hi=N)
    calls, items = ledger(settings, job_id)
    bill = httpx.get(f"{fake}/_bill").json()["calls"]
    return calls, items, bill


def assert_charged_as_billed(catalog: Catalog, calls: list[Call], bill: dict[str, Any]) -> None:
    """One call per item (none tried again), each billed once and charged with exactly the billed tokens."""
    assert len(calls) == N, [(c.status, c.error) for c in calls]
    for call in calls:
        billed = bill[call.id]
        assert billed["repeats"] == 0
        assert (call.input_tokens + call.cached_input_tokens, call.output_tokens) == (
            billed["input_tokens"] + billed["cached_input_tokens"],
            billed["output_tokens"],
        )
        assert call.cost_usd == priced(catalog, call) > 0


def test_a_mistral_reasoning_answer_in_chunks_is_read_and_charged_once(
    settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str], fake_provider: str
) -> None:
    """Finding 4: content as a list of chunks (a thinking chunk, then the text) is read, not retried at $0."""
    calls, items, bill = run(
        settings, catalog, tmp_path, team, fake_provider, model="mistral-small-2603", answer="chunks"
    )
    assert_charged_as_billed(catalog, calls, bill)
    assert all(c.status == CallStatus.OK for c in calls)
    assert [i.status for i in items] == [ItemStatus.DONE] * N and all(i.output in LABELS for i in items)


@pytest.mark.parametrize(
    ("model", "answer", "reason"),
    [
        (
            "gemini-2.5-flash",
            "blocked",
            "prompt blocked by the provider before any answer (promptFeedback.blockReason SAFETY",
        ),
        ("gemini-2.5-flash", "refusal", "withheld by the provider's content filter (SAFETY"),
        ("gemini-2.5-flash", "filtered", "withheld by the provider's content filter (PROHIBITED_CONTENT"),
        ("claude-haiku-4-5", "refusal", "refused by the model (refusal: category general_harms"),
        ("gpt-4o-mini", "refusal", "refused by the model (message.refusal: I'm sorry"),
        ("gpt-4o-mini", "filtered", "withheld by the provider's content filter (content_filter"),
    ],
)
def test_a_blocked_refused_or_filtered_answer_is_charged_not_retried_and_fails_with_its_reason(
    settings: Settings,
    catalog: Catalog,
    tmp_path: Path,
    team: tuple[str, str],
    fake_provider: str,
    model: str,
    answer: str,
    reason: str,
) -> None:
    """Findings 4 and 7: a Gemini prompt blocked by safety (no candidates, promptTokenCount only) and a
    refused or filtered answer are recorded with their tokens and reason, and not tried again."""
    calls, items, bill = run(settings, catalog, tmp_path, team, fake_provider, model=model, answer=answer)
    assert_charged_as_billed(catalog, calls, bill)
    for call in calls:
        assert call.status == CallStatus.OK and reason in (call.error or ""), call.error
        if answer == "blocked":
            assert call.output_tokens == 0 and call.input_tokens > 0  # the prompt's tokens, billed
    assert [i.status for i in items] == [ItemStatus.FAILED] * N
    assert all(reason in (i.error or "") and i.output is None for i in items), [i.error for i in items]
    # Their own outcome in the job's status, not a bare failure count.
    kind = next(name for name, pattern in FAILURE_KINDS if pattern.strip("%") in reason)
    assert job_state(settings, items[0].job_id).failures == {kind: N}


@pytest.mark.parametrize(
    ("model", "finish"),
    [
        ("gpt-4o-mini", "length"),
        ("claude-haiku-4-5", "max_tokens"),
        ("gemini-2.5-flash", "MAX_TOKENS"),
        ("mistral-small-2603", "length"),
    ],
)
def test_a_summary_cut_off_by_the_output_cap_is_not_done(
    settings: Settings,
    catalog: Catalog,
    tmp_path: Path,
    team: tuple[str, str],
    fake_provider: str,
    model: str,
    finish: str,
) -> None:
    """Finding 7: a summary the cap cut off is failed with the reason (charged with the whole cap), not done."""
    calls, items, bill = run(
        settings, catalog, tmp_path, team, fake_provider, model=model, answer="cut", task="summarize"
    )
    assert_charged_as_billed(catalog, calls, bill)
    assert [i.status for i in items] == [ItemStatus.FAILED] * N
    for item in items:
        assert item.output is None and f"cut off by the output cap ({finish}" in (item.error or ""), item.error
    assert job_state(settings, items[0].job_id).failures == {"cut off by the output cap": N}


def test_whole_summaries_are_still_done(
    settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str], fake_provider: str
) -> None:
    """The control: the same job answered whole is done."""
    calls, items, bill = run(
        settings, catalog, tmp_path, team, fake_provider, model="gpt-4o-mini", answer=None, task="summarize"
    )
    assert_charged_as_billed(catalog, calls, bill)
    assert [i.status for i in items] == [ItemStatus.DONE] * N and all(i.output for i in items)


def test_a_label_read_from_a_cut_off_answer_stands(
    settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str], fake_provider: str
) -> None:
    """Classify: a cut-off answer that still names one label is done with it; one that names none fails
    with the cap as its reason. Neither is tried again."""
    calls, items, bill = run(settings, catalog, tmp_path, team, fake_provider, model="gpt-4o-mini", answer="cut")
    assert_charged_as_billed(catalog, calls, bill)
    for item in items:
        if item.status == ItemStatus.DONE:
            assert item.output in LABELS
        else:
            assert item.status == ItemStatus.FAILED and "cut off by the output cap (length" in (item.error or "")


def test_an_unreadable_answer_with_usage_is_charged_with_it_and_not_retried(
    settings: Settings, catalog: Catalog, tmp_path: Path, team: tuple[str, str], fake_provider: str
) -> None:
    """Finding 4: usage is read before the content; a content of a shape nobody knows is charged as billed."""
    body = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": 42}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35},
    }
    httpx.post(f"{fake_provider}/_fail", json={"body": body, "count": 100}).raise_for_status()
    calls, items, _ = run(settings, catalog, tmp_path, team, fake_provider, model="gpt-4o-mini", answer=None)
    assert len(calls) == N  # not tried again
    for call in calls:
        assert call.status == CallStatus.ERROR and "answered and billed, but unreadable" in (call.error or "")
        assert (call.input_tokens, call.output_tokens) == (30, 5) and call.cost_usd == priced(catalog, call) > 0
    assert [i.status for i in items] == [ItemStatus.FAILED] * N

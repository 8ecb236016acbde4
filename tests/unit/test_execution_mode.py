"""policies/execution_mode.py: the mode of each stage from the deadline, the batch window, the price
share and the constraints, as a table."""

from __future__ import annotations

from decimal import Decimal

import pytest

from policies.execution_mode import (
    BATCH,
    SYNC,
    BatchOffer,
    ModeInputs,
    cancel_open_batch,
    decide,
    rerun_mode,
)

H = 3600.0
OPENAI = BatchOffer("gpt-4o-mini", "openai", True, 24 * 3600, Decimal("0.5"))
ANTHROPIC = BatchOffer("claude-haiku", "anthropic", True, 24 * 3600, Decimal("0.5"))
LOCAL = BatchOffer("llama", "local", False, None, None)
UNPRICED = BatchOffer("x", "other", True, None, None)
EU_SYNC_ONLY = BatchOffer("mistral-small", "mistral", True, 24 * 3600, Decimal("0.5"), region_sync_only=True)
SHORT_WINDOW = BatchOffer("m", "p", True, 1800, Decimal("0.6"))


@pytest.mark.parametrize(
    ("requested", "time_left_s", "region", "bulk", "escalation", "expected_bulk", "expected_esc", "refused", "why"),
    [
        # auto: a deadline that leaves room -> batch; none -> sync; a near one -> sync
        ("auto", 24 * H, False, (OPENAI,), (), BATCH, SYNC, None, "can wait"),
        ("auto", None, False, (OPENAI,), (), SYNC, SYNC, None, "no --deadline"),
        ("auto", 2 * H, False, (OPENAI,), (), SYNC, SYNC, None, "deadline near"),
        ("auto", 3 * H, False, (OPENAI,), (), BATCH, SYNC, None, "can wait"),
        # sync always wins
        ("sync", 48 * H, False, (OPENAI,), (), SYNC, SYNC, None, "--mode sync"),
        # batch without a deadline: batch
        ("batch", None, False, (OPENAI,), (), BATCH, SYNC, None, "can wait"),
        # batch that cannot be had is refused, with its reason
        ("batch", 24 * H, False, (LOCAL,), (), SYNC, SYNC, "local has no batch API", "no batch API"),
        ("batch", 1 * H, False, (OPENAI,), (), SYNC, SYNC, "deadline near", "deadline near"),
        ("auto", 24 * H, False, (UNPRICED,), (), SYNC, SYNC, None, "no batch_multiplier"),
        # residency: only under --region
        ("auto", 24 * H, True, (EU_SYNC_ONLY,), (), SYNC, SYNC, None, "standard processing"),
        ("auto", 24 * H, False, (EU_SYNC_ONLY,), (), BATCH, SYNC, None, "can wait"),
        # a cascade: both cheap models must take batch
        ("auto", 24 * H, False, (OPENAI, LOCAL), (ANTHROPIC,), SYNC, SYNC, None, "no batch API"),
        ("auto", 24 * H, False, (OPENAI, ANTHROPIC), (ANTHROPIC,), BATCH, BATCH, None, "can wait"),
        # escalations go as a second batch only when there is room after the first
        ("auto", 3.5 * H, False, (OPENAI,), (ANTHROPIC,), BATCH, SYNC, None, "can wait"),
        # a window shorter than the usual lead: that window is enough
        ("auto", 1 * H, False, (SHORT_WINDOW,), (), BATCH, SYNC, None, "can wait"),
    ],
)
def test_decide(
    requested: str,
    time_left_s: float | None,
    region: bool,
    bulk: tuple[BatchOffer, ...],
    escalation: tuple[BatchOffer, ...],
    expected_bulk: str,
    expected_esc: str,
    refused: str | None,
    why: str,
) -> None:
    decision = decide(
        ModeInputs(
            requested=requested,
            time_left_s=time_left_s,
            region_constrained=region,
            bulk=bulk,
            escalation=escalation,
            bulk_cost_usd=Decimal("10"),
        )
    )
    assert decision.bulk == expected_bulk
    assert decision.escalations == expected_esc
    assert decision.calibration == SYNC
    assert decision.drift == decision.bulk  # drift checks ride along
    assert why in decision.reasons[0]
    if refused is None:
        assert decision.refused is None
    else:
        assert decision.refused is not None and refused in decision.refused


@pytest.mark.parametrize(
    ("bulk", "multiplier", "saving"),
    [
        ((OPENAI,), Decimal("0.5"), Decimal("5.0")),
        ((SHORT_WINDOW,), Decimal("0.6"), Decimal("4.0")),
        ((OPENAI, SHORT_WINDOW), Decimal("0.6"), Decimal("4.0")),  # the smallest discount of the stage
    ],
)
def test_the_saving_is_stated(bulk: tuple[BatchOffer, ...], multiplier: Decimal, saving: Decimal) -> None:
    decision = decide(
        ModeInputs(requested="batch", time_left_s=None, region_constrained=False, bulk=bulk, bulk_cost_usd=Decimal(10))
    )
    assert decision.multiplier == multiplier
    assert decision.saving_usd == saving
    assert "mode: batch" in decision.summary and f"{saving:.4f}" in decision.summary


def test_sync_saves_nothing_and_says_why() -> None:
    decision = decide(
        ModeInputs(
            requested="auto", time_left_s=None, region_constrained=False, bulk=(OPENAI,), bulk_cost_usd=Decimal(3)
        )
    )
    assert decision.multiplier == 1 and decision.saving_usd == 0
    assert decision.summary.startswith("mode: sync (bulk: no --deadline")


def test_an_unknown_mode_is_refused() -> None:
    assert decide(ModeInputs(requested="later", time_left_s=None, region_constrained=False, bulk=(OPENAI,))).refused


@pytest.mark.parametrize(
    ("time_left_s", "window_s", "expected"),
    [(None, 86400, BATCH), (20 * H, 86400, BATCH), (2 * H, 86400, SYNC), (0.0, 86400, SYNC), (H, 1800, BATCH)],
)
def test_rerun_mode(time_left_s: float | None, window_s: int, expected: str) -> None:
    assert rerun_mode(time_left_s=time_left_s, window_s=window_s) == expected


@pytest.mark.parametrize(("time_left_s", "expected"), [(None, False), (10 * H, False), (1.5 * H, True), (-5.0, True)])
def test_cancel_open_batch(time_left_s: float | None, expected: bool) -> None:
    assert cancel_open_batch(time_left_s=time_left_s) is expected


def test_beat_polls_open_batches_with_a_short_task() -> None:
    from router.jobs.dispatch import POLL_BATCHES_TASK, VISIBILITY_TIMEOUT_S, celery_config
    from router.settings import Settings

    config = celery_config(Settings(broker_url="redis://127.0.0.1:6379/13", _env_file=None))  # type: ignore[call-arg]
    entry = config["beat_schedule"]["poll-batches"]
    assert entry["task"] == POLL_BATCHES_TASK and 0 < entry["schedule"] < VISIBILITY_TIMEOUT_S

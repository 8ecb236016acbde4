"""The pure escalation decisions: retry after a failed call, and what an item does after a stage (table-driven)."""

from __future__ import annotations

import pytest

from policies.escalation import (
    ACCEPT,
    BACKOFF_BASE_S,
    BACKOFF_CAP_S,
    ESCALATE,
    FAIL,
    HOLD,
    MAX_ATTEMPTS,
    MAX_WAIT_S,
    WAIT,
    ModelAnswer,
    after_failure,
    after_stage,
)

# -- after a failed call -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "retryable", "retry_after", "stopped", "retry", "wait_s", "why"),
    [
        (0, True, None, False, True, BACKOFF_BASE_S, "try 2 of 3"),  # first failure: back off 0.5 s
        (1, True, None, False, True, BACKOFF_BASE_S * 2, "try 3 of 3"),  # second: 1 s
        (MAX_ATTEMPTS - 1, True, None, False, False, 0.0, "all 3 tries used"),  # the last try failed
        (MAX_ATTEMPTS - 1, True, 1.0, False, False, 0.0, "all 3 tries used"),  # even when asked to wait a little
        (0, True, 5.0, False, True, 5.0, "in 5 s"),  # the provider's Retry-After, not the backoff
        (1, True, MAX_WAIT_S, False, True, MAX_WAIT_S, "try 3"),  # exactly the most a chunk waits
        (0, True, MAX_WAIT_S + 1, False, False, 0.0, "beyond the 30 s"),  # longer: not waited for
        (0, True, 3600.0, False, False, 0.0, "Retry-After of 3600 s"),
        (1, True, 0.0, False, True, BACKOFF_BASE_S * 2, "try 3"),  # a Retry-After of 0 counts as none
        (0, False, None, False, False, 0.0, "not retryable"),  # e.g. a 400, an open circuit
        (0, False, 5.0, False, False, 0.0, "not retryable"),
        (0, True, None, True, False, 0.0, "stopped"),  # the provider refused us: no more calls to it
        (0, True, 1.0, True, False, 0.0, "stopped"),
    ],
)
def test_after_failure(
    attempt: int, retryable: bool, retry_after: float | None, stopped: bool, retry: bool, wait_s: float, why: str
) -> None:
    decision = after_failure(attempt=attempt, retryable=retryable, retry_after=retry_after, provider_stopped=stopped)
    assert (decision.retry, decision.wait_s) == (retry, wait_s)
    assert why in decision.reason


# -- after a stage ---------------------------------------------------------------------------------

SINGLE = (("a",), ("f1",), ("f2",))  # one model, then two fallbacks
CASCADE = (("c1", "c2"), ("strong",), ("f",))  # two cheap models that must agree, the strong one, a fallback
EVERY = frozenset({"a", "f1", "f2", "c1", "c2", "strong", "f"})
NONE: frozenset[str] = frozenset()

Answers = dict[str, tuple[str | None, str | None]]


# (stages, current stage, answers as model -> (output, error), callable models, stopped models, kind, stage, reason part)
STAGE_CASES: list[
    tuple[tuple[tuple[str, ...], ...], int, Answers, frozenset[str], frozenset[str], str, int | None, str]
] = [
    # Single model, with fallbacks.
    (SINGLE, 0, {"a": ("bug", None)}, EVERY, NONE, ACCEPT, None, "agree"),
    (SINGLE, 0, {}, EVERY, NONE, WAIT, None, "not all in"),
    (SINGLE, 0, {"a": (None, "HTTP 500")}, EVERY, NONE, ESCALATE, 1, "on to stage 1 (f1)"),
    (SINGLE, 0, {"a": (None, "answer 'maybe' names no single label")}, EVERY, NONE, ESCALATE, 1, "stage 0"),
    (SINGLE, 0, {"a": (None, "HTTP 500")}, EVERY - {"f1"}, NONE, ESCALATE, 2, "stage 2 (f2)"),  # f1 not callable
    (SINGLE, 1, {"a": (None, "e-a"), "f1": ("bug", None)}, EVERY, NONE, ACCEPT, None, "agree"),  # a fallback answers
    (SINGLE, 2, {"a": (None, "e-a"), "f1": (None, "e-f1"), "f2": (None, "e-f2")}, EVERY, NONE, FAIL, None, "e-f2"),
    (SINGLE, 0, {"a": (None, "HTTP 500")}, frozenset({"a"}), NONE, FAIL, None, "HTTP 500"),  # no fallback callable
    # Cascades: two cheap models must agree.
    (CASCADE, 0, {"c1": ("bug", None), "c2": ("bug", None)}, EVERY, NONE, ACCEPT, None, "agree"),
    (CASCADE, 0, {"c1": ("bug", None)}, EVERY, NONE, WAIT, None, "not all in"),  # c2 still to answer
    (CASCADE, 0, {"c1": ("bug", None), "c2": ("billing", None)}, EVERY, NONE, ESCALATE, 1, "stage 1 (strong)"),
    (CASCADE, 0, {"c1": ("bug", None), "c2": (None, "HTTP 503")}, EVERY, NONE, ESCALATE, 1, "stage 1"),  # one erring
    (CASCADE, 0, {"c1": (None, "e1"), "c2": (None, "e2")}, EVERY, NONE, ESCALATE, 1, "stage 1"),  # both failed alike
    (CASCADE, 0, {"c1": ("bug", None), "c2": ("billing", None)}, EVERY - {"strong"}, NONE, ESCALATE, 2, "stage 2 (f)"),
    (
        CASCADE,
        1,
        {"c1": ("bug", None), "c2": ("billing", None), "strong": ("other", None)},
        EVERY,
        NONE,
        ACCEPT,
        None,
        "agree",
    ),  # the strong model's answer stands, whatever the cheap ones said
    (
        CASCADE,
        0,
        {"c1": ("bug", None), "c2": ("billing", None)},
        frozenset({"c1", "c2"}),
        NONE,
        FAIL,
        None,
        "models disagreed (c1: bug, c2: billing) and no stronger model is left",
    ),
    (
        CASCADE,
        0,
        {"c1": ("bug", None), "c2": (None, "HTTP 503")},
        frozenset({"c1", "c2"}),
        NONE,
        FAIL,
        None,
        "HTTP 503",
    ),  # an error, not the disagreement, is the reason
    (
        CASCADE,
        2,
        {"c1": (None, "e1"), "c2": ("bug", None), "strong": (None, "e-strong"), "f": ("bug", None)},
        EVERY,
        NONE,
        ACCEPT,
        None,
        "agree",
    ),
    (
        CASCADE,
        2,
        {"c1": ("bug", None), "c2": ("bug2", None), "strong": (None, "e-strong"), "f": (None, "e-f")},
        EVERY,
        NONE,
        FAIL,
        None,
        "e-f",
    ),  # the last error
    (
        CASCADE,
        2,
        {"c1": (None, "e1"), "c2": ("bug", None), "strong": ("x", None), "f": (None, "unusable")},
        EVERY,
        NONE,
        FAIL,
        None,
        "unusable",
    ),
    # A stage whose model has already answered the item is not asked again.
    (
        (("a",), ("b",), ("a",)),
        1,
        {"a": (None, "e-a"), "b": (None, "e-b")},
        frozenset({"a", "b"}),
        NONE,
        FAIL,
        None,
        "e-b",
    ),
    # Stopped providers (a refused key, a spent quota).
    (SINGLE, 0, {"a": (None, "key refused")}, EVERY - {"a"}, frozenset({"a"}), ESCALATE, 1, "stage 1"),  # fallback
    (SINGLE, 0, {"a": (None, "key refused")}, NONE, frozenset({"a", "f1", "f2"}), HOLD, None, "stopped"),
    (
        SINGLE,
        2,
        {"a": (None, "HTTP 500"), "f1": (None, "e"), "f2": (None, "key refused")},
        EVERY - {"f2"},
        frozenset({"f2"}),
        HOLD,
        None,
        "resume",
    ),  # one answer from a stopped provider is enough
    (
        CASCADE,
        0,
        {"c1": ("bug", None), "c2": (None, "key refused")},
        frozenset({"c1"}),
        frozenset({"c2", "strong", "f"}),
        FAIL,
        None,
        "key refused",
    ),  # a usable answer: the item, not only the provider, got an answer
    (
        SINGLE,
        0,
        {"a": (None, "HTTP 500")},
        frozenset({"a"}),
        frozenset({"f1", "f2"}),
        FAIL,
        None,
        "HTTP 500",
    ),  # a not stopped
]


@pytest.mark.parametrize(
    ("stages", "current", "answers", "callable_models", "stopped_models", "kind", "stage", "why"), STAGE_CASES
)
def test_after_stage(
    stages: tuple[tuple[str, ...], ...],
    current: int,
    answers: Answers,
    callable_models: frozenset[str],
    stopped_models: frozenset[str],
    kind: str,
    stage: int | None,
    why: str,
) -> None:
    given = {m: ModelAnswer(output, error) for m, (output, error) in answers.items()}
    decision = after_stage(
        stages=stages, current=current, answers=given, callable_models=callable_models, stopped_models=stopped_models
    )
    assert (decision.kind, decision.stage) == (kind, stage), decision.reason
    assert why in decision.reason


def test_every_outcome_is_covered() -> None:
    """The table above reaches every kind of decision (a new kind needs rows of its own)."""
    assert {case[5] for case in STAGE_CASES} == {WAIT, ACCEPT, ESCALATE, HOLD, FAIL}


@pytest.mark.parametrize(
    ("attempt", "retry_after", "time_left_s", "retry", "wait_s"),
    [
        (2, None, 60.0, True, BACKOFF_CAP_S),  # past MAX_ATTEMPTS, time left: the transient fault is waited out
        (6, None, 60.0, True, BACKOFF_CAP_S),  # the backoff is capped
        (6, None, 1.0, False, 0.0),  # the time for the item's faults is up
        (5, 12.0, 60.0, True, 12.0),  # the provider's Retry-After is honoured
        (0, 120.0, 600.0, False, 0.0),  # beyond what a chunk waits: not waited for
    ],
)
def test_transient_faults_are_deferred_while_time_is_left(
    attempt: int, retry_after: float | None, time_left_s: float, retry: bool, wait_s: float
) -> None:
    decision = after_failure(
        attempt=attempt, retryable=True, retry_after=retry_after, provider_stopped=False, time_left_s=time_left_s
    )
    assert (decision.retry, decision.wait_s) == (retry, wait_s), decision.reason


def test_without_time_left_the_tries_are_counted_as_before() -> None:
    assert not after_failure(attempt=2, retryable=True, retry_after=None, provider_stopped=False).retry
    assert not after_failure(
        attempt=0, retryable=False, retry_after=None, provider_stopped=False, time_left_s=600.0
    ).retry  # a bad request is not a transient fault


def test_an_items_backoff_is_capped_while_time_is_left() -> None:
    """Independent faults do not stretch an item's waits: 0.5 s, 1 s, then 2 s at most."""
    waits = [
        after_failure(attempt=a, retryable=True, retry_after=None, provider_stopped=False, time_left_s=300).wait_s
        for a in range(8)
    ]
    assert waits == [0.5, 1.0] + [BACKOFF_CAP_S] * 6
    honoured = after_failure(attempt=5, retryable=True, retry_after=12.0, provider_stopped=False, time_left_s=300)
    assert honoured.wait_s == 12.0  # a provider's own Retry-After is waited in full

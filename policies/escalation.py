"""Escalation, as decisions: after a failed call, try the same model again or not; after a round,
what each item whose current stage has answered does next.

A route runs an item through stages (router.route.Route.stages): one model, or two cheap models
that must agree (a cascade), then the strong model, then fallbacks one at a time. A stage's answers
stand when they agree and are usable; otherwise the item goes to the next stage whose models can all
be called and none has answered it yet. When no stage is left, the item is held back if only stopped
providers (a refused key, a spent quota) are at fault, so that a resume can run it once they are
fixed, and fails otherwise, with the last error or the disagreement as its reason.

Inputs are plain values: attempt counts, the stages as tuples, an item's answers per model (the
parsed output, or None, and the error, or None), the models that can be called now, and the models
whose provider is stopped. The caller applies the decision: the engine (router/engine/rounds.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Literal, Protocol

# Tries per item within a chunk for retryable failures (429, 5xx, timeouts) before it is failed.
MAX_ATTEMPTS = 3
# Backoff between one item's tries when the provider gave no Retry-After: 0.5 s, 1 s, then 2 s at
# most, plus jitter. Short and capped, because what keeps load off a provider in trouble is shared by
# every call, not per item: its breaker (a provider that is down gets one probe call per cooldown),
# its calls-in-flight window (narrowed under overload) and its model's rate (cut on 429s). An item's
# own faults are mostly independent of the others': doubling its wait per fault (1, 2, 4, 8, 16 s)
# only stretched a job's tail, as the few items with five faults in a 20% mix waited 31 s.
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 2.0
# A Retry-After longer than this is not waited for inside a chunk: the item fails with its reason.
MAX_WAIT_S = 30.0
# An item refused by its provider's open breaker, with nothing else to go to, waits for the breaker
# to let calls through again for up to this long at a time (woken the moment a probe succeeds), not
# a backoff per refusal: one refused call row per item per this long, whatever the breaker's cooldown.
BREAKER_WAIT_S = 30.0


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """Whether a failed call is tried again on the same model, after how long, and why."""

    retry: bool
    wait_s: float  # 0.0 when not retried
    reason: str
    # > 0: the retry leaves now and waits up to this long for the provider's breaker to let it through
    # (woken as soon as it does), instead of sleeping `wait_s`.
    until_breaker_s: float = 0.0


_STOPPED = RetryDecision(False, 0.0, "the provider is stopped for this job")
_NOT_RETRYABLE = RetryDecision(False, 0.0, "the failure is not retryable")
_EXHAUSTED = RetryDecision(False, 0.0, f"all {MAX_ATTEMPTS} tries used")


def after_failure(
    *,
    attempt: int,
    retryable: bool,
    retry_after: float | None,
    provider_stopped: bool,
    time_left_s: float | None = None,
    breaker_open: bool = False,
) -> RetryDecision:
    """After a failed call (its `attempt`-th retry, 0 for the first try): retry on the same model while
    the failure is retryable, tries are left, the provider's Retry-After (if any) is at most
    MAX_WAIT_S and the provider is not stopped. The wait is the provider's Retry-After, else
    BACKOFF_BASE_S * 2**attempt up to BACKOFF_CAP_S (a Retry-After of 0 counts as none).

    `time_left_s`, given for a transient fault (a rate limit, an overload, a 5xx, no answer, an open
    breaker), lets the call go on past MAX_ATTEMPTS while that much time is left for the item's
    faults: such faults are deferred, never final, until then. A `breaker_open` refusal (the
    provider's breaker is open) with time left is not backed off: the retry waits for the breaker
    itself, up to BREAKER_WAIT_S or the time left, and goes the moment the provider is back."""
    if provider_stopped:
        return _STOPPED
    if not retryable:
        return _NOT_RETRYABLE
    if breaker_open and time_left_s is not None:
        if time_left_s <= 0:
            return RetryDecision(False, 0.0, "the time for this item's faults is up")
        patience = min(time_left_s, BREAKER_WAIT_S)
        return RetryDecision(
            True,
            0.0,
            f"provider's breaker open: try {attempt + 2} when it lets calls through (up to {patience:g} s)",
            patience,
        )
    backoff = min(retry_after or _backoff(attempt), MAX_WAIT_S)
    if time_left_s is not None and (retry_after or 0) <= MAX_WAIT_S:
        if backoff <= time_left_s:
            return RetryDecision(True, backoff, f"transient fault: try {attempt + 2} in {backoff:g} s")
        return RetryDecision(False, 0.0, "the time for this item's faults is up")
    if attempt + 1 >= MAX_ATTEMPTS:
        return _EXHAUSTED
    if (retry_after or 0) > MAX_WAIT_S:
        return RetryDecision(
            False, 0.0, f"Retry-After of {retry_after:g} s is beyond the {MAX_WAIT_S:g} s a chunk waits"
        )
    wait_s = retry_after or _backoff(attempt)
    return RetryDecision(True, wait_s, f"try {attempt + 2} of {MAX_ATTEMPTS} in {wait_s:g} s")


def _backoff(attempt: int) -> float:
    return min(BACKOFF_BASE_S * 2 ** min(attempt, 16), BACKOFF_CAP_S)


class Answered(Protocol):
    """One model's answer to an item: the parsed output (None when it failed or was unusable) and
    the error (None when it answered usably)."""

    @property
    def output(self) -> str | None: ...

    @property
    def error(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class ModelAnswer:
    """A plain `Answered`, for callers that hold no richer answer (and for tests)."""

    output: str | None
    error: str | None = None


StageKind = Literal["wait", "accept", "escalate", "hold", "fail"]
WAIT: StageKind = "wait"  # some model of the current stage has not answered yet
ACCEPT: StageKind = "accept"  # the stage's answers agree and are usable: the first model's answer stands
ESCALATE: StageKind = "escalate"  # go to `stage`
HOLD: StageKind = "hold"  # only stopped providers are at fault: keep the item for a later resume
FAIL: StageKind = "fail"  # nothing is left to try: `reason` says why


@dataclass(frozen=True, slots=True)
class StageDecision:
    """What an item does after its current stage answered, and why; `stage` only for ESCALATE."""

    kind: StageKind
    reason: str
    stage: int | None = None


# Shared values: the common outcomes allocate nothing (this runs once per item on the worker's hot path).
_WAITING = StageDecision(WAIT, "the stage's answers are not all in")
_ACCEPTED = StageDecision(ACCEPT, "the stage's answers agree and are usable")
_HELD = StageDecision(HOLD, "only stopped providers failed it: kept for a resume once they are fixed")


def after_stage(
    *,
    stages: Sequence[tuple[str, ...]],
    current: int,
    answers: Mapping[str, Answered],
    callable_models: AbstractSet[str],
    stopped_models: AbstractSet[str],
) -> StageDecision:
    """What an item does once its current stage (`stages[current]`) has answered.

    `answers` are the item's answers so far, per model, from every stage it went through, in the
    order they came in; each model answers an item at most once. `callable_models` are the models
    that can be called now (known, provider not stopped); `stopped_models` those whose provider is
    stopped for the job. In order: WAIT while the stage is incomplete; ACCEPT when its answers are
    all usable and equal; ESCALATE to the next stage whose models are all callable and none has
    answered the item; HOLD when every answer failed and one came from a stopped provider; else FAIL
    with the last error, or the disagreement when every answer was usable.
    """
    models = stages[current]
    for model_id in models:
        if model_id not in answers:
            return _WAITING
    first = answers[models[0]].output
    if first is not None:
        for model_id in models[1:]:
            if answers[model_id].output != first:
                break
        else:
            return _ACCEPTED
    for index in range(current + 1, len(stages)):
        if all(m in callable_models and m not in answers for m in stages[index]):
            return StageDecision(
                ESCALATE,
                f"stage {current} gave no agreed answer: on to stage {index} ({', '.join(stages[index])})",
                index,
            )
    if all(a.output is None and a.error is not None for a in answers.values()) and any(
        m in stopped_models for m in answers
    ):
        return _HELD
    last_error = None
    for answer in answers.values():
        if answer.error:
            last_error = answer.error
    if last_error:
        return StageDecision(FAIL, last_error)
    outputs = ", ".join(f"{m}: {answers[m].output}" for m in models)
    return StageDecision(FAIL, f"models disagreed ({outputs}) and no stronger model is left")

"""Each provider's error table, as implemented: the real bodies and headers (quoted in
router/providers/<vendor>.py) read by that provider's `read_error` through `status_error`.

A row: what the provider answered -> whether another try may help (`retryable`), whether the provider
is stopped for the job (`stops_provider`, with the words of its stop), the wait (`retry_after`) and the
window information for the shared rate (`window_reset_s`). The fake server serves the same bodies
(tests/fakes/faults.py PRESETS); tests/unit/test_contract_sdks.py checks them against the official SDKs.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from router.errors import ProviderStatusError
from router.providers import anthropic, gemini, mistral, openai
from router.providers.http import ErrorReader, read_generic_error, status_error
from tests.fakes.faults import PRESETS, Dialect, gemini_429, vendor_error

READERS: dict[str, ErrorReader] = {
    "openai": openai.read_error,
    "anthropic": anthropic.read_error,
    "gemini": gemini.read_error,
    "mistral": mistral.read_error,
}


def read(vendor: str, dialect: Dialect) -> ProviderStatusError:
    status, body, headers = dialect
    content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    error = status_error(
        httpx.Response(status, content=content, headers=headers), provider=vendor, reader=READERS[vendor]
    )
    assert isinstance(error, ProviderStatusError)
    return error


def with_headers(dialect: Dialect, **extra: str) -> Dialect:
    status, body, headers = dialect
    return status, body, {**headers, **{k.replace("_", "-"): v for k, v in extra.items()}}


def error_body(vendor: str, status: int, message: str, **fields: Any) -> Dialect:
    status, body, headers = vendor_error(vendor, status, message)
    target = body if vendor == "mistral" else body["error"]
    target.update(fields)
    return status, body, headers


RETRY, STOP, FAIL = "retry", "stop", "fail"

# (vendor, dialect, outcome, retry_after, words in the stop (or None))
TABLE: list[tuple[str, Dialect, str, float | None, str | None]] = [
    # OpenAI: error.code decides, then error.type; the message's "billing" link does not.
    ("openai", PRESETS["openai.rate_limit"](), RETRY, None, None),
    ("openai", with_headers(PRESETS["openai.rate_limit"](), retry_after_ms="750"), RETRY, 0.75, None),
    ("openai", PRESETS["openai.insufficient_quota"](), STOP, None, "quota or credit is spent"),
    ("openai", PRESETS["openai.insufficient_quota"](code="credit_balance_exhausted"), STOP, None, "add credit"),
    (
        "openai",
        PRESETS["openai.insufficient_quota"](code="project_spend_limit_exceeded"),
        STOP,
        None,
        "project's monthly spend limit",
    ),
    (
        "openai",
        PRESETS["openai.insufficient_quota"](code="organization_usage_limit_exceeded"),
        STOP,
        None,
        "monthly usage limit set by OpenAI",
    ),
    ("openai", error_body("openai", 429, "Too fast", type="tokens", code="slow_down"), RETRY, None, None),
    ("openai", PRESETS["openai.invalid_api_key"](), STOP, None, None),
    (
        "openai",
        error_body("openai", 400, "Unsupported parameter: 'max_tokens'", code="unsupported_parameter"),
        FAIL,
        None,
        None,
    ),
    ("openai", error_body("openai", 503, "The engine is currently overloaded", type="server_error"), RETRY, None, None),
    ("openai", (402, {"error": {"message": "Insufficient credits", "code": 402}}, {}), STOP, None, "HTTP 402"),
    # A compatible server with no codes at all: OpenAI's documented quota wording is the fallback.
    ("openai", (429, {"error": {"message": "You exceeded your current quota"}}, {}), STOP, None, "quota or credit"),
    ("openai", with_headers(PRESETS["openai.rate_limit"](), x_should_retry="false"), FAIL, None, None),
    ("openai", with_headers(vendor_error("openai", 400, "try again"), x_should_retry="true"), RETRY, None, None),
    # Anthropic: error.type and error.details.error_code.
    ("anthropic", PRESETS["anthropic.rate_limit"](retry_after="7"), RETRY, 7.0, None),
    ("anthropic", PRESETS["anthropic.overloaded"](), RETRY, None, None),
    ("anthropic", PRESETS["anthropic.spend_cap"](), STOP, None, "monthly spend cap"),
    ("anthropic", PRESETS["anthropic.spend_limit"](), STOP, None, "regain access on 2026-12-01"),
    ("anthropic", PRESETS["anthropic.credit_low"](), STOP, None, "credit balance is too low"),
    ("anthropic", vendor_error("anthropic", 402, "There is an issue with your billing"), STOP, None, "billing_error"),
    ("anthropic", vendor_error("anthropic", 401, "invalid x-api-key"), STOP, None, None),
    ("anthropic", vendor_error("anthropic", 403, "Your API key does not have permission"), STOP, None, None),
    ("anthropic", vendor_error("anthropic", 400, "max_tokens: Field required"), FAIL, None, None),
    ("anthropic", vendor_error("anthropic", 413, "Request exceeds the maximum size"), FAIL, None, None),
    ("anthropic", vendor_error("anthropic", 500, "Internal server error"), RETRY, None, None),
    ("anthropic", vendor_error("anthropic", 504, "Request timed out"), RETRY, None, None),
    # More codes from the official SDK's error details (anthropic/types/shared/*_error_details.py).
    (
        "anthropic",
        error_body("anthropic", 429, "Spend limit", details={"error_code": "contract_spend_limit_reached"}),
        STOP,
        None,
        "contract's spend limit",
    ),
    (
        "anthropic",
        with_headers(
            error_body("anthropic", 429, "Ramp limit", details={"error_code": "ramp_limit_exceeded"}), retry_after="4"
        ),
        RETRY,
        4.0,
        None,
    ),
    (
        "anthropic",
        error_body("anthropic", 400, "On hold", details={"error_code": "organization_on_hold"}),
        STOP,
        None,
        "on hold",
    ),
    # Fallback: a rate_limit_error naming a spend limit, without details (can1357/oh-my-pi#5418).
    (
        "anthropic",
        vendor_error("anthropic", 429, "This request would exceed your account's monthly spend limit."),
        STOP,
        None,
        "spend limit is reached",
    ),
    # Gemini: error.status and error.details; the wait is in the body only.
    ("gemini", gemini_429(per="Minute", retry_delay="26s"), RETRY, 26.0, None),
    ("gemini", gemini_429(per="Minute", retry_delay="0.5s"), RETRY, 0.5, None),
    ("gemini", gemini_429(per="Minute", retry_delay=None), RETRY, None, None),
    ("gemini", gemini_429(per="Day", retry_delay="26s"), STOP, 26.0, "daily quota is spent"),
    ("gemini", vendor_error("gemini", 429, "Resource has been exhausted (e.g. check quota)."), RETRY, None, None),
    (
        "gemini",
        vendor_error(
            "gemini",
            429,
            "Quota exceeded for quota metric generate_content_requests, limit: GenerateRequestsPerDayPerProjectPerModel",
        ),
        STOP,
        None,
        "midnight Pacific time",
    ),
    (
        "gemini",
        vendor_error("gemini", 400, "API key not valid. Please pass a valid API key.", code="API_KEY_INVALID"),
        STOP,
        None,
        None,
    ),
    ("gemini", vendor_error("gemini", 400, "Thinking is not supported for this model."), FAIL, None, None),
    ("gemini", vendor_error("gemini", 403, "Method doesn't allow unregistered callers"), STOP, None, None),
    ("gemini", vendor_error("gemini", 503, "The model is overloaded. Please try again later."), RETRY, None, None),
    # Mistral: its status and codes.
    ("mistral", PRESETS["mistral.rate_limit"](), RETRY, None, None),
    ("mistral", (429, {"message": "Requests rate limit exceeded"}, {}), RETRY, None, None),
    ("mistral", PRESETS["mistral.payment_required"](), STOP, None, "Subscriptions > Billing"),
    ("mistral", (401, {"message": "Unauthorized", "request_id": "933f2339"}, {}), STOP, None, None),
    ("mistral", vendor_error("mistral", 503, "Service tier capacity exceeded for this model."), RETRY, None, None),
    ("mistral", vendor_error("mistral", 400, "Invalid model: mistral-huge"), FAIL, None, None),
]


@pytest.mark.parametrize(("vendor", "dialect", "outcome", "retry_after", "words"), TABLE)
def test_each_providers_error_table(
    vendor: str, dialect: Dialect, outcome: str, retry_after: float | None, words: str | None
) -> None:
    error = read(vendor, dialect)
    assert (error.retryable, error.stops_provider) == {RETRY: (True, False), STOP: (False, True), FAIL: (False, False)}[
        outcome
    ], str(error)
    assert error.retry_after == retry_after
    if words is not None:
        assert error.quota is not None and words in error.quota, error.quota


def test_a_gemini_per_minute_429_is_not_read_as_a_spent_quota_though_its_words_say_so() -> None:
    """Finding 1: the words "exceeded your current quota ... billing" are in every Gemini 429."""
    error = read("gemini", gemini_429(per="Minute", retry_delay="26s"))
    assert "exceeded your current quota" in str(error) and "billing" in str(error)
    assert error.code == "RESOURCE_EXHAUSTED/GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
    assert not error.quota_exhausted and error.rate_pause_s == 26.0


def test_an_openai_window_reset_informs_the_shared_rate_capped_and_is_not_a_wait() -> None:
    """Finding 6: x-ratelimit-reset-requests "6m0s" is when the window is full again."""
    error = read("openai", PRESETS["openai.rate_limit"]())
    assert error.retry_after is None  # the item backs off on its own, it does not wait six minutes
    assert error.window_reset_s == openai.WINDOW_RESET_CAP_S  # the exhausted window, capped
    assert error.rate_pause_s == openai.WINDOW_RESET_CAP_S
    assert error.code == "requests/rate_limit_exceeded"
    # With a Retry-After, that is the wait and the pause.
    error = read("openai", with_headers(PRESETS["openai.rate_limit"](), retry_after="2"))
    assert (error.retry_after, error.rate_pause_s) == (2.0, 2.0)


@pytest.mark.parametrize(
    ("headers", "window"),
    [
        ({"x-ratelimit-reset-requests": "300ms", "x-ratelimit-reset-tokens": "6m0s"}, 0.3),  # unknown which: the sooner
        ({"x-ratelimit-reset-tokens": "20ms"}, 0.02),
        (
            {
                "x-ratelimit-reset-requests": "500ms",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-tokens": "20ms",
            },
            0.5,
        ),
        ({"x-ratelimit-reset-tokens": "1h2m3.5s", "x-ratelimit-remaining-tokens": "0"}, openai.WINDOW_RESET_CAP_S),
        ({"x-ratelimit-reset-requests": "soon"}, None),
        ({}, None),
    ],
)
def test_openai_window_reset_headers(headers: dict[str, str], window: float | None) -> None:
    assert openai.window_reset_s(headers) == window


def test_anthropic_waits_for_the_exhausted_limit_when_no_retry_after_came() -> None:
    now = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC).timestamp()
    headers = {
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2026-11-22T10:00:05Z",
        "anthropic-ratelimit-tokens-remaining": "16000",
        "anthropic-ratelimit-tokens-reset": "2026-11-22T10:00:40Z",
    }
    _, body, _ = vendor_error("anthropic", 429, "rate limited")
    assert anthropic.read_error(429, headers, body, now=now).retry_after == 5.0
    del headers["anthropic-ratelimit-requests-remaining"], headers["anthropic-ratelimit-tokens-remaining"]
    assert anthropic.read_error(429, headers, body, now=now).retry_after == 40.0  # unknown which: the latest
    assert anthropic.read_error(429, {}, body, now=now).retry_after is None


@pytest.mark.parametrize("vendor", ["openai", "anthropic", "mistral"])
def test_the_providers_request_id_is_kept_and_quoted_in_the_error_text(vendor: str) -> None:
    """Finding 8: the request id lands in the call row's error text (str(error))."""
    error = read(vendor, vendor_error(vendor, 500, "boom"))
    assert error.request_id is not None and error.request_id.startswith("req_")
    assert f"(request {error.request_id})" in str(error)
    # Mistral's 401 has it only in the body; Anthropic's body carries it too.
    assert read("mistral", (401, {"message": "Unauthorized", "request_id": "933f"}, {})).request_id == "933f"
    status, body, _ = vendor_error("anthropic", 529, "Overloaded")
    assert read("anthropic", (status, body, {})).request_id == body["request_id"]


@pytest.mark.parametrize(
    ("header", "retryable"),
    [("false", False), ("true", True), ("TRUE", True), ("maybe", True), (None, True)],
)
def test_x_should_retry_wins_over_the_status(header: str | None, retryable: bool) -> None:
    headers = {} if header is None else {"x-should-retry": header}
    error = read("anthropic", with_headers(vendor_error("anthropic", 529, "Overloaded"), **headers))
    assert error.retryable is retryable
    # A stop is not undone by the header: a spent quota is never worth another try.
    assert not read("openai", with_headers(PRESETS["openai.insufficient_quota"](), x_should_retry="true")).retryable


def test_a_body_in_no_known_shape_is_decided_by_its_status() -> None:
    for vendor in READERS:
        assert read(vendor, (429, "<html>Too Many Requests</html>", {"retry-after": "3"})).retry_after == 3.0
        assert read(vendor, (429, [1, 2], {})).retryable
        assert read(vendor, (500, {"error": "x"}, {})).retryable
    generic = read_generic_error(402, {}, None)
    assert generic.quota is not None and "402" in generic.quota

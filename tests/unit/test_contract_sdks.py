"""Contract tests: each provider's official Python SDK and pennyroute read the fake's error responses
the same way, so the fake (tests/fakes/faults.py PRESETS) cannot drift from the real formats unseen.

For every real error dialect the fake serves, the SDK (openai, anthropic, google-genai, mistralai; the
`dev` extra) is called against the fake with its own retries off, and so is pennyroute's provider. Both
must agree on the status, the provider's code and type, the request id, the wait, and whether another
try may help. Where pennyroute stops the provider (a spent quota) it must be because of a code the
SDK exposes too; the SDKs themselves retry every 429, which is the very mistake issue 13 is about, so
there the SDK's retry flag is not compared. Only the error side is checked here: successful answers
are for the answer-parsing contract.

The SDKs' retry rules are read from the SDKs themselves: openai's and anthropic's `_should_retry` and
`_parse_retry_after_header` (their base client), google-genai's `_RETRY_HTTP_STATUS_CODES`, and
mistralai's per-operation list for chat.complete (["429", "500", "502", "503", "504"]).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from router.errors import ProviderStatusError
from router.providers.base import ChatRequest
from router.providers.openai import QUOTA_CODES
from tests.sdk_contract import KEY, send

anthropic = pytest.importorskip("anthropic")
openai = pytest.importorskip("openai")
genai = pytest.importorskip("google.genai")
mistral_client = pytest.importorskip("mistralai.client")

MESSAGES = [{"role": "user", "content": "hi"}]
# mistralai's chat.complete retries these statuses when retries are on (mistralai/client/chat.py).
MISTRAL_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


def script(url: str, preset: str, **options: Any) -> None:
    """The same response (request id included) for the next two calls: the SDK's and pennyroute's."""
    httpx.post(f"{url}/_fail", json={"preset": preset, "count": 2, **options}).raise_for_status()


def ours(url: str, vendor: str, *, model: str) -> ProviderStatusError:
    """pennyroute's reading of the next scripted error."""
    with pytest.raises(ProviderStatusError) as info:
        send(url, vendor, ChatRequest(model=model, system="", prompt="hi", max_output_tokens=8))
    return info.value


def sdk_error(call: Callable[[], object], kind: type[BaseException]) -> Any:
    with pytest.raises(kind) as info:
        call()
    return info.value


OPENAI_CASES = [
    ("openai.rate_limit", {}),
    ("openai.insufficient_quota", {}),
    ("openai.insufficient_quota", {"code": "organization_spend_limit_exceeded"}),
    ("openai.invalid_api_key", {}),
]


@pytest.mark.parametrize(("preset", "options"), OPENAI_CASES)
def test_openai_sdk_and_pennyroute_read_errors_alike(keyed_fake: str, preset: str, options: dict[str, Any]) -> None:
    client = openai.OpenAI(api_key=KEY, base_url=f"{keyed_fake}/v1", max_retries=0)
    script(keyed_fake, preset, **options)
    theirs = sdk_error(
        lambda: client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=8),
        openai.APIStatusError,
    )
    mine = ours(keyed_fake, "openai", model="gpt-4o-mini")
    assert mine.status_code == theirs.status_code
    assert mine.code == "/".join(k for k in (theirs.type, theirs.code) if k)
    assert mine.request_id == theirs.request_id is not None
    assert mine.retry_after == client._parse_retry_after_header(theirs.response.headers)
    assert mine.key_refused == isinstance(theirs, openai.AuthenticationError)
    # Billing errors: "inspect error.code" (OpenAI's error-codes guide); the SDK exposes it as `.code`.
    spent = theirs.code in QUOTA_CODES or theirs.type == "insufficient_quota"
    assert mine.quota_exhausted == spent
    if not mine.stops_provider:
        assert mine.retryable == client._should_retry(theirs.response)
    else:
        assert not mine.retryable


ANTHROPIC_CASES = [
    ("anthropic.rate_limit", {"retry_after": "3"}),
    ("anthropic.overloaded", {}),
    ("anthropic.spend_cap", {}),
    ("anthropic.spend_limit", {}),
    ("anthropic.credit_low", {}),
]


@pytest.mark.parametrize(("preset", "options"), ANTHROPIC_CASES)
def test_anthropic_sdk_and_pennyroute_read_errors_alike(keyed_fake: str, preset: str, options: dict[str, Any]) -> None:
    client = anthropic.Anthropic(api_key=KEY, base_url=keyed_fake, max_retries=0)
    script(keyed_fake, preset, **options)
    theirs = sdk_error(
        lambda: client.messages.create(model="claude-haiku-4-5", max_tokens=8, messages=MESSAGES),
        anthropic.APIStatusError,
    )
    mine = ours(keyed_fake, "anthropic", model="claude-haiku-4-5")
    assert mine.status_code == theirs.status_code
    assert mine.code == "/".join(k for k in (theirs.type, theirs.error_code) if k)
    assert mine.request_id == theirs.request_id is not None
    assert mine.retry_after == client._parse_retry_after_header(theirs.response.headers)
    if theirs.error_code == "enforced_spend_limit_reached":
        from anthropic.types.shared import EnforcedSpendLimitReachedError

        assert isinstance(theirs, EnforcedSpendLimitReachedError) and mine.stops_provider
    if isinstance(theirs, anthropic.BadRequestError):
        # The SDK has no code for these (a 400 invalid_request_error): pennyroute's documented
        # wording fallback decides, and the SDK agrees it is not worth another try.
        assert not client._should_retry(theirs.response) and mine.stops_provider
    if not mine.stops_provider:
        assert mine.retryable == client._should_retry(theirs.response)
    else:
        assert not mine.retryable


GEMINI_CASES = [
    ("gemini.per_minute", {"retry_delay": "26s"}, "v1beta"),
    ("gemini.per_minute", {"retry_delay": "0.5s"}, "v1"),
    ("gemini.per_day", {"retry_delay": "26s"}, "v1beta"),
]


@pytest.mark.parametrize(("preset", "options", "version"), GEMINI_CASES)
def test_google_genai_sdk_and_pennyroute_read_errors_alike(
    keyed_fake: str, preset: str, options: dict[str, Any], version: str
) -> None:
    from google.genai import _api_client, errors, types

    client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=keyed_fake, api_version=version))
    script(keyed_fake, preset, **options)
    theirs = sdk_error(lambda: client.models.generate_content(model="gemini-2.5-pro", contents="hi"), errors.APIError)
    mine = ours(keyed_fake, "gemini", model="gemini-2.5-pro")
    assert mine.status_code == theirs.code == 429 and theirs.status == "RESOURCE_EXHAUSTED"
    assert theirs.response.headers.get("retry-after") is None  # the real Gemini sends none
    details = theirs.details["error"]["details"]
    quota_ids = [v["quotaId"] for d in details if d["@type"].endswith("QuotaFailure") for v in d["violations"]]
    delays = [d["retryDelay"] for d in details if d["@type"].endswith("RetryInfo")]
    assert mine.code == "/".join([theirs.status, *quota_ids])
    assert mine.retry_after == float(delays[0].removesuffix("s"))
    assert mine.request_id is None  # Gemini's error responses carry none; the SDK reads none either
    per_day = any("PerDay" in q for q in quota_ids)
    assert mine.stops_provider == per_day
    if not per_day:
        assert mine.retryable == (theirs.code in _api_client._RETRY_HTTP_STATUS_CODES)


MISTRAL_CASES = [("mistral.rate_limit", {}), ("mistral.payment_required", {})]


@pytest.mark.parametrize(("preset", "options"), MISTRAL_CASES)
def test_mistralai_sdk_and_pennyroute_read_errors_alike(keyed_fake: str, preset: str, options: dict[str, Any]) -> None:
    from mistralai.client import Mistral, errors
    from mistralai.client.utils.retries import BackoffStrategy, RetryConfig

    client = Mistral(
        api_key=KEY, server_url=keyed_fake, retry_config=RetryConfig("none", BackoffStrategy(1, 1, 1.0, 1), False)
    )
    script(keyed_fake, preset, **options)
    theirs = sdk_error(
        lambda: client.chat.complete(model="mistral-small-latest", messages=MESSAGES), errors.MistralError
    )
    mine = ours(keyed_fake, "mistral", model="mistral-small-latest")
    body = json.loads(theirs.body)
    assert mine.status_code == theirs.status_code
    assert mine.code == "/".join(k for k in (body.get("type"), body.get("code")) if k)
    assert mine.request_id == theirs.headers.get("x-request-id") is not None
    if mine.stops_provider:
        assert theirs.status_code == 402 and not mine.retryable
    else:
        assert mine.retryable == (theirs.status_code in MISTRAL_RETRY_STATUSES)

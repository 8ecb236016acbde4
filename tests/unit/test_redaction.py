"""router.redact: what is hidden from stored and logged text, and which characters a name may not hold."""

from __future__ import annotations

import logging

import httpx
import pytest
from pydantic import SecretStr

from router.errors import InputError
from router.ledger.repo import checked_name
from router.providers.http import MAX_QUOTED_BODY_CHARS, credentials, error_message, status_error
from router.redact import REDACTED, RedactingFilter, configured_secrets, printable, redact
from router.settings import Settings

KEY = "local-proxy-key-42"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"invalid key {KEY} given", f"invalid key {REDACTED} given"),
        (f"{KEY}{KEY}", REDACTED * 2),
        ("Authorization: Bearer abc.def-123", f"Authorization: Bearer {REDACTED}"),
        ('{"authorization": "Basic dXNlcjpwYXNz"}', f'{{"authorization": "Basic {REDACTED}"}}'),
        (
            "{'x-api-key': 'zzz', 'X-Goog-Api-Key': 'yyy'}",
            f"{{'x-api-key': '{REDACTED}', 'X-Goog-Api-Key': '{REDACTED}'}}",
        ),
        ("api_key=abc&model=m", f"api_key={REDACTED}&model=m"),
        ("GET /v1/models?key=abc123&alt=json", f"GET /v1/models?key={REDACTED}&alt=json"),
        ("sent Bearer eyJhbGciOiJIUzI1NiJ9.x", f"sent Bearer {REDACTED}"),
        ("Incorrect API key provided: sk-proj-abcdefghijklmnop1234.", f"Incorrect API key provided: {REDACTED}."),
        ("key sk-ant-api03-" + "x" * 30 + " refused", f"key {REDACTED} refused"),
        ("key AIzaSy" + "A" * 33 + " refused", f"key {REDACTED} refused"),
        # Ordinary words are left alone.
        ("authorization failed; scikit sk-learn; the bearer of bad news", None),
        ("HTTP 429: Rate limit reached for requests", None),
    ],
)
def test_redact(text: str, expected: str | None) -> None:
    assert redact(text, {KEY}) == (text if expected is None else expected)


def test_redact_hides_the_longest_secret_whole_and_ignores_values_too_short_to_be_keys() -> None:
    assert redact("abcdefgh-2", {"abcdefgh", "abcdefgh-2"}) == REDACTED
    assert redact("a b c", {"a", "b"}) == "a b c"


def test_configured_secrets_are_the_settings_api_key_values() -> None:
    settings = Settings(
        api_keys={"OPENAI_API_KEY": SecretStr("k1-xxxx"), "X_API_KEY": SecretStr("k2-yyyy")}, _env_file=None
    )  # type: ignore[call-arg]
    assert configured_secrets(settings) == {"k1-xxxx", "k2-yyyy"}


def test_credentials_are_the_key_headers_values_with_and_without_their_scheme() -> None:
    assert credentials({"Authorization": f"Bearer {KEY}", "anthropic-version": "2023-06-01"}) == (f"Bearer {KEY}", KEY)
    assert credentials({"x-goog-api-key": KEY}) == (KEY,)


def test_a_quoted_body_is_redacted_before_it_is_cut() -> None:
    body = ("." * (MAX_QUOTED_BODY_CHARS - 4) + KEY).encode()
    assert KEY[:4] in error_message(body)  # the cut alone would keep the key's first characters
    assert KEY[:4] not in error_message(body, {KEY})
    response = httpx.Response(401, content=body)
    assert KEY[:4] not in str(
        status_error(response, provider="openai", secrets=credentials({"Authorization": f"Bearer {KEY}"}))
    )


def test_the_log_filter_redacts_messages_arguments_and_tracebacks() -> None:
    record = logging.LogRecord("pennyroute.engine", logging.WARNING, __file__, 1, "provider said %s", (KEY,), None)
    try:
        raise RuntimeError(f"boom {KEY}")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    assert RedactingFilter({KEY}).filter(record)
    assert record.getMessage() == f"provider said {REDACTED}"
    assert record.exc_text and KEY not in record.exc_text and REDACTED in record.exc_text


def test_printable_escapes_control_characters_only() -> None:
    assert printable("acme") == "acme"
    assert printable("ünï 🧾") == "ünï 🧾"
    assert printable("a\x1b[31mb\nc\u202ed") == "a\\x1b[31mb\\nc\\u202ed"


@pytest.mark.parametrize("name", ["acme\x1b[2J", "a\nb", "a\rb", "a\x00b", "a\x85b", "a\u2028b", "a\u2066b"])
def test_names_with_control_characters_are_refused(name: str) -> None:
    with pytest.raises(InputError, match="control characters"):
        checked_name(name, what="team")


def test_ordinary_names_pass_trimmed() -> None:
    assert checked_name("  Équipe légale 🧾 ", what="team") == "Équipe légale 🧾"
    with pytest.raises(InputError, match="needs a name"):
        checked_name(" \t ", what="tenant")

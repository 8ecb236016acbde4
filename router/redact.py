"""Text that is safe to store, log and show: secrets redacted (`redact`), control characters escaped.

A provider's error body is stored (call.error, job.stopped_providers, job events) and may be logged.
A proxy or a self-hosted server may echo the request in it, key and all, so the engine passes every
provider error through `redact` once, where its text enters the ledger (router/engine/rounds.py).

What `redact` hides, each replaced by REDACTED:

- the values of the configured API keys (`configured_secrets(settings)`: every *_API_KEY set) and
  any other secrets it is given, wherever they appear;
- the value of an Authorization, Proxy-Authorization, x-api-key, x-goog-api-key or api-key header or
  field (`Authorization: Bearer abc`, `"x-api-key": "abc"`, `api_key=abc`), and a `key=` or
  `token=` query parameter;
- a bearer token anywhere (`Bearer abc...`);
- strings shaped like common provider keys: `sk-...` (OpenAI, `sk-ant-...` Anthropic, `sk-or-...`
  OpenRouter) and `AIza...` (Google), and pennyroute's own API keys (`pr_live_...`).

`RedactingFilter` applies the same rule to log records, for a shell to attach to its handlers.

Names are shown on terminals: `is_control` says which characters a name may not hold (ESC, newlines,
bidirectional overrides...) and `printable` escapes them in a text already stored.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

from router.settings import Settings

REDACTED = "[redacted]"
# A configured value shorter than this is not searched for: redacting every "x" or "ab" in a message
# would destroy the message and protect nothing (a key that short is not a secret).
MIN_SECRET_CHARS = 4

# Header or field names whose value is a credential, then `:` or `=`, optional quotes, an optional
# scheme (Bearer, Basic, Token), and the value up to a quote, space, comma, semicolon, brace or `&`.
_NAMED = re.compile(
    r"""(?ix)
    (?P<name>\b(?:proxy-)?authorization|\bx-api-key|\bx-goog-api-key|\bapi[-_]?key|\baccess[-_]?token
       |(?<=[?&])(?:key|token))
    (?P<sep>["']?\s*[:=]\s*["']?)
    (?P<scheme>(?:bearer|basic|token)\s+)?
    (?P<value>[^\s"',;&}\]]+)
    """
)
_BEARER = re.compile(r"(?i)\b(?P<scheme>bearer\s+)(?P<value>[A-Za-z0-9._~+/=-]{8,})")
# Provider key shapes: OpenAI sk-... / sk-proj-..., Anthropic sk-ant-api03-..., OpenRouter sk-or-v1-...
# (all well over 20 characters after "sk-"); Google AIza followed by 35 characters.
# pennyroute's own tenant keys: pr_live_ and at least 16 more characters (router/ledger/keys.py).
_SHAPES = re.compile(r"(?<![A-Za-z0-9])(?:sk-[A-Za-z0-9_-]{16,}|AIza[0-9A-Za-z_-]{30,}|pr_live_[A-Za-z0-9]{16,})")


def configured_secrets(settings: Settings) -> frozenset[str]:
    """The values of every API key the settings hold (each *_API_KEY set in the environment,
    OPENAI_ADMIN_KEY, PENNYROUTE_SERVER_SECRET and PENNYROUTE_METRICS_TOKEN)."""
    admin = tuple(
        s for s in (settings.openai_admin_key, settings.server_secret, settings.metrics_token) if s is not None
    )
    return frozenset(secret.get_secret_value() for secret in (*settings.api_keys.values(), *admin))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every secret in `secrets`, every credential header or field value, every bearer
    token and every string shaped like a provider key replaced by REDACTED.

    Redact before shortening a text: a key cut in half no longer matches its value.
    """
    literal = _literal_pattern(frozenset(s for s in secrets if len(s) >= MIN_SECRET_CHARS))
    if literal is not None:
        text = literal.sub(REDACTED, text)
    text = _NAMED.sub(_keep_name, text)
    text = _BEARER.sub(lambda m: m.group("scheme") + REDACTED, text)
    return _SHAPES.sub(REDACTED, text)


def _keep_name(match: re.Match[str]) -> str:
    if match.group("value").startswith(REDACTED[:-1]):  # hidden already (its "]" ends the value)
        return match.group(0)
    return match.group("name") + match.group("sep") + (match.group("scheme") or "") + REDACTED


@lru_cache(maxsize=32)
def _literal_pattern(secrets: frozenset[str]) -> re.Pattern[str] | None:
    """One pattern for all the values, longest first (a key that contains another is hidden whole)."""
    if not secrets:
        return None
    return re.compile("|".join(re.escape(s) for s in sorted(secrets, key=len, reverse=True)))


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's message (arguments merged in) and its exception text.

    Attach it to a handler (`handler.addFilter(RedactingFilter(configured_secrets(settings)))`):
    a handler's filters see the records of every logger that reaches it.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = frozenset(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage(), self.secrets)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        return True


# Characters no name may hold, because a terminal acts on them instead of showing them: the C0 and C1
# controls (ESC, newlines, tabs, DEL, CSI...), the Unicode line and paragraph separators, and the
# bidirectional marks, embeddings, overrides and isolates that reorder the text around them.
_INVISIBLE = frozenset("\u2028\u2029\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def is_control(char: str) -> bool:
    """Whether `char` is one a terminal acts on rather than shows (see _INVISIBLE)."""
    return unicodedata.category(char) == "Cc" or char in _INVISIBLE


def printable(text: str) -> str:
    """`text` with each control character written as its escape (ESC as \\x1b, a newline as \\n), for
    showing a stored name or value on a terminal or in a message."""
    if not any(is_control(c) for c in text):
        return text
    return "".join(c.encode("unicode_escape").decode("ascii") if is_control(c) else c for c in text)

"""The pennyroute error tree, drawn once.

    PennyrouteError                 base of everything pennyroute raises on purpose
    ├── InputError                  user input is wrong (a file, a line, a flag); names where
    │   └── TooLargeError           an upload is over its cap (PENNYROUTE_MAX_UPLOAD_MB)
    ├── ConfigError                 settings or catalog are wrong or incomplete
    ├── NotFoundError               a named tenant, team, job or model does not exist
    ├── ConflictError               a request the state of what it names refuses (a file a running batch reads)
    ├── NoModelError                no model meets a job's bar and constraints; carries the decision
    ├── BudgetError                 a job's expected cost does not fit its team's budget (--on-budget reject)
    │   └── CalibrationBudgetError  the team's budget cannot take a calibration's calls
    └── ProviderError               a provider call failed; carries status_code and retry_after
        ├── ProviderTimeout         no answer within the timeout
        ├── ProviderConnectionError the connection failed or broke
        ├── ProviderStatusError     the provider answered with a non-2xx status
        ├── MalformedResponse       a 2xx answer whose body cannot be read as the wire format says;
        │                           with `usage` when that could be read (billed: charged, not retried)
        └── CircuitOpen             not called: the provider failed too often in a row (providers/limits.py)

Two properties say what a caller should do: `retryable` (another try may succeed: connection
errors, timeouts, 408, 409, 429 for a rate, 5xx, 529; or whatever the provider's `x-should-retry`
header says) and `stops_provider` (no call to this provider can succeed for now: 401 or 403, the key
is refused; or the account's quota, credit or spend limit is spent, which providers report as a 429,
400 or 402 that another try will not fix). Each provider module reads its own error codes into these
(router/providers/<vendor>.py, `read_error`); message wording is only a fallback there.

Expected outcomes of a decision (no model qualifies) are values, not exceptions: see policies/.
A shell turns one into NoModelError only where it must refuse a request.
"""

from __future__ import annotations

from policies.types import Decision
from router.usage import TokenUsage

# Statuses worth another try: timeouts, conflicts, rate limits, server faults, Anthropic's 529.
RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
# The key is missing, wrong or not allowed: every call to this provider will fail the same way.
AUTH_STATUSES = frozenset({401, 403})
# What a ProviderStatusError says is spent when its reader knows no more than "quota or credit".
QUOTA_SPENT = "quota or credit is spent: add credit or raise its spend limit"


class PennyrouteError(Exception):
    """Base of every error pennyroute raises on purpose."""


class InputError(PennyrouteError):
    """Raised when user input is wrong; `line` and `field` say where, when known."""

    def __init__(self, message: str, *, line: int | None = None, field: str | None = None) -> None:
        self.line = line
        self.field = field
        if line is not None:
            where = f"line {line}" + (f", field '{field}'" if field else "")
        else:
            where = field or ""  # a flag (--labels) or an argument (FILE) names itself
        super().__init__(f"{where}: {message}" if where else message)
        self.reason = message


class TooLargeError(InputError):
    """Raised when an upload is larger than the cap it is held to; the message names the cap."""

    code = "file_too_large"


class ConfigError(PennyrouteError):
    """Raised when settings or the model catalog are invalid or incomplete."""


class NotFoundError(PennyrouteError):
    """Raised when a named tenant, team, job or model does not exist."""


class ConflictError(PennyrouteError):
    """Raised when what a request names is in a state that refuses it (a file a running batch uses);
    `code` names the conflict (file_in_use)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class NoModelError(PennyrouteError):
    """Raised at submit when no model meets the job's bar and constraints; `decision` has every reason."""

    def __init__(self, decision: Decision, *, hint: str | None = None) -> None:
        super().__init__(f"{decision.summary} {hint[0].upper()}{hint[1:]}." if hint else decision.summary)
        self.decision = decision


class BudgetError(PennyrouteError):
    """Raised at submit when the job's expected cost does not fit its team's budget (--on-budget reject)."""


class CalibrationBudgetError(BudgetError):
    """Raised during calibration when the team's budget cannot take its calls (the job stops, saying so)."""


class ProviderError(PennyrouteError):
    """Raised when a provider call fails; `retryable` says whether another try may succeed."""

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.status_code = status_code
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.status_code in RETRYABLE_STATUSES

    @property
    def stops_provider(self) -> bool:
        return False

    @property
    def maybe_billed(self) -> bool:
        """Whether the provider may have answered, and billed, though we got no answer: the call is
        then charged at its worst case (principle: a call that may have been billed is charged)."""
        return False

    @property
    def rate_pause_s(self) -> float | None:
        """How long the model's shared rate should pause every worker after this error, when it is a
        rate limit: the provider's wait, else (ProviderStatusError) the time its window takes to refill."""
        return self.retry_after


class _Unanswered(ProviderError):
    """A call that got no answer; `sent` says whether the request may have reached the provider
    (False only when the connection was never made: refused, DNS, connect timeout, no free connection)."""

    def __init__(self, message: str, *, provider: str, sent: bool = True) -> None:
        super().__init__(message, provider=provider)
        self.sent = sent

    @property
    def retryable(self) -> bool:
        return True

    @property
    def maybe_billed(self) -> bool:
        return self.sent


class ProviderTimeout(_Unanswered):
    """Raised when the provider did not answer within the timeout."""


class ProviderConnectionError(_Unanswered):
    """Raised when the connection to the provider failed or broke mid-answer."""


class ProviderStatusError(ProviderError):
    """Raised when the provider answered with a non-2xx status.

    `quota` is set when the error says the account's allowance is spent (not a rate limit: waiting a
    minute will not help): what is spent and what to do, in words ("daily quota is spent (...): it
    resets at midnight Pacific time..."); `quota_exhausted` says whether it is set. `code` is the
    provider's own code for the error; `request_id` the provider's id for the request (quoted in the
    message, so it lands in the call's ledger row); `should_retry` the provider's `x-should-retry`
    header, which wins over the status; `window_reset_s` the time until the provider's rate window is
    full again (OpenAI's x-ratelimit-reset-*, capped): information for the shared rate, not a wait.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status_code: int | None = None,
        retry_after: float | None = None,
        quota_exhausted: bool = False,
        key_refused: bool = False,
        quota: str | None = None,
        code: str | None = None,
        request_id: str | None = None,
        should_retry: bool | None = None,
        window_reset_s: float | None = None,
    ) -> None:
        super().__init__(message, provider=provider, status_code=status_code, retry_after=retry_after)
        self.quota = quota or (QUOTA_SPENT if quota_exhausted else None)
        # Gemini refuses a bad key with 400 INVALID_ARGUMENT (API_KEY_INVALID), not 401.
        self.key_refused = key_refused or status_code in AUTH_STATUSES
        self.code = code
        self.request_id = request_id
        self.should_retry = should_retry
        self.window_reset_s = window_reset_s

    @property
    def quota_exhausted(self) -> bool:
        return self.quota is not None

    @property
    def retryable(self) -> bool:
        if self.stops_provider:
            return False  # no header makes a spent quota or a refused key worth another try
        if self.should_retry is not None:
            return self.should_retry
        return self.status_code in RETRYABLE_STATUSES

    @property
    def stops_provider(self) -> bool:
        return self.key_refused or self.quota_exhausted

    @property
    def rate_pause_s(self) -> float | None:
        if self.quota_exhausted:
            return None  # the provider is stopped: no model needs pausing for it
        return self.retry_after if self.retry_after is not None else self.window_reset_s


class MalformedResponse(ProviderError):
    """Raised when a 2xx body cannot be read as the provider's wire format. `usage`, when the body's
    usage could be read though its content could not, is what the provider billed: the call is charged
    with it, and not tried again (a whole answer in a shape we cannot read comes back the same way)."""

    def __init__(self, message: str, *, provider: str, usage: TokenUsage | None = None) -> None:
        super().__init__(message, provider=provider)
        self.usage = usage

    @property
    def retryable(self) -> bool:
        return self.usage is None


class CircuitOpen(ProviderError):
    """Raised (without calling) while a provider's circuit breaker is open, `retry_after` seconds
    before it lets a probe through: the item moves on to its fallback model, or, with none left,
    waits for the breaker rather than failing at once."""

    @property
    def retryable(self) -> bool:
        return True

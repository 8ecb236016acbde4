"""Token usage: what a provider reports for a call, and what prices and budgets are computed from.

A ground-floor value: providers build it, the catalog prices it, the engine records it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Tokens as the provider reported them (input excludes cached input)."""

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0  # thinking tokens; already counted in output_tokens (billed as output)
    estimated: bool = False  # true when the response lacked usage and it was estimated

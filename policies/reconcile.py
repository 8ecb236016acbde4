"""Ledger against bill, one UTC day and one provider model at a time: matches, above, or BELOW.

The ledger may exceed the bill, never fall short of it: a call that timed out after it was sent is
charged at its worst case (`unknown`), because the provider may have answered and billed it. So:

- **matches**: requests, input and output tokens equal, cost within the tolerance.
- **above**: the ledger holds more than the bill. Expected when some calls are `unknown`: their worst
  case (input at the prompt's bytes, output at the cap) is at least what the provider billed for the
  ones it answered, and nothing for those it never got. `explained` says whether the unknown calls'
  charge covers the whole excess; what is left over is `unexplained_usd` (a price the catalog has
  wrong, calls billed by someone else's export filter...), worth a look but not a leak.
- **shifted**: below the bill on its day, but not over the days up to it (running totals): calls that
  started just before a UTC midnight, the ledger's day, and were answered, the bill's day, after it.
- **below**: the bill holds more than the ledger: cost beyond the tolerance, or more requests, input
  or output tokens than the ledger recorded. Money was spent that no budget saw: a leak.

Counts compare with input tokens INCLUDING cached ones (OpenAI's `input_tokens` includes
`input_cached_tokens`): an unknown call is charged as if none of its input were cached, so the
ledger's cached count may be below the bill's while its input and cost are not.

Pure: frozen values in, a `Line` (with its reasons) out. The caller prices the bill's tokens when no
costs export is given (`Prices`), and decides which days the export covers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal

MTOK = Decimal(1_000_000)

MATCHES = "matches"
ABOVE = "above"
BELOW = "below"
# Below the bill on its day but not over the days up to it: calls that started before a UTC midnight
# (the ledger's day) and were answered after it (the bill's day). Not a leak.
SHIFTED = "shifted"
# Not compared: the export holds no (whole) bucket for the day, or the bill names a model that is
# none of the catalog's (not pennyroute's calls, as far as the ledger can tell).
UNCOVERED = "uncovered"
OUTSIDE = "outside"


@dataclass(frozen=True, slots=True)
class Totals:
    """Requests, tokens and cost of some calls. `input_tokens` includes `cached_input_tokens`."""

    requests: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)

    def __add__(self, other: Totals) -> Totals:
        return Totals(
            self.requests + other.requests,
            self.input_tokens + other.input_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
            self.output_tokens + other.output_tokens,
            self.cost_usd + other.cost_usd,
        )


@dataclass(frozen=True, slots=True)
class Prices:
    """USD per million tokens: what the ledger recorded for these calls (or the catalog's, when the
    ledger has none), used to price the bill's tokens when there is no costs export."""

    input_usd_per_mtok: Decimal
    cached_input_usd_per_mtok: Decimal
    output_usd_per_mtok: Decimal

    def cost_usd(self, usage: Totals) -> Decimal:
        uncached = usage.input_tokens - usage.cached_input_tokens
        return (
            uncached * self.input_usd_per_mtok
            + usage.cached_input_tokens * self.cached_input_usd_per_mtok
            + usage.output_tokens * self.output_usd_per_mtok
        ) / MTOK


@dataclass(frozen=True, slots=True)
class LedgerSide:
    """The ledger's calls of one day and model: `answered` (ok, and any error that was charged) and
    `unknown` (charged at their worst case), and how many were neither (errors at $0, in flight)."""

    answered: Totals = Totals()
    unknown: Totals = Totals()
    uncharged_errors: int = 0
    in_flight: int = 0

    @property
    def total(self) -> Totals:
        return self.answered + self.unknown


@dataclass(frozen=True, slots=True)
class BillSide:
    """The provider's usage of one day and model; `cost_usd` from its costs export, if one was given."""

    usage: Totals
    cost_usd: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Line:
    """One day and model, compared: the two sides, the bill's cost and where it came from, the
    difference (ledger minus bill) and the verdict with its reasons."""

    verdict: str
    ledger: Totals
    bill: Totals  # its cost_usd is the bill's cost as compared (0 when it could not be priced)
    bill_cost_from: str  # "costs export" | "usage x ledger prices" | "usage x catalog prices" | "unpriced" | "-"
    unknown: Totals
    difference: Totals  # ledger - bill, field by field
    explained: bool = True  # above: the unknown calls' charge covers the excess
    unexplained_usd: Decimal = Decimal(0)
    reasons: tuple[str, ...] = field(default=())


def compare(
    ledger: LedgerSide,
    bill: BillSide | None,
    *,
    prices: Prices | None,
    prices_from: str = "ledger",
    tolerance_usd: Decimal = Decimal(0),
) -> Line:
    """Judge one day and model. `bill` None: the provider billed nothing for it (the day is covered).
    `prices` price the bill's tokens when `bill.cost_usd` is None; with neither, only counts compare."""
    usage = bill.usage if bill is not None else Totals()
    if bill is not None and bill.cost_usd is not None:
        bill_cost, source = bill.cost_usd, "costs export"
    elif bill is None:
        bill_cost, source = Decimal(0), "-"
    elif prices is not None:
        bill_cost, source = prices.cost_usd(usage), f"usage x {prices_from} prices"
    else:
        bill_cost, source = None, "unpriced"
    mine = ledger.total
    billed = Totals(
        usage.requests, usage.input_tokens, usage.cached_input_tokens, usage.output_tokens, bill_cost or Decimal(0)
    )
    diff = Totals(
        mine.requests - billed.requests,
        mine.input_tokens - billed.input_tokens,
        mine.cached_input_tokens - billed.cached_input_tokens,
        mine.output_tokens - billed.output_tokens,
        mine.cost_usd - billed.cost_usd if bill_cost is not None else Decimal(0),
    )
    reasons = _notes(ledger, source)
    short = [
        f"{what}: ledger {ours:,} < bill {theirs:,} ({theirs - ours:,} short)"
        for what, ours, theirs in (
            ("requests", mine.requests, billed.requests),
            ("input tokens", mine.input_tokens, billed.input_tokens),
            ("output tokens", mine.output_tokens, billed.output_tokens),
        )
        if ours < theirs
    ]
    if bill_cost is not None and diff.cost_usd < -tolerance_usd:
        short.insert(
            0, f"cost: ledger ${_plain(mine.cost_usd)} < bill ${_plain(bill_cost)} (${_plain(-diff.cost_usd)} short)"
        )
    if short:
        leak = "LEDGER BELOW THE BILL: money was spent that no budget saw; " + "; ".join(short)
        return Line(BELOW, mine, billed, source, ledger.unknown, diff, reasons=(leak, *reasons))
    counts_equal = diff.requests == 0 and diff.input_tokens == 0 and diff.output_tokens == 0
    if counts_equal and abs(diff.cost_usd) <= tolerance_usd:
        return Line(MATCHES, mine, billed, source, ledger.unknown, diff, reasons=reasons)
    excess = max(diff.cost_usd, Decimal(0)) if bill_cost is not None else Decimal(0)
    held = ledger.unknown.cost_usd
    unexplained = max(excess - held - tolerance_usd, Decimal(0))
    # Counts above the bill are explained when the unknown calls alone could account for them.
    counts_explained = (
        diff.requests <= ledger.unknown.requests
        and diff.input_tokens <= ledger.unknown.input_tokens
        and diff.output_tokens <= ledger.unknown.output_tokens
    )
    explained = unexplained == 0 and counts_explained
    n = ledger.unknown.requests
    if explained:
        why = (
            f"ledger above the bill by ${_plain(excess)}: its {n:,} unknown call(s), charged at their worst case "
            f"(${_plain(held)}), explain it"
        )
    elif n:
        why = (
            f"ledger above the bill by ${_plain(excess)}: its {n:,} unknown call(s) explain at most ${_plain(held)}; "
            f"${_plain(unexplained)} is unexplained"
            + ("" if counts_explained else f" (and {diff.requests:,} more requests than the bill)")
        )
    else:
        why = (
            f"ledger above the bill by ${_plain(excess)} with no unknown calls to explain it "
            f"({diff.requests:,} requests, {diff.input_tokens:,} input and {diff.output_tokens:,} output tokens more)"
        )
    return Line(ABOVE, mine, billed, source, ledger.unknown, diff, explained, unexplained, (why, *reasons))


def carry_over(lines: Sequence[Line], *, tolerance_usd: Decimal = Decimal(0)) -> tuple[Line, ...]:
    """One model's lines, in day order, with a day below the bill marked SHIFTED when the running totals
    up to it (requests, input and output tokens, cost) are not below: the ledger counts a call on the
    UTC day it started, a provider may bill it on the day it answered. A shortfall the days before
    do not cover stays BELOW."""
    ledger = bill = Totals()
    out = []
    for line in lines:
        ledger, bill = ledger + line.ledger, bill + line.bill
        if line.verdict == BELOW and line.bill_cost_from != "unpriced":
            covered = (
                ledger.requests >= bill.requests
                and ledger.input_tokens >= bill.input_tokens
                and ledger.output_tokens >= bill.output_tokens
                and ledger.cost_usd >= bill.cost_usd - tolerance_usd
            )
            if covered:
                why = (
                    "below the bill on this day but not over the days up to it: calls that started before "
                    "midnight UTC were billed after it (" + line.reasons[0].split("; ", 1)[-1] + ")"
                )
                line = replace(line, verdict=SHIFTED, reasons=(why, *line.reasons[1:]))
        out.append(line)
    return tuple(out)


def _notes(ledger: LedgerSide, source: str) -> tuple[str, ...]:
    notes = []
    if source == "unpriced":
        notes.append("the bill's tokens could not be priced (no costs export, no price): counts compared only")
    if ledger.in_flight:
        notes.append(f"{ledger.in_flight:,} call(s) still in flight are not counted: reconcile again once they end")
    return tuple(notes)


def _plain(amount: Decimal) -> str:
    """An exact amount as plain digits (never an exponent), trailing zeros dropped."""
    text = format(amount, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text

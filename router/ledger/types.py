"""Column types the ledger needs beyond SQLModel's defaults, and plain values the repository returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import Numeric, String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

# Per-token prices need about 10 decimal places ($0.15 per million tokens is $0.00000015 a token);
# 20 digits leave 10 for dollars, far above any bill.
MONEY_PRECISION = 20
MONEY_SCALE = 10


class Money(TypeDecorator[Decimal]):
    """Exact money: NUMERIC(20, 10) on Postgres; text on SQLite, which has no exact decimal type."""

    impl = Numeric(MONEY_PRECISION, MONEY_SCALE)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(40))
        return dialect.type_descriptor(Numeric(MONEY_PRECISION, MONEY_SCALE, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        value = Decimal(value)
        return str(value) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return None if value is None else Decimal(value)


@dataclass(frozen=True, slots=True)
class JobSnapshot:
    """What a chunk (or a calibration) reads of its job, once: fixed facts, the route as stored, the
    providers stopped so far, the tenant's time zone and whether the team has a budget."""

    id: str
    status: str
    model_id: str | None
    tenant_id: int
    team_id: int
    task: str
    labels: tuple[str, ...]
    max_words: int | None
    min_quality: float
    simulated: bool
    route: Mapping[str, Any] | None
    stopped_providers: Mapping[str, str]
    baseline_model_id: str | None
    baseline_input_usd_per_mtok: Decimal | None
    baseline_output_usd_per_mtok: Decimal | None
    timezone: str
    has_budget: bool
    # Execution mode (policies/execution_mode.py): what was asked, by when, and what was decided.
    mode: str = "auto"
    deadline_at: datetime | None = None
    execution: Mapping[str, Any] | None = None
    regions: tuple[str, ...] = ()
    max_output_tokens: int | None = None  # chat: the job's output cap


class ClaimedItem(Protocol):
    """An item row as a chunk reads it (repo.claim_items returns rows of this shape): for type hints
    only, the rows themselves are the query's, not copies."""

    @property
    def id(self) -> int: ...

    @property
    def seq(self) -> int: ...

    @property
    def text(self) -> str: ...

    @property
    def attempts(self) -> int: ...  # tries so far, this claim included

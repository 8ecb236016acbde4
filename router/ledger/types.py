"""Column types the ledger needs beyond SQLModel's defaults."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

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

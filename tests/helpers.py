"""Small helpers shared by tests."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import select

from router.catalog import Catalog
from router.db import session_scope
from router.ledger.tables import Call, Item
from router.providers.base import TokenUsage
from router.settings import Settings


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    with path.open("w") as handle:
        for row in rows:
            handle.write(row if isinstance(row, str) else json.dumps(row))
            handle.write("\n")
    return path


def tickets(n: int, start: int = 0) -> list[dict[str, str]]:
    words = ["I was charged twice on my invoice", "The app crashes with an error", "hello, a question about hiring"]
    return [{"id": f"i{k}", "text": f"{words[k % 3]} (case {k})"} for k in range(start, start + n)]


def ledger(settings: Settings, job_id: str) -> tuple[list[Call], list[Item]]:
    with session_scope(settings) as session:
        calls = list(session.execute(select(Call).where(Call.job_id == job_id)).scalars())
        items = list(session.execute(select(Item).where(Item.job_id == job_id).order_by(Item.seq)).scalars())
    return calls, items


def priced(catalog: Catalog, call: Call) -> Decimal:
    """What the call should cost: its tokens at the catalog price in force when it started."""
    price = catalog.price(call.model_id, call.started_at)
    return price.cost_usd(TokenUsage(input_tokens=call.input_tokens, output_tokens=call.output_tokens,
                                     cached_input_tokens=call.cached_input_tokens, cache_write_tokens=call.cache_write_tokens))

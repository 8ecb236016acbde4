"""The migrations, written by hand, make exactly the schema the tables declare (router/ledger/tables.py)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from router.ledger.db import get_engine
from router.settings import Settings


def test_the_migrated_database_matches_the_tables(pg_url: str) -> None:
    engine = get_engine(Settings(database_url=pg_url, _env_file=None))  # type: ignore[call-arg]
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert differences == []

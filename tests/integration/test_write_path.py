"""The write path every batch takes: the rows every writer of a job shares (its counts, its rollups)
are taken in one order and held for as short a time as can be."""

from __future__ import annotations

import threading
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from router.engine.batch import write_retrying
from router.ledger.db import execute_and_commit, rolled_back, session_scope
from router.ledger.rollup import in_lock_order
from router.settings import Settings


def _row(model: str, purpose: str = "run") -> dict[str, Any]:
    return {
        "tenant_id": 1,
        "team_id": 2,
        "job_id": "j",
        "model_id": model,
        "purpose": purpose,
        "day": date(2026, 12, 7),
    }


def test_rollups_are_written_in_one_order_whatever_order_they_came_in() -> None:
    """Two writers taking the same two rollup rows in opposite orders deadlock (Postgres breaks it
    only after deadlock_timeout, 1 s, with the job's other writers queued behind): every writer sorts."""
    rows = [_row("b"), _row("a", "drift"), _row("a")]
    assert in_lock_order(rows) == in_lock_order(list(reversed(rows))) == [_row("a", "drift"), _row("a"), _row("b")]


@pytest.fixture
def scratch(live_settings: Settings) -> Settings:
    with session_scope(live_settings) as session:
        session.execute(text("CREATE TABLE IF NOT EXISTS write_path_scratch (k text PRIMARY KEY, n numeric NOT NULL)"))
        session.execute(text("DELETE FROM write_path_scratch"))
    return live_settings


def _count(settings: Settings) -> dict[str, Decimal]:
    with session_scope(settings) as session:
        return dict(session.execute(text("SELECT k, n FROM write_path_scratch")).all())  # type: ignore[arg-type]


def test_execute_and_commit_commits_the_whole_transaction_in_one_go(scratch: Settings) -> None:
    with session_scope(scratch) as session:
        session.execute(text("INSERT INTO write_path_scratch VALUES ('first', 1)"))
        execute_and_commit(
            session, "INSERT INTO write_path_scratch VALUES (:k, :n)", {"k": "last", "n": Decimal("2.5")}
        )
    assert _count(scratch) == {"first": Decimal(1), "last": Decimal("2.5")}


def test_a_failing_last_statement_writes_nothing_of_its_transaction(scratch: Settings) -> None:
    with pytest.raises(IntegrityError), session_scope(scratch) as session:
        session.execute(text("INSERT INTO write_path_scratch VALUES ('first', 1)"))
        execute_and_commit(session, "INSERT INTO write_path_scratch VALUES (:k, :n)", {"k": "first", "n": 2})
    assert _count(scratch) == {}


def test_a_deadlock_is_rolled_back_and_written_again(scratch: Settings) -> None:
    """Two writers take two rows in opposite orders: Postgres kills one; write_retrying runs it again
    (nothing of it was written), so both writes land, once each."""
    with session_scope(scratch) as session:
        session.execute(text("INSERT INTO write_path_scratch VALUES ('a', 0), ('b', 0)"))
    both_hold_one = threading.Barrier(2, timeout=10)
    tries: list[str] = []
    errors: list[BaseException] = []

    def writer(first: str, second: str) -> None:
        def write(session: Any) -> None:
            tries.append(first)
            session.execute(text("UPDATE write_path_scratch SET n = n + 1 WHERE k = :k"), {"k": first})
            if tries.count(first) == 1:  # only the first try meets the other writer half-way
                both_hold_one.wait()
            session.execute(text("UPDATE write_path_scratch SET n = n + 1 WHERE k = :k"), {"k": second})

        try:
            write_retrying(scratch, write)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=pair) for pair in (("a", "b"), ("b", "a"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert len(tries) == 3  # one of the two was killed once and ran again
    assert _count(scratch) == {"a": Decimal(2), "b": Decimal(2)}


def test_only_a_rolled_back_transaction_counts_as_rolled_back() -> None:
    assert not rolled_back(OperationalError("SELECT 1", {}, ConnectionError("server closed the connection")))
    assert not rolled_back(ValueError("x"))

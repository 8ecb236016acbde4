"""The ledger's tables. Postgres is the source of truth: every item's state and every call live here.

Money columns are `Money` (NUMERIC on Postgres) and carry their unit in the name.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, Integer, UniqueConstraint
from sqlmodel import Field, SQLModel

from router.ledger.types import Money


BIG_ID = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(**kw: Any) -> Any:
    return Field(default=None, sa_column=Column(DateTime(timezone=True), **kw))


def _money(**kw: Any) -> Any:
    # The column default matters for Core inserts (bulk paths), which skip model defaults.
    return Field(default=Decimal(0), sa_column=Column(Money(), nullable=False, default=Decimal(0), **kw))


class ItemStatus:
    PENDING = "pending"  # waiting for a worker
    RUNNING = "running"  # claimed by a worker until lease_until
    DONE = "done"
    FAILED = "failed"
    TERMINAL = (DONE, FAILED)


class CallStatus:
    IN_FLIGHT = "in_flight"  # written before the call is made
    OK = "ok"
    ERROR = "error"
    UNKNOWN = "unknown"  # the worker died while the call was in flight


class JobStatus:
    RUNNING = "running"
    DONE = "done"
    NO_MODEL = "no_model"  # no model met the bar and constraints; nothing was run
    CANCELLED = "cancelled"


class Tenant(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    timezone: str = "UTC"
    created_at: datetime | None = _ts(default=utcnow)


class Team(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int = Field(foreign_key="tenant.id", index=True)
    name: str
    created_at: datetime | None = _ts(default=utcnow)


class Job(SQLModel, table=True):
    id: str = Field(primary_key=True)
    tenant_id: int = Field(foreign_key="tenant.id", index=True)
    team_id: int = Field(foreign_key="team.id", index=True)
    task: str  # classify | summarize
    labels: list[str] | None = Field(default=None, sa_column=Column(JSON))
    max_words: int | None = None
    min_quality: float
    constraints: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    source: str | None = None  # the file it came from
    status: str = JobStatus.RUNNING
    model_id: str | None = None
    baseline_model_id: str | None = None
    decision: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    expected_cost_usd: Decimal | None = Field(default=None, sa_column=Column(Money()))
    simulated: bool = False
    n_items: int = 0
    n_done: int = 0
    n_failed: int = 0
    n_rejected: int = 0  # input lines that were not taken
    rejected: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON))
    total_input_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    max_input_tokens: int = 0
    created_at: datetime | None = _ts(default=utcnow)
    finished_at: datetime | None = _ts()


class Item(SQLModel, table=True):
    __table_args__ = (
        UniqueConstraint("job_id", "seq"),
        UniqueConstraint("job_id", "ext_id"),
    )
    # SQLite only auto-numbers a column declared INTEGER PRIMARY KEY.
    id: int | None = Field(default=None, sa_column=Column(BIG_ID, primary_key=True, autoincrement=True))
    job_id: str = Field(foreign_key="job.id")
    seq: int  # 0-based position among the job's accepted items; chunks are seq ranges
    ext_id: str  # the id the user gave
    text: str
    gold: str | None = None
    status: str = ItemStatus.PENDING
    output: str | None = None
    error: str | None = None
    attempts: int = 0
    final_call_id: str | None = None
    lease_until: datetime | None = _ts()
    finished_at: datetime | None = _ts()


class Call(SQLModel, table=True):
    """One provider call. Its row is written (in_flight) before the call is made."""

    __table_args__ = (
        Index("ix_call_job", "job_id"),
        Index("ix_call_item", "item_id"),
        Index("ix_call_team_started", "team_id", "started_at"),
    )
    id: str = Field(primary_key=True)
    job_id: str = Field(foreign_key="job.id")
    item_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    tenant_id: int
    team_id: int
    model_id: str
    provider: str
    purpose: str = "run"  # run | calibration | drift
    status: str = CallStatus.IN_FLIGHT
    simulated: bool = False
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    usage_estimated: bool = False
    input_usd_per_mtok: Decimal = _money()
    cached_input_usd_per_mtok: Decimal = _money()
    cache_write_usd_per_mtok: Decimal = _money()
    output_usd_per_mtok: Decimal = _money()
    cost_usd: Decimal = _money()
    latency_ms: int | None = None
    error: str | None = None
    started_at: datetime | None = _ts(default=utcnow, nullable=False)
    finished_at: datetime | None = _ts()

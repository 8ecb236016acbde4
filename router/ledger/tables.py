"""The ledger's tables. Postgres is the source of truth: every item's state and every call live here.

Money columns are `Money` (NUMERIC on Postgres) and carry their unit in the name.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, Integer, LargeBinary, UniqueConstraint
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
    CALIBRATING = "calibrating"  # candidate models answer a sample before the bulk runs
    RUNNING = "running"
    PAUSED = "paused"  # waiting for budget (raised, or the next period), or for a stopped provider to be fixed
    DONE = "done"
    NO_MODEL = (
        "no_model"  # no model met the bar and constraints (or calibration could not decide); the bulk did not run
    )
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
    task: str  # classify | summarize | chat
    labels: list[str] | None = Field(default=None, sa_column=Column(JSON))
    max_words: int | None = None
    max_output_tokens: int | None = None  # chat: the job's output cap (an item may ask less); else NULL
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
    on_budget: str = "reject"  # reject | downgrade | pause: what to do when the budget cannot take it
    baseline_input_usd_per_mtok: Decimal | None = Field(default=None, sa_column=Column(Money()))
    baseline_output_usd_per_mtok: Decimal | None = Field(default=None, sa_column=Column(Money()))
    total_input_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    max_input_tokens: int = 0
    # How items run (router.route.Route as data): one model or a cascade, fallbacks, drift checks.
    route: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    quality_mode: str = "prior"  # prior | gold | reference: where the quality estimates came from
    calibration: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))  # per-model estimates, n, spend
    stopped_providers: dict[str, str] | None = Field(default=None, sa_column=Column(JSON))  # provider -> why
    pause_reason: str | None = None  # budget | provider: why a paused job waits
    n_drift_checked: int = 0  # production items also answered by the reference model
    n_drift_agreed: int = 0
    # Execution mode: what was asked (auto | sync | batch), by when the results are wanted, and the
    # decision (policies/execution_mode.py ModeDecision as data: each stage's mode, multiplier, saving).
    deadline_at: datetime | None = _ts()
    mode: str = "auto"
    execution: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
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


class CallMode:
    SYNC = "sync"  # a synchronous call, at the standard price
    BATCH = "batch"  # a line of a provider's batch, at the standard price times the batch multiplier


class Call(SQLModel, table=True):
    """One provider call. Its row is written (in_flight) before the call is made (or, for a line of a
    provider batch, before the batch is created; its id is the line's custom_id)."""

    __table_args__ = (
        Index("ix_call_job", "job_id"),
        Index("ix_call_item", "item_id"),
        Index("ix_call_team_started", "team_id", "started_at"),
        Index("ix_call_provider_batch", "provider_batch_id"),
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
    reasoning_tokens: int = 0  # thinking tokens, already counted in output_tokens
    usage_estimated: bool = False
    input_usd_per_mtok: Decimal = _money()
    cached_input_usd_per_mtok: Decimal = _money()
    cache_write_usd_per_mtok: Decimal = _money()
    output_usd_per_mtok: Decimal = _money()
    cost_usd: Decimal = _money()
    latency_ms: int | None = None
    error: str | None = None
    # How a billed answer ended (router.providers.base FINISHES: stop, cut, refused, filtered, blocked,
    # broken); None when no answer came back (an error, an unknown outcome, an unreadable body).
    finish: str | None = None
    mode: str = CallMode.SYNC
    # What the call's cost is of its tokens at the list price (the rates above): 1 for a synchronous
    # call, the provider's batch multiplier (0.5) for a batch line. cost_usd already includes it.
    price_multiplier: Decimal = Field(
        default=Decimal(1), sa_column=Column(Money(), nullable=False, default=Decimal(1), server_default="1")
    )
    provider_batch_id: str | None = None  # the ProviderBatch (our id) a batch line was sent in
    started_at: datetime | None = _ts(default=utcnow, nullable=False)
    finished_at: datetime | None = _ts()


class BudgetPolicy(SQLModel, table=True):
    """A team's standing monthly budget; each calendar month gets its own BudgetPeriod from it."""

    __tablename__ = "budget_policy"
    team_id: int = Field(foreign_key="team.id", primary_key=True)
    monthly_limit: Decimal = _money()  # in `currency`
    currency: str = "USD"
    soft_pct: float | None = None  # e.g. 80.0: alert when settled spend crosses 80% of the limit
    updated_at: datetime | None = _ts(default=utcnow)


class BudgetPeriod(SQLModel, table=True):
    """One team's budget for one calendar month (in its tenant's time zone): limit, settled, reserved.

    Invariant, kept by single conditional UPDATEs: settled + reserved <= limit_amount.
    """

    __tablename__ = "budget_period"
    __table_args__ = (UniqueConstraint("team_id", "period_start"),)
    id: int | None = Field(default=None, primary_key=True)
    team_id: int = Field(foreign_key="team.id")
    period_start: date  # the 1st of the month, in the tenant's time zone
    limit_amount: Decimal = _money()
    currency: str = "USD"
    soft_pct: float | None = None
    settled: Decimal = _money()
    reserved: Decimal = _money()
    soft_alerted_at: datetime | None = _ts()


class Reservation(SQLModel, table=True):
    """The worst-case cost of a chunk's calls, held against a budget period until settled."""

    __table_args__ = (Index("ix_reservation_open", "budget_period_id", "status", "expires_at"),)
    id: str = Field(primary_key=True)
    budget_period_id: int = Field(foreign_key="budget_period.id")
    job_id: str = Field(foreign_key="job.id")
    amount: Decimal = _money()  # in the budget's currency
    settled_amount: Decimal | None = Field(default=None, sa_column=Column(Money()))
    usd_per_unit: Decimal = _money()  # the exchange rate used (1 for USD budgets)
    status: str = "held"  # held | settled | expired
    created_at: datetime | None = _ts(default=utcnow)
    expires_at: datetime | None = _ts()


class BudgetEvent(SQLModel, table=True):
    """Something a budget owner should know: soft limit crossed, work blocked or paused, limit changed."""

    __tablename__ = "budget_event"
    id: int | None = Field(default=None, primary_key=True)
    team_id: int = Field(foreign_key="team.id", index=True)
    period_start: date
    kind: str  # soft_limit | rejected | paused | limit_set
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime | None = _ts(default=utcnow)


class CallRollup(SQLModel, table=True):
    """Daily sums of call rows, written in the same transaction as the calls' outcomes.

    `day` is the call's start date in its tenant's time zone. Reports read these rows, so a month
    of millions of calls reports in milliseconds; totals equal the call rows' sums exactly.
    """

    __tablename__ = "call_rollup"
    # Reports select one month of days; without this they scan every month ever kept.
    __table_args__ = (Index("ix_call_rollup_day", "day"),)
    tenant_id: int = Field(primary_key=True)
    team_id: int = Field(primary_key=True)
    job_id: str = Field(primary_key=True)
    model_id: str = Field(primary_key=True)
    purpose: str = Field(primary_key=True)
    day: date = Field(primary_key=True)
    provider: str
    task: str
    calls: int = 0
    failed_calls: int = 0
    simulated_calls: int = 0  # answered by the sandbox: reports label such spend SIMULATED
    input_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    cached_input_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    output_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    cost_usd: Decimal = _money()
    failed_cost_usd: Decimal = _money()  # spend on calls that did not produce a usable answer
    baseline_cost_usd: Decimal = (
        _money()
    )  # items' final calls' tokens (plus its thinking) at the job's baseline model's price
    # Answers billed but not used, by how they ended (rollup.OUTCOMES): their count and their cost,
    # already inside failed_calls and failed_cost_usd.
    refused_calls: int = 0  # the model declined
    filtered_calls: int = 0  # the provider's content filter withheld the answer
    blocked_calls: int = 0  # the prompt was blocked before any answer
    cut_off_calls: int = 0  # cut off by the output cap, and not usable
    refused_cost_usd: Decimal = _money()
    filtered_cost_usd: Decimal = _money()
    blocked_cost_usd: Decimal = _money()
    cut_off_cost_usd: Decimal = _money()
    # Lines of provider batches among `calls`, their cost (inside cost_usd), and what the batch
    # discount saved on them: their cost at the standard price minus what they cost.
    batch_calls: int = 0
    batch_cost_usd: Decimal = _money()
    batch_saved_usd: Decimal = _money()


class BatchState:
    """A ProviderBatch's state in our books (router.providers.batch_api has the provider's)."""

    CREATING = "creating"  # the row and its lines' call rows are written; `create` not yet confirmed
    PENDING = "pending"  # created at the provider, not yet running
    RUNNING = "running"
    ENDED = "ended"  # the provider says every line has its outcome; results not yet all ingested
    INGESTED = "ingested"  # every line settled; nothing more to do
    FAILED = "failed"  # refused whole by the provider (no line ran, none billed); its lines re-run
    OPEN = (CREATING, PENDING, RUNNING, ENDED, FAILED)  # not yet ingested: the poller still has work on them


class ProviderBatch(SQLModel, table=True):
    """One batch sent to a provider's batch API. Its id (our tag) is written, with every line's call
    row, before the batch is created; the provider's own id is recorded once `create` returns."""

    __tablename__ = "provider_batch"
    __table_args__ = (
        Index("ix_provider_batch_job", "job_id"),
        Index("ix_provider_batch_state", "state"),
        Index("ix_provider_batch_wave", "wave"),
    )
    id: str = Field(primary_key=True)
    job_id: str = Field(foreign_key="job.id")
    # The batches made from one claim of items (one per model, split to the provider's limits): an
    # item's answers of a stage (a cascade's two models) come back in the wave's batches, so a wave is
    # ingested as a whole, once every batch of it has ended.
    wave: str
    provider: str
    model_id: str
    batch_id: str | None = None  # the provider's (batch_..., msgbatch_..., batches/...)
    state: str = BatchState.CREATING
    vendor_status: str | None = None
    n_lines: int = 0
    stage: int = 0  # the route's stage its lines belong to
    # That stage's models, in the route's order, when the wave was sent: the wave is judged on them,
    # even if the job was re-routed (drift) while it was out.
    stage_models: list[str] | None = Field(default=None, sa_column=Column(JSON))
    round: int = 1  # 1: the lines' first batch; 2 and on: lines re-run after a batch left them undone
    simulated: bool = False
    price_multiplier: Decimal = Field(
        default=Decimal(1), sa_column=Column(Money(), nullable=False, default=Decimal(1), server_default="1")
    )
    reserved_usd: Decimal = _money()  # the worst case held against the team's budget when created
    reservation_id: str | None = None
    created_at: datetime | None = _ts(default=utcnow)
    submitted_at: datetime | None = _ts()
    polled_at: datetime | None = _ts()
    ended_at: datetime | None = _ts()
    ingested_at: datetime | None = _ts()
    error: str | None = None


class JobEvent(SQLModel, table=True):
    """Something that happened to a job that its owner should see: drift, a provider stopped, a fallback."""

    __tablename__ = "job_event"
    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="job.id", index=True)
    kind: str  # drift | provider_stopped | rerouted | cancelled | calibrated
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime | None = _ts(default=utcnow)


class QualityEstimate(SQLModel, table=True):
    """A measured quality of one model on one tenant's kind of task, reused by later jobs of that kind.

    `signature` identifies the task (kind, labels or length, prompt version); an estimate is stale when
    it expired, drifted, or the model's price changed since it was measured.
    """

    __tablename__ = "quality_estimate"
    __table_args__ = (UniqueConstraint("tenant_id", "signature", "model_id"),)
    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int = Field(foreign_key="tenant.id")
    signature: str
    task: str
    model_id: str
    source: str  # gold | reference | judge
    n: int
    successes: float  # correct answers (or summed judged scores)
    mean: float
    lower: float  # bounds at `confidence`
    upper: float
    confidence: float = 0.95
    input_usd_per_mtok: Decimal = _money()  # the price when measured: a price change re-tests the model
    output_usd_per_mtok: Decimal = _money()
    job_id: str | None = None  # the job whose sample measured it
    measured_at: datetime | None = _ts(default=utcnow)
    expires_at: datetime | None = _ts()
    drifted_at: datetime | None = _ts()


# -- the HTTP API (router/api/) ----------------------------------------------------------------------


class ApiKey(SQLModel, table=True):
    """A tenant's API key: its public prefix and an HMAC-SHA256 of the whole key under the server
    secret (router/ledger/keys.py). The key itself is shown once, at creation, and never stored."""

    __tablename__ = "api_key"
    id: int | None = Field(default=None, primary_key=True)
    prefix: str = Field(unique=True, index=True)  # pr_live_ and the key's public id: how a key is found
    key_hash: str  # hex HMAC-SHA256 of the whole key
    tenant_id: int = Field(foreign_key="tenant.id", index=True)
    team_id: int | None = Field(default=None, foreign_key="team.id")  # a team-scoped key sees that team only
    scopes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime | None = _ts(default=utcnow)
    last_used_at: datetime | None = _ts()
    revoked_at: datetime | None = _ts()


class ApiFile(SQLModel, table=True):
    """A file uploaded through the OpenAI-compatible `POST /v1/files` (purpose batch): its bytes
    are in ApiFileChunk rows. A batch's output and error files are made from the ledger when read."""

    __tablename__ = "api_file"
    id: str = Field(primary_key=True)  # file-...
    tenant_id: int = Field(foreign_key="tenant.id", index=True)
    team_id: int | None = Field(default=None, foreign_key="team.id")
    filename: str
    purpose: str  # batch | batch_output
    bytes: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    batch_id: str | None = None  # for batch_output files: the batch whose output (or errors) it is
    kind: str = "input"  # input | output | error
    created_at: datetime | None = _ts(default=utcnow)
    deleted_at: datetime | None = _ts()  # DELETE /v1/files: gone for its tenant, its pieces removed


class ApiFileChunk(SQLModel, table=True):
    """One piece of an uploaded file, in order: an upload is written a piece at a time, never held whole."""

    __tablename__ = "api_file_chunk"
    file_id: str = Field(foreign_key="api_file.id", primary_key=True)
    seq: int = Field(primary_key=True)
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class ApiBatch(SQLModel, table=True):
    """An OpenAI-compatible batch: its input file, the pennyroute jobs that run its lines (one per
    model named, `pennyroute-auto` routed), and the OpenAI statuses and times it went through."""

    __tablename__ = "api_batch"
    __table_args__ = (Index("ix_api_batch_dedupe", "tenant_id", "dedupe_key", "created_at"),)
    id: str = Field(primary_key=True)  # batch_...
    tenant_id: int = Field(foreign_key="tenant.id", index=True)
    team_id: int = Field(foreign_key="team.id")
    input_file_id: str = Field(foreign_key="api_file.id")
    endpoint: str
    completion_window: str = "24h"
    batch_metadata: dict[str, Any] | None = Field(default=None, sa_column=Column("metadata", JSON))
    dedupe_key: str  # sha256 of input file, endpoint and metadata: a retried create finds its batch
    status: str = "validating"
    job_ids: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    lines: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))  # model -> job id, line count
    n_total: int = 0
    errors: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON))
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: datetime | None = _ts(default=utcnow)
    in_progress_at: datetime | None = _ts()
    finalizing_at: datetime | None = _ts()
    completed_at: datetime | None = _ts()
    failed_at: datetime | None = _ts()
    cancelling_at: datetime | None = _ts()
    cancelled_at: datetime | None = _ts()
    expired_at: datetime | None = _ts()  # its completion window closed before its lines were done

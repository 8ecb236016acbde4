"""Batch mode, measured: a job that can wait (--deadline 24h) on a provider's batch API against the same
job run synchronously, from the ledger; the ledger against the provider's batch bill line for line; the
share of items complete with 5% of lines failing and 2% expiring (billed though expired); and this
process's RSS while the batches are ingested (the in-process runner does the worker's work here).

    python bench/batch.py [--items 20000] [--provider sandbox] [--errors 0.05] [--expired 0.02]

--provider sandbox: the sandbox's batch API (simulated, in process). --provider fake: OpenAI's Batch
API as the fake provider (tests/fakes) speaks it, on a fake of its own in this process (or the one at
--fake-url), with its own batch bill.

Needs Postgres on 127.0.0.1. It uses a database of its own (pennyroute_batch_bench, recreated).
Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from pydantic import SecretStr  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from router.catalog import load_catalog  # noqa: E402
from router.engine import batch_ingest, batch_mode, runtime  # noqa: E402
from router.jobs import lifecycle  # noqa: E402
from router.jobs.intake import JobRequest  # noqa: E402
from router.jobs.submit import submit_job  # noqa: E402
from router.ledger import repo  # noqa: E402
from router.ledger.db import session_scope, upgrade  # noqa: E402
from router.ledger.tables import Call, Item, ItemStatus, ProviderBatch  # noqa: E402
from router.providers.registry import close_all, get_batch_api  # noqa: E402
from router.settings import Settings  # noqa: E402
from router.usage import TokenUsage  # noqa: E402

# The fake provider's key (tests/helpers.py FAKE_KEY): it refuses any other.
FAKE_KEY = "sk-test-fake"

PG_URL = os.environ.get("PENNYROUTE_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/pennyroute_batch_bench")
LABELS = ("billing", "bug", "account", "other")
TEXTS = (
    "I was charged twice on my invoice",
    "The app crashes with an error on login",
    "I am locked out after a password reset",
    "Hello, a question about your office hours",
)
MODEL = "gpt-4o-mini"


def _recreate(url: str) -> None:
    base, name = url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class RssSampler:
    """This process's RSS every 0.2 s while running."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(_rss_mb())
            self._stop.wait(0.2)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


INGESTS: list[tuple[int, float, float]] = []  # (0, RSS before, RSS after) of each wave ingested


def _watch_ingests() -> None:
    """Record this process's RSS around each wave's ingest (the batch poller is the one that reads results)."""
    real = batch_ingest.ingest_wave

    def watched(*args: object, **kwargs: object) -> bool:
        before = _rss_mb()
        done = real(*args, **kwargs)  # type: ignore[arg-type]
        INGESTS.append((0, before, _rss_mb()))
        return done

    batch_mode.ingest_wave = watched  # type: ignore[assignment]


def _write_items(path: Path, n: int) -> Path:
    with path.open("w") as handle:
        for k in range(n):
            handle.write(json.dumps({"id": f"i{k}", "text": f"{TEXTS[k % len(TEXTS)]} (case {k})"}) + "\n")
    return path


def _run_job(settings: Settings, path: Path, *, mode: str, deadline: str | None) -> tuple[str, float]:
    catalog = load_catalog(settings.catalog)
    request = JobRequest(
        path=path,
        team="ops",
        tenant="bench",
        task="classify",
        labels=LABELS,
        min_quality=0.5,
        quality="prior",
        models=frozenset({MODEL}),
        deadline=deadline,
        mode=mode,
    )
    submitted = submit_job(settings, catalog, request)
    started = time.monotonic()
    try:
        lifecycle.start(settings, job_id=submitted.job_id, dispatcher=lifecycle.InlineDispatcher(settings, catalog))
    finally:
        runtime.run(close_all())
    return submitted.job_id, time.monotonic() - started


def _run_cost(settings: Settings, job_id: str) -> tuple[Decimal, int]:
    with session_scope(settings) as session:
        cost = repo.sum_money(session, Call.__table__.c.cost_usd, Call.__table__.c.job_id == job_id)  # type: ignore[attr-defined]
        calls = session.execute(select(func.count()).where(Call.__table__.c.job_id == job_id)).scalar_one()  # type: ignore[attr-defined]
    return cost, int(calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--provider", choices=("sandbox", "fake"), default="sandbox")
    parser.add_argument("--fake-url", default=None, help="the fake provider's base URL (--provider fake)")
    parser.add_argument("--errors", type=float, default=0.05, help="share of lines answered with an error")
    parser.add_argument("--expired", type=float, default=0.02, help="share of lines expired (billed all the same)")
    args = parser.parse_args()
    fake = None
    if args.provider == "fake":
        from tests.fakes.batches import set_knobs

        if args.fake_url is None:  # a fake provider of its own, in a process of its own (not in our RSS)
            fake = subprocess.Popen(
                [sys.executable, "-m", "tests.fakes.server", "--port", "0", "--api-key", FAKE_KEY],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert fake.stdout is not None
            args.fake_url = fake.stdout.readline().split("listening on ")[-1].strip()
        set_knobs(
            args.fake_url, reset=True, errored=args.errors, expired=args.expired, expired_billed=True, shuffle=True
        )
    _recreate(PG_URL)
    batch_dir = Path(tempfile.mkdtemp(prefix="pennyroute-batch-bench-"))
    knobs = f"errors={args.errors},expired={args.expired},bill_expired=true,out_of_order=true"
    catalog_file = None
    if args.provider == "fake":
        catalog_file = batch_dir / "catalog.toml"
        catalog_file.write_text(f'[providers.openai]\nbase_url = "{args.fake_url}/v1"\n')
    settings = Settings(
        database_url=PG_URL,
        sandbox="on" if args.provider == "sandbox" else "off",
        sandbox_batch=knobs,
        sandbox_batch_dir=batch_dir,
        batch_poll_every_s=0.2,
        catalog=catalog_file,
        api_keys={"OPENAI_API_KEY": SecretStr(FAKE_KEY)},
        _env_file=None,  # type: ignore[call-arg]
    )
    upgrade(settings)
    with session_scope(settings) as session:
        repo.ensure_team(session, tenant="bench", team="ops")
    path = _write_items(batch_dir / "items.jsonl", args.items)

    _watch_ingests()
    with RssSampler() as rss:
        batch_job, batch_s = _run_job(settings, path, mode="auto", deadline="24h")
    sync_job, sync_s = _run_job(settings, path, mode="sync", deadline=None)

    catalog = load_catalog(settings.catalog)
    with session_scope(settings) as session:
        calls = list(session.execute(select(Call).where(Call.job_id == batch_job)).scalars())
        batches = list(session.execute(select(ProviderBatch).where(ProviderBatch.job_id == batch_job)).scalars())
        done = session.execute(
            select(func.count()).where(Item.job_id == batch_job, Item.status == ItemStatus.DONE)
        ).scalar_one()
        session.expunge_all()

    async def api() -> object:
        return get_batch_api(catalog, settings, "openai", simulated=args.provider == "sandbox")

    provider_api = runtime.run(api())  # type: ignore[arg-type]
    bill: dict[str, Decimal] = {}
    if args.provider == "fake":  # the fake's own batch bill, line by line, at its batch multiplier
        from tests.fakes.batches import read_bill

        for custom_id, line in read_bill(args.fake_url)["lines"].items():
            usage = TokenUsage(
                input_tokens=line["input_tokens"],
                output_tokens=line["output_tokens"],
                cached_input_tokens=line["cached_input_tokens"],
            )
            bill[custom_id] = catalog.price(line["model"]).cost_usd(usage) * Decimal(line["multiplier"])
    elif hasattr(provider_api, "billed"):
        for b in batches:
            if b.batch_id:
                for custom_id, usage in runtime.run(provider_api.billed(b.batch_id)).items():  # type: ignore[attr-defined]
                    bill[custom_id] = catalog.price(b.model_id).cost_usd(usage) * b.price_multiplier
    runtime.run(close_all())
    ledger = {c.id: c.cost_usd for c in calls if c.cost_usd and c.mode == "batch"}
    mismatched = sum(1 for k in set(ledger) | set(bill) if ledger.get(k) != bill.get(k))
    batch_cost, batch_calls = _run_cost(settings, batch_job)
    sync_cost, sync_calls = _run_cost(settings, sync_job)
    sync_tail = sum((c.cost_usd for c in calls if c.mode == "sync"), Decimal(0))
    rounds = max((b.round for b in batches), default=0)
    expired_billed = sum((c.cost_usd for c in calls if c.error and c.error.startswith("expired")), Decimal(0))
    print(
        f"\nbatch mode, {args.items:,} items, provider {args.provider}, {MODEL}, "
        f"{args.errors:.0%} of lines errored, {args.expired:.0%} expired (billed)"
    )
    rows = [
        (
            "bulk cost, batch (--deadline 24h)",
            f"${batch_cost:.6f}  ({batch_calls:,} calls, {len(batches)} batches, "
            f"{rounds} rounds; ${sync_tail:.6f} of it run synchronously after {rounds} rounds)",
        ),
        ("same job, synchronous", f"${sync_cost:.6f}  ({sync_calls:,} calls)"),
        ("batch / sync", f"{batch_cost / sync_cost:.4f}" if sync_cost else "-"),
        (
            "  without lines billed though expired",
            f"${expired_billed:.6f} of it billed for expired lines (run again): the rest is "
            f"{(batch_cost - expired_billed) / sync_cost:.4f} of sync"
            if sync_cost
            else "-",
        ),
        (
            "ledger vs batch bill",
            f"{len(ledger):,} billed lines in the ledger, {len(bill):,} on the bill, "
            f"{mismatched} differ; sums ${sum(ledger.values(), Decimal(0)):.10f} vs ${sum(bill.values(), Decimal(0)):.10f}",
        ),
        ("items complete", f"{done:,} of {args.items:,} ({done / args.items:.3%})"),
        (
            "RSS while running batch",
            f"start {rss.samples[0]:.0f} MB, peak {max(rss.samples):.0f} MB, "
            f"end {rss.samples[-1]:.0f} MB ({len(rss.samples)} samples)"
            if rss.samples
            else "-",
        ),
        ("RSS around each ingest", ", ".join(f"{a:.0f}->{b:.0f} MB" for _, a, b in INGESTS) or "-"),
        ("wall time", f"batch {batch_s:.1f} s (simulated: no 24 h wait), sync {sync_s:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    if fake is not None:
        fake.terminate()


if __name__ == "__main__":
    main()

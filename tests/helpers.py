"""Helpers shared by tests: input files, ledger reads, catalogs that point at the fake provider,
and real Celery worker processes. Fixtures live in conftest.py; everything else lives here."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from pydantic import SecretStr
from sqlalchemy import select, update
from typer.testing import CliRunner

from router.catalog import Catalog
from router.cli.app import app
from router.ledger.db import session_scope
from router.ledger.tables import Call, Item, Job, JobStatus
from router.settings import Settings
from router.usage import TokenUsage

ROOT = Path(__file__).resolve().parent.parent
# The key the fake provider accepts; providers given any other key get its 401.
FAKE_KEY = "sk-test-fake"


# One catalog model per vendor wire format, all served by the fake provider.
VENDOR_MODELS = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-haiku-4-5",
    "mistral": "mistral-small-2603",
    "gemini": "gemini-2.5-flash",
}


def with_vendor_keys(settings: Settings) -> Settings:
    """`settings` with the fake's key for every vendor, and provider batches polled every 50 ms."""
    keys = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "MISTRAL_API_KEY", "GEMINI_API_KEY")
    return settings.model_copy(update={"api_keys": {k: SecretStr(FAKE_KEY) for k in keys}, "batch_poll_every_s": 0.05})


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
    """What the call should cost: its tokens at the catalog price in force when it started, times its
    price multiplier (a provider batch API's line: 0.5; a synchronous call: 1)."""
    price = catalog.price(call.model_id, call.started_at)
    return price.cost_usd(
        TokenUsage(
            input_tokens=call.input_tokens,
            output_tokens=call.output_tokens,
            cached_input_tokens=call.cached_input_tokens,
            cache_write_tokens=call.cache_write_tokens,
        )
    ) * Decimal(call.price_multiplier)


def write_catalog(path: Path, fake_url: str) -> Path:
    """A catalog whose openai, anthropic, google (Gemini) and mistral providers answer at the fake server."""
    path.write_text(
        f'[providers.openai]\nbase_url = "{fake_url}/v1"\n\n'
        f'[providers.anthropic]\nbase_url = "{fake_url}"\n\n'
        f'[providers.google]\nbase_url = "{fake_url}"\n\n'
        f'[providers.mistral]\nbase_url = "{fake_url}/v1"\n'
    )
    return path


def worker_env(*, pg_url: str, broker_url: str, catalog_file: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(
        DATABASE_URL=pg_url,
        BROKER_URL=broker_url,
        PENNYROUTE_CATALOG=str(catalog_file),
        PENNYROUTE_SANDBOX="off",
        OPENAI_API_KEY=FAKE_KEY,
        ANTHROPIC_API_KEY=FAKE_KEY,
    )
    return env


def start_workers(
    count: int, env: dict[str, str], logs: Path, *, threads: int = 8, extra: tuple[str, ...] = (), name: str = "worker"
) -> list[subprocess.Popen[bytes]]:
    """Start `count` real `celery -A workers.app worker` processes and wait until each is ready."""
    procs, log_files = [], []
    for n in range(count):
        log = logs / f"{name}-{n}.log"
        with log.open("wb") as handle:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "celery",
                        "-A",
                        "workers.app",
                        "worker",
                        "--loglevel",
                        "INFO",
                        "--concurrency",
                        str(threads),
                        "--hostname",
                        f"test-{uuid.uuid4().hex[:6]}@%h",
                        "--without-gossip",
                        "--without-mingle",
                        "--without-heartbeat",
                        *extra,
                    ],
                    cwd=ROOT,
                    env=env,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its pool and embedded beat (-B) die with it (stop_workers, killpg)
                )
            )
        log_files.append(log)
    # A cold start imports celery, sqlalchemy and aiohttp: seconds each, more when many start at once.
    deadline = time.monotonic() + 30 + 15 * count
    for proc, log in zip(procs, log_files, strict=True):
        while b"ready." not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_workers(procs)
                raise RuntimeError(f"celery worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop workers and every process they started (pool children, an embedded beat): a test leaves
    nothing running, even after it killed a worker's main process itself."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of its group outlived it


# Sentences of a contract dispute; each source is 2 to 5 of them, so sources differ in length and lead.
CONTRACT_SENTENCES = (
    "Order {k} of valves from plant {p} arrived {d} days late.",
    "The buyer claims a discount of {d} percent under clause {c} of the supply contract.",
    "The supplier blames the carrier for the delay and offers a credit note instead.",
    "Inspection found {d} damaged crates, which the warehouse refused to sign for.",
    "Payment of the invoice is withheld until both sides agree on the penalty.",
    "Talks continue next week at the regional office with both legal teams present.",
    "The carrier says its trucks were held at the border by a customs strike.",
    "Insurance may cover the damaged goods if the claim is filed within thirty days.",
)


def contract_sentences(k: int) -> list[str]:
    """The sentences of source text number k (deterministic)."""
    pool = CONTRACT_SENTENCES
    return [pool[(3 * k + i) % len(pool)].format(k=k, p=k % 5, d=k % 9 + 2, c=k % 11) for i in range(2 + k % 4)]


def run_cli(*args: str, stdin: str | None = None) -> tuple[int, str]:
    """Run a pennyroute command in this process: (exit code, its output on one line; rich wraps long lines)."""
    result = CliRunner().invoke(app, list(args), input=stdin)
    return result.exit_code, " ".join(result.output.split())


def _pg_cluster() -> list[str] | None:
    """`pg_ctlcluster VERSION NAME` for the local cluster, when this process may restart it."""
    if shutil.which("pg_lsclusters") is None or shutil.which("pg_ctlcluster") is None or os.geteuid() != 0:
        return None
    lines = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True).stdout.split("\n")
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "5432":
            return ["pg_ctlcluster", parts[0], parts[1]]
    return None


def postgres_outage(pg_url: str) -> str:
    """Make Postgres unavailable for a few seconds: a real restart where we may, else refuse connections."""
    cluster = _pg_cluster()
    if cluster is not None and os.environ.get("PENNYROUTE_TEST_PG_RESTART", "1") == "1":
        subprocess.run([*cluster, "stop", "-m", "fast"], check=True, capture_output=True)
        time.sleep(3)
        subprocess.run([*cluster, "start"], check=True, capture_output=True)
        return "restarted"
    base, name = pg_url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        time.sleep(3)
        conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
    return "refused connections"


def retire_leftover_jobs(settings: Settings) -> None:
    """Cancel every job earlier tests left running or paused in the shared test database. A worker
    started with beat (-B) sweeps and resumes every such job: a job paused on a spent budget then
    holds the worker's threads for PENNYROUTE_BUDGET_WAIT_S (120 s) each, and the test's own job
    waits behind them."""
    with session_scope(settings) as session:
        session.execute(
            update(Job)
            .where(Job.status.in_([JobStatus.RUNNING, JobStatus.PAUSED]))  # type: ignore[attr-defined]
            .values(status=JobStatus.CANCELLED)
        )

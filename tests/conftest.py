"""Shared fixtures: real Postgres and Redis on 127.0.0.1, the local fake provider, a real Celery worker.

Postgres: a database of its own (pennyroute_test), dropped and migrated once per session.
Redis: database 15, flushed once per session. Override with PENNYROUTE_TEST_DATABASE_URL and
PENNYROUTE_TEST_BROKER_URL. No test reaches the internet: providers are the fake server.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from router.catalog import Catalog, load_catalog
from router.ledger import repo
from router.ledger.db import session_scope, upgrade
from router.settings import Settings, get_settings
from tests.fakes.server import start_in_thread
from tests.helpers import FAKE_KEY, run_cli, start_workers, stop_workers, worker_env, write_catalog

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("PENNYROUTE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/pennyroute_test")
BROKER_URL = os.environ.get("PENNYROUTE_TEST_BROKER_URL", "redis://127.0.0.1:6379/15")


def _recreate_database(url: str) -> None:
    base, name = url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


@pytest.fixture(scope="session")
def pg_url() -> str:
    _recreate_database(PG_URL)
    upgrade(Settings(database_url=PG_URL, _env_file=None))  # type: ignore[call-arg]
    return PG_URL


@pytest.fixture(scope="session")
def broker_url() -> str:
    redis.Redis.from_url(BROKER_URL).flushdb()
    return BROKER_URL


@pytest.fixture(scope="session")
def fake_provider() -> Iterator[str]:
    """The fake provider's base URL (no /v1), one server for the session."""
    url, stop = start_in_thread(api_key=FAKE_KEY)
    yield url
    stop()


@pytest.fixture(scope="session")
def catalog_file(tmp_path_factory: pytest.TempPathFactory, fake_provider: str) -> Path:
    return write_catalog(tmp_path_factory.mktemp("catalog") / "catalog.toml", fake_provider)


@pytest.fixture(scope="session")
def catalog(catalog_file: Path) -> Catalog:
    return load_catalog(catalog_file)


@pytest.fixture
def live_settings(pg_url: str, catalog_file: Path) -> Settings:
    """Postgres, no broker, live providers (the fake server; only OpenAI and Anthropic have keys)."""
    return Settings(
        database_url=pg_url,
        catalog=catalog_file,
        sandbox="off",
        api_keys={"OPENAI_API_KEY": FAKE_KEY, "ANTHROPIC_API_KEY": FAKE_KEY},  # type: ignore[arg-type]
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture
def team(live_settings: Settings) -> tuple[str, str]:
    """A fresh tenant and team (names unique per test): (tenant, team)."""
    from router.ledger.db import session_scope

    tenant, name = f"t-{uuid.uuid4().hex[:8]}", f"team-{uuid.uuid4().hex[:8]}"
    with session_scope(live_settings) as session:
        repo.ensure_team(session, tenant=tenant, team=name)
    return tenant, name


@pytest.fixture
def celery_worker(
    pg_url: str, broker_url: str, catalog_file: Path, tmp_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A real `celery -A workers.app worker` process, stopped after the test."""
    procs = start_workers(1, worker_env(pg_url=pg_url, broker_url=broker_url, catalog_file=catalog_file), tmp_path)
    yield procs[0]
    stop_workers(procs)


# -- the CLI, as a user runs it ---------------------------------------------------------------------


def clean_cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No broker, no catalog file, no ledger URL from the machine: each CLI fixture sets its own."""
    for name in list(os.environ):
        if name.startswith("PENNYROUTE_") and not name.startswith("PENNYROUTE_TEST_"):
            monkeypatch.delenv(name)
    for name in ("DATABASE_URL", "BROKER_URL", "CELERY_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PENNYROUTE_SANDBOX", "on")
    get_settings.cache_clear()


@pytest.fixture
def cli_env(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The CLI on the test Postgres, sandbox answers, no broker (jobs run in-process)."""
    clean_cli_env(monkeypatch)
    monkeypatch.setenv("DATABASE_URL", pg_url)
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def cli_team(cli_env: Settings) -> str:
    """A fresh team (in a tenant of its own) on the CLI's ledger."""
    name = f"growth-{uuid.uuid4().hex[:6]}"
    with session_scope(cli_env) as session:
        repo.ensure_team(session, tenant=f"acme-{name}", team=name)
    return name


@pytest.fixture
def sqlite_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The CLI on a fresh SQLite ledger (the embedded default), with team growth in tenant acme."""
    clean_cli_env(monkeypatch)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    settings = get_settings()
    assert run_cli("tenant", "create", "acme")[0] == 0
    assert run_cli("team", "create", "growth", "--tenant", "acme")[0] == 0
    yield settings
    get_settings.cache_clear()

"""Helpers for the HTTP API's tests: an app over the test ledger, tenants with keys, a real server."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr

from router.api.app import create_app
from router.catalog import Catalog
from router.ledger import keys, repo
from router.ledger.db import session_scope
from router.settings import Settings

SECRET = "test-server-secret-0123456789abcdef"
METRICS_TOKEN = "test-metrics-token-42"
ALL_SCOPES = ",".join(keys.SCOPES)


def api_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"server_secret": SecretStr(SECRET), "metrics_token": SecretStr(METRICS_TOKEN)})


@dataclass(frozen=True)
class Tenant:
    tenant: str
    team: str
    key: str  # every scope, tenant-wide


def make_tenant(settings: Settings) -> Tenant:
    tenant, team = f"t-{uuid.uuid4().hex[:8]}", f"team-{uuid.uuid4().hex[:8]}"
    with session_scope(settings) as session:
        repo.ensure_team(session, tenant=tenant, team=team)
    return Tenant(tenant, team, make_key(settings, tenant=tenant, scopes=list(keys.SCOPES)))


def make_key(settings: Settings, *, tenant: str, scopes: list[str], team: str | None = None) -> str:
    with session_scope(settings) as session:
        key, _ = keys.create_key(session, secret=settings.key_secret(), tenant=tenant, team=team, scopes=scopes)
    return key


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_threads(app: FastAPI, timeout_s: float = 120) -> None:
    """Wait for the work the app started in the background (jobs run in-process without a broker)."""
    deadline = time.monotonic() + timeout_s
    for thread in list(app.state.threads):
        thread.join(max(0.0, deadline - time.monotonic()))
        assert not thread.is_alive(), f"{thread.name} still running"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(settings: Settings, catalog: Catalog) -> Iterator[tuple[str, FastAPI]]:
    """The app on a real uvicorn server on 127.0.0.1 (base URL, app), stopped after."""
    app = create_app(settings, catalog)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{base}/openapi.json", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    try:
        yield base, app
        wait_threads(app)  # the jobs it ran in-process end before the next test
    finally:
        server.should_exit = True
        thread.join(10)

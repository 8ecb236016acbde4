"""`pennyroute keys`: a key is printed once, kept as a keyed hash, listed without it, revoked."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from router.ledger import keys
from router.ledger.db import session_scope
from router.ledger.tables import ApiKey
from router.settings import Settings, get_settings
from tests.api_support import SECRET
from tests.helpers import run_cli


@pytest.fixture
def secret_env(cli_env: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("PENNYROUTE_SERVER_SECRET", SECRET)
    get_settings.cache_clear()
    return get_settings()


def test_keys_create_list_revoke(secret_env: Settings, cli_team: str) -> None:
    tenant = f"acme-{cli_team}"
    code, key = run_cli("keys", "create", "--tenant", tenant, "--team", cli_team, "--scopes", "jobs:read,jobs:write")
    assert code == 0
    key = next(word for word in key.split() if keys.KEY_SHAPE.match(word))  # stdout: the key, once
    with session_scope(secret_env) as session:
        row = session.execute(select(ApiKey).where(ApiKey.prefix == key[:20])).scalar_one()
        assert row.key_hash == keys.key_hash(key, SECRET.encode()) and key not in row.key_hash
        assert row.scopes == ["jobs:write", "jobs:read"]
        principal = keys.authenticate(session, key=key, secret=SECRET.encode())
        assert principal is not None and principal.team == cli_team
    code, listed = run_cli("keys", "list", "--tenant", tenant, "--json")
    assert code == 0 and key not in listed and json.loads(listed)[0]["prefix"] == key[:20]
    assert run_cli("keys", "revoke", key[:20])[0] == 0
    with session_scope(secret_env) as session:
        assert keys.authenticate(session, key=key, secret=SECRET.encode()) is None
    assert "revoked already" in run_cli("keys", "revoke", key[:20])[1]


def test_keys_need_the_server_secret_and_known_scopes(cli_env: Settings, cli_team: str) -> None:
    code, text = run_cli("keys", "create", "--tenant", f"acme-{cli_team}", "--scopes", "jobs:read")
    assert code == 2 and "PENNYROUTE_SERVER_SECRET is not set" in text


def test_unknown_scope_is_named(secret_env: Settings, cli_team: str) -> None:
    code, text = run_cli("keys", "create", "--tenant", f"acme-{cli_team}", "--scopes", "jobs:read,admin")
    assert code == 2 and "--scopes: unknown scope 'admin'" in text


def test_a_short_server_secret_is_refused(cli_env: Settings, cli_team: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PENNYROUTE_SERVER_SECRET", "tiny-secret")
    get_settings.cache_clear()
    code, text = run_cli("keys", "create", "--tenant", f"acme-{cli_team}", "--scopes", "jobs:read")
    assert code == 2 and "PENNYROUTE_SERVER_SECRET is too short" in text and "tiny-secret" not in text

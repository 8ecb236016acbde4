"""Tenant API keys for the HTTP API: made, kept as a keyed hash, found, checked, listed, revoked.

A key reads `pr_live_` + a 12-character public id + a 32-character secret body, letters and digits
only (a double click selects it whole; router/redact.py hides the shape in logs). The ledger keeps
the prefix (`pr_live_` + the public id, how a key is found) and the HMAC-SHA256 of the whole key
under the server secret (PENNYROUTE_SERVER_SECRET): never the key. A key is fast to check (one
indexed read and one HMAC) and a copy of the database alone cannot test a guessed key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlmodel import Session

from router.errors import InputError, NotFoundError
from router.ledger import repo
from router.ledger.tables import ApiKey, Team, Tenant, utcnow

PREFIX = "pr_live_"
PUBLIC_CHARS = 12
SECRET_CHARS = 32  # 32 of 62 symbols: 190 bits, far past guessing
KEY_SHAPE = re.compile(rf"^{PREFIX}[A-Za-z0-9]{{{PUBLIC_CHARS + SECRET_CHARS}}}$")
ALPHABET = string.ascii_letters + string.digits
# What a key may be allowed to do. reports:read also reads budgets, models and quality estimates.
SCOPES = ("jobs:write", "jobs:read", "reports:read", "budgets:write")
# last_used_at is written at most this often per key: a status poller must not make every read a write.
TOUCH_EVERY = timedelta(seconds=60)

KEY = ApiKey.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is: the key's prefix, its tenant (and team, for a team-scoped key), its scopes."""

    key_prefix: str
    tenant_id: int
    tenant: str
    team_id: int | None
    team: str | None
    scopes: frozenset[str]


def key_hash(key: str, secret: bytes) -> str:
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()


def parse_scopes(text: str) -> list[str]:
    """The scopes a comma-separated text names; InputError naming --scopes for an unknown or empty one."""
    asked = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in asked if s not in SCOPES]
    if unknown or not asked:
        raise InputError(
            f"unknown scope{'s' if len(unknown) > 1 else ''} {', '.join(repr(s) for s in unknown)}: "
            f"use some of {', '.join(SCOPES)}"
            if unknown
            else f"name at least one scope: {', '.join(SCOPES)}",
            field="--scopes",
        )
    return sorted(set(asked), key=SCOPES.index)


def create_key(
    session: Session, *, secret: bytes, tenant: str, team: str | None, scopes: list[str]
) -> tuple[str, ApiKey]:
    """Make a key for `tenant` (and `team`): (the key, shown once; its row). NotFoundError for an
    unknown tenant or team."""
    owner = repo.get_tenant(session, name=tenant)
    team_id = repo.find_team(session, name=team, tenant=tenant).id if team else None
    public = "".join(secrets.choice(ALPHABET) for _ in range(PUBLIC_CHARS))
    body = "".join(secrets.choice(ALPHABET) for _ in range(SECRET_CHARS))
    key = f"{PREFIX}{public}{body}"
    assert owner.id is not None
    row = ApiKey(
        prefix=f"{PREFIX}{public}", key_hash=key_hash(key, secret), tenant_id=owner.id, team_id=team_id, scopes=scopes
    )
    session.add(row)
    session.flush()
    return key, row


def list_keys(session: Session, *, tenant: str | None = None) -> list[Any]:
    """Keys (never the key: prefix, tenant, team, scopes, times), newest first."""
    tenant_t, team_t = Tenant.__table__, Team.__table__  # type: ignore[attr-defined]
    query = (
        select(
            KEY.c.prefix,
            tenant_t.c.name.label("tenant"),
            team_t.c.name.label("team"),
            KEY.c.scopes,
            KEY.c.created_at,
            KEY.c.last_used_at,
            KEY.c.revoked_at,
        )
        .join(tenant_t, tenant_t.c.id == KEY.c.tenant_id)
        .outerjoin(team_t, team_t.c.id == KEY.c.team_id)
    )
    if tenant is not None:
        query = query.where(tenant_t.c.name == tenant)
    return list(session.execute(query.order_by(KEY.c.created_at.desc(), KEY.c.id.desc())).all())


def revoke_key(session: Session, *, prefix: str) -> bool:
    """Revoke the key with this prefix (or the key itself, whose prefix is taken); False if it was
    revoked already. NotFoundError for an unknown prefix."""
    prefix = prefix.strip()[: len(PREFIX) + PUBLIC_CHARS]
    row = session.execute(select(KEY.c.id, KEY.c.revoked_at).where(KEY.c.prefix == prefix)).first()
    if row is None:
        raise NotFoundError(f"unknown key '{prefix}': `pennyroute keys list` shows the prefixes")
    if row.revoked_at is not None:
        return False
    session.execute(update(KEY).where(KEY.c.id == row.id).values(revoked_at=utcnow()))
    return True


def authenticate(session: Session, *, key: str, secret: bytes, now: datetime | None = None) -> Principal | None:
    """The principal a presented key stands for, or None for a malformed, unknown or revoked key.
    The hash is compared in constant time; last_used_at is written at most every TOUCH_EVERY."""
    if not KEY_SHAPE.match(key):
        return None
    tenant_t, team_t = Tenant.__table__, Team.__table__  # type: ignore[attr-defined]
    row = session.execute(
        select(
            KEY.c.id,
            KEY.c.prefix,
            KEY.c.key_hash,
            KEY.c.tenant_id,
            KEY.c.team_id,
            KEY.c.scopes,
            KEY.c.revoked_at,
            KEY.c.last_used_at,
            tenant_t.c.name.label("tenant"),
            team_t.c.name.label("team"),
        )
        .join(tenant_t, tenant_t.c.id == KEY.c.tenant_id)
        .outerjoin(team_t, team_t.c.id == KEY.c.team_id)
        .where(KEY.c.prefix == key[: len(PREFIX) + PUBLIC_CHARS])
    ).first()
    presented = key_hash(key, secret)
    if row is None:
        hmac.compare_digest(presented, presented)  # the same work whether or not the prefix exists
        return None
    if not hmac.compare_digest(presented, row.key_hash) or row.revoked_at is not None:
        return None
    now = now or utcnow()
    if row.last_used_at is None or row.last_used_at < now - TOUCH_EVERY:
        session.execute(update(KEY).where(KEY.c.id == row.id).values(last_used_at=now))
    return Principal(
        key_prefix=row.prefix,
        tenant_id=row.tenant_id,
        tenant=row.tenant,
        team_id=row.team_id,
        team=row.team,
        scopes=frozenset(row.scopes or ()),
    )


def owned_job(session: Session, job_id: str, *, tenant_id: int, team_id: int | None) -> Any:
    """The job, when it belongs to the tenant (and team, when given); else NotFoundError, the same
    words as an unknown job's, so a key learns nothing of another tenant's ids."""
    job = repo.find_job(session, job_id)
    if job is None or job.tenant_id != tenant_id or (team_id is not None and job.team_id != team_id):
        raise NotFoundError(f"unknown job '{job_id}'")
    return job

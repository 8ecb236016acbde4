"""The OpenAI-compatible intake's rows: uploaded files (kept in pieces) and batches. Every read
takes the caller's tenant (and team): another tenant's id is not found, in the words an unknown id gets.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlmodel import Session

from router.errors import NotFoundError
from router.ledger.tables import ApiBatch, ApiFile, ApiFileChunk

FILE = ApiFile.__table__  # type: ignore[attr-defined]
CHUNK = ApiFileChunk.__table__  # type: ignore[attr-defined]
BATCH = ApiBatch.__table__  # type: ignore[attr-defined]
# Pieces read per query when a file is streamed back: 16 pieces of 1 MiB at most.
READ_PIECES = 16


def add_file(session: Session, file: ApiFile) -> ApiFile:
    session.add(file)
    session.flush()
    return file


def add_piece(session: Session, *, file_id: str, seq: int, data: bytes) -> None:
    session.execute(insert(CHUNK).values(file_id=file_id, seq=seq, data=data))


def set_file_bytes(session: Session, *, file_id: str, size: int) -> None:
    session.execute(update(FILE).where(FILE.c.id == file_id).values(bytes=size))


def owned_file(
    session: Session, file_id: str, *, tenant_id: int, team_id: int | None, for_update: bool = False
) -> ApiFile:
    """The file, when it is the tenant's (and team's); else NotFoundError."""
    query = select(ApiFile).where(FILE.c.id == file_id)
    if for_update:
        query = query.with_for_update()
    found = session.execute(query).scalars().first()
    if (
        found is None
        or found.deleted_at is not None
        or found.tenant_id != tenant_id
        or (team_id is not None and found.team_id != team_id)
    ):
        raise NotFoundError(f"No such File object: {file_id}")
    return found


def list_files(
    session: Session,
    *,
    tenant_id: int,
    team_id: int | None,
    purpose: str | None,
    after: str | None,
    limit: int,
    newest_first: bool,
) -> list[ApiFile]:
    """The tenant's (team's) files not deleted, of `purpose` if given, newest first (or oldest first),
    those beyond the file `after` (a cursor), `limit` of them."""
    query = select(ApiFile).where(FILE.c.tenant_id == tenant_id, FILE.c.deleted_at.is_(None))
    if team_id is not None:
        query = query.where(FILE.c.team_id == team_id)
    if purpose:
        query = query.where(FILE.c.purpose == purpose)
    if after:
        cursor = owned_file(session, after, tenant_id=tenant_id, team_id=team_id)
        if newest_first:
            query = query.where(
                (FILE.c.created_at < cursor.created_at)
                | ((FILE.c.created_at == cursor.created_at) & (FILE.c.id < cursor.id))
            )
        else:
            query = query.where(
                (FILE.c.created_at > cursor.created_at)
                | ((FILE.c.created_at == cursor.created_at) & (FILE.c.id > cursor.id))
            )
    order = (FILE.c.created_at.desc(), FILE.c.id.desc()) if newest_first else (FILE.c.created_at, FILE.c.id)
    return list(session.execute(query.order_by(*order).limit(limit)).scalars())


def delete_file(session: Session, file_id: str, *, now: datetime) -> None:
    """Mark the file deleted and remove its pieces (its row stays: batches name it)."""
    session.execute(delete(CHUNK).where(CHUNK.c.file_id == file_id))
    session.execute(update(FILE).where(FILE.c.id == file_id).values(deleted_at=now))


def batches_using(session: Session, file_id: str) -> list[ApiBatch]:
    """The batches that read this file: as their input, or as their output or error file."""
    query = select(ApiBatch).where(
        (BATCH.c.input_file_id == file_id) | (BATCH.c.output_file_id == file_id) | (BATCH.c.error_file_id == file_id)
    )
    return list(session.execute(query).scalars())


def pieces(session: Session, file_id: str) -> Iterator[bytes]:
    """The file's bytes, a piece at a time, in order (READ_PIECES per query: never the whole file)."""
    after = -1
    while True:
        rows = session.execute(
            select(CHUNK.c.seq, CHUNK.c.data)
            .where(CHUNK.c.file_id == file_id, CHUNK.c.seq > after)
            .order_by(CHUNK.c.seq)
            .limit(READ_PIECES)
        ).all()
        if not rows:
            return
        for seq, data in rows:
            after = seq
            yield bytes(data)


def add_batch(session: Session, batch: ApiBatch) -> ApiBatch:
    session.add(batch)
    session.flush()
    return batch


def recent_batch(session: Session, *, tenant_id: int, dedupe_key: str, since: datetime) -> ApiBatch | None:
    """The tenant's batch made from the same request since `since`, if any (a retried create)."""
    return (
        session.execute(
            select(ApiBatch)
            .where(BATCH.c.tenant_id == tenant_id, BATCH.c.dedupe_key == dedupe_key, BATCH.c.created_at >= since)
            .order_by(BATCH.c.created_at.desc())
        )
        .scalars()
        .first()
    )


def owned_batch(
    session: Session, batch_id: str, *, tenant_id: int, team_id: int | None, for_update: bool = False
) -> ApiBatch:
    """The batch, when it is the tenant's (and team's); else NotFoundError."""
    query = select(ApiBatch).where(BATCH.c.id == batch_id)
    if for_update:
        query = query.with_for_update()
    found = session.execute(query).scalars().first()
    if found is None or found.tenant_id != tenant_id or (team_id is not None and found.team_id != team_id):
        raise NotFoundError(f"No such Batch object: {batch_id}")
    return found


def list_batches(
    session: Session, *, tenant_id: int, team_id: int | None, after: str | None, limit: int
) -> list[ApiBatch]:
    """The tenant's (team's) batches, newest first, after the batch `after` (a cursor), `limit` of them."""
    query = select(ApiBatch).where(BATCH.c.tenant_id == tenant_id)
    if team_id is not None:
        query = query.where(BATCH.c.team_id == team_id)
    if after:
        cursor = owned_batch(session, after, tenant_id=tenant_id, team_id=team_id)
        query = query.where(
            (BATCH.c.created_at < cursor.created_at)
            | ((BATCH.c.created_at == cursor.created_at) & (BATCH.c.id < cursor.id))
        )
    return list(session.execute(query.order_by(BATCH.c.created_at.desc(), BATCH.c.id.desc()).limit(limit)).scalars())


def in_progress_since(session: Session, *, before: datetime) -> list[ApiBatch]:
    """Every tenant's batches still in progress that were created before `before` (the sweeper's)."""
    query = select(ApiBatch).where(BATCH.c.status == "in_progress", BATCH.c.created_at < before)
    return list(session.execute(query.order_by(BATCH.c.created_at)).scalars())


def update_batch(session: Session, batch_id: str, **values: Any) -> None:
    session.execute(update(BATCH).where(BATCH.c.id == batch_id).values(**values))

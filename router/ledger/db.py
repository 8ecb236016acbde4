"""Engines and sessions: one engine per process and URL, built on first use, never at import."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import psycopg
import psycopg.errors
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlmodel import Session, create_engine

from router.errors import ConfigError
from router.settings import Settings

# Workers keep a few connections each: one per chunk thread plus one for the sweeper and status.
POOL_SIZE = 8
# What a statement raises while the database cannot be reached (restarting, failing over): worth
# trying again later, unlike an error in the statement or the data.
UNREACHABLE: tuple[type[Exception], ...] = (OperationalError, InterfaceError)


def rolled_back(exc: BaseException) -> bool:
    """Whether the database rolled the transaction back on its own (a deadlock broken, a serialization
    failure): nothing of it was written, and running it again is safe."""
    return isinstance(getattr(exc, "orig", None), psycopg.errors.TransactionRollback)


# A SQLite ledger holds every input text and what each team spent: its owner alone may read it.
SQLITE_FILE_MODE = 0o600
# The files SQLite keeps beside the database (WAL mode, and a rollback journal outside it).
SQLITE_SIBLINGS = ("-wal", "-shm", "-journal")

log = logging.getLogger("pennyroute.ledger")


@lru_cache(maxsize=8)
def _engine(url: str, pid: int) -> Engine:
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Threads of one process share the file; SQLite serializes writers, so wait rather than fail.
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        # No pre-ping: it costs a round trip on every checkout (7% of a worker's time at 0 ms). A
        # connection Postgres dropped (a restart) fails its first statement instead; SQLAlchemy then
        # discards the whole pool, and callers retry (router/engine/batch.py write_retrying, Celery's autoretry).
        kwargs.update(pool_size=POOL_SIZE, max_overflow=POOL_SIZE)
    if url.startswith("sqlite"):
        protect_sqlite_file(url)
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def protect_sqlite_file(url: str) -> None:
    """Make a SQLite ledger file readable by its owner only (SQLITE_FILE_MODE), before SQLite opens it.

    A missing file is created empty (a valid empty database) with that mode; SQLite then gives its
    -wal, -shm and -journal files the database file's mode. An existing file, or sibling, that others
    may read or write is tightened, with a warning. In-memory databases are left alone; so is a file
    we may not change (another user's), with a warning. Postgres is not touched.
    """
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, SQLITE_FILE_MODE)
    except FileExistsError:
        pass
    except OSError:
        return  # a missing folder or a read-only place: SQLite's own error will name it
    else:
        os.close(fd)
    for each in [path, *(path.with_name(path.name + suffix) for suffix in SQLITE_SIBLINGS)]:
        _tighten(each)


def _tighten(path: Path) -> None:
    """Take away the group's and others' permissions on `path`, if it exists and has any."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if not mode & 0o077:
        return
    try:
        os.chmod(path, mode & ~0o077)
    except OSError as exc:
        log.warning(
            "the ledger file %s can be read by others (mode %o) and could not be tightened: %s", path, mode, exc
        )
        return
    log.warning(
        "the ledger file %s could be read by others (mode %o); now %o, its owner's only", path, mode, mode & ~0o077
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def get_engine(settings: Settings) -> Engine:
    """The engine for the settings' database, built once per process (a forked child gets its own)."""
    return _engine(settings.sqlalchemy_url, os.getpid())


@contextmanager
def session_scope(settings: Settings) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(get_engine(settings), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def execute_and_commit(session: Session, statement: str, params: dict[str, Any]) -> None:
    """Run `statement` (SQL text, :named parameters) as the transaction's last, and commit it: on
    Postgres in one round trip (psycopg's pipeline), elsewhere as usual (session_scope commits).

    The statement that adds to the rows every writer of a job adds to (its counts, its rollups) holds
    their locks until the commit. Sent one after the other, the commit leaves only once this thread
    has read the statement's result, and under load a thread waits its turn for the GIL to do that:
    every other writer of the job waited behind it (a 20% fault mix, with its extra writes, ran at
    half the rate). Pipelined, the server commits as soon as the statement is done."""
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        session.execute(text(statement), params)
        return
    compiled = _compiled(statement, connection.dialect)
    raw = connection.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    values = compiled.construct_params(params)
    try:
        with raw.pipeline():
            raw.execute(compiled.string, values)
            raw.commit()  # session_scope's commit then finds nothing left to commit
    except psycopg.Error as exc:  # raised as SQLAlchemy raises it: callers catch one tree (UNREACHABLE ...)
        raise DBAPIError.instance(compiled.string, values, exc, psycopg.Error, dialect=connection.dialect) from exc


@lru_cache(maxsize=512)
def _compiled(statement: str, dialect: Any) -> Any:
    """`statement` compiled for `dialect`, once per distinct text (a batch's write has a few shapes)."""
    return text(statement).compile(dialect=dialect)


def migrations_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "migrations"  # router/ledger/db.py -> the project root


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", settings.sqlalchemy_url.replace("%", "%%"))
    return config


def upgrade(settings: Settings) -> str:
    """Run migrations up to head; return the revision the database is at."""
    if settings.is_sqlite:
        protect_sqlite_file(settings.sqlalchemy_url)  # Alembic opens the file with an engine of its own
    command.upgrade(alembic_config(settings), "head")
    return current_revision(settings) or "base"


def current_revision(settings: Settings) -> str | None:
    with get_engine(settings).connect() as conn:
        try:
            row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
        except Exception:
            return None
    return row[0] if row else None


def head_revision(settings: Settings) -> str | None:
    return ScriptDirectory.from_config(alembic_config(settings)).get_current_head()


def ensure_schema(settings: Settings) -> None:
    """Make sure the schema is current: SQLite (the embedded default) is upgraded on the spot;
    a server database must be upgraded on purpose with `pennyroute db upgrade`."""
    try:
        at = current_revision(settings)
    except Exception as exc:  # the server is down, or the URL is wrong
        raise ConfigError(f"cannot reach the database at {_safe_url(settings)}: {exc}") from exc
    if at == head_revision(settings):
        return
    if settings.is_sqlite:
        upgrade(settings)
        return
    raise ConfigError(
        f"the database at {_safe_url(settings)} is at schema {at or 'none'}, not the current one: "
        "run `pennyroute db upgrade`"
    )


def _safe_url(settings: Settings) -> str:
    return get_engine(settings).url.render_as_string(hide_password=True)

"""Files the CLI writes (`-o`): never over an existing file without --force, never over the ledger,
never half-written (written beside the target, then moved into place), with a clear error otherwise."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from router.errors import InputError
from router.settings import Settings


def ledger_path(settings: Settings) -> Path | None:
    """The SQLite ledger's file, or None on a server database."""
    if not settings.is_sqlite:
        return None
    url = settings.sqlalchemy_url  # sqlite:///relative.db, sqlite:////absolute.db, maybe ?options
    database = url.split("///", 1)[1].split("?", 1)[0] if "///" in url else ""
    return Path(database).resolve() if database and database != ":memory:" else None


@contextmanager
def replacing(target: Path, *, force: bool, ledger: Path | None) -> Iterator[TextIO]:
    """A text handle whose content becomes `target` when the block ends without error."""
    check(target, force=force, ledger=ledger)
    folder = target.resolve().parent
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=folder)
    except OSError as exc:
        raise InputError(f"-o {target}: cannot write in {folder}: {exc.strerror}", field="-o") from None
    try:
        with os.fdopen(fd, "w") as handle:
            yield handle
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def check(target: Path, *, force: bool, ledger: Path | None) -> None:
    """InputError naming -o when `target` cannot or must not be written."""
    resolved = target.resolve()
    if ledger is not None and resolved in {
        ledger,
        *(ledger.with_name(ledger.name + s) for s in ("-wal", "-shm", "-journal")),
    }:
        raise InputError(f"-o {target} is the ledger itself: write the output elsewhere", field="-o")
    if resolved.is_dir():
        raise InputError(f"-o {target} is a folder: give a file name", field="-o")
    if not resolved.parent.is_dir():
        raise InputError(f"-o {target}: the folder {resolved.parent} does not exist", field="-o")
    if resolved.exists() and not force:
        raise InputError(f"-o {target} already exists: add --force to overwrite it", field="-o")
    if not os.access(resolved.parent, os.W_OK):
        raise InputError(f"-o {target}: the folder {resolved.parent} is not writable", field="-o")

"""The sandbox's batch API: simulated jobs (the demo) sent to batch, offline and free of charge.

It answers every line as the sandbox answers the same call (router.providers.sandbox.SandboxProvider),
so a simulated job's batch lines and sync calls are alike but for their price. A batch must outlive the
process that created it (a worker creates it, beat's poll in another process reads it), so each batch
is kept as two small files in `root` (by default a folder in the system's temporary directory):
<id>.jsonl holds the lines, <id>.json the batch (tag, creation time, cancel time); a tag's batch id is
found by its own file under tags/. Results are read from the JSONL file line by line and answered as
they are read: the file is never held whole.

A batch ends `delay_s` after it was created (0: the first poll sees it ended). Cancelled before then,
it ends at once with every line canceled (the sandbox answers a batch's lines only when it ends).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from router.errors import ProviderStatusError
from router.providers.base import ChatRequest
from router.providers.batch_api import (
    CANCELED,
    ENDED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    BatchLimits,
    BatchLine,
    BatchState,
    LineResult,
)
from router.providers.batch_http import check_lines, encode, safe_id
from router.providers.sandbox import SandboxProvider

# The sandbox holds a batch to OpenAI's limits: the engine splits simulated work as it splits real work.
LIMITS = BatchLimits(max_lines=50_000, max_bytes=200 * 1024 * 1024, window_s=24 * 3600)
DEFAULT_ROOT = Path(tempfile.gettempdir()) / "pennyroute-sandbox-batches"


class SandboxBatchAPI:
    """A batch API that simulates every model; batches live as files under `root`."""

    simulated = True
    limits = LIMITS

    def __init__(
        self,
        *,
        name: str = "sandbox",
        qualities: dict[tuple[str, str], float] | None = None,
        root: Path | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self.name = name
        self.delay_s = delay_s
        self.root = root or DEFAULT_ROOT
        self._sandbox = SandboxProvider(name=name, qualities=qualities)

    def wire_line(self, line: BatchLine) -> dict[str, Any]:
        r = line.request
        return {
            "custom_id": line.custom_id,
            "model": r.model,
            "system": r.system,
            "prompt": r.prompt,
            "max_output_tokens": r.max_output_tokens,
            "thinking_tokens": r.thinking_tokens,
        }

    def line_bytes(self, line: BatchLine) -> int:
        return len(encode(self.wire_line(line))) + 1

    async def create(self, lines: Sequence[BatchLine], *, model: str, tag: str) -> BatchState:
        check_lines(lines, model=model)
        batch_id = f"sandbox_batch_{uuid.uuid4().hex}"
        (self.root / "tags").mkdir(parents=True, exist_ok=True)
        data = self.root / f"{batch_id}.jsonl"
        with data.open("wb") as out:
            for line in lines:
                out.write(encode(self.wire_line(line)) + b"\n")
        meta = {
            "id": batch_id,
            "tag": tag,
            "model": model,
            "total": len(lines),
            "created": time.time(),
            "cancelled": None,
        }
        self._write(batch_id, meta)
        self._tag_file(tag).write_text(batch_id)
        return self.state(meta, pending=True)

    async def get(self, batch_id: str) -> BatchState:
        return self.state(self._read(batch_id))

    async def cancel(self, batch_id: str) -> BatchState:
        meta = self._read(batch_id)
        if not self._ended(meta):
            meta["cancelled"] = time.time()
            self._write(batch_id, meta)
        return self.state(meta)

    async def find(self, tag: str) -> BatchState | None:
        path = self._tag_file(tag)
        if not path.exists():
            return None
        return await self.get(path.read_text().strip())

    async def results(self, batch_id: str) -> AsyncIterator[LineResult]:
        meta = self._read(batch_id)
        if not self._ended(meta):
            return
        with (self.root / f"{safe_id(batch_id)}.jsonl").open("rb") as lines:
            for raw in lines:
                line = json.loads(raw)
                if meta["cancelled"] is not None:
                    yield LineResult(
                        custom_id=line["custom_id"], outcome=CANCELED, error="canceled: the batch was cancelled"
                    )
                    continue
                request = ChatRequest(
                    model=line["model"],
                    system=line["system"],
                    prompt=line["prompt"],
                    max_output_tokens=line["max_output_tokens"],
                    thinking_tokens=line["thinking_tokens"],
                )
                done = await self._sandbox.complete(request)
                yield LineResult(custom_id=line["custom_id"], outcome=SUCCEEDED, completion=done, usage=done.usage)

    async def aclose(self) -> None:
        return None

    def state(self, meta: dict[str, Any], *, pending: bool = False) -> BatchState:
        ended = self._ended(meta) and not pending
        total = int(meta["total"])
        return BatchState(
            batch_id=str(meta["id"]),
            state=PENDING if pending else ENDED if ended else RUNNING,
            vendor_status="pending"
            if pending
            else ("cancelled" if meta["cancelled"] else "ended")
            if ended
            else "running",
            total=total,
            done=total if ended else 0,
            failed=total if ended and meta["cancelled"] else 0,
        )

    def _ended(self, meta: dict[str, Any]) -> bool:
        return meta["cancelled"] is not None or time.time() >= float(meta["created"]) + self.delay_s

    def _read(self, batch_id: str) -> dict[str, Any]:
        try:
            meta: dict[str, Any] = json.loads((self.root / f"{safe_id(batch_id)}.json").read_text())
        except FileNotFoundError as exc:  # as a vendor answers an unknown batch id
            raise ProviderStatusError(
                f"HTTP 404: no sandbox batch {batch_id!r}", provider=self.name, status_code=404
            ) from exc
        return meta

    def _write(self, batch_id: str, meta: dict[str, Any]) -> None:
        path = self.root / f"{safe_id(batch_id)}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(meta))
        temporary.replace(path)  # atomic: a poll in another process never reads half a file

    def _tag_file(self, tag: str) -> Path:
        return self.root / "tags" / hashlib.sha256(tag.encode()).hexdigest()

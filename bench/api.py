"""The HTTP API under load: job-status reads per second and their latency while a Celery worker runs a
large job, and the server's memory (RSS) while a large batch file is uploaded.

    python bench/api.py [--items 100000] [--upload-mb 200] [--seconds 20] [--readers 16] [--rate 500] [--latency-ms 200]

Runs `pennyroute serve` (one uvicorn process), one `celery -A workers.app worker` and the fake
provider, on Postgres and Redis on 127.0.0.1: a database of its own (pennyroute_api_bench,
recreated) and Redis database 14 (flushed). The job is submitted over HTTP (POST /jobs); while the
worker runs it, `--readers` threads read GET /jobs/{id} for `--seconds` twice: first paced at
`--rate` reads a second (500: the issue's target load), each read's latency counted from when it was
due (so a stall counts for every read it held back), then as fast as the server answers (its ceiling,
with the latency of the queue that builds). Then a batch file of
`--upload-mb` is sent to POST /v1/files while the server's RSS is sampled every 20 ms. Prints the
figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx

from bench.clients import fake_server, fresh_bench_state
from router.ledger import keys, repo
from router.ledger.db import session_scope, upgrade
from router.settings import Settings

PG_URL = os.environ.get("PENNYROUTE_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/pennyroute_api_bench")
BROKER_URL = os.environ.get("PENNYROUTE_BENCH_BROKER_URL", "redis://127.0.0.1:6379/14")
SECRET = "bench-secret-" + "0" * 32
FAKE_KEY = "sk-test-fake"  # what the fake provider accepts
TEXTS = ("I was charged twice on my invoice", "The app crashes with an error", "a question about hiring")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def wait_for(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def _reader_process(base: str, key: str, job_id: str, threads: int, seconds: float, rate: float, out: Any) -> None:
    """One reader process: `threads` threads reading the job's status until `seconds` have passed.

    With `rate` 0 each thread sends its next read when the last is answered (a closed loop: as many
    reads as the server can serve, latency including the queue this builds). With `rate` R (reads a
    second for this process) each thread sends on a fixed schedule, and a read's latency is counted
    from when it was due, not when it was sent: a server that stalls is charged for the reads it held
    back (no coordinated omission); so is a reader process the machine did not run on time, so the
    latency from the send is kept too (the server's own part). Puts (from due, from send, errors)."""
    latencies: list[tuple[float, float]] = []
    errors = [0]
    lock = threading.Lock()
    begin = time.monotonic()
    stop = begin + seconds
    interval = threads / rate if rate else 0.0

    def read(index: int) -> None:
        # http.client on a kept-alive connection: a client far lighter than the server it measures
        # (httpx costs the reader process about as much CPU per request as the server spends).
        mine: list[tuple[float, float]] = []
        bad = 0
        host, port = base.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        headers = {"Authorization": f"Bearer {key}"}
        due = begin + interval * index / threads  # threads spread evenly over one interval
        while True:
            if interval:
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                started = due
                due += interval
            else:
                started = time.monotonic()
            if started >= stop:
                break
            sent = time.monotonic() if interval else started
            connection.request("GET", f"/jobs/{job_id}", headers=headers)
            answer = connection.getresponse()
            answer.read()
            ended = time.monotonic()
            mine.append((ended - started, ended - sent))
            bad += answer.status != 200
        connection.close()
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    workers = [threading.Thread(target=read, args=(k,)) for k in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    out.put((latencies, errors[0]))


def status_reads(
    base: str, key: str, job_id: str, *, readers: int, processes: int, seconds: float, rate: float = 0.0
) -> tuple[int, list[float], int, list[float]]:
    """(reads, their latencies in s from when due, errors, their latencies from the send) of `readers` threads, spread over `processes` client
    processes (one Python process cannot send fast enough alone), reading the job's status: as fast
    as answered (`rate` 0), or `rate` reads a second between them, on schedule."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    per_process = max(1, readers // processes)
    procs = [
        context.Process(target=_reader_process, args=(base, key, job_id, per_process, seconds, rate / processes, out))
        for _ in range(processes)
    ]
    for proc in procs:
        proc.start()
    pairs: list[tuple[float, float]] = []
    errors = 0
    for _ in procs:
        found, bad = out.get()
        pairs.extend(found)
        errors += bad
    for proc in procs:
        proc.join()
    return len(pairs), [due for due, _ in pairs], errors, [sent for _, sent in pairs]


def _reads_line(
    what: str, reads: int, latencies: list[float], errors: int, from_send: list[float], seconds: float
) -> str:
    line = (
        f"  {what}: {reads / seconds:,.0f} reads/s, p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms, {errors} errors"
    )
    if latencies != from_send:
        line += (
            f"; from the send: p50 {percentile(from_send, 0.5) * 1000:.1f} ms, "
            f"p99 {percentile(from_send, 0.99) * 1000:.1f} ms"
        )
    return line


def write_batch_file(path: Path, megabytes: int) -> int:
    """An OpenAI batch file of about `megabytes` MB; returns its lines."""
    filler = "lorem ipsum dolor sit amet " * 30
    lines = 0
    with path.open("w") as handle:
        while handle.tell() < megabytes * 1_000_000:
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"{filler} {lines}"}]}
            line = {"custom_id": f"r{lines}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            handle.write(json.dumps(line) + "\n")
            lines += 1
    return lines


def tree_rss_kb(pid: int) -> int:
    """RSS of a process and its children (uvicorn's --workers processes), in kB."""
    total = rss_kb(pid)
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        total += tree_rss_kb(int(child))
    return total


def upload_rss(base: str, key: str, path: Path, server_pid: int) -> tuple[int, int, int, float]:
    """(RSS before, peak RSS during, RSS after, seconds) of the server while `path` is uploaded."""
    rss_kb = tree_rss_kb
    before = rss_kb(server_pid)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_kb(server_pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    with path.open("rb") as handle:
        answer = httpx.post(
            f"{base}/v1/files",
            headers={"Authorization": f"Bearer {key}"},
            files={"file": (path.name, handle)},
            data={"purpose": "batch"},
            timeout=600,
        )
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    answer.raise_for_status()
    return before, peak[0], rss_kb(server_pid), seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000, help="items in the job the worker runs")
    parser.add_argument("--upload-mb", type=int, default=200, help="size of the uploaded batch file")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the status readers read")
    parser.add_argument("--readers", type=int, default=16, help="threads reading the job's status")
    parser.add_argument(
        "--rate",
        type=float,
        default=500.0,
        help="reads a second of the paced run (latency counted from when each was due)",
    )
    parser.add_argument("--reader-processes", type=int, default=4, help="client processes the readers run in")
    parser.add_argument("--latency-ms", type=int, default=200, help="the fake provider's latency")
    parser.add_argument("--server-workers", type=int, default=2, help="`pennyroute serve --workers`")
    parser.add_argument(
        "--no-worker", action="store_true", help="read with no worker running (the server's own ceiling)"
    )
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)

    scratch = fresh_bench_state(PG_URL, BROKER_URL, "pennyroute-api-bench-")
    settings = Settings(database_url=PG_URL, server_secret=SECRET, _env_file=None)  # type: ignore[call-arg, arg-type]
    upgrade(settings)
    with session_scope(settings) as session:
        repo.ensure_team(session, tenant="bench", team="load")
        key, _ = keys.create_key(
            session, secret=settings.key_secret(), tenant="bench", team="load", scopes=list(keys.SCOPES)
        )
    procs: list[subprocess.Popen[bytes]] = []
    with fake_server(args.latency_ms, answer="sandbox") as (fake_url, _fake_pid):
        catalog = scratch / "catalog.toml"
        catalog.write_text(f'[providers.openai]\nbase_url = "{fake_url}/v1"\n')
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        env.update(
            DATABASE_URL=PG_URL, BROKER_URL=BROKER_URL, PENNYROUTE_CATALOG=str(catalog), PENNYROUTE_SANDBOX="off",
            OPENAI_API_KEY=FAKE_KEY, PENNYROUTE_SERVER_SECRET=SECRET, PYTHONPATH=str(ROOT),
        )  # fmt: skip
        logs = scratch / "logs"
        logs.mkdir()
        try:
            server = subprocess.Popen(
                [sys.executable, "-m", "router.cli.app", "serve", "--port", str(args.port), "--workers", str(args.server_workers)],
                cwd=ROOT, env=env, stdout=(logs / "server.log").open("wb"), stderr=subprocess.STDOUT,
            )  # fmt: skip
            procs.append(server)
            worker = None
            if not args.no_worker:
                worker = subprocess.Popen(
                    [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "--loglevel", "INFO",
                     "--without-gossip", "--without-mingle", "--without-heartbeat"],
                    cwd=ROOT, env=env, stdout=(logs / "worker.log").open("wb"), stderr=subprocess.STDOUT,
                )  # fmt: skip
                procs.append(worker)
            base = f"http://127.0.0.1:{args.port}"
            wait_for(f"{base}/openapi.json")
            deadline = time.monotonic() + 60
            while worker is not None and b"ready." not in (logs / "worker.log").read_bytes():
                assert time.monotonic() < deadline and worker.poll() is None, (logs / "worker.log").read_text()[-2000:]
                time.sleep(0.2)
            items = scratch / "items.jsonl"
            with items.open("w") as handle:
                for k in range(args.items):
                    handle.write(json.dumps({"id": f"i{k}", "text": f"{TEXTS[k % 3]} (case {k})"}) + "\n")
            started = time.perf_counter()
            with items.open("rb") as handle:
                created = httpx.post(
                    f"{base}/jobs",
                    headers={"Authorization": f"Bearer {key}"},
                    files={"file": ("items.jsonl", handle)},
                    data={"task": "classify", "labels": "billing,bug,other", "quality": "prior", "providers": "openai"},
                    timeout=600,
                )
            created.raise_for_status()
            job_id = created.json()["job_id"]
            submit_s = time.perf_counter() - started
            common = {"readers": args.readers, "processes": args.reader_processes, "seconds": args.seconds}
            paced = status_reads(base, key, job_id, rate=args.rate, **common)
            flat_out = status_reads(base, key, job_id, **common)
            state = httpx.get(f"{base}/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}).json()
            with tempfile.TemporaryDirectory() as folder:
                batch = Path(folder) / "batch.jsonl"
                lines = write_batch_file(batch, args.upload_mb)
                size_mb = batch.stat().st_size / 1e6
                before, peak, after, upload_s = upload_rss(base, key, batch, server.pid)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()

    print(f"job of {args.items:,} items submitted over HTTP in {submit_s:.1f} s (POST /jobs: upload, load, route)")
    print(
        f"while the worker ran it ({state['n_done']:,} done at the end of the reads, {args.latency_ms} ms provider latency):"
        if not args.no_worker
        else "with no worker running:"
    )
    print(
        f"  GET /jobs/{{id}} by {args.readers} readers in {args.reader_processes} processes, {args.seconds:g} s each, "
        f"server {args.server_workers} processes:"
    )
    print(_reads_line(f"paced at {args.rate:,.0f}/s (from when due)", *paced, args.seconds))
    print(_reads_line("as fast as answered (closed loop, from the send)", *flat_out, args.seconds))
    print(
        f"upload of a {size_mb:,.0f} MB batch file ({lines:,} lines) to POST /v1/files in {upload_s:.1f} s: server RSS "
        f"{before / 1024:,.0f} MB before, {peak / 1024:,.0f} MB at its peak, {after / 1024:,.0f} MB after "
        f"(+{(peak - before) / 1024:,.0f} MB)"
    )


if __name__ == "__main__":
    main()

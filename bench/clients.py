"""Calls per second of each HTTP client setup against the local fake server.

    python bench/clients.py [--calls 3000] [--max-s 5] [--uvloop]

Starts `python -m tests.fakes.server` in a subprocess (once per latency), then for each setup makes
OpenAI chat completions with a fixed number in flight and prints a table. Every run is bounded:
at most --calls calls or --max-s seconds, whichever comes first. The columns "client CPU" and
"server CPU" say which side was the bottleneck (100% = one core busy all along).

Setups:
    httpx          one plain httpx.AsyncClient
    httpx-pool     ClientPool of 10 plain httpx clients (connections shared out between them)
    aiohttp        httpx over httpx_aiohttp's aiohttp transport (router's default backend)
    aiohttp-raw    aiohttp alone, no httpx (the reference: same body, same parsing)
    httpx2         pydantic's httpx fork (installed with genai-prices), plain; for comparison only
    httpx2-aiohttp httpx2 over httpx_aiohttp.httpx2's aiohttp transport; for comparison only

The httpx2 rows drive OpenAIProvider with an httpx2 client: the success path is the same duck-typed
`post`, but router's error mapping knows only httpx's exceptions, so they are not production setups.

`bare_loop_rate` is the figure bench/throughput.py compares the whole pipeline against.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import itertools
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import redis

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from router.providers.base import ChatRequest, Completion  # noqa: E402
from router.providers.http import ClientPool, build_client  # noqa: E402
from router.providers.openai import OpenAIProvider, parse_completion, request_body  # noqa: E402

SETUPS = ("httpx", "httpx-pool", "aiohttp", "aiohttp-raw", "httpx2", "httpx2-aiohttp")
# The figures asked for: (server latency ms, calls in flight).
CASES = ((0, 50), (0, 200), (500, 200))
# ClientPool size for the "several httpx clients" option.
POOL_CLIENTS = 10
# Generous: the fake answers in milliseconds; a call reaching this has hung, and the run shows it.
TIMEOUT_S = 30.0
# A short classification-style request, like the calls pennyroute makes by the million.
REQUEST = ChatRequest(
    model="bench-model",
    system="Classify the ticket. Answer with one letter: A) billing B) bug C) account",
    prompt="I was charged twice for my subscription this month, please refund one of the payments.",
    max_output_tokens=8,
)

CallFn = Callable[[], Awaitable[Any]]


async def bare_loop_rate(
    base_url: str,
    *,
    n_calls: int,
    in_flight: int,
    backend: str,
    max_s: float = 5.0,
    requests: Sequence[ChatRequest] | None = None,
) -> float:
    """Calls/s of a bare asyncio loop making OpenAI chat completions against `base_url`.

    `base_url` is the fake server's root (as `start_in_thread`/`serve` give it, without /v1);
    `backend` is one of SETUPS ("aiohttp" is the router's default and the fastest httpx setup).
    `requests` are sent in turn (default: one short fixed request), so a caller can make the same
    calls its pipeline makes. Stops after `n_calls` calls or `max_s` seconds, whichever comes
    first; one warm-up call per slot in flight opens the connections first and is not counted.
    """
    call, close = _make_setup(base_url, backend=backend, in_flight=in_flight, requests=requests)
    try:
        await asyncio.gather(*(call() for _ in range(in_flight)))  # warm-up: open every connection
        done, elapsed = await _drive(call, n_calls=n_calls, in_flight=in_flight, max_s=max_s)
    finally:
        await close()
    return done / elapsed


def _make_setup(
    base_url: str,
    *,
    backend: str,
    in_flight: int,
    requests: Sequence[ChatRequest] | None = None,
) -> tuple[CallFn, Callable[[], Awaitable[None]]]:
    """A call function and a close function for one setup; run inside the loop that will use them."""
    openai_url = base_url.rstrip("/") + "/v1"
    turn = itertools.cycle(requests or (REQUEST,))
    if backend == "aiohttp-raw":
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=in_flight),
            timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
        )
        url = openai_url + "/chat/completions"

        async def raw_call() -> Completion:
            request = next(turn)
            async with session.post(url, json=request_body(request)) as response:
                response.raise_for_status()
                return parse_completion(await response.json(), request)

        return raw_call, session.close
    client: Any
    if backend == "httpx-pool":
        client = ClientPool.build(
            k=POOL_CLIENTS, base_url=openai_url, headers={}, timeout_s=TIMEOUT_S, max_connections=in_flight
        )
    elif backend in ("httpx", "aiohttp"):
        client = build_client(
            base_url=openai_url,
            headers={},
            timeout_s=TIMEOUT_S,
            max_connections=in_flight,
            backend=backend,  # type: ignore[arg-type]
        )
    elif backend in ("httpx2", "httpx2-aiohttp"):
        client = _httpx2_client(openai_url, in_flight=in_flight, aiohttp_transport=backend == "httpx2-aiohttp")
    else:
        raise ValueError(f"unknown setup {backend!r}; expected one of {SETUPS}")
    provider = OpenAIProvider(name="bench", client=client, api_key="bench-key")
    return (lambda: provider.complete(next(turn))), provider.aclose


def _httpx2_client(base_url: str, *, in_flight: int, aiohttp_transport: bool) -> Any:
    """An httpx2 client with the same limits as build_client's (comparison only, see the docstring)."""
    import httpx2  # an optional package, installed only to compare clients (see the docstring)

    limits = httpx2.Limits(max_connections=in_flight, max_keepalive_connections=in_flight, keepalive_expiry=30)
    if aiohttp_transport:
        from httpx_aiohttp.httpx2 import Httpx2AiohttpClient

        return Httpx2AiohttpClient(base_url=base_url, limits=limits, timeout=TIMEOUT_S)
    return httpx2.AsyncClient(base_url=base_url, limits=limits, timeout=TIMEOUT_S)


async def _drive(call: CallFn, *, n_calls: int, in_flight: int, max_s: float) -> tuple[int, float]:
    """Keep `in_flight` calls going until `n_calls` started or `max_s` passed; (calls done, seconds)."""
    started = time.perf_counter()
    deadline = started + max_s
    remaining = n_calls
    done = 0

    async def worker() -> None:
        nonlocal remaining, done
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            await call()
            done += 1

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return done, time.perf_counter() - started


@contextmanager
def fake_server(
    latency_ms: int, *, uvloop: bool = False, answer: str = "echo", faults: dict[str, Any] | None = None
) -> Iterator[tuple[str, int]]:
    """Run `python -m tests.fakes.server` on a free port (with a fault mix, if given); yields (base URL, pid)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [
        sys.executable,
        "-m",
        "tests.fakes.server",
        "--port",
        "0",
        "--latency-ms",
        str(latency_ms),
        "--answer",
        answer,
    ]
    if faults is not None:
        command += ["--faults", json.dumps(faults)]
    if uvloop:
        command.append("--uvloop")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # "listening on http://127.0.0.1:PORT"
        if not line.startswith("listening on "):
            raise RuntimeError(f"fake server did not start: {line!r}")
        yield line.split()[-1], process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)


def fresh_bench_state(pg_url: str, broker_url: str, prefix: str) -> Path:
    """Recreate the bench's own database, flush its Redis database, and make a scratch directory."""
    base, name = pg_url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    redis.Redis.from_url(broker_url).flushdb()
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"{prefix}-{uuid.uuid4().hex[:6]}"
    tmp.mkdir(parents=True)
    return tmp


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by process `pid` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    base_url: str, server_pid: int, *, setup: str, in_flight: int, n_calls: int, max_s: float, uvloop: bool
) -> tuple[float, float, float]:
    """(calls/s, client CPU share, server CPU share) of one bounded run in a fresh loop."""
    server_cpu, client_cpu, wall = cpu_s(server_pid), time.process_time(), time.perf_counter()
    coro = bare_loop_rate(base_url, n_calls=n_calls, in_flight=in_flight, backend=setup, max_s=max_s)
    if uvloop:
        # Not a project dependency: imported by name only when asked for, to measure with it.
        rate = importlib.import_module("uvloop").run(coro)
    else:
        rate = asyncio.run(coro)
    wall = time.perf_counter() - wall
    return rate, (time.process_time() - client_cpu) / wall, (cpu_s(server_pid) - server_cpu) / wall


def main(argv: list[str] | None = None) -> None:
    """Print the table: one row per setup, one column per (latency, in flight) case."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # 3,000 calls or 5 s per run: a few seconds at the fast setups' rates, so a whole table takes
    # about a minute and a half and every run is bounded even for the slowest setup.
    parser.add_argument("--calls", type=int, default=3000, help="most calls per run")
    parser.add_argument("--max-s", type=float, default=5.0, help="most seconds per run")
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--uvloop", action="store_true", help="run client and server on uvloop (if installed)")
    args = parser.parse_args(argv)
    setups = args.setups.split(",")
    results: dict[tuple[str, int, int], tuple[float, float, float]] = {}
    for latency_ms in sorted({latency for latency, _ in CASES}):
        with fake_server(latency_ms, uvloop=args.uvloop) as (url, pid):
            for setup in setups:
                for case_latency, in_flight in CASES:
                    if case_latency == latency_ms:
                        results[setup, latency_ms, in_flight] = measure(
                            url,
                            pid,
                            setup=setup,
                            in_flight=in_flight,
                            n_calls=args.calls,
                            max_s=args.max_s,
                            uvloop=args.uvloop,
                        )
    loop = "uvloop" if args.uvloop else "asyncio"
    print(
        f"calls/s (client CPU, server CPU); loop: {loop}; {os.cpu_count()} cores; bound: {args.calls} calls or {args.max_s} s"
    )
    header = "".join(f"{f'{lat} ms, {n} in flight':>28}" for lat, n in CASES)
    print(f"{'setup':<16}{header}")
    for setup in setups:
        cells = "".join(
            f"{rate:>10,.0f} ({client:4.0%}, {server:4.0%})"
            for rate, client, server in (results[setup, lat, n] for lat, n in CASES)
        )
        print(f"{setup:<16}{cells}")


if __name__ == "__main__":
    main()

"""Monthly report speed on a month of 10,000,000 calls: rollups versus summing the call rows.

    python bench/report.py [--calls 10000000] [--month 2026-10] [--html report.html]

Needs Postgres on 127.0.0.1 (as `bash .ci/run` ensures). It uses a database of its own
(pennyroute_report_bench, dropped and recreated). It writes synthetic call rows with SQL
generate_series (4 tenants in 4 time zones, 50 teams, 20 models, 500 jobs, spread over the month in
each tenant's local time), builds their daily rollups, times `monthly_report` by team, model and day,
times the same sums taken straight from the call rows, and checks that both agree to the last digit.
Prints the figures; exits non-zero if the sums differ.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from router.ledger.db import session_scope, upgrade  # noqa: E402
from router.reports.monthly import Report, ReportRow, monthly_report, parse_month  # noqa: E402
from router.reports.render import render_html  # noqa: E402
from router.settings import Settings  # noqa: E402

PG_URL = os.environ.get(
    "PENNYROUTE_REPORT_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/pennyroute_report_bench"
)
TENANTS = (
    ("bench-utc", "UTC"),
    ("bench-new-york", "America/New_York"),
    ("bench-berlin", "Europe/Berlin"),
    ("bench-tokyo", "Asia/Tokyo"),
)
TEAMS, MODELS, JOBS = 50, 20, 500
PROVIDERS = ("openai", "anthropic", "mistral", "google", "local")
# One INSERT per million rows: each is a few seconds, so progress shows and no statement runs for minutes.
CHUNK = 1_000_000
T = TypeVar("T")


def recreate(url: str) -> None:
    base, name = url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def setup(conn: psycopg.Connection[Any], first: date) -> None:
    """Tenants, teams, models (a helper table) and jobs with their baseline model's rates."""
    for name, zone in TENANTS:
        conn.execute("INSERT INTO tenant (name, timezone) VALUES (%s, %s)", (name, zone))
    conn.execute(f"""INSERT INTO team (tenant_id, name)
        SELECT t.id, 'team-' || lpad(n::text, 2, '0') FROM generate_series(0, {TEAMS - 1}) n
        JOIN tenant t ON t.name = (ARRAY{[name for name, _ in TENANTS]})[n % {len(TENANTS)} + 1]""")
    # Rates have at most 4 decimal places, so every per-call cost fits NUMERIC(20,10) exactly.
    conn.execute(
        "CREATE TABLE bench_model (idx int PRIMARY KEY, model_id text, provider text, "
        "input_rate numeric(20,10), output_rate numeric(20,10))"
    )
    conn.execute(f"""INSERT INTO bench_model
        SELECT i, (ARRAY{list(PROVIDERS)})[i % {len(PROVIDERS)} + 1] || '-model-' || lpad(i::text, 2, '0'),
               (ARRAY{list(PROVIDERS)})[i % {len(PROVIDERS)} + 1], 0.05 + i * 0.15, (0.05 + i * 0.15) * 4
        FROM generate_series(0, {MODELS - 1}) i""")
    conn.execute(f"""INSERT INTO job (id, tenant_id, team_id, task, min_quality, constraints, status, model_id,
            baseline_model_id, simulated, n_items, n_done, n_failed, n_rejected, total_input_tokens, max_input_tokens,
            baseline_input_usd_per_mtok, baseline_output_usd_per_mtok, created_at)
        SELECT 'job-' || lpad(j::text, 3, '0'), tm.tenant_id, tm.id,
               CASE WHEN j % 2 = 0 THEN 'classify' ELSE 'summarize' END, 0.9, '{{}}', 'done', m.model_id,
               b.model_id, false, 0, 0, 0, 0, 0, 0, b.input_rate, b.output_rate, date '{first.isoformat()}'
        FROM generate_series(0, {JOBS - 1}) j
        JOIN team tm ON tm.name = 'team-' || lpad((j % {TEAMS})::text, 2, '0')
        JOIN bench_model m ON m.idx = j % {MODELS}
        JOIN bench_model b ON b.idx = greatest(j % {MODELS}, {MODELS - 1} - j % 5)""")


def fill_calls(conn: psycopg.Connection[Any], first: date, days: int, calls: int) -> None:
    """`calls` call rows. Call g belongs to job g % 500 and starts at a pseudo-random second of the
    month in its tenant's local time; 1 in 53 is a calibration call on another model, 1 in 97 fails."""
    for lo in range(1, calls + 1, CHUNK):
        hi = min(lo + CHUNK - 1, calls)
        start = time.perf_counter()
        conn.execute(f"""INSERT INTO call (id, job_id, item_id, tenant_id, team_id, model_id, provider, purpose, status,
                simulated, input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, usage_estimated,
                input_usd_per_mtok, cached_input_usd_per_mtok, cache_write_usd_per_mtok, output_usd_per_mtok,
                cost_usd, latency_ms, started_at, finished_at)
            SELECT 'c' || g, j.id, g, j.tenant_id, j.team_id, m.model_id, m.provider, x.purpose, x.status,
                false, x.input_tokens, x.cached, 0, x.output_tokens, false,
                m.input_rate, m.input_rate / 10, 0, m.output_rate,
                (x.input_tokens * m.input_rate + x.cached * m.input_rate / 10 + x.output_tokens * m.output_rate) / 1000000,
                800, x.started_at, x.started_at + interval '800 milliseconds'
            FROM generate_series({lo}::bigint, {hi}::bigint) g
            JOIN job j ON j.id = 'job-' || lpad((g % {JOBS})::text, 3, '0')
            JOIN tenant t ON t.id = j.tenant_id
            CROSS JOIN LATERAL (SELECT
                CASE WHEN g % 53 = 0 THEN 'calibration' ELSE 'run' END AS purpose,
                CASE WHEN g % 97 = 0 THEN 'error' ELSE 'ok' END AS status,
                200 + (g * 7919) % 1800 AS input_tokens,
                CASE WHEN g % 3 = 0 THEN (g * 31) % 200 ELSE 0 END AS cached,
                CASE WHEN g % 97 = 0 THEN 0 ELSE 5 + (g * 104729) % 300 END AS output_tokens,
                (timestamp '{first.isoformat()}' + ((g * 2654435761) % {days * 86400}) * interval '1 second')
                    AT TIME ZONE t.timezone AS started_at) x
            JOIN bench_model m ON m.idx = CASE WHEN g % 53 = 0 THEN ((g % {JOBS}) % {MODELS} + 1 + (g / 53) % 3) % {MODELS}
                                              ELSE (g % {JOBS}) % {MODELS} END""")
        print(f"  calls {hi:>11,} of {calls:,}  ({time.perf_counter() - start:.1f} s)", flush=True)


# The engine upserts, per chunk, the sums of that chunk's calls under the key (tenant, team, job,
# model, purpose, local day), adding to what is there. NUMERIC addition is exact and associative,
# so one GROUP BY over every call row under the same key yields the very same rows. Failed means no
# usable answer (status not ok); the baseline is the call's tokens at its job's baseline rates, for
# run calls (calibration spend has no baseline to save against).
ROLLUP_SQL = """INSERT INTO call_rollup (tenant_id, team_id, job_id, model_id, purpose, day, provider, task, calls,
        failed_calls, simulated_calls, input_tokens, cached_input_tokens, output_tokens, cost_usd, failed_cost_usd, baseline_cost_usd)
    SELECT c.tenant_id, c.team_id, c.job_id, c.model_id, c.purpose, (c.started_at AT TIME ZONE t.timezone)::date,
        c.provider, j.task, count(*), count(*) FILTER (WHERE c.status <> 'ok'), count(*) FILTER (WHERE c.simulated),
        sum(c.input_tokens),
        sum(c.cached_input_tokens), sum(c.output_tokens), sum(c.cost_usd),
        coalesce(sum(c.cost_usd) FILTER (WHERE c.status <> 'ok'), 0),
        coalesce(sum(((c.input_tokens + c.cached_input_tokens) * j.baseline_input_usd_per_mtok
                      + c.output_tokens * j.baseline_output_usd_per_mtok) / 1000000) FILTER (WHERE c.purpose = 'run'), 0)
    FROM call c JOIN job j ON j.id = c.job_id JOIN tenant t ON t.id = c.tenant_id
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8"""

BUDGETS_SQL = """INSERT INTO budget_period (team_id, period_start, limit_amount, currency, settled, reserved)
    SELECT team_id, %(first)s, ceil(sum(cost_usd) * (1.05 + mod(team_id, 6) * 0.15)), 'USD', sum(cost_usd),
           least(ceil(sum(cost_usd) * (1.05 + mod(team_id, 6) * 0.15)) - sum(cost_usd), mod(team_id, 4) * 25)
    FROM call_rollup GROUP BY team_id"""


def direct(conn: psycopg.Connection[Any], key: str, first: date, last: date) -> dict[str, tuple[Any, ...]]:
    """The report's sums taken straight from the call rows of the month (local days), grouped by `key`."""
    rows = conn.execute(
        f"""SELECT {key}::text, count(*), count(*) FILTER (WHERE c.status <> 'ok'), sum(c.input_tokens),
            sum(c.cached_input_tokens), sum(c.output_tokens), sum(c.cost_usd),
            coalesce(sum(c.cost_usd) FILTER (WHERE c.status <> 'ok'), 0),
            coalesce(sum(c.cost_usd) FILTER (WHERE c.purpose = 'calibration'), 0),
            coalesce(sum(((c.input_tokens + c.cached_input_tokens) * j.baseline_input_usd_per_mtok
                          + c.output_tokens * j.baseline_output_usd_per_mtok) / 1000000) FILTER (WHERE c.purpose = 'run'), 0)
        FROM call c JOIN job j ON j.id = c.job_id JOIN tenant t ON t.id = c.tenant_id JOIN team tm ON tm.id = c.team_id
        WHERE (c.started_at AT TIME ZONE t.timezone)::date BETWEEN %s AND %s
        GROUP BY 1""",
        (first, last),
    ).fetchall()
    return {row[0]: tuple(int(v) if i < 5 else Decimal(v) for i, v in enumerate(row[1:])) for row in rows}


def as_tuple(row: ReportRow) -> tuple[Any, ...]:
    return (
        row.calls,
        row.failed_calls,
        row.input_tokens,
        row.cached_input_tokens,
        row.output_tokens,
        row.spend_usd,
        row.failed_spend_usd,
        row.calibration_spend_usd,
        row.baseline_usd,
    )


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=10_000_000)
    parser.add_argument("--month", default="2026-10")
    parser.add_argument("--html", type=Path, help="also write the by-team report page here")
    args = parser.parse_args()
    first, last = parse_month(args.month)
    days = (last - first).days + 1
    settings = Settings(database_url=PG_URL, _env_file=None)  # type: ignore[call-arg]
    began = time.perf_counter()

    print(f"database {PG_URL}: recreating and migrating")
    recreate(PG_URL)
    upgrade(settings)
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")  # a bench database: losing the last commit on a crash is fine
        setup(conn, first)
        print(
            f"filling {args.month} with {args.calls:,} calls ({len(TENANTS)} tenants, {TEAMS} teams, {MODELS} models, {JOBS} jobs)"
        )
        _, fill_s = timed(lambda: fill_calls(conn, first, days, args.calls))
        _, rollup_s = timed(lambda: conn.execute(ROLLUP_SQL))
        conn.execute(BUDGETS_SQL, {"first": first})
        conn.execute("ANALYZE")
        rollup_rows = conn.execute("SELECT count(*) FROM call_rollup").fetchone()
        size = conn.execute(
            "SELECT pg_size_pretty(pg_total_relation_size('call')), "
            "pg_size_pretty(pg_total_relation_size('call_rollup'))"
        ).fetchone()
        print(
            f"  {args.calls:,} calls in {fill_s:.1f} s; {rollup_rows[0] if rollup_rows else 0:,} rollup rows in {rollup_s:.1f} s; "
            f"sizes: call {size[0] if size else '?'}, call_rollup {size[1] if size else '?'}"
        )

        print("\nmonthly_report (reads call_rollup), all tenants; first run, then median of 5")
        reports: dict[str, Report] = {}
        for by in ("team", "model", "day"):
            runs = []
            for _ in range(6):
                with session_scope(settings) as session:
                    report, seconds = timed(
                        lambda by=by, session=session: monthly_report(session, month=args.month, by=by)
                    )
                runs.append(seconds)
            reports[by] = report
            print(
                f"  by {by:<6} {len(report.rows):>4} rows   first {runs[0] * 1000:8.1f} ms   median {statistics.median(runs[1:]) * 1000:8.1f} ms"
            )

        print("\nthe same sums straight from the call rows (SUM over every call of the month)")
        keys = {
            "team": "t.name || '/' || tm.name",
            "model": "c.model_id",
            "day": "(c.started_at AT TIME ZONE t.timezone)::date",
        }
        ok = True
        for by, key in keys.items():
            found, seconds = timed(lambda key=key: direct(conn, key, first, last))
            want = {r.key: as_tuple(r) for r in reports[by].rows}
            same = found == want
            ok &= same
            print(
                f"  by {by:<6} {len(found):>4} rows   {seconds * 1000:8.1f} ms   equal to the report: {'yes' if same else 'NO'}"
            )
        totals = reports["team"].totals
        direct_total = tuple(sum(col) for col in zip(*direct(conn, "1", first, last).values(), strict=True))
        same = direct_total == as_tuple(totals)
        ok &= same
        print(
            f"\ntotals: {totals.calls:,} calls, {totals.failed_calls:,} failed, spend ${totals.spend_usd}, "
            f"baseline ${totals.baseline_usd}, saved ${totals.savings_usd}; equal to the call rows' sums: {'yes' if same else 'NO'}"
        )
    if args.html:
        args.html.write_text(render_html(reports["team"]))
        print(f"wrote {args.html}")
    print(f"\ntotal bench time {time.perf_counter() - began:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

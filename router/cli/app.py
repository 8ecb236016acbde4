"""The `pennyroute` command line."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
import uvicorn
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from sqlmodel import Session

from router.api.app import create_app
from router.api.app import log_config as api_log_config
from router.catalog import Catalog, load_catalog
from router.cli import data, ends, outputs, views
from router.cli.demo import DEMO_LABELS, write_demo_tickets
from router.engine import runtime
from router.errors import NoModelError, PennyrouteError
from router.jobs import lifecycle
from router.jobs.calibrate import calibrate_job
from router.jobs.estimates import is_fresh
from router.jobs.intake import DEFAULT_CALIBRATION_BUDGET, JobRequest, bar_for, parse_soft_percent
from router.jobs.results import batches_unpolled, job_quality, job_state, result_records
from router.jobs.submit import Submitted, submit_job
from router.ledger import budgets, keys, repo
from router.ledger.db import current_revision, ensure_schema, session_scope, upgrade
from router.ledger.tables import BudgetPeriod, JobStatus, utcnow
from router.providers import openai_usage
from router.redact import RedactingFilter, configured_secrets, printable
from router.reports import reconcile as reconciling
from router.reports import render as report_render
from router.reports.monthly import monthly_report
from router.reports.monthly import parse_month as month_days
from router.settings import Settings, get_settings

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Route batch LLM work to the cheapest model that meets your bar; ledger every cent.",
)
db_app = typer.Typer(no_args_is_help=True, help="The ledger database.")
tenant_app = typer.Typer(no_args_is_help=True, help="Tenants (organisations).")
team_app = typer.Typer(no_args_is_help=True, help="Teams within a tenant.")
app.add_typer(db_app, name="db")
app.add_typer(tenant_app, name="tenant")
app.add_typer(team_app, name="team")
budget_app = typer.Typer(
    no_args_is_help=True, help="Team budgets: monthly limits that concurrent workers cannot overrun."
)
jobs_app = typer.Typer(no_args_is_help=True, help="Jobs: list, resume, cancel.")
app.add_typer(budget_app, name="budget")
app.add_typer(jobs_app, name="jobs")
keys_app = typer.Typer(no_args_is_help=True, help="Tenant API keys for the HTTP API (`pennyroute serve`).")
app.add_typer(keys_app, name="keys")

out = views.console()
err = views.error_console()
# How often --wait reads progress from the ledger.
POLL_S = 0.5


class State:
    catalog_path: Path | None = None


@app.callback()
def _root(
    catalog: Annotated[
        Path | None, typer.Option("--catalog", help="A TOML catalog extending the default (PENNYROUTE_CATALOG).")
    ] = None,
) -> None:
    State.catalog_path = catalog
    out.quiet = False  # each command decides (--quiet, --json)
    redact_logs()


def redact_logs() -> None:
    """Warnings to stderr, with configured API keys (and key-shaped text) redacted from every line."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        secrets = configured_secrets(get_settings())
    except PennyrouteError:
        secrets = frozenset()  # a bad setting is reported by the command itself
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter(secrets))


def _settings() -> Settings:
    try:
        settings = get_settings()
    except PennyrouteError as exc:  # a bad setting: named, with what it accepts (exit 2), never a traceback
        raise _fail(exc) from None
    if State.catalog_path is not None:
        settings = settings.model_copy(update={"catalog": State.catalog_path})
    return settings


@contextmanager
def _ledger() -> Iterator[Session]:
    """A ledger session for a command: schema checked, committed on success, errors shown plainly."""
    settings = _settings()
    try:
        ensure_schema(settings)
        with session_scope(settings) as session:
            yield session
    except PennyrouteError as exc:
        raise _fail(exc) from None


def _catalog(settings: Settings) -> Catalog:
    return load_catalog(settings.catalog, replace_default=settings.catalog_replace)


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[bold red]error:[/] {exc}")
    return typer.Exit(code=2)


def _split(value: str | None) -> frozenset[str] | None:
    if not value:
        return None
    return frozenset(v.strip() for v in value.split(",") if v.strip()) or None


# -- models ----------------------------------------------------------------------------------------


@app.command()
def models(
    task: Annotated[str | None, typer.Option(help="Show the quality prior for this task only.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List the catalog's models with prices, context windows, regions and quality priors."""
    try:
        settings = _settings()
        if json_out:
            data.emit(data.models(_catalog(settings)))
            return
        out.print(views.models_table(_catalog(settings), task=task))
    except PennyrouteError as exc:
        raise _fail(exc) from None


# -- submit / status / results ---------------------------------------------------------------------


@app.command()
def submit(
    file: Annotated[
        Path,
        typer.Argument(
            help='JSONL, one item a line: {"id": ..., "text": ..., "gold": optional}, or for --task chat '
            '{"id": ..., "messages": [...], "max_tokens": optional}; - reads stdin.'
        ),
    ],
    task: Annotated[str, typer.Option(help="classify, summarize, or chat (each item's conversation sent as given).")],
    team: Annotated[str, typer.Option(help="The team the job is billed to.")],
    min_quality: Annotated[
        float | None, typer.Option(help="Quality bar in 0..1 (0.9 = 90% accuracy); default 0.9, chat: none (0).")
    ] = None,
    labels: Annotated[str | None, typer.Option(help="classify: comma-separated labels.")] = None,
    max_words: Annotated[int | None, typer.Option(help="summarize: target length in words.")] = None,
    max_output_tokens: Annotated[
        int | None, typer.Option(help="chat: the most output tokens an item may ask for (default 4096).")
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="The team's tenant, when the team name is not unique.")] = None,
    region: Annotated[str | None, typer.Option(help="Allowed model regions, e.g. eu or eu,local.")] = None,
    providers: Annotated[str | None, typer.Option(help="Allowed providers, comma-separated.")] = None,
    models: Annotated[str | None, typer.Option("--models", help="Allowed models, comma-separated.")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the job with a progress bar.")] = False,
    on_budget: Annotated[
        str, typer.Option(help="When the team's budget cannot take the job: reject, downgrade or pause.")
    ] = "reject",
    quality: Annotated[
        str,
        typer.Option(
            help="Quality estimates from: auto (calibrate on gold labels if the file has them, "
            "else stored estimates), gold, reference (the strongest model's answers on a "
            "sample), or prior."
        ),
    ] = "auto",
    calibration_budget: Annotated[
        str,
        typer.Option(
            help="Most calibration may spend: a share of answering the whole job with the baseline model "
            "(20%) or USD (5). It stops sooner when a further test would not pay for itself."
        ),
    ] = DEFAULT_CALIBRATION_BUDGET,
    run_labelled: Annotated[
        bool,
        typer.Option(help="Also send labelled items to the route (by default their label is their answer)."),
    ] = False,
    if_unproven: Annotated[
        str,
        typer.Option(
            help="When calibration proves no route: stop (default), or best: run the best-measured route, "
            "marking the job and its results unproven."
        ),
    ] = "stop",
    quiet: Annotated[
        bool, typer.Option(help="Print the job id alone on stdout (the rest on stderr or nowhere).")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the job's state as JSON at the end.")] = False,
    judge: Annotated[
        str | None,
        typer.Option(
            help="summarize: the model that judges summaries in calibration (default: the strongest eligible)."
        ),
    ] = None,
    deadline: Annotated[
        str | None,
        typer.Option(
            help="By when the results are wanted: 2h, 24h, 3d, or an ISO date or time. A deadline that "
            "leaves room sends the bulk to the providers' batch APIs (about half price, within 24 h)."
        ),
    ] = None,
    mode: Annotated[
        str,
        typer.Option(
            help="auto (the deadline decides), sync (calls now, standard price) or batch (the providers' "
            "batch APIs, whatever the deadline)."
        ),
    ] = "auto",
) -> None:
    """Submit a batch job. Prints the job id, the routing decision, and rejected lines."""
    settings = _settings()
    out.quiet = quiet or json_out  # stdout carries the job id alone, or the JSON alone
    spooled = _spool_stdin() if str(file) == "-" else None
    request = JobRequest(
        path=spooled or file,
        team=team,
        tenant=tenant,
        task=task,
        min_quality=bar_for(task, min_quality),
        labels=tuple(v.strip() for v in labels.split(",")) if labels else (),
        max_words=max_words,
        max_output_tokens=max_output_tokens,
        regions=_split(region),
        providers=_split(providers),
        models=_split(models),
        on_budget=on_budget,
        quality=quality,
        calibration_budget=calibration_budget,
        run_labelled=run_labelled,
        if_unproven=if_unproven,
        judge=judge,
        deadline=deadline,
        mode=mode,
    )
    try:
        _submit_and_run(settings, request, wait=wait, quiet=quiet, json_out=json_out)
    finally:
        if spooled is not None:
            spooled.unlink(missing_ok=True)  # its items are in the ledger (or nothing was written)


def _spool_stdin() -> Path:
    """Standard input, copied to a temporary file a chunk at a time (never held whole in memory)."""
    with tempfile.NamedTemporaryFile(prefix="pennyroute-stdin-", suffix=".jsonl", delete=False) as handle:
        shutil.copyfileobj(sys.stdin.buffer, handle)
    return Path(handle.name)


def _submit_and_run(
    settings: Settings,
    request: JobRequest,
    *,
    wait: bool,
    quiet_decision: bool = False,
    exit_on_end: bool = True,
    quiet: bool = False,
    json_out: bool = False,
) -> Submitted:
    try:
        catalog = _catalog(settings)
        submitted = submit_job(settings, catalog, request)
    except NoModelError as exc:
        out.print(views.decision_table(exc.decision, _catalog(settings), simulated=settings.sandbox_active))
        raise _fail(exc) from None
    except PennyrouteError as exc:
        raise _fail(exc) from None
    if submitted.simulated:
        out.print(views.SIMULATED_BANNER)
    out.print(
        f"job [bold]{submitted.job_id}[/]: {submitted.n_items:,} items accepted, {submitted.n_rejected:,} lines rejected"
    )
    for line_error in submitted.rejected[:20]:
        err.print(f"  [yellow]rejected[/] {request.path}: {line_error}")
    if submitted.n_rejected > 20:
        err.print(f"  ... and {submitted.n_rejected - 20:,} more (`pennyroute status {submitted.job_id}` lists them)")
    if submitted.calibrating:
        eligible = [v.model_id for v in submitted.decision.verdicts if v.meets_constraints]
        out.print(
            f"[bold]calibrating[/]: {len(eligible)} eligible models ({', '.join(eligible)}); those worth testing "
            "answer the job's labelled items first, while a test can save more than it costs (budget "
            f"{request.calibration_budget}); the route is chosen on what they score, never on priors"
        )
    else:
        if not quiet_decision:
            out.print(views.decision_table(submitted.decision, catalog, simulated=submitted.simulated))
        out.print(submitted.decision.summary)
    asked = request.deadline is not None or request.mode != "auto"
    if submitted.execution is not None and (asked or submitted.execution.bulk == "batch"):
        out.print(views.execution_line(submitted.execution, calibrating=submitted.calibrating))
    if quiet:
        sys.stdout.write(submitted.job_id + "\n")
        sys.stdout.flush()
    _start(settings, catalog, submitted.job_id, wait=wait)
    out.print(f"next: pennyroute status {submitted.job_id} | pennyroute results {submitted.job_id} -o results.jsonl")
    ended = (settings.embedded or wait) and exit_on_end  # else the caller (the demo) says how it ended
    code = _end(settings, submitted.job_id, exit_now=False) if ended else 0
    if json_out:
        state = job_state(settings, submitted.job_id)
        data.emit(data.job(state.job, state.spent_usd))
    if code and exit_on_end:
        raise typer.Exit(code=code)
    return submitted


def _end(settings: Settings, job_id: str, *, exit_now: bool = True) -> int:
    """Say how the job ended (counts, and why it waits or stopped); exit with its code (router/cli/ends.py)."""
    with session_scope(settings) as session:
        job = repo.get_job(session, job_id)
    line, code = ends.outcome(job)
    out.print(line)
    if code and exit_now:
        raise typer.Exit(code=code)
    return code


def _start(settings: Settings, catalog: Catalog, job_id: str, *, wait: bool) -> None:
    """Start a committed job: in this process without a broker (drawing its progress), else on the workers."""
    dispatcher = lifecycle.dispatcher_for(settings, catalog, watcher=_Watcher(settings))
    if settings.embedded:
        out.print("[dim]no broker configured (BROKER_URL): running the job in this process (Ctrl-C pauses it)[/]")
        with _interruptible(settings, catalog, job_id):
            lifecycle.start(settings, job_id=job_id, dispatcher=dispatcher)
    else:
        try:
            sent = lifecycle.start(settings, job_id=job_id, dispatcher=dispatcher)
        except Exception as exc:  # the broker is down: the job is safe in the ledger
            raise _fail(
                PennyrouteError(
                    f"job {job_id} is saved, but the broker did not take it ({exc}). It runs once the broker is "
                    f"back: `pennyroute jobs resume {job_id}` sends it again, or, with "
                    "`celery -A workers.app beat` running, the sweeper sends a running job's pending items "
                    "again after PENNYROUTE_SWEEP_IDLE_S (a calibrating job needs `jobs resume`)"
                )
            ) from None
        what = f"{sent:,} chunks" if sent else "its calibration (then its chunks)"
        out.print(f"queued {what} for workers (`celery -A workers.app worker`)")
        if wait:
            _wait(settings, job_id)


@contextmanager
def _interruptible(settings: Settings, catalog: Catalog, job_id: str) -> Iterator[None]:
    """While a job runs in this process: a first Ctrl-C lets no new call start, lets the calls in
    flight finish and pauses the job (lifecycle.settle_interrupted, once the run returns); a second
    one charges the calls still in flight at their worst case, hands their items back, pauses the
    job and exits at once (code 3)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    runtime.reset_stop()

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if not runtime.stopping():
            runtime.stop_calls()
            err.print(
                f"[yellow]interrupted[/]: no new calls start; the {runtime.in_flight():,} calls in flight finish "
                f"and are recorded, then job {job_id} pauses (Ctrl-C again stops at once)"
            )
            return
        runtime.abort_calls()
        err.print("[yellow]stopping now[/]: calls still in flight are charged at their worst case")
        try:
            job = lifecycle.settle_interrupted(settings, catalog, job_id=job_id)
            line, _ = ends.outcome(job)
            err.print(line)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(ends.PAUSED)  # the chunk threads wait on the loop for ever: leave without them

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if runtime.stopping():
        with session_scope(settings) as session:
            status = repo.get_job(session, job_id).status
        if status == JobStatus.CALIBRATING:  # interrupted before its route was chosen
            err.print(
                f"[yellow]job {job_id} was interrupted while calibrating[/]: "
                f"`pennyroute jobs resume {job_id}` calibrates it again"
            )
            raise typer.Exit(code=ends.PAUSED)


class _Watcher:
    """Draws an in-process run: a spinner while calibrating, what it measured, then a progress bar."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def calibrating(self) -> AbstractContextManager[Any]:
        return out.status("calibrating: candidate models answer the sample...")

    def calibrated(self, job_id: str, summary: dict[str, Any]) -> None:
        out.print(views.calibration_table(summary))
        if summary.get("outcome") == "labelled":
            out.print(f"[bold]job {job_id}[/]: {summary.get('message')}")
            return
        if summary.get("outcome") == "unproven":
            out.print(
                f"[bold red]job {job_id}: no route is proven[/]; running the best-measured one (--if-unproven best)"
            )
        elif summary.get("outcome") != "chosen":
            out.print(f"[bold red]job {job_id} stopped before the bulk:[/] {summary.get('message')}")
            return
        with session_scope(self._settings) as session:
            job = repo.get_job(session, job_id)
        out.print(f"[bold]route[/]: {views.route_text(job)}")

    @contextmanager
    def running(self, *, total: int, finished: int) -> Iterator[Callable[[int], None]]:
        with _progress() as progress:
            bar = progress.add_task("items", total=total)
            progress.update(bar, completed=finished)
            yield lambda finished: progress.update(bar, completed=finished)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=out,
        transient=False,
    )


def _wait(settings: Settings, job_id: str) -> None:
    with _progress() as progress:
        bar = None
        while True:
            with session_scope(settings) as session:
                job = repo.get_job(session, job_id)
            if bar is None:
                bar = progress.add_task("items", total=job.n_items)
            progress.update(bar, completed=job.n_done + job.n_failed)
            if job.status not in (JobStatus.RUNNING, JobStatus.CALIBRATING):  # done, paused, cancelled, no model
                return
            time.sleep(POLL_S)


@app.command()
def status(
    job_id: Annotated[str, typer.Argument(help="The job id submit printed.")],
    wait: Annotated[bool, typer.Option(help="Wait for the job with a progress bar first.")] = False,
    quality: Annotated[
        bool,
        typer.Option(
            "--quality",
            help="Also show the job's quality report: bar, measured "
            "estimate, models and their share, escalations, drift, cost against the baseline.",
        ),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Counts, spend so far, and the model(s) a job runs on."""
    settings = _settings()
    out.quiet = json_out  # the progress of --wait, too: stdout carries the JSON alone
    try:
        ensure_schema(settings)
        if wait:
            _wait(settings, job_id)
        info = job_status(settings, job_id)
    except PennyrouteError as exc:
        raise _fail(exc) from None
    ended = wait and info["job"].status not in (JobStatus.RUNNING, JobStatus.CALIBRATING)
    if json_out:
        record = data.job(info["job"], info["spent"], batches_unpolled=info["batches_unpolled"])
        data.emit(record)
        if ended and record["exit_code"]:
            raise typer.Exit(code=record["exit_code"])
        return
    if info["simulated"]:
        out.print(views.SIMULATED_BANNER)
    out.print(views.status_table(info))
    if quality:
        report = job_quality(settings, job_id)
        out.print(views.quality_report(report.job, report.facts, report.events))
        if report.job.calibration and report.job.calibration.get("estimates"):
            out.print(views.calibration_table(report.job.calibration))
    for line_error in info["rejected"][:20]:
        out.print(
            f"  [yellow]rejected[/] line {line_error['line']}"
            + (f", field '{line_error['field']}'" if line_error["field"] else "")
            + f": {line_error['reason']}"
        )
    if ended:
        _end(settings, job_id)


def job_status(settings: Settings, job_id: str) -> dict[str, Any]:
    """A job's status as rows to show (also used by the demo)."""
    state = job_state(settings, job_id)
    job, spent, used, open_items = state.job, state.spent_usd, state.calls_by_model, state.open_items
    rows = [
        ("status", job.status),
        ("task", job.task + (f" ({', '.join(job.labels)})" if job.labels else "") + f", bar {job.min_quality:.2f}"),
        ("items", f"{job.n_items:,} accepted: {job.n_done:,} done, {job.n_failed:,} failed, {open_items:,} to go"),
        *(
            [("failed items", ", ".join(f"{n:,} {kind}" for kind, n in state.failures.items()))]
            if state.failures
            else []
        ),
        ("rejected lines", f"{job.n_rejected:,}"),
        ("route", views.route_text(job)),
        *([("calibration", verdict)] if (verdict := views.calibration_verdict(job)) else []),
        *([("paused", ends.pause_reason(job))] if job.status == JobStatus.PAUSED else []),
        ("calls", ", ".join(f"{m} {n:,}" for m, n in used) or "none yet"),
        ("spent so far", views.usd(spent, 6) + (" (simulated)" if job.simulated else "")),
        ("expected cost", views.usd(job.expected_cost_usd, 6)),
        (
            "baseline",
            f"{job.baseline_model_id}: {views.usd((job.decision or {}).get('baseline_cost_usd'), 6)} expected",
        ),
        *views.execution_rows(job, state.batches, state.levers),
    ]
    unpolled = batches_unpolled(settings, state)
    if unpolled:
        rows.append(("attention", f"[bold red]{unpolled}[/]"))
    return {
        "job_id": job_id,
        "simulated": job.simulated,
        "batches_unpolled": unpolled,
        "rows": rows,
        "rejected": job.rejected or [],
        "spent": spent,
        "job": job,
    }


@app.command()
def results(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write JSONL here (default: standard output).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite the -o file if it exists.")] = False,
) -> None:
    """Per item: output, model, tokens, cost, and the error if it failed (JSONL)."""
    settings = _settings()
    try:
        ensure_schema(settings)
        job_state(settings, job_id)  # an unknown job is an error before any file is written
        if output is None:
            _write_results(sys.stdout, settings, job_id)
            return
        with outputs.replacing(output, force=force, ledger=outputs.ledger_path(settings)) as handle:
            count = _write_results(handle, settings, job_id)
    except PennyrouteError as exc:
        raise _fail(exc) from None
    err.print(f"wrote {count:,} results to {output}")


def _write_results(handle: TextIO, settings: Settings, job_id: str) -> int:
    count = 0
    for record in result_records(settings, job_id):
        handle.write(json.dumps(record) + "\n")
        count += 1
    return count


# -- quality ---------------------------------------------------------------------------------------


@app.command("quality")
def quality_cmd(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's estimates.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List measured quality estimates (per tenant, kind of task and model) with their intervals."""
    settings = _settings()
    catalog = _catalog(settings)
    with _ledger() as session:
        tenant_id = repo.get_tenant(session, name=tenant).id if tenant else None
        rows = repo.quality_estimates(session, tenant_id=tenant_id)
        now = utcnow()
        fresh = {r.id: is_fresh(r, catalog, now) for r in rows}
        if json_out:
            data.emit(data.estimates(rows, fresh))
            return
        out.print(views.estimates_table(rows, fresh=fresh))


@app.command()
def calibrate(
    file: Annotated[
        Path, typer.Argument(help='JSONL with labelled lines ({"id", "text", "gold"}), or unlabelled with --reference.')
    ],
    task: Annotated[str, typer.Option(help="classify or summarize.")],
    team: Annotated[str, typer.Option(help="The team the calibration calls are billed to.")],
    min_quality: Annotated[float, typer.Option(help="Quality bar in 0..1.")] = 0.9,
    labels: Annotated[str | None, typer.Option(help="classify: comma-separated labels.")] = None,
    max_words: Annotated[int | None, typer.Option(help="summarize: target length in words.")] = None,
    tenant: Annotated[str | None, typer.Option(help="The team's tenant, when the team name is not unique.")] = None,
    region: Annotated[str | None, typer.Option(help="Allowed model regions.")] = None,
    providers: Annotated[str | None, typer.Option(help="Allowed providers, comma-separated.")] = None,
    models: Annotated[str | None, typer.Option("--models", help="Allowed models, comma-separated.")] = None,
    reference: Annotated[
        bool, typer.Option(help="No labels: score models by agreement with the strongest model.")
    ] = False,
    calibration_budget: Annotated[
        str, typer.Option(help="Most it may spend: a share of the job on the baseline model (20%) or USD (5).")
    ] = DEFAULT_CALIBRATION_BUDGET,
    judge: Annotated[str | None, typer.Option(help="summarize: the model that judges summaries.")] = None,
    volume: Annotated[
        int,
        typer.Option(
            min=1, help="Items later jobs of this kind will run: what a measurement can save, against what it costs."
        ),
    ] = 10_000,
) -> None:
    """Measure the candidate models on the labelled items now, and keep the estimates for later jobs of this kind."""
    settings = _settings()
    request = JobRequest(
        path=file,
        team=team,
        tenant=tenant,
        task=task,
        min_quality=min_quality,
        labels=tuple(v.strip() for v in labels.split(",")) if labels else (),
        max_words=max_words,
        regions=_split(region),
        providers=_split(providers),
        models=_split(models),
        quality="reference" if reference else "gold",
        calibrate_only=True,
        calibration_budget=calibration_budget,
        judge=judge,
        volume=volume,
    )
    try:
        catalog = _catalog(settings)
        submitted = submit_job(settings, catalog, request)
        if submitted.simulated:
            out.print(views.SIMULATED_BANNER)
        with out.status("calibrating: candidate models answer the sample..."):
            summary = calibrate_job(settings, catalog, job_id=submitted.job_id)
    except NoModelError as exc:
        out.print(views.decision_table(exc.decision, _catalog(settings), simulated=settings.sandbox_active))
        raise _fail(exc) from None
    except PennyrouteError as exc:
        raise _fail(exc) from None
    out.print(views.calibration_table(summary))
    out.print(f"{summary.get('outcome')}: {summary.get('message')}")
    out.print(f"estimates kept for {summary.get('signature')}: `pennyroute quality` lists them; job {submitted.job_id}")
    if summary.get("outcome") != "chosen":
        raise typer.Exit(code=1)


# -- demo ------------------------------------------------------------------------------------------


@app.command()
def demo(
    items: Annotated[int, typer.Option(help="How many demo tickets.")] = 2000,
    labelled: Annotated[int, typer.Option(help="How many of them carry a gold label (the calibration sample).")] = 200,
    min_quality: Annotated[float, typer.Option(help="The quality bar.")] = 0.9,
    deadline: Annotated[
        str | None,
        typer.Option(
            help="By when the results are wanted (24h: the bulk goes to the providers' batch APIs, simulated, "
            "and the two savings, routing and batch discount, are shown side by side)."
        ),
    ] = None,
) -> None:
    """Run a classification job end to end: no servers, no keys needed (the sandbox answers).

    A tenth of the tickets are labelled: candidate models answer those first (calibration), the
    cheapest model or cascade whose 95% lower bound meets the bar is chosen, and it runs the rest."""
    settings = _settings()
    try:
        ensure_schema(settings)
        with session_scope(settings) as session:
            repo.ensure_team(session, tenant="demo", team="support")
    except PennyrouteError as exc:
        raise _fail(exc) from None
    where = (
        "SQLite file " + settings.database_url.removeprefix("sqlite:///")
        if settings.is_sqlite
        else "the configured database"
    )
    labelled = min(labelled, items)
    out.print(
        f"[bold]pennyroute demo[/]: {items:,} support tickets ({labelled:,} labelled), labels {', '.join(DEMO_LABELS)}, "
        f"bar {min_quality}; ledger in {where}"
    )
    path = Path(tempfile.mkdtemp(prefix="pennyroute-demo-")) / "tickets.jsonl"
    truth = write_demo_tickets(path, n=items, labelled=labelled)
    request = JobRequest(
        path=path,
        team="support",
        tenant="demo",
        task="classify",
        labels=DEMO_LABELS,
        min_quality=min_quality,
        deadline=deadline,
    )
    submitted = _submit_and_run(settings, request, wait=True, exit_on_end=False)
    info = job_status(settings, submitted.job_id)
    out.print(views.status_table(info))
    _demo_summary(settings, submitted, truth)
    out.print(views.levers_table(job_state(settings, submitted.job_id).levers, simulated=submitted.simulated))
    _end(settings, submitted.job_id)


def _demo_summary(settings: Settings, submitted: Submitted, truth: dict[str, str]) -> None:
    sample: list[dict[str, Any]] = []
    correct = graded = 0
    for record in result_records(settings, submitted.job_id):
        if len(sample) < 5:
            sample.append(record)
        if record["status"] == "done" and record["id"] in truth:
            graded += 1
            correct += record["output"] == truth[record["id"]]
    report = job_quality(settings, submitted.job_id)
    job, facts, events = report.job, report.facts, report.events
    label = " [SIMULATED]" if submitted.simulated else ""
    out.print(f"[bold]Sample results{label}[/]")
    for record in sample:
        out.print(
            f"  {record['id']}: {record['output']!s:<8} (gold {record.get('gold')}) "
            f"{record['model'] or record.get('answer_from', '-')} {record['cost_usd']} USD"
        )
    if graded:
        out.print(
            f"accuracy on every ticket (the demo knows all the right labels): {correct / graded:.1%} of {graded:,} "
            f"against a bar of {job.min_quality:.0%} ({'simulated' if submitted.simulated else 'measured'})"
        )
    out.print(views.quality_report(job, facts, events))


# -- db, tenants, teams ----------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Run the ledger's migrations up to the current schema."""
    settings = _settings()
    try:
        revision = upgrade(settings)
    except Exception as exc:
        raise _fail(PennyrouteError(f"migration failed: {exc}")) from None
    out.print(f"database at schema {revision}")


@db_app.command("current")
def db_current() -> None:
    """Show the schema revision the database is at."""
    out.print(current_revision(_settings()) or "no schema yet: run `pennyroute db upgrade`")


@tenant_app.command("create")
def tenant_create(
    name: str,
    timezone: Annotated[str, typer.Option(help="IANA time zone for monthly periods.")] = "UTC",
) -> None:
    """Create a tenant."""
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise _fail(
            PennyrouteError(f"unknown time zone '{timezone}' (use an IANA name such as Europe/Paris)")
        ) from None
    with _ledger() as session:
        repo.create_tenant(session, name=name, timezone=timezone)
    out.print(f"tenant {name} created")


@team_app.command("create")
def team_create(name: str, tenant: Annotated[str, typer.Option(help="The tenant it belongs to.")]) -> None:
    """Create a team in a tenant."""
    with _ledger() as session:
        repo.create_team(session, tenant=tenant, name=name)
    out.print(f"team {name} created in tenant {tenant}")


@team_app.command("list")
def team_list(json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False) -> None:
    """List tenants and their teams."""
    with _ledger() as session:
        teams = repo.list_teams(session)
    if json_out:
        data.emit([{"tenant": tenant, "team": team} for tenant, team in teams])
        return
    for tenant, team in teams:
        out.print(f"{printable(tenant)}/{printable(team)}", markup=False)  # a control character shows, never acts


@app.command()
def report(
    month: Annotated[str, typer.Option(help="YYYY-MM: a calendar month in each tenant's time zone.")],
    tenant: Annotated[str | None, typer.Option(help="One tenant (default: all).")] = None,
    by: Annotated[str, typer.Option(help="team, model, provider, task, job or day.")] = "team",
    format: Annotated[str, typer.Option("--format", help="table, csv, json or html.")] = "table",
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write here (default: standard output).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite the -o file if it exists.")] = False,
) -> None:
    """Monthly cost report from the ledger: spend, calls, tokens, failed and calibration spend,
    answers refused, filtered, blocked or cut off (calls and spend), budget used, and savings against
    each job's baseline model."""
    renderers = {"csv": report_render.render_csv, "json": report_render.render_json, "html": report_render.render_html}
    if format not in (*renderers, "table"):
        raise _fail(PennyrouteError(f"--format: unknown format '{format}': use table, csv, json or html"))
    with _ledger() as session:
        result = monthly_report(session, month=month, tenant=tenant, by=by)
    if format == "table":
        if output:
            raise _fail(
                PennyrouteError("-o: a table prints to the terminal; use --format csv, json or html to write a file")
            )
        out.print(report_render.render_table(result))
        if result.budgets:
            out.print(report_render.render_budget_table(result))
        return
    text = renderers[format](result)
    if output:
        try:
            with outputs.replacing(output, force=force, ledger=outputs.ledger_path(_settings())) as handle:
                handle.write(text)
        except PennyrouteError as exc:
            raise _fail(exc) from None
        err.print(f"wrote the {format} report for {month} to {output}")
    else:
        sys.stdout.write(text)


@app.command()
def reconcile(
    provider: Annotated[
        str, typer.Option(help="The catalog provider whose calls are compared (OpenAI's format).")
    ] = "openai",
    usage: Annotated[
        Path | None,
        typer.Option(
            help="The completions usage export: JSON as GET /v1/organization/usage/completions "
            "(group_by=model) returns it, one page or a list of pages."
        ),
    ] = None,
    costs: Annotated[
        Path | None,
        typer.Option(
            help="The costs export (GET /v1/organization/costs, group_by=line_item): the bill's "
            "amounts. Without it, the bill's tokens are priced at the ledger's recorded prices."
        ),
    ] = None,
    fetch: Annotated[
        bool, typer.Option(help="Fetch both exports from the provider's API with OPENAI_ADMIN_KEY instead of files.")
    ] = False,
    api_base: Annotated[
        str | None, typer.Option(help="With --fetch: the API's base URL (default: the catalog provider's base_url).")
    ] = None,
    month: Annotated[str | None, typer.Option(help="YYYY-MM: the UTC days of that month.")] = None,
    since: Annotated[
        str | None, typer.Option(help="YYYY-MM-DD: the first UTC day (with --until, or to today).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="YYYY-MM-DD: the last UTC day, included.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's calls on the ledger side.")] = None,
    team: Annotated[str | None, typer.Option(help="Only this team's calls on the ledger side.")] = None,
    project: Annotated[
        str | None, typer.Option(help="Only this OpenAI project's usage on the bill side (project_id).")
    ] = None,
    tolerance: Annotated[
        str, typer.Option(help="USD: a cost difference up to this, per day and model, is rounding.")
    ] = str(reconciling.DEFAULT_TOLERANCE_USD),
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write CSV here (JSON with --json).")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite the -o file if it exists.")] = False,
) -> None:
    """Compare the ledger with the provider's bill per UTC day and model: matches, ledger above the bill
    (calls charged at their worst case), or ledger BELOW the bill (a money leak: exit code 5)."""
    settings = _settings()
    out.quiet = json_out and output is None
    try:
        first, last = _reconcile_days(month, since, until)
        allowance = _tolerance(tolerance)
        if output is not None:
            outputs.check(output, force=force, ledger=outputs.ledger_path(settings))
        catalog = _catalog(settings)
        usage_export, costs_export = _exports(
            settings, catalog, provider, usage=usage, costs=costs, fetch=fetch, api_base=api_base,
            first=first, last=last, project=project,
        )  # fmt: skip
        ensure_schema(settings)
        with session_scope(settings) as session:
            result = reconciling.reconcile(
                session, catalog, provider=provider, usage=usage_export, costs=costs_export, first=first, last=last,
                tenant=tenant, team=team, tolerance_usd=allowance,
            )  # fmt: skip
        code = ends.BELOW_BILL if result.below else ends.DONE
        if output is not None:
            with outputs.replacing(output, force=force, ledger=outputs.ledger_path(settings)) as handle:
                handle.write(
                    reconciling.render_json(result, exit_code=code) if json_out else reconciling.render_csv(result)
                )
            err.print(f"wrote the reconciliation to {output}")
    except PennyrouteError as exc:
        raise _fail(exc) from None
    if json_out and output is None:
        sys.stdout.write(reconciling.render_json(result, exit_code=code))
    elif not json_out:
        out.print(reconciling.render_table(result))
    if code:
        raise typer.Exit(code=code)


def _reconcile_days(month: str | None, since: str | None, until: str | None) -> tuple[date, date]:
    """The UTC days to reconcile: a month, a range, or (by default) this month so far."""
    if month is not None and (since or until):
        raise PennyrouteError("--month: give a month, or --since/--until, not both")
    today = datetime.now(UTC).date()
    if month is not None:
        return month_days(month)
    if until and not since:
        raise PennyrouteError("--until needs --since")
    if since:
        first = _day(since, "--since")
        last = _day(until, "--until") if until else today
        if last < first:
            raise PennyrouteError(f"--until {last} is before --since {first}")
        return first, last
    return today.replace(day=1), today


def _day(value: str, flag: str) -> date:
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise PennyrouteError(f"{flag}: '{value}' is not a day: use YYYY-MM-DD, e.g. 2026-12-01") from None


def _tolerance(value: str) -> Decimal:
    try:
        amount = Decimal(value.strip().removeprefix("$"))
    except InvalidOperation:
        amount = Decimal("NaN")
    if not amount.is_finite() or amount < 0:
        raise PennyrouteError(f"--tolerance: '{value}' is not an amount of USD (0 or more, e.g. 0.000001)")
    return amount


def _exports(
    settings: Settings,
    catalog: Catalog,
    provider: str,
    *,
    usage: Path | None,
    costs: Path | None,
    fetch: bool,
    api_base: str | None,
    first: date,
    last: date,
    project: str | None,
) -> tuple[openai_usage.Export, openai_usage.Export | None]:
    """The usage export (and the costs export, if any): read from files, or fetched with the admin key."""
    if not fetch:
        if usage is None:
            raise PennyrouteError("--usage FILE: give the provider's usage export, or --fetch to fetch it")
        return (
            openai_usage.read_usage(usage, project=project),
            openai_usage.read_costs(costs, project=project) if costs is not None else None,
        )
    if usage is not None or costs is not None:
        raise PennyrouteError("--fetch: fetch the exports, or give them as --usage/--costs files, not both")
    if settings.openai_admin_key is None:
        raise PennyrouteError("--fetch needs an OpenAI organization admin key: set OPENAI_ADMIN_KEY")
    if provider not in catalog.providers:
        raise PennyrouteError(f"--provider: unknown provider '{provider}'")
    base = api_base or catalog.providers[provider].base_url
    key = settings.openai_admin_key.get_secret_value()
    with out.status(f"fetching the usage and costs of {first} to {last} from {base}..."):
        pages = openai_usage.fetch_usage(base_url=base, admin_key=key, first=first, last=last, project=project)
        cost_pages = openai_usage.fetch_costs(base_url=base, admin_key=key, first=first, last=last, project=project)
    where = base.rstrip("/")
    return (
        openai_usage.parse_usage(pages, source=f"GET {where}{openai_usage.USAGE_PATH}", project=project),
        openai_usage.parse_costs(cost_pages, source=f"GET {where}{openai_usage.COSTS_PATH}", project=project),
    )


@budget_app.command("set")
def budget_set(
    team: Annotated[str, typer.Option(help="The team.")],
    monthly: Annotated[str, typer.Option(help="Monthly limit, e.g. 500 or 499.99.")],
    tenant: Annotated[str | None, typer.Option(help="The team's tenant, when the team name is not unique.")] = None,
    currency: Annotated[str, typer.Option(help="USD or EUR (EUR needs PENNYROUTE_USD_PER_EUR).")] = "USD",
    soft: Annotated[
        str | None, typer.Option(help="Alert when spend crosses this share of the limit, e.g. 80%.")
    ] = None,
) -> None:
    """Set a team's monthly budget (applies to this month at once, and to every month after). Paused jobs resume."""
    settings = _settings()

    def show(period: BudgetPeriod) -> None:
        out.print(views.budget_set_text(team, period))

    try:
        ensure_schema(settings)
        catalog = _catalog(settings)
        lifecycle.set_budget(
            settings,
            team=team,
            tenant=tenant,
            monthly=monthly,
            currency=currency,
            soft=None if soft is None else f"{parse_soft_percent(soft)!r}%",  # 0.8 and 80% are 80%
            dispatcher=lifecycle.dispatcher_for(settings, catalog, watcher=_Watcher(settings)),
            on_set=show,
            on_resumed=_resuming,
        )
    except PennyrouteError as exc:
        raise _fail(exc) from None


@budget_app.command("show")
def budget_show(
    month: Annotated[str | None, typer.Option(help="YYYY-MM (default: this month).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Every team's budget for a month: limit, settled, reserved, used."""
    with _ledger() as session:
        rows = repo.budget_rows(session, month=month)
    if json_out:
        data.emit(data.budgets(rows))
        return
    out.print(
        views.budget_table(rows, month=month)
        if rows
        else "no budgets set: `pennyroute budget set --team T --monthly 500`"
    )


@jobs_app.command("list")
def jobs_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's jobs.")] = None,
    team: Annotated[str | None, typer.Option(help="Only this team's jobs.")] = None,
    status: Annotated[
        str | None,
        typer.Option(help="Only jobs in this state: calibrating, running, paused, done, no_model, cancelled."),
    ] = None,
    month: Annotated[str | None, typer.Option(help="YYYY-MM: only jobs submitted that month (UTC).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 100,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List jobs, newest first: state, counts, spend so far."""
    states = ("calibrating", "running", "paused", "done", "no_model", "cancelled")
    if status is not None and status not in states:
        raise _fail(PennyrouteError(f"--status: unknown state '{status}': use one of {', '.join(states)}"))
    since = until = None
    if month is not None:
        try:
            first = budgets.parse_month(month)
        except PennyrouteError as exc:
            raise _fail(exc) from None
        since = datetime(first.year, first.month, 1, tzinfo=UTC)
        until = datetime(first.year + first.month // 12, first.month % 12 + 1, 1, tzinfo=UTC)
    with _ledger() as session:
        rows = repo.list_jobs(session, tenant=tenant, team=team, status=status, since=since, until=until, limit=limit)
    if json_out:
        data.emit(data.jobs(rows))
        return
    table = Table(title="Jobs, newest first", title_justify="left")
    for column in ("job", "tenant/team", "task", "status", "done", "failed", "items", "spent", "submitted"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(
            r.id,
            Text(f"{r.tenant}/{r.team}"),
            r.task,
            r.status,
            f"{r.n_done:,}",
            f"{r.n_failed:,}",
            f"{r.n_items:,}",
            views.usd(r.spent_usd, 6) + (" (sim)" if r.simulated else ""),
            f"{r.created_at:%Y-%m-%d %H:%M}" if r.created_at else "-",
        )
    out.print(table if rows else "no jobs match")


@jobs_app.command("resume")
def jobs_resume(job_id: Annotated[str, typer.Argument(help="The job id.")]) -> None:
    """Resume a paused job (e.g. after its budget was raised or a new month began)."""
    _resume(_settings(), job_id)


def _resume(settings: Settings, job_id: str) -> None:
    try:
        ensure_schema(settings)
        catalog = _catalog(settings)
        dispatcher = lifecycle.dispatcher_for(settings, catalog, watcher=_Watcher(settings))
        with _interruptible(settings, catalog, job_id) if settings.embedded else nullcontext():
            job = lifecycle.resume(
                settings, job_id=job_id, dispatcher=dispatcher, on_resumed=_resuming, catalog=catalog
            )
    except PennyrouteError as exc:
        raise _fail(exc) from None
    except Exception as exc:  # the broker is down (with a broker only: in-process errors are not caught here)
        if settings.embedded:
            raise
        raise _fail(PennyrouteError(f"job {job_id} is saved, but the broker did not take it ({exc})")) from None
    if job.status not in (JobStatus.RUNNING, JobStatus.CALIBRATING):
        out.print(f"job {job_id} is {job.status}: nothing to resume")
    if settings.embedded:  # it ran here: say how it ended, and exit with its code
        _end(settings, job_id)


def _resuming(job: Any) -> None:
    out.print(f"resuming job {job.id}")


@jobs_app.command("cancel")
def jobs_cancel(job_id: Annotated[str, typer.Argument(help="The job id.")]) -> None:
    """Cancel a job: stop dispatch, end its pending items, give back its budget reservations, cancel
    its open provider batches (keeping the lines they finished), and record calls whose worker died
    (calls in flight in live workers are recorded when they return)."""
    settings = _settings()
    try:
        ensure_schema(settings)
        done = lifecycle.cancel(settings, _catalog(settings), job_id=job_id)
    except PennyrouteError as exc:
        raise _fail(exc) from None
    if done["cancelled"] == 0 and done["status"] != JobStatus.CANCELLED:
        out.print(f"job {job_id} is {done['status']}: nothing to cancel")
        return
    out.print(
        f"job {job_id} cancelled: {done['cancelled']:,} items will not run; {done['in_flight']:,} in flight are "
        f"recorded as their calls return; budget given back {done['released']}; calls of dead workers "
        f"charged at their worst case ${done['lost_calls_usd']}"
    )
    if done.get("batches_cancelled"):
        out.print(
            f"{done['batches_cancelled']:,} provider batches asked to cancel: the lines they finished are kept "
            "(and charged at the batch price); the rest end as cancelled"
        )


# -- the HTTP API --------------------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[
        int, typer.Option(min=1, help="Server processes (each answers requests; 1 per core is a good start).")
    ] = 1,
) -> None:
    """Serve the HTTP API (OpenAPI at /docs): jobs, reports, budgets, OpenAI Batch-compatible /v1,
    /metrics. Needs PENNYROUTE_SERVER_SECRET (tenant keys are checked against a hash under it)."""
    settings = _settings()
    try:
        application = create_app(settings, _catalog(settings))
    except PennyrouteError as exc:
        raise _fail(exc) from None
    if workers > 1 and settings.embedded:
        raise _fail(
            PennyrouteError("--workers: without a broker jobs run in the server's process; use one, or set BROKER_URL")
        )
    where = "in this process (no broker)" if settings.embedded else "on the broker's workers"
    err.print(f"pennyroute API on http://{host}:{port} (docs at /docs); jobs run {where}")
    config = {"host": host, "port": port, "log_config": api_log_config(settings), "server_header": False}
    if workers == 1:
        uvicorn.run(application, **config)  # type: ignore[arg-type]
        return
    if State.catalog_path is not None:  # each worker process reads its settings afresh
        os.environ["PENNYROUTE_CATALOG"] = str(State.catalog_path.resolve())
    uvicorn.run("router.api.app:from_environment", factory=True, workers=workers, **config)  # type: ignore[arg-type]


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="The tenant the key acts for.")],
    scopes: Annotated[str, typer.Option(help=f"Comma-separated: {', '.join(keys.SCOPES)}.")],
    team: Annotated[str | None, typer.Option(help="Limit the key to this team of the tenant.")] = None,
) -> None:
    """Make an API key and print it once (only its prefix and a keyed hash are kept)."""
    settings = _settings()
    try:
        secret = settings.key_secret()
        wanted = keys.parse_scopes(scopes)
        ensure_schema(settings)
        with session_scope(settings) as session:
            key, row = keys.create_key(session, secret=secret, tenant=tenant, team=team, scopes=wanted)
    except PennyrouteError as exc:
        raise _fail(exc) from None
    sys.stdout.write(key + "\n")
    scoped = f"tenant {tenant}" + (f" team {team}" if team else "")
    err.print(
        f"key {row.prefix}... for {scoped}, scopes {', '.join(wanted)}: shown once, keep it now "
        f"(`pennyroute keys revoke {row.prefix}` ends it)"
    )


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List API keys: prefix, tenant, team, scopes, created, last used, revoked (never the key)."""
    with _ledger() as session:
        rows = keys.list_keys(session, tenant=tenant)
    if json_out:
        data.emit([dict(r._mapping) for r in rows])
        return
    table = Table(title="API keys", title_justify="left")
    for column in ("prefix", "tenant", "team", "scopes", "created", "last used", "revoked"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(
            r.prefix,
            Text(printable(r.tenant)),
            Text(printable(r.team or "-")),
            ",".join(r.scopes),
            f"{r.created_at:%Y-%m-%d %H:%M}" if r.created_at else "-",
            f"{r.last_used_at:%Y-%m-%d %H:%M}" if r.last_used_at else "never",
            f"{r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "",
        )
    out.print(table if rows else "no keys: `pennyroute keys create --tenant T --scopes jobs:read`")


@keys_app.command("revoke")
def keys_revoke(prefix: Annotated[str, typer.Argument(help="The key's prefix (pr_live_ and 12 characters).")]) -> None:
    """Revoke an API key: it answers 401 from now on."""
    with _ledger() as session:
        revoked = keys.revoke_key(session, prefix=prefix)
    out.print(f"key {prefix[:20]} revoked" if revoked else f"key {prefix[:20]} was revoked already")


def main() -> None:
    app()


if __name__ == "__main__":
    main()

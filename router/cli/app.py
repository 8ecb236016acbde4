"""The `pennyroute` command line."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlmodel import Session
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from router.cli import views
from router.catalog import Catalog, load_catalog
from router.db import current_revision, ensure_schema, session_scope, upgrade
from router.cli.demo import DEMO_LABELS, write_demo_tickets
from router.jobs.calibrate import calibrate_job
from router.engine.chunk import chunk_ranges, run_job_inline
from router.errors import PennyrouteError
from router.jobs.intake import JobRequest
from router.ledger import budgets
from router.jobs.submit import NoModelError, Submitted, cancel_job, dispatch_job, resume_job, submit_job
from router.ledger import repo
from router.ledger.tables import JobStatus, utcnow
from router.settings import Settings, get_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Route batch LLM work to the cheapest model that meets your bar; ledger every cent.")
db_app = typer.Typer(no_args_is_help=True, help="The ledger database.")
tenant_app = typer.Typer(no_args_is_help=True, help="Tenants (organisations).")
team_app = typer.Typer(no_args_is_help=True, help="Teams within a tenant.")
app.add_typer(db_app, name="db")
app.add_typer(tenant_app, name="tenant")
app.add_typer(team_app, name="team")
budget_app = typer.Typer(no_args_is_help=True, help="Team budgets: monthly limits that concurrent workers cannot overrun.")
jobs_app = typer.Typer(no_args_is_help=True, help="Jobs: resume, cancel.")
app.add_typer(budget_app, name="budget")
app.add_typer(jobs_app, name="jobs")

out = views.console()
err = views.error_console()
# How often --wait reads progress from the ledger.
POLL_S = 0.5


class State:
    catalog_path: Path | None = None


@app.callback()
def _root(
    catalog: Annotated[Path | None, typer.Option("--catalog", help="A TOML catalog extending the default (PENNYROUTE_CATALOG).")] = None,
) -> None:
    State.catalog_path = catalog


def _settings() -> Settings:
    settings = get_settings()
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
def models(task: Annotated[str | None, typer.Option(help="Show the quality prior for this task only.")] = None) -> None:
    """List the catalog's models with prices, context windows, regions and quality priors."""
    try:
        settings = _settings()
        out.print(views.models_table(_catalog(settings), task=task))
    except PennyrouteError as exc:
        raise _fail(exc) from None


# -- submit / status / results ---------------------------------------------------------------------

@app.command()
def submit(
    file: Annotated[Path, typer.Argument(help="JSONL, one item a line: {\"id\": ..., \"text\": ..., \"gold\": optional}.")],
    task: Annotated[str, typer.Option(help="classify or summarize.")],
    team: Annotated[str, typer.Option(help="The team the job is billed to.")],
    min_quality: Annotated[float, typer.Option(help="Quality bar in 0..1 (0.9 = 90% accuracy).")] = 0.9,
    labels: Annotated[str | None, typer.Option(help="classify: comma-separated labels.")] = None,
    max_words: Annotated[int | None, typer.Option(help="summarize: target length in words.")] = None,
    tenant: Annotated[str | None, typer.Option(help="The team's tenant, when the team name is not unique.")] = None,
    region: Annotated[str | None, typer.Option(help="Allowed model regions, e.g. eu or eu,local.")] = None,
    providers: Annotated[str | None, typer.Option(help="Allowed providers, comma-separated.")] = None,
    models: Annotated[str | None, typer.Option("--models", help="Allowed models, comma-separated.")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the job with a progress bar.")] = False,
    on_budget: Annotated[str, typer.Option(help="When the team's budget cannot take the job: reject, downgrade or pause.")] = "reject",
    quality: Annotated[str, typer.Option(help="Quality estimates from: auto (calibrate on gold labels if the file has them, "
                                         "else stored estimates), gold, reference (the strongest model's answers on a "
                                         "sample), or prior.")] = "auto",
) -> None:
    """Submit a batch job. Prints the job id, the routing decision, and rejected lines."""
    settings = _settings()
    request = JobRequest(
        path=file, team=team, tenant=tenant, task=task, min_quality=min_quality,
        labels=tuple(v.strip() for v in labels.split(",")) if labels else (), max_words=max_words,
        regions=_split(region), providers=_split(providers), models=_split(models), on_budget=on_budget, quality=quality,
    )
    _submit_and_run(settings, request, wait=wait)


def _submit_and_run(settings: Settings, request: JobRequest, *, wait: bool, quiet_decision: bool = False) -> Submitted:
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
    out.print(f"job [bold]{submitted.job_id}[/]: {submitted.n_items:,} items accepted, {submitted.n_rejected:,} lines rejected")
    for line_error in submitted.rejected[:20]:
        err.print(f"  [yellow]rejected[/] {request.path}: {line_error}")
    if submitted.n_rejected > 20:
        err.print(f"  ... and {submitted.n_rejected - 20:,} more (`pennyroute status {submitted.job_id}` lists them)")
    if submitted.calibrating:
        eligible = [v.model_id for v in submitted.decision.verdicts if v.meets_constraints]
        out.print(f"[bold]calibrating[/]: {len(eligible)} eligible models ({', '.join(eligible)}) answer a sample of this "
                  "job's own items first, cheapest first; the model (or cascade) is chosen on what they score, not on priors")
    else:
        if not quiet_decision:
            out.print(views.decision_table(submitted.decision, catalog, simulated=submitted.simulated))
        out.print(submitted.decision.summary)
    _start(settings, catalog, submitted.job_id, submitted.n_items, wait=wait, calibrating=submitted.calibrating)
    out.print(f"next: pennyroute status {submitted.job_id} | pennyroute results {submitted.job_id} -o results.jsonl")
    return submitted


def _start(settings: Settings, catalog: Catalog, job_id: str, n_items: int, *, wait: bool, calibrating: bool = False) -> None:
    """Run a committed job's chunks: in this process without a broker, else on the workers."""
    if settings.embedded:
        out.print("[dim]no broker configured (BROKER_URL): running the job in this process[/]")
        if calibrating and not _calibrate_inline(settings, catalog, job_id):
            return
        with _progress() as progress:
            bar = progress.add_task("items", total=n_items)
            with session_scope(settings) as session:
                job = repo.get_job(session, job_id)
                progress.update(bar, completed=job.n_done + job.n_failed)
            run_job_inline(settings, catalog, job_id=job_id, ranges=chunk_ranges(n_items, settings.chunk_size),
                           progress=lambda outcome: progress.advance(bar, outcome.done + outcome.failed))
    else:
        try:
            if calibrating:
                from router.jobs.dispatch import CeleryDispatcher

                CeleryDispatcher(settings).send_calibrate(job_id)
                sent = 1
            else:
                sent = dispatch_job(settings, job_id, n_items)
        except Exception as exc:  # the broker is down: the job is safe in the ledger
            raise _fail(PennyrouteError(f"job {job_id} is saved, but the broker did not take it: {exc}")) from None
        out.print(f"queued {'its calibration (then its chunks)' if calibrating else f'{sent:,} chunks'} for workers (`celery -A workers.app worker`)")
        if wait:
            _wait(settings, job_id)
    with session_scope(settings) as session:
        if repo.get_job(session, job_id).status == JobStatus.PAUSED:
            out.print(f"[yellow]job {job_id} is paused: its team's budget is spent[/] (`pennyroute budget set` raises it and resumes the job)")


def _calibrate_inline(settings: Settings, catalog: Catalog, job_id: str) -> bool:
    """Calibrate in this process; show what was measured. True when the bulk should run."""
    with out.status("calibrating: candidate models answer the sample..."):
        summary = calibrate_job(settings, catalog, job_id=job_id)
    out.print(views.calibration_table(summary))
    if summary.get("outcome") != "chosen":
        out.print(f"[bold red]job {job_id} stopped before the bulk:[/] {summary.get('message')}")
        return False
    with session_scope(settings) as session:
        job = repo.get_job(session, job_id)
    out.print(f"[bold]route[/]: {views.route_text(job)}")
    return True


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=out, transient=False)


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
    quality: Annotated[bool, typer.Option("--quality", help="Also show the job's quality report: bar, measured "
                                          "estimate, models and their share, escalations, drift, cost against the baseline.")] = False,
) -> None:
    """Counts, spend so far, and the model(s) a job runs on."""
    settings = _settings()
    try:
        ensure_schema(settings)
        if wait:
            _wait(settings, job_id)
        info = job_status(settings, job_id)
    except PennyrouteError as exc:
        raise _fail(exc) from None
    if info["simulated"]:
        out.print(views.SIMULATED_BANNER)
    out.print(views.status_table(info))
    if quality:
        with session_scope(settings) as session:
            job = repo.get_job(session, job_id)
            facts = repo.job_quality_facts(session, job_id)
            events = [(e.kind, e.detail) for e in repo.job_events(session, job_id)]
        out.print(views.quality_report(job, facts, events))
        if job.calibration and job.calibration.get("estimates"):
            out.print(views.calibration_table(job.calibration))
    for line_error in info["rejected"][:20]:
        out.print(f"  [yellow]rejected[/] line {line_error['line']}" + (f", field '{line_error['field']}'" if line_error["field"] else "") + f": {line_error['reason']}")


def job_status(settings: Settings, job_id: str) -> dict[str, Any]:
    """A job's status as rows to show (also used by the demo)."""
    with session_scope(settings) as session:
        job = repo.get_job(session, job_id)
        spent = repo.job_spend(session, job_id)
        used = repo.job_models(session, job_id)
    open_items = job.n_items - job.n_done - job.n_failed
    rows = [
        ("status", job.status),
        ("task", job.task + (f" ({', '.join(job.labels)})" if job.labels else "") + f", bar {job.min_quality:.2f}"),
        ("items", f"{job.n_items:,} accepted: {job.n_done:,} done, {job.n_failed:,} failed, {open_items:,} to go"),
        ("rejected lines", f"{job.n_rejected:,}"),
        ("route", views.route_text(job)),
        ("calls", ", ".join(f"{m} {n:,}" for m, n in used) or "none yet"),
        ("spent so far", views.usd(spent, 6) + (" (simulated)" if job.simulated else "")),
        ("expected cost", views.usd(job.expected_cost_usd, 6)),
        ("baseline", f"{job.baseline_model_id}: {views.usd((job.decision or {}).get('baseline_cost_usd'), 6)} expected"),
    ]
    return {"job_id": job_id, "simulated": job.simulated, "rows": rows, "rejected": job.rejected or [],
            "spent": spent, "job": job}


@app.command()
def results(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write JSONL here (default: standard output).")] = None,
) -> None:
    """Per item: output, model, tokens, cost, and the error if it failed (JSONL)."""
    with _ledger() as session:
        repo.get_job(session, job_id)
        handle = output.open("w") if output else sys.stdout
        count = 0
        try:
            for row, cost in repo.iter_results(session, job_id):
                handle.write(json.dumps(result_record(row, cost)) + "\n")
                count += 1
        finally:
            if output:
                handle.close()
    if output:
        err.print(f"wrote {count:,} results to {output}")


def result_record(row: Any, cost: Decimal) -> dict[str, Any]:
    record = {
        "id": row.ext_id, "status": row.status, "output": row.output, "model": row.model_id,
        "input_tokens": (row.input_tokens or 0) + (row.cached_input_tokens or 0), "output_tokens": row.output_tokens,
        "cost_usd": str(cost), "attempts": row.attempts, "error": row.error,
    }
    if row.gold is not None:
        record["gold"] = row.gold
    if row.simulated:
        record["simulated"] = True
    return record


# -- quality ---------------------------------------------------------------------------------------

@app.command("quality")
def quality_cmd(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's estimates.")] = None,
) -> None:
    """List measured quality estimates (per tenant, kind of task and model) with their intervals."""
    from router.jobs.estimates import is_fresh

    settings = _settings()
    catalog = _catalog(settings)
    with _ledger() as session:
        tenant_id = repo.get_tenant(session, name=tenant).id if tenant else None
        rows = repo.quality_estimates(session, tenant_id=tenant_id)
        now = utcnow()
        out.print(views.estimates_table(rows, fresh={r.id: is_fresh(r, catalog, now) for r in rows}))


@app.command()
def calibrate(
    file: Annotated[Path, typer.Argument(help="JSONL with labelled lines ({\"id\", \"text\", \"gold\"}), or unlabelled with --reference.")],
    task: Annotated[str, typer.Option(help="classify or summarize.")],
    team: Annotated[str, typer.Option(help="The team the calibration calls are billed to.")],
    min_quality: Annotated[float, typer.Option(help="Quality bar in 0..1.")] = 0.9,
    labels: Annotated[str | None, typer.Option(help="classify: comma-separated labels.")] = None,
    max_words: Annotated[int | None, typer.Option(help="summarize: target length in words.")] = None,
    tenant: Annotated[str | None, typer.Option(help="The team's tenant, when the team name is not unique.")] = None,
    region: Annotated[str | None, typer.Option(help="Allowed model regions.")] = None,
    providers: Annotated[str | None, typer.Option(help="Allowed providers, comma-separated.")] = None,
    models: Annotated[str | None, typer.Option("--models", help="Allowed models, comma-separated.")] = None,
    reference: Annotated[bool, typer.Option(help="No labels: score models by agreement with the strongest model.")] = False,
) -> None:
    """Measure the candidate models on a labelled sample now, and keep the estimates for later jobs of this kind."""
    settings = _settings()
    request = JobRequest(
        path=file, team=team, tenant=tenant, task=task, min_quality=min_quality,
        labels=tuple(v.strip() for v in labels.split(",")) if labels else (), max_words=max_words,
        regions=_split(region), providers=_split(providers), models=_split(models),
        quality="reference" if reference else "gold", calibrate_only=True,
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
    where = "SQLite file " + settings.database_url.removeprefix("sqlite:///") if settings.is_sqlite else "the configured database"
    labelled = min(labelled, items)
    out.print(f"[bold]pennyroute demo[/]: {items:,} support tickets ({labelled:,} labelled), labels {', '.join(DEMO_LABELS)}, "
              f"bar {min_quality}; ledger in {where}")
    path = Path(tempfile.mkdtemp(prefix="pennyroute-demo-")) / "tickets.jsonl"
    truth = write_demo_tickets(path, n=items, labelled=labelled)
    request = JobRequest(path=path, team="support", tenant="demo", task="classify", labels=DEMO_LABELS, min_quality=min_quality)
    submitted = _submit_and_run(settings, request, wait=True)
    info = job_status(settings, submitted.job_id)
    out.print(views.status_table(info))
    _demo_summary(settings, submitted, truth)


def _demo_summary(settings: Settings, submitted: Submitted, truth: dict[str, str]) -> None:
    sample: list[dict[str, Any]] = []
    correct = graded = 0
    with session_scope(settings) as session:
        for row, cost in repo.iter_results(session, submitted.job_id):
            record = result_record(row, cost)
            if len(sample) < 5:
                sample.append(record)
            if row.status == "done" and row.ext_id in truth:
                graded += 1
                correct += row.output == truth[row.ext_id]
        job = repo.get_job(session, submitted.job_id)
        facts = repo.job_quality_facts(session, submitted.job_id)
        events = [(e.kind, e.detail) for e in repo.job_events(session, submitted.job_id)]
    label = " [SIMULATED]" if submitted.simulated else ""
    out.print(f"[bold]Sample results{label}[/]")
    for record in sample:
        out.print(f"  {record['id']}: {record['output']!s:<8} (gold {record.get('gold')}) {record['model']} {record['cost_usd']} USD")
    if graded:
        out.print(f"accuracy on every ticket (the demo knows all the right labels): {correct / graded:.1%} of {graded:,} "
                  f"against a bar of {job.min_quality:.0%} ({'simulated' if submitted.simulated else 'measured'})")
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
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise _fail(PennyrouteError(f"unknown time zone '{timezone}' (use an IANA name such as Europe/Paris)")) from None
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
def team_list() -> None:
    """List tenants and their teams."""
    with _ledger() as session:
        for tenant, team in repo.list_teams(session):
            out.print(f"{tenant}/{team}")


@app.command()
def report(
    month: Annotated[str, typer.Option(help="YYYY-MM: a calendar month in each tenant's time zone.")],
    tenant: Annotated[str | None, typer.Option(help="One tenant (default: all).")] = None,
    by: Annotated[str, typer.Option(help="team, model, provider, task, job or day.")] = "team",
    format: Annotated[str, typer.Option("--format", help="table, csv, json or html.")] = "table",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write here (default: standard output).")] = None,
) -> None:
    """Monthly cost report from the ledger: spend, calls, tokens, failed and calibration spend,
    budget used, and savings against each job's baseline model."""
    from router.reports import render as report_render
    from router.reports.monthly import monthly_report

    renderers = {"csv": report_render.render_csv, "json": report_render.render_json, "html": report_render.render_html}
    if format not in (*renderers, "table"):
        raise _fail(PennyrouteError(f"--format: unknown format '{format}': use table, csv, json or html"))
    with _ledger() as session:
        result = monthly_report(session, month=month, tenant=tenant, by=by)
    if format == "table":
        if output:
            raise _fail(PennyrouteError("-o: a table prints to the terminal; use --format csv, json or html to write a file"))
        out.print(report_render.render_table(result))
        if result.budgets:
            out.print(report_render.render_budget_table(result))
        return
    text = renderers[format](result)
    if output:
        output.write_text(text)
        err.print(f"wrote the {format} report for {month} to {output}")
    else:
        sys.stdout.write(text)


@budget_app.command("set")
def budget_set(
    team: Annotated[str, typer.Option(help="The team.")],
    monthly: Annotated[str, typer.Option(help="Monthly limit, e.g. 500 or 499.99.")],
    tenant: Annotated[str | None, typer.Option(help="The team's tenant, when the team name is not unique.")] = None,
    currency: Annotated[str, typer.Option(help="USD or EUR (EUR needs PENNYROUTE_USD_PER_EUR).")] = "USD",
    soft: Annotated[str | None, typer.Option(help="Alert when spend crosses this share of the limit, e.g. 80%.")] = None,
) -> None:
    """Set a team's monthly budget (applies to this month at once, and to every month after). Paused jobs resume."""
    settings = _settings()
    with _ledger() as session:
        amount = budgets.parse_amount(monthly, field="--monthly")
        soft_pct = budgets.parse_soft(soft)
        found = repo.find_team(session, name=team, tenant=tenant)
        period = budgets.set_budget(session, team=found, monthly=amount, currency=currency, soft_pct=soft_pct, settings=settings)
        paused = repo.paused_jobs(session, team_id=found.id)  # type: ignore[arg-type]
    out.print(f"team {team}: {period.limit_amount.normalize()} {period.currency} a month"
              + (f", alert at {soft_pct:g}%" if soft_pct else "") + f"; {period.period_start:%Y-%m} so far: "
              f"settled {period.settled.normalize()}, reserved {period.reserved.normalize()}")
    for job_id in paused:
        _resume(settings, job_id)


@budget_app.command("show")
def budget_show(
    month: Annotated[str | None, typer.Option(help="YYYY-MM (default: this month).")] = None,
) -> None:
    """Every team's budget for a month: limit, settled, reserved, used."""
    from rich.table import Table

    with _ledger() as session:
        rows = repo.budget_rows(session, month=month)
    table = Table(title=f"Budgets{' for ' + month if month else ' this month'}", title_justify="left")
    for column in ("tenant", "team", "month", "limit", "currency", "settled", "reserved", "used", "soft alert"):
        table.add_column(column)
    for row in rows:
        used = (row.settled / row.limit_amount) if row.limit_amount else Decimal(0)
        table.add_row(row.tenant, row.team, f"{row.period_start:%Y-%m}", f"{row.limit_amount.normalize():,}", row.currency,
                      f"{row.settled:,.6f}", f"{row.reserved:,.6f}", f"{used:.1%}",
                      (f"{row.soft_pct:g}%" + (" (sent)" if row.soft_alerted_at else "")) if row.soft_pct else "-")
    out.print(table if rows else "no budgets set: `pennyroute budget set --team T --monthly 500`")


@jobs_app.command("resume")
def jobs_resume(job_id: Annotated[str, typer.Argument(help="The job id.")]) -> None:
    """Resume a paused job (e.g. after its budget was raised or a new month began)."""
    _resume(_settings(), job_id)


def _resume(settings: Settings, job_id: str) -> None:
    try:
        job = resume_job(settings, job_id)
    except PennyrouteError as exc:
        raise _fail(exc) from None
    if job.status != JobStatus.RUNNING:
        out.print(f"job {job_id} is {job.status}: nothing to resume")
        return
    out.print(f"resuming job {job_id}")
    _start(settings, _catalog(settings), job_id, job.n_items, wait=False)


@jobs_app.command("cancel")
def jobs_cancel(job_id: Annotated[str, typer.Argument(help="The job id.")]) -> None:
    """Cancel a job: stop dispatch, end its pending items, give back its budget reservations, and
    record calls whose worker died (calls in flight in live workers are recorded when they return)."""
    settings = _settings()
    try:
        ensure_schema(settings)
        done = cancel_job(settings, _catalog(settings), job_id)
    except PennyrouteError as exc:
        raise _fail(exc) from None
    if done["cancelled"] == 0 and done["status"] != JobStatus.CANCELLED:
        out.print(f"job {job_id} is {done['status']}: nothing to cancel")
        return
    out.print(f"job {job_id} cancelled: {done['cancelled']:,} items will not run; {done['in_flight']:,} in flight are "
              f"recorded as their calls return; budget given back {done['released']}; calls of dead workers "
              f"charged at their worst case ${done['lost_calls_usd']}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()

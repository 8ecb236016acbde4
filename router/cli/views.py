"""How pennyroute shows things in a terminal: decisions, job status, models, budgets. Rendering only.

Every amount goes through router/reports/render.py (`usd` for reading, `exact` for what a person typed
or a price sheet says), so no figure prints an exponent and none differs between SQLite and Postgres.
Money columns fold rather than cut: a cell never reads "$0.00...".
"""

from __future__ import annotations

import sys
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.table import Table

from policies.execution_mode import ModeDecision
from policies.types import Decision, Verdict
from router.catalog import Catalog, Rate
from router.ledger import budgets
from router.ledger.tables import BudgetPeriod
from router.reports.render import compared, exact, pct, usd

SIMULATED_BANNER = "[bold black on yellow] SIMULATED [/] sandbox provider: answers are simulated, costs are what the real models would charge"


def decision_table(decision: Decision, catalog: Catalog, *, simulated: bool) -> Table:
    title = "Routing decision" + (" (SIMULATED)" if simulated else "")
    table = Table(title=title, title_justify="left")
    for column in ("", "model", "region", "$/Mtok in/out", "quality", "expected cost"):
        table.add_column(column, overflow="fold")
    table.add_column("why", overflow="fold", ratio=1)
    for verdict in decision.verdicts:
        model = catalog.models.get(verdict.model_id)
        price = catalog.price(verdict.model_id) if model else None
        mark = (
            "[green]->[/]"
            if verdict.model_id == decision.model_id
            else ("[dim]ok[/]" if verdict.qualifies else "[red]x[/]")
        )
        table.add_row(
            mark,
            verdict.model_id,
            model.region if model else "",
            f"{exact(price.input.base)} / {exact(price.output.base)}" if price else "",
            f"{verdict.quality_bound:.3f}" if verdict.quality_bound is not None else "-",
            usd(verdict.expected_cost_usd, 4),
            _why(verdict, decision),
        )
    return table


def _why(verdict: Verdict, decision: Decision) -> str:
    """The reasons that decided this row: its failures, or why it was or was not picked."""
    if verdict.model_id == decision.model_id:
        return "chosen: cheapest that qualifies"
    if verdict.qualifies:
        return "qualifies, costs more"
    failing = [r for r in verdict.reasons if not _is_pass(r)]
    return "; ".join(failing or verdict.reasons)


def _is_pass(reason: str) -> bool:
    return ">= bar" in reason or reason.startswith("context window unknown")


def models_table(catalog: Catalog, *, task: str | None) -> Table:
    table = Table(title="Model catalog (prices in force now, USD per million tokens)", title_justify="left")
    for column in (
        "model",
        "provider",
        "region",
        "input",
        "cached in",
        "output",
        "context",
        "open",
        "quality prior",
        "price source",
    ):
        table.add_column(column, overflow="fold")
    for model in sorted(catalog.models.values(), key=lambda m: (m.provider, m.model_id)):
        price = catalog.price(model.model_id)
        tasks = [task] if task else sorted(model.quality)
        quality = ", ".join(f"{t} {model.quality[t].value:.2f}" for t in tasks if t in model.quality) or "-"
        output = rate_text(price.output) + (
            "" if not model.thinking else f" (+ up to {model.thinking:,} thinking/call)"
        )
        table.add_row(
            model.model_id,
            model.provider,
            model.region,
            rate_text(price.input),
            rate_text(price.cached_input),
            output,
            f"{model.context_window:,}" if model.context_window else "?",
            "yes" if model.open_weight else "",
            quality,
            price.source,
        )
    return table


def rate_text(rate: Rate) -> str:
    """A price per million tokens as the price sheet says it, tiers included: 1.25 (>200,000: 2.5)."""
    return exact(rate.base) + "".join(f" (>{start:,}: {exact(price)})" for start, price in rate.tiers)


def status_table(info: dict[str, Any]) -> Table:
    table = Table(
        show_header=False,
        title=f"Job {info['job_id']}" + (" (SIMULATED)" if info["simulated"] else ""),
        title_justify="left",
    )
    table.add_column(style="bold")
    table.add_column()
    for key, value in info["rows"]:
        table.add_row(key, value)
    return table


def route_text(job: Any) -> str:
    """How a job's items run, in a line: the model or cascade, and where its quality figure came from."""
    route = job.route or {}
    if job.status == "calibrating":
        return "calibrating: candidates are answering the sample"
    if route.get("kind") == "cascade":
        text = f"cascade: {route['model_id']} + {route['second_id']} agree, else {route['strong_id']}"
    else:
        text = f"{job.model_id or '-'}"
    if route.get("fallbacks"):
        text += f"; fallback {', '.join(route['fallbacks'][:2])}" + ("..." if len(route["fallbacks"]) > 2 else "")
    if route.get("reference_id") and route.get("drift_share"):
        text += f"; drift checks {route['drift_share']:.0%} against {route['reference_id']}"
    mode = {
        "gold": "calibrated on gold labels",
        "reference": "calibrated against a reference model",
        "prior": "quality from priors or stored estimates",
    }.get(job.quality_mode, job.quality_mode)
    return f"{text} ({mode})"


def calibration_verdict(job: Any) -> str | None:
    """What calibration concluded, when it did not simply prove the route: unproven, or stopped."""
    calibration = job.calibration or {}
    if not calibration.get("outcome") or calibration.get("outcome") == "chosen":
        return None
    if calibration.get("unproven") and job.status != "no_model":
        return f"[red]UNPROVEN[/]: running the best-measured route anyway (--if-unproven best). {calibration.get('message', '')}"
    return f"[red]stopped[/]: {calibration.get('message', '')}"


def quality_report(job: Any, facts: dict[str, Any], events: list[tuple[str, dict[str, Any]]]) -> Table:
    """`status --quality`: the bar, the measured estimate, who answered, escalations, drift, cost vs baseline."""
    table = Table(show_header=False, title=f"Quality report, job {job.id}", title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    route = job.route or {}
    calibration = job.calibration or {}
    estimates = calibration.get("estimates") or {}
    bounds = calibration.get("bounds") or "95% Wilson"
    table.add_row("bar", f"{job.min_quality:.3f} (the route's lower bound, {bounds}, must meet it)")
    measure = calibration.get("route_measure")
    if measure:
        table.add_row(
            "measured",
            f"{measure['name']}: {measure['right']}/{measure['n']} right, mean {measure['mean']:.3f}, bounds "
            f"[{measure['lower']:.3f}, {measure['upper']:.3f}] ({_confidence(measure)}; {measure['source']})",
        )
    elif job.model_id in estimates:
        est = estimates[job.model_id]
        table.add_row(
            "measured", f"{job.model_id}: {est['mean']:.3f} in [{est['lower']:.3f}, {est['upper']:.3f}], n = {est['n']}"
        )
    else:
        table.add_row("measured", "not measured on this job (priors or stored estimates: see the routing decision)")
    if calibration.get("unproven"):
        table.add_row("[red]unproven[/]", "no route was proven at the bar; " + str(calibration.get("message", "")))
    if calibration.get("simulated_note"):
        table.add_row("[yellow]simulated[/]", calibration["simulated_note"])
    total = sum(facts["answered"].values())
    shares = (
        ", ".join(f"{m} {k:,} ({k / total:.0%})" for m, k in sorted(facts["answered"].items(), key=lambda x: -x[1]))
        if total
        else "none yet"
    )
    table.add_row("answered by", shares)
    if route.get("kind") == "cascade":
        escalated = sum(k for purpose, m, k, _ in facts["calls"] if purpose == "run" and m == route.get("strong_id"))
        table.add_row("escalations", f"{escalated:,} items went to {route.get('strong_id')}")
    if job.n_drift_checked or route.get("drift_share"):
        table.add_row(
            "drift checks", f"{job.n_drift_agreed:,}/{job.n_drift_checked:,} agreed with {route.get('reference_id')}"
        )
    spend: dict[str, Decimal] = {}
    for purpose, _model, _count, cost in facts["calls"]:
        spend[purpose] = spend.get(purpose, Decimal(0)) + cost
    table.add_row("spend", ", ".join(f"{p} {usd(c, 6)}" for p, c in sorted(spend.items())) or "-")
    run = spend.get("run", Decimal(0))
    baseline = facts["baseline_usd"]
    if baseline:
        # The saving is the run items' against the same items on the baseline model; calibration and
        # drift checks are their own line (what choosing and watching the route cost), never a negative saving.
        table.add_row(
            "vs baseline",
            f"run items {usd(run, 6)} against {usd(baseline, 6)} on the baseline model {job.baseline_model_id}: "
            + (
                f"{1 - run / baseline:.0%} saved ({usd(baseline - run, 6)})"
                if run <= baseline
                else f"{run / baseline:.1f}x the baseline, nothing saved"
            ),
        )
        checks = sum((c for p, c in spend.items() if p != "run"), Decimal(0))
        if checks:
            total_spend = run + checks
            table.add_row(
                "checks",
                f"calibration and drift checks {usd(checks, 6)}, to choose and watch the route; all in "
                f"{usd(total_spend, 6)}: {compared(total_spend, baseline)}"
                + ("; calibration pays for itself on larger jobs" if total_spend > baseline else ""),
            )
    for kind, detail in events:
        if kind in ("drift", "provider_stopped", "paused"):
            table.add_row(kind, ", ".join(f"{k}: {v}" for k, v in detail.items()))
    return table


def estimates_table(rows: list[Any], *, fresh: dict[int, bool]) -> Table:
    """Stored quality estimates: per tenant, kind of task and model, with the interval and n."""
    table = Table(title="Measured quality estimates (95% intervals)", title_justify="left")
    for column in ("tenant", "task", "model", "mean", "interval", "n", "source", "measured", "state"):
        table.add_column(column, overflow="fold")
    for r in rows:
        state = "drifted" if r.drifted_at else ("fresh" if fresh.get(r.id) else "stale (expired or re-priced)")
        table.add_row(
            r.tenant,
            r.signature,
            r.model_id,
            f"{r.mean:.3f}",
            f"[{r.lower:.3f}, {r.upper:.3f}]",
            str(r.n),
            r.source,
            f"{r.measured_at:%Y-%m-%d %H:%M}" if r.measured_at else "-",
            state,
        )
    if not rows:
        table.caption = "none yet: jobs with gold labels, `--quality reference`, or `pennyroute calibrate` measure them"
    return table


def calibration_table(summary: dict[str, Any]) -> Table:
    """What a calibration measured: per model, items judged, right, the interval, and the outcome."""
    mode = summary.get("mode")
    truth = "gold labels" if mode == "gold" else f"agreement with {summary.get('reference_id')}"
    title = f"Calibration on {summary.get('sample', 0)} items ({truth}); spent {usd(summary.get('spent_usd'), 6)}"
    table = Table(title=title, title_justify="left")
    bounds = summary.get("bounds") or "95% Wilson"
    for column in ("route", "n", "right", "mean", f"bounds ({bounds})", "$ per item"):
        table.add_column(column, no_wrap=column != "route", overflow="fold")
    chosen = (summary.get("route_measure") or {}).get("name")
    routes = summary.get("routes")
    if routes is None:  # a calibration from before routes were kept
        routes = [{"name": m, **e} for m, e in (summary.get("estimates") or {}).items()]
    for route in routes:
        mark = " [green](chosen)[/]" if route["name"] == chosen and summary.get("outcome") == "chosen" else ""
        if route["name"] == chosen and summary.get("unproven"):
            mark = " [red](best measured, unproven)[/]"
        table.add_row(
            route["name"] + mark,
            str(route["n"]),
            str(route["right"]),
            f"{route['mean']:.3f}",
            f"[{route['lower']:.3f}, {route['upper']:.3f}]"
            + (f" ({route['source']})" if route.get("kind") == "cascade" and route.get("source") else ""),
            usd(route["usd_per_item"], 6) if route.get("usd_per_item") else "-",
        )
    lines = [str(summary.get("message", ""))]
    if summary.get("budget_usd"):
        lines.append(
            f"calibration spent {usd(summary.get('spent_usd'), 6)} of a budget of {usd(summary.get('budget_usd'), 6)} "
            f"({summary.get('budget') or '20%'}); answering every item with the baseline: {usd(summary.get('baseline_only_usd'), 6)}"
        )
    if summary.get("simulated_note"):
        lines.append(f"[yellow]{summary['simulated_note']}[/]")
    table.caption = "\n".join(line for line in lines if line)
    return table


def _confidence(measure: dict[str, Any]) -> str:
    confidence = float(measure.get("confidence") or 0.95)
    return f"{confidence * 100:.4g}% {measure.get('bounds') or 'one-sided, anytime-valid'}"


# Piped or logged output has no terminal width; 120 columns keeps the decision table readable.
PIPED_WIDTH = 120


def console() -> Console:
    return Console(highlight=False, width=None if sys.stdout.isatty() else PIPED_WIDTH)


def error_console() -> Console:
    return Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else PIPED_WIDTH)


# -- budgets ---------------------------------------------------------------------------------------


def budget_set_text(team: str, period: BudgetPeriod) -> str:
    """What `budget set` says: the limit as typed (500, never 5E+2), this month's spend so far (spend
    made before the budget was set counts), and whether the month is already over."""
    cur = period.currency
    text = (
        f"team {team}: {exact(period.limit_amount)} {cur} a month"
        + (f", alert at {period.soft_pct:g}%" if period.soft_pct else "")
        + f"; {period.period_start:%Y-%m} so far: settled {usd(period.settled, 6, currency=cur)}, "
        f"reserved {usd(period.reserved, 6, currency=cur)}"
    )
    if budgets.is_over(period):
        text += (
            f"\n[red]over[/]: the team already spent {usd(period.settled, 6, currency=cur)} this month, "
            f"{pct(period.settled * 100 / period.limit_amount)} of the new limit; nothing more runs until "
            f"{_next_month(period)} or a higher limit"
        )
    return text


def _next_month(period: BudgetPeriod) -> str:
    start = period.period_start
    return f"{start.year + start.month // 12:04d}-{start.month % 12 + 1:02d}-01"


def budget_table(rows: list[Any], *, month: str | None) -> Table:
    """`budget show`: every team's budget for a month, in its own currency; amounts never cut."""
    table = Table(title=f"Budgets{' for ' + month if month else ' this month'}", title_justify="left")
    for column in ("tenant", "team", "month", "limit", "currency", "settled", "reserved", "used", "soft alert"):
        numeric = column in ("limit", "settled", "reserved", "used")
        table.add_column(column, justify="right" if numeric else "left", overflow="fold")
    for row in rows:
        used = row.settled * 100 / row.limit_amount if row.limit_amount else None
        table.add_row(
            row.tenant,
            row.team,
            f"{row.period_start:%Y-%m}",
            exact(row.limit_amount),
            row.currency,
            usd(row.settled, 6, currency=row.currency),
            usd(row.reserved, 6, currency=row.currency),
            pct(used) + (" (over)" if used is not None and used >= 100 else ""),
            (f"{row.soft_pct:g}%" + (" (sent)" if row.soft_alerted_at else "")) if row.soft_pct else "-",
        )
    return table


def execution_line(execution: ModeDecision, *, calibrating: bool) -> str:
    """The decision line of the execution mode: the mode, the saving, and why (calibration is sync)."""
    text = f"[bold]{execution.summary}[/]"
    details = "; ".join(r for r in execution.reasons if not r.startswith("bulk:"))
    if calibrating:
        text += " (after calibration, which runs synchronously)"
    return f"{text}\n  {details}" if details else text


def execution_rows(job: Any, batches: dict[str, int], levers: dict[str, Decimal]) -> list[tuple[str, str]]:
    """A job's execution mode, its provider batches (open ones first) and its savings by lever, as status rows."""
    execution = job.execution or {}
    rows: list[tuple[str, str]] = []
    if execution:
        deadline = f", deadline {job.deadline_at:%Y-%m-%d %H:%M} UTC" if job.deadline_at else ""
        rows.append(("mode", f"{execution.get('summary', execution.get('bulk'))}{deadline}"))
    if batches:
        open_states = ("creating", "pending", "running", "ended", "failed")  # BatchState.OPEN: not yet ingested
        opened = sum(n for state, n in batches.items() if state in open_states)
        parts = ", ".join(f"{n:,} {state}" for state, n in sorted(batches.items()))
        rows.append(("provider batches", f"{opened:,} open ({parts})"))
    if levers and levers.get("baseline_usd"):
        saved = levers["baseline_usd"] - levers["run_spend_usd"]
        batch = levers["batch_run_saved_usd"]
        rows.append(
            (
                "saved vs baseline",
                f"{usd(saved, 6)}: routing {usd(saved - batch, 6)}, batch discount {usd(batch, 6)}",
            )
        )
    return rows


def levers_table(levers: dict[str, Decimal], *, simulated: bool) -> Table:
    """The two savings side by side: what routing saved (the models chosen, at the standard price)
    and what the providers' batch discount saved (the bulk waited), against the baseline model."""
    table = Table(
        title="Savings by lever, against the baseline model" + (" (SIMULATED)" if simulated else ""),
        title_justify="left",
    )
    for name in ("baseline", "routing saved", "batch discount saved", "spent (run items)", "saved in all"):
        table.add_column(name, justify="right")
    baseline = levers.get("baseline_usd", Decimal(0))
    spent = levers.get("run_spend_usd", Decimal(0))
    batch = levers.get("batch_run_saved_usd", Decimal(0))
    saved = baseline - spent
    table.add_row(
        usd(baseline, 6),
        usd(saved - batch, 6),
        usd(batch, 6),
        usd(spent, 6),
        f"{usd(saved, 6)} ({compared(spent, baseline)})" if baseline else "-",
    )
    return table

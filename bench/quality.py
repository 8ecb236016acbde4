"""Calibration as a cost decision, measured on recorded answers: route, held-out accuracy, all-in cost.

    python bench/quality.py                      # sandbox + generated sets, every size, label count and bar
    python bench/quality.py --quick              # a small run (seconds)
    python bench/quality.py --results FILE       # your own recorded answers (format: bench/recorded.py)
    python bench/quality.py --seeds 10 --no-priors --sets cascade-or-flagship

Data: the sandbox (router/providers/sandbox.py `simulate` answers the demo's tickets for every
catalog model, at the catalog's prices) and generated recorded sets (bench/recorded.py: 8-12 models,
prices spanning 50x, shared item difficulty), or a file of your own.

For each set, job size (500, 2,000, 20,000 items), label count (50, 200, 1,000) and bar, over
several seeds (each a random job drawn from the set and a random choice of its labelled items), it
runs the calibration policy (policies.calibration `next_step`) to its end, as router/jobs/calibrate.py
does against real providers, buying each test's answers from the table. Then:

- the run: the items without labels (a labelled item's label is its answer: it is not re-run) go
  to the chosen route; a cascade is costed item by item (both cheap models, plus the strong one
  where they disagree), and 2% of the run items are also answered by the baseline (drift checks)
  unless the route is the baseline itself;
- held-out accuracy: the route's accuracy on the items not used for calibration (those it runs);
- all-in share: calibration + run + drift checks, over the baseline-only cost (every item of the
  job answered by the most expensive model). A job that stops unproven spends only its calibration.

Bars, from the set's own accuracies (on all its items): `cheap` (the best model priced under a
tenth of the baseline's, less 0.03), `cascade` (between the best single model short of the best
and the best cascade), `flagship` (between those and the best model), `none` (above every model).

The summary checks issue 11's targets: all-in above baseline-only in 0 runs; an unproven stop
spends <= 20% of the baseline-only cost; the bar holds on held-out items in >= 95% of proven runs;
the issue's case (about 600 items, 200 labels, bar 0.909, only a cascade or the flagship
qualifies) all in at <= 40% of the baseline-only cost in the median run (an unproven stop, which
answers nothing, counts as missing it).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from itertools import combinations
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.recorded import SHAPES, Table, generate, load_table  # noqa: E402
from policies.calibration import CalibrationJob, Evidence, Option, RouteOption, cheapest_first, next_step  # noqa: E402

SIZES = (500, 2_000, 20_000)
LABELS = (50, 200, 1_000)
SEEDS = 8  # jobs per (set, size, labels, bar): a different random job and choice of labelled items each
CONFIDENCE = 0.95
DRIFT_SHARE = 0.02  # share of run items also answered by the baseline
BUDGET_SHARE = Decimal("0.2")  # the default calibration budget: 20% of the baseline-only cost
# issue 11's targets
MAX_UNPROVEN_SHARE = 0.20
MIN_BAR_HELD = 0.95
ISSUE_CASE = ("cascade-or-flagship", 600, 200, 0.909)
ISSUE_CASE_TARGET = 0.40
# A calibration that takes more steps than this is looping: the bench says so rather than hang.
MAX_STEPS = 1_000


@dataclass(frozen=True, slots=True)
class Run:
    """One job's calibration and run, costed from the recorded answers."""

    table: str
    n_items: int
    labels: int
    bar_name: str
    bar: float
    seed: int
    outcome: str  # chosen | unproven | error (the policy raised: `route` says what)
    route: str  # the chosen route's name, or the unproven stop's best option ("-": none)
    held_accuracy: float | None  # proven runs: accuracy on the items it ran (not used for calibration)
    calibration_usd: Decimal
    run_usd: Decimal  # run items on the route, drift checks included (0 when unproven)
    baseline_usd: Decimal  # every item of the job on the baseline
    steps: int

    @property
    def all_in_usd(self) -> Decimal:
        return self.calibration_usd + self.run_usd

    @property
    def all_in_share(self) -> float:
        return float(self.all_in_usd / self.baseline_usd)

    @property
    def spend_share(self) -> float:
        return float(self.calibration_usd / self.baseline_usd)

    @property
    def bar_held(self) -> bool:
        return self.held_accuracy is not None and self.held_accuracy >= self.bar


# --- one job --------------------------------------------------------------------------------------


def run_job(
    table: Table, *, n_items: int, labels: int, bar: float, seed: int, bar_name: str = "", priors: bool = True
) -> Run:
    """Draw a job of `n_items` from the table with `labels` labelled items, calibrate it, run it."""
    rng = random.Random(f"{table.name}/{n_items}/{labels}/{seed}")
    items = rng.sample(range(table.n), n_items)
    labelled, unlabelled = items[:labels], items[labels:]
    models = table.models()
    # Expected cost per item from the job's own items, as routing estimates it from the job's tokens.
    per_item = {m: sum((table.cost[m][i] for i in items), Decimal(0)) / n_items for m in models}
    baseline = max(models, key=lambda m: (per_item[m], m))
    options = tuple(Option(m, per_item[m], prior=table.priors.get(m) if priors else None) for m in models)
    job = CalibrationJob(
        bar=bar,
        options=cheapest_first(options),
        labelled=tuple(labelled),
        n_items=n_items,
        n_to_run=len(unlabelled),
        baseline_usd_per_item=per_item[baseline],
        budget_usd=BUDGET_SHARE * per_item[baseline] * n_items,
        confidence=CONFIDENCE,
        drift_share=DRIFT_SHARE,
    )
    right: dict[str, dict[int, bool]] = {}
    answers: dict[str, dict[int, str | None]] = {}
    spent = Decimal(0)
    steps = 0
    baseline_usd = per_item[baseline] * n_items

    def ended(outcome: str, route_name: str, held: float | None, run_usd: Decimal) -> Run:
        return Run(
            table.name,
            n_items,
            labels,
            bar_name,
            bar,
            seed,
            outcome,
            route_name,
            held,
            spent,
            run_usd,
            baseline_usd,
            steps,
        )

    try:
        step = next_step(job, Evidence(right, answers, spent))
        while step.kind == "test":
            steps += 1
            model = step.model_id
            assert model is not None
            new = [i for i in step.items if i not in right.get(model, {})]
            if steps > MAX_STEPS or not new:
                raise RuntimeError(f"looping: step {steps} asks {model} again for {len(step.items)} items it answered")
            for i in new:
                right.setdefault(model, {})[i] = table.right[model][i]
                answers.setdefault(model, {})[i] = table.answers[model][i]
                spent += table.cost[model][i]
            step = next_step(job, Evidence(right, answers, spent))
    except Exception as exc:  # the policy failed: the bench records it and goes on
        where = traceback.extract_tb(exc.__traceback__)[-1]
        failure = f"{type(exc).__name__} {exc} at {Path(where.filename).name}:{where.lineno}"
        return ended("error", failure, None, Decimal(0))
    if step.kind != "chosen" or step.route is None:
        name = step.route.name if step.route is not None else "-"
        return ended("unproven", name, None, Decimal(0))
    route = step.route
    run_usd, right_count = run_route(table, route, unlabelled)
    if not (route.kind == "single" and route.model_id == baseline):  # the baseline checks nothing against itself
        # Drift checks: one run item in 1 / DRIFT_SHARE, evenly spread, also answered by the baseline.
        every = round(1 / DRIFT_SHARE)
        run_usd += sum((table.cost[baseline][i] for i in unlabelled[::every]), Decimal(0))
    held = right_count / len(unlabelled) if unlabelled else None
    return ended("chosen", route.name, held, run_usd)


def run_route(table: Table, route: RouteOption, items: Sequence[int]) -> tuple[Decimal, int]:
    """What the route costs on `items` and how many it gets right, item by item from the recorded answers."""
    if route.kind == "single":
        cost, right = table.cost[route.model_id], table.right[route.model_id]
        return sum((cost[i] for i in items), Decimal(0)), sum(right[i] for i in items)
    assert route.second_id is not None and route.strong_id is not None
    a, b = table.answers[route.model_id], table.answers[route.second_id]
    cost_a, cost_b, cost_s = (table.cost[m] for m in (route.model_id, route.second_id, route.strong_id))
    right_a, right_s = table.right[route.model_id], table.right[route.strong_id]
    total, right_count = Decimal(0), 0
    for i in items:
        total += cost_a[i] + cost_b[i]
        if a[i] is not None and a[i] == b[i]:
            right_count += right_a[i]
        else:  # escalated: the strong model answers too
            total += cost_s[i]
            right_count += right_s[i]
    return total, right_count


# --- bars -----------------------------------------------------------------------------------------


def cascade_accuracy(table: Table, first: str, second: str, strong: str) -> float:
    a, b = table.answers[first], table.answers[second]
    right = sum(
        table.right[first][i] if a[i] is not None and a[i] == b[i] else table.right[strong][i] for i in range(table.n)
    )
    return right / max(1, table.n)


def bars_for(table: Table) -> dict[str, float]:
    """The set's bars, from its accuracies on all its items: easy, cheap, cascade, flagship, none."""
    models = table.models()
    accuracy = {m: table.accuracy(m) for m in models}
    per_item = {m: table.usd_per_item(m) for m in models}
    baseline_usd = max(per_item.values())
    best = max(models, key=lambda m: (accuracy[m], -per_item[m]))
    cheap = [m for m in models if per_item[m] * 10 <= baseline_usd and m != best]
    bars: dict[str, float] = {}
    if cheap:  # a cheap model clears it by a wide margin (easy), or by a narrow one (cheap)
        bars["easy"] = round(max(accuracy[m] for m in cheap) - 0.06, 3)
        bars["cheap"] = round(max(accuracy[m] for m in cheap) - 0.03, 3)
    single = max((accuracy[m] for m in models if m != best), default=0.0)
    cascade = max(
        (cascade_accuracy(table, a, b, best) for a, b in combinations(cheap, 2)),
        default=0.0,
    )
    if cascade - single >= 0.02:
        bars["cascade"] = round(single + (cascade - single) / 2, 3)
    top = max(single, cascade)
    if accuracy[best] - top >= 0.005:
        bars["flagship"] = round(top + (accuracy[best] - top) / 2, 3)
    bars["none"] = round(min(0.995, accuracy[best] + 0.02), 3)
    return bars


# --- tables ---------------------------------------------------------------------------------------


def sandbox_table(n: int) -> Table:
    """Every enabled catalog model with a classify prior answers the demo's tickets in the sandbox."""
    from router.catalog import load_catalog
    from router.cli.demo import DEMO_LABELS, write_demo_tickets
    from router.prompts import classify_spec, parse_label
    from router.providers.sandbox import simulate

    path = Path(tempfile.mkdtemp(prefix="pennyroute-quality-")) / "t.jsonl"
    truth = write_demo_tickets(path, n=n, seed=20261122)
    texts = [json.loads(line) for line in path.read_text().splitlines()]
    catalog = load_catalog(None)
    spec = classify_spec(DEMO_LABELS)
    table = Table("sandbox (SIMULATED answers, real prices)", [t["id"] for t in texts], {}, {}, {})
    for model in catalog.models.values():
        quality = model.quality.get("classify")
        if quality is None or not catalog.providers[model.provider].enabled:
            continue
        price = catalog.price(model.model_id)
        answers, right, cost = [], [], []
        for line in texts:
            done = simulate(model.api_model, spec.system, line["text"], spec.max_output_tokens, quality.value)
            answer = parse_label(done.text, DEMO_LABELS)
            answers.append(answer)
            right.append(answer == truth[line["id"]])
            cost.append(price.cost_usd(done.usage))
        table.answers[model.model_id], table.right[model.model_id], table.cost[model.model_id] = answers, right, cost
        table.priors[model.model_id] = quality.value
    return table


# --- the report -----------------------------------------------------------------------------------


def evaluate(
    table: Table,
    *,
    sizes: Iterable[int] = SIZES,
    labels: Iterable[int] = LABELS,
    seeds: int = SEEDS,
    bars: dict[str, float] | None = None,
    priors: bool = True,
    quiet: bool = False,
) -> list[Run]:
    """Every size, label count, bar and seed on one table; print a row per (size, labels, bar)."""
    say = (lambda *a: None) if quiet else print
    bars = bars_for(table) if bars is None else bars
    models = table.models()
    say(f"\n== {table.name}: {table.n:,} items, {len(models)} models{'' if priors else ', no priors'}")
    for note in table.notes:
        say(f"   ({note})")
    for m in models:
        say(f"   {m:<22} accuracy {table.accuracy(m):.3f}   ${table.usd_per_item(m) * 1000:.4f} per 1k items")
    say("   bars: " + ", ".join(f"{name} {bar:.3f}" for name, bar in bars.items()))
    say(
        f"\n   {'items':>6} {'labels':>6} {'bar':>14} {'proven':>6} {'route (most often)':<40} {'held-out':>8} "
        f"{'calib':>6} {'all-in':>13} {'unproven spend':>14}"
    )
    runs: list[Run] = []
    for n_items in sizes:
        if n_items > table.n:
            continue
        for n_labels in labels:
            if n_labels >= n_items:
                continue
            for name, bar in bars.items():
                group = [
                    run_job(table, n_items=n_items, labels=n_labels, bar=bar, seed=s, bar_name=name, priors=priors)
                    for s in range(seeds)
                ]
                runs.extend(group)
                say("   " + group_row(group))
    return runs


def group_row(group: Sequence[Run]) -> str:
    """One line for one (size, labels, bar) over its seeds: shares are means, with the max where it matters."""
    first = group[0]
    proven = [r for r in group if r.outcome == "chosen"]
    unproven = [r for r in group if r.outcome == "unproven"]
    errors = [r for r in group if r.outcome == "error"]
    route, count = Counter(r.route if r.outcome == "chosen" else f"({r.outcome}) {r.route}" for r in group).most_common(
        1
    )[0]
    held = [r.held_accuracy for r in proven if r.held_accuracy is not None]
    held_text = f"{min(held):.3f}" if held else "-"
    miss = sum(1 for r in proven if not r.bar_held)
    all_in = [r.all_in_share for r in group]
    spend = [r.calibration_usd / r.baseline_usd for r in group]
    unproven_text = f"{len(unproven)}: max {max(r.spend_share for r in unproven):.0%}" if unproven else "-"
    if errors:
        unproven_text += f" ERRORS {len(errors)}"
    return (
        f"{first.n_items:>6,} {first.labels:>6,} {first.bar_name + ' ' + format(first.bar, '.3f'):>14} "
        f"{len(proven):>2}/{len(group):<3} {route[:37] + ('' if count == len(group) else f' x{count}'):<40} "
        f"{held_text + ('!' * min(miss, 3)):>8} {float(sum(spend) / len(spend)):>6.0%} "
        f"{sum(all_in) / len(all_in):>5.0%} max {max(all_in):>4.0%} {unproven_text:>14}"
    )


@dataclass(frozen=True, slots=True)
class Summary:
    runs: int
    proven: int
    over_baseline: int
    max_unproven_share: float  # 0.0 when no run stopped unproven
    bar_held_share: float  # over proven runs (1.0 when none)
    unproven: int
    errors: int  # runs where the policy raised

    @property
    def passed(self) -> bool:
        return (
            self.over_baseline == 0
            and self.errors == 0
            and self.max_unproven_share <= MAX_UNPROVEN_SHARE
            and self.bar_held_share >= MIN_BAR_HELD
        )


def summarize(runs: Sequence[Run]) -> Summary:
    proven = [r for r in runs if r.outcome == "chosen"]
    unproven = [r for r in runs if r.outcome == "unproven"]
    return Summary(
        runs=len(runs),
        proven=len(proven),
        over_baseline=sum(1 for r in runs if r.all_in_usd > r.baseline_usd),
        max_unproven_share=max((r.spend_share for r in unproven), default=0.0),
        bar_held_share=sum(r.bar_held for r in proven) / len(proven) if proven else 1.0,
        unproven=len(unproven),
        errors=sum(1 for r in runs if r.outcome == "error"),
    )


def issue_case_met(runs: Sequence[Run]) -> int:
    """Runs of the issue's case that proved a route and cost, all in, at most the target share of the
    baseline-only cost (an unproven stop answers nothing, so it does not meet the target)."""
    return sum(1 for r in runs if r.outcome == "chosen" and r.all_in_share <= ISSUE_CASE_TARGET)


def print_summary(by_table: dict[str, list[Run]], issue_case: list[Run] | None) -> bool:
    print("\n== Summary against issue 11's targets")
    print(
        f"   {'set':<44} {'runs':>5} {'proven':>6} {'unproven':>8} {'over baseline':>13} "
        f"{'max unproven spend':>18} {'bar held (proven)':>17} {'errors':>6}"
    )
    ok = True
    everything: list[Run] = []
    for name, runs in by_table.items():
        everything.extend(runs)
        s = summarize(runs)
        print(
            f"   {name[:44]:<44} {s.runs:>5} {s.proven:>6} {s.unproven:>8} {s.over_baseline:>13} "
            f"{s.max_unproven_share:>18.2%} {s.bar_held_share:>17.1%} {s.errors:>6}"
        )
    total = summarize(everything)
    print(
        f"   {'all':<44} {total.runs:>5} {total.proven:>6} {total.unproven:>8} {total.over_baseline:>13} "
        f"{total.max_unproven_share:>18.2%} {total.bar_held_share:>17.1%} {total.errors:>6}"
    )
    checks = [
        ("runs where the policy raised", f"{total.errors}", "0", total.errors == 0),
        ("runs with all-in > baseline-only", f"{total.over_baseline}", "0", total.over_baseline == 0),
        (
            "max spend share of an unproven stop",
            f"{total.max_unproven_share:.2%}",
            f"<= {MAX_UNPROVEN_SHARE:.0%}",
            total.max_unproven_share <= MAX_UNPROVEN_SHARE,
        ),
        (
            "proven runs where the bar held on held-out items",
            f"{total.bar_held_share:.1%} of {total.proven}",
            f">= {MIN_BAR_HELD:.0%}",
            total.bar_held_share >= MIN_BAR_HELD,
        ),
    ]
    if issue_case:
        met = issue_case_met(issue_case)
        proven = sorted(r.all_in_share for r in issue_case if r.outcome == "chosen")
        routes = Counter(r.route if r.outcome == "chosen" else f"({r.outcome})" for r in issue_case).most_common(3)
        print(
            f"\n   issue case ({ISSUE_CASE[1]} items, {ISSUE_CASE[2]} labels, bar {ISSUE_CASE[3]}, {ISSUE_CASE[0]}): "
            f"{len(proven)}/{len(issue_case)} proven; routes {', '.join(f'{r} x{c}' for r, c in routes)}; all-in of "
            f"proven runs {', '.join(f'{s:.0%}' for s in proven) or '-'}"
        )
        checks.append(
            (
                "issue case runs proven with all-in <= 40%",
                f"{met}/{len(issue_case)}",
                "at least half (median run)",
                met * 2 >= len(issue_case),
            )
        )
    failures = Counter(r.route for r in everything + list(issue_case or []) if r.outcome == "error")
    for failure, count in failures.most_common():
        print(f"   policy raised in {count} runs: {failure}")
    print()
    for what, value, target, passed in checks:
        ok = ok and passed
        print(f"   {'PASS' if passed else 'FAIL'}  {what:<50} {value:>14}   target {target}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--results", type=Path, default=None, help="your recorded answers (bench/recorded.py format)")
    parser.add_argument("--quick", action="store_true", help="a small run: 500 and 2,000 items, 2 seeds")
    parser.add_argument("--seeds", type=int, default=None, help=f"jobs per (size, labels, bar) (default {SEEDS})")
    parser.add_argument("--sets", default=",".join(sorted(SHAPES)), help="generated sets to run (comma-separated)")
    parser.add_argument("--no-sandbox", action="store_true", help="skip the sandbox")
    parser.add_argument("--no-priors", action="store_true", help="give calibration no priors")
    parser.add_argument("--bars", default=None, help="bars to use instead of the derived ones, e.g. 0.85,0.9")
    args = parser.parse_args(argv)
    started = time.monotonic()
    sizes = SIZES[:2] if args.quick else SIZES
    seeds = args.seeds if args.seeds is not None else (2 if args.quick else SEEDS)
    table_size = max(sizes)
    tables: list[Table] = []
    if args.results:
        tables.append(load_table(args.results))
        sizes = tuple(s for s in sizes if s <= tables[0].n) or (tables[0].n,)
    else:
        if not args.no_sandbox:
            tables.append(sandbox_table(table_size))
        tables.extend(generate(shape, table_size + table_size // 5, seed=1) for shape in args.sets.split(",") if shape)
    print(f"pennyroute quality bench: tables ready in {time.monotonic() - started:.0f}s")
    bars = {f"{float(b):.3f}": float(b) for b in args.bars.split(",")} if args.bars else None
    by_table: dict[str, list[Run]] = {}
    issue_case: list[Run] = []
    for table in tables:
        by_table[table.name] = evaluate(table, sizes=sizes, seeds=seeds, bars=bars, priors=not args.no_priors)
        if table.name.startswith(f"generated {ISSUE_CASE[0]} "):
            _, n_items, n_labels, bar = ISSUE_CASE
            issue_case = [
                run_job(
                    table,
                    n_items=n_items,
                    labels=n_labels,
                    bar=bar,
                    seed=s,
                    bar_name="issue",
                    priors=not args.no_priors,
                )
                for s in range(max(seeds, 10))
            ]
            print(f"\n   issue 11's case:\n   {group_row(issue_case)}")
    ok = print_summary(by_table, issue_case)
    print(f"\n   {time.monotonic() - started:.0f}s in all")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

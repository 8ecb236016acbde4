"""Cost and accuracy of routing strategies on labelled data, held out from calibration.

    python bench/quality.py [--items 4000] [--sample 200] [--runs 200] [--results FILE]

Data: by default the sandbox (every catalog model answers every item; errors correlate across
models through a shared item difficulty; costs at the catalog's real prices). With --results, a
file of your own: one row per item and model (CSV with a header, or JSONL) with fields item, model,
answer, correct (1/0 or true/false) and cost (USD).

For each of --runs random splits, --sample items are the calibration sample and the rest are held
out. At bars of 0.90, 0.95 and 0.98 times the best model's accuracy it prints, per strategy, the
held-out accuracy, the cost per 1,000 items, and how often the held-out accuracy met the bar:
always the best model, always the cheapest, the calibrated single model (policies.calibration:
cheapest first, Wilson lower bound >= bar), the cascade (policies.cascade), and the configuration
the policy chooses (the cascade where it wins, else the single model). Asserts nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from policies.calibration import next_step  # noqa: E402
from policies.cascade import choose_cascade  # noqa: E402
from router.catalog import load_catalog  # noqa: E402
from router.cli.demo import write_demo_tickets  # noqa: E402
from router.prompts import classify_spec, parse_label  # noqa: E402
from router.providers.sandbox import simulate, true_label  # noqa: E402

BARS = (0.90, 0.95, 0.98)
SLICE = 50


@dataclass
class Table:
    """Per model: each item's answer, whether it was right, and what it cost."""

    items: list[str]
    answers: dict[str, dict[str, str | None]]
    right: dict[str, dict[str, bool]]
    cost: dict[str, dict[str, Decimal]]
    truth: dict[str, str]

    def models_by_cost(self) -> list[str]:
        return sorted(self.answers, key=lambda m: sum(self.cost[m].values()))

    def accuracy(self, model: str, items: list[str]) -> float:
        return sum(self.right[model][i] for i in items) / len(items)

    def mean_cost(self, model: str, items: list[str]) -> Decimal:
        return sum((self.cost[model][i] for i in items), Decimal(0)) / len(items)


def sandbox_table(n: int) -> Table:
    labels = ("billing", "bug", "account", "other")
    path = Path(tempfile.mkdtemp(prefix="pennyroute-quality-")) / "t.jsonl"
    write_demo_tickets(path, n=n, seed=20261122)
    texts = {json.loads(line)["id"]: json.loads(line)["text"] for line in path.read_text().splitlines()}
    catalog = load_catalog(None)
    spec = classify_spec(labels)
    table = Table(
        items=list(texts), answers={}, right={}, cost={}, truth={i: true_label(t, labels) for i, t in texts.items()}
    )
    for model in catalog.models.values():
        quality = model.quality.get("classify")
        if quality is None or not catalog.providers[model.provider].enabled:
            continue
        price = catalog.price(model.model_id)
        table.answers[model.model_id], table.right[model.model_id], table.cost[model.model_id] = {}, {}, {}
        for item, text in texts.items():
            done = simulate(model.api_model, spec.system, text, spec.max_output_tokens, quality.value)
            answer = parse_label(done.text, labels)
            table.answers[model.model_id][item] = answer
            table.right[model.model_id][item] = answer == table.truth[item]
            table.cost[model.model_id][item] = price.cost_usd(done.usage)
    return table


def file_table(path: Path) -> Table:
    rows: list[dict[str, str]]
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        with path.open() as handle:
            rows = list(csv.DictReader(handle))
    table = Table(items=[], answers=defaultdict(dict), right=defaultdict(dict), cost=defaultdict(dict), truth={})
    for row in rows:
        item, model = str(row["item"]), str(row["model"])
        right = str(row["correct"]).strip().lower() in ("1", "true", "yes")
        table.answers[model][item] = str(row.get("answer")) if row.get("answer") not in (None, "") else None
        table.right[model][item] = right
        table.cost[model][item] = Decimal(str(row["cost"]))
        if right and row.get("answer") not in (None, ""):
            table.truth[item] = str(row["answer"])
    complete = set.intersection(*(set(v) for v in table.answers.values()))
    table.items = sorted(complete)
    for item in table.items:  # an item no model got right has a truth none of them matches
        table.truth.setdefault(item, "\x00no model was right")
    return table


def evaluate(
    table: Table, *, sample_size: int, runs: int, quiet: bool = False
) -> dict[float, dict[str, tuple[float, Decimal, float, int]]]:
    """Run the strategies over `runs` splits; print the tables (unless quiet) and return, per bar
    fraction and strategy, (held-out accuracy, cost per item, share of runs the bar held, runs)."""
    out: dict[float, dict[str, tuple[float, Decimal, float, int]]] = {}
    say = (lambda *a, **k: None) if quiet else print
    models = table.models_by_cost()
    accuracy = {m: table.accuracy(m, table.items) for m in models}
    best = max(models, key=lambda m: (accuracy[m], -float(table.mean_cost(m, table.items))))
    cheapest = models[0]
    say(
        f"\n{len(table.items):,} items, {len(models)} models; best {best} ({accuracy[best]:.3f}), cheapest {cheapest} "
        f"({accuracy[cheapest]:.3f}); {runs} runs, calibration sample {sample_size}, the rest held out\n"
    )
    for m in models:
        say(f"  {m:<22} accuracy {accuracy[m]:.3f}  ${table.mean_cost(m, table.items) * 1000:.4f} per 1k items")
    for fraction in BARS:
        bar = fraction * accuracy[best]
        stats: dict[str, list[tuple[float, Decimal, bool]]] = defaultdict(list)
        no_choice = cascades = cascade_cheaper = 0
        calib_spend: list[Decimal] = []
        for run in range(runs):
            order = list(table.items)
            random.Random(run).shuffle(order)
            sample, held = order[:sample_size], order[sample_size:]
            for name, model in (("always best", best), ("always cheapest", cheapest)):
                acc = table.accuracy(model, held)
                stats[name].append((acc, table.mean_cost(model, held), acc >= bar))
            counts: dict[str, tuple[int, int]] = {}
            used: dict[str, list[str]] = {}
            step = next_step(
                models=tuple(models), counts=counts, sample_size=len(sample), bar=bar, confidence=0.95, slice_size=SLICE
            )
            while step.kind == "test":
                assert step.model_id is not None
                taken = used.setdefault(step.model_id, [])
                taken.extend(sample[len(taken) : len(taken) + step.n_items])
                counts[step.model_id] = (len(taken), sum(table.right[step.model_id][i] for i in taken))
                step = next_step(
                    models=tuple(models),
                    counts=counts,
                    sample_size=len(sample),
                    bar=bar,
                    confidence=0.95,
                    slice_size=SLICE,
                )
            calib_spend.append(sum((table.cost[m][i] for m, items in used.items() for i in items), Decimal(0)))
            if step.kind != "chosen" or step.model_id is None:
                no_choice += 1
                continue
            single = step.model_id
            acc = table.accuracy(single, held)
            single_cost = table.mean_cost(single, held)
            stats["calibrated single"].append((acc, single_cost, acc >= bar))
            answers = {m: {i: table.answers[m][i] for i in items} for m, items in used.items()}
            costs = {m: table.mean_cost(m, sample) for m in used}
            truth = {i: table.truth[i] for i in sample}
            choice = choose_cascade(answers=answers, truth=truth, costs=costs, single=single, bar=bar, confidence=0.95)
            chosen = (acc, single_cost, acc >= bar)
            if choice is not None and choice.use_cascade:
                cascades += 1
                right = 0
                cost = Decimal(0)
                for i in held:
                    a, b = table.answers[choice.first_id][i], table.answers[choice.second_id][i]
                    cost += table.cost[choice.first_id][i] + table.cost[choice.second_id][i]
                    if a is not None and a == b:
                        right += a == table.truth[i]
                    else:
                        cost += table.cost[single][i]
                        right += table.right[single][i]
                c_acc, c_cost = right / len(held), cost / len(held)
                stats["cascade (where chosen)"].append((c_acc, c_cost, c_acc >= bar))
                chosen = (c_acc, c_cost, c_acc >= bar)
                cascade_cheaper += c_cost < single_cost
            stats["policy's choice"].append(chosen)
        oracle = next((m for m in models if accuracy[m] >= bar), None)
        say(
            f"\nbar {fraction:.2f} x best = {bar:.3f}   (no model proven in {no_choice}/{runs} runs; cascade chosen in "
            f"{cascades}; cheaper than the single choice in {cascade_cheaper}/{cascades}; calibration spend "
            f"${sum(calib_spend, Decimal(0)) / runs:.4f} per run)"
        )
        if oracle is not None:
            say(
                f"  (the cheapest model whose accuracy on all items meets the bar is {oracle}: "
                f"${table.mean_cost(oracle, table.items) * 1000:.4f} per 1k, {accuracy[oracle]:.3f}; a sample of "
                f"{sample_size} can prove it only when its margin over the bar is wide enough)"
            )
        say(f"  {'strategy':<24} {'accuracy':>9} {'$ per 1k':>10} {'bar held':>9} {'runs':>6}")
        out[fraction] = {
            "cascade cheaper than its single": (
                cascade_cheaper / cascades if cascades else 1.0,
                Decimal(0),
                0.0,
                cascades,
            )
        }
        for name in (
            "always best",
            "always cheapest",
            "calibrated single",
            "cascade (where chosen)",
            "policy's choice",
        ):
            rows = stats.get(name, [])
            if not rows:
                say(f"  {name:<24} {'-':>9} {'-':>10} {'-':>9} {0:>6}")
                continue
            acc = sum(r[0] for r in rows) / len(rows)
            cost = sum((r[1] for r in rows), Decimal(0)) / len(rows)
            held_share = sum(r[2] for r in rows) / len(rows)
            out[fraction][name] = (acc, cost, held_share, len(rows))
            say(f"  {name:<24} {acc:>9.3f} {cost * 1000:>10.4f} {held_share:>9.1%} {len(rows):>6}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=4000, help="sandbox items")
    parser.add_argument("--sample", type=int, default=200, help="calibration sample size")
    parser.add_argument("--runs", type=int, default=200, help="random calibration/held-out splits")
    parser.add_argument(
        "--results", type=Path, default=None, help="your own per-item, per-model results (CSV or JSONL)"
    )
    args = parser.parse_args(argv)
    table = file_table(args.results) if args.results else sandbox_table(args.items)
    print(
        f"pennyroute quality: {'file ' + str(args.results) if args.results else 'sandbox (SIMULATED answers, real prices)'}"
    )
    evaluate(table, sample_size=args.sample, runs=args.runs)


if __name__ == "__main__":
    main()

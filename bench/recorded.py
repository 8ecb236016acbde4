"""Recorded answers: the format bench/quality.py reads, and a generator of realistic recorded sets.

The format
----------
One row per (item, model), in JSONL (one object a line) or CSV (a header row, then one row a line):

    item           the item's id (any string)
    model          the model's id (any string)
    answer         what the model answered (a label; empty or null when it gave none)
    correct        whether the answer was right: 1/0, true/false, yes/no. May be left out when the
                   item's `gold` is given: the answer is then right when it equals the gold label.
    cost_usd       what the call cost, in USD (`cost` is read too). Or, instead:
    input_tokens,  the call's tokens, priced at the model's USD per million tokens, taken from the
    output_tokens  side file (below) when it names the model, else from pennyroute's catalog
    gold           optional: the item's right label (on any of its rows)

Side file, optional: `<FILE>.models.json` (e.g. `answers.jsonl.models.json`), an object per model:

    {"big-model": {"input_usd_per_mtok": "10", "output_usd_per_mtok": "40", "prior": 0.95}, ...}

`prior` (optional) is a rough accuracy known before measuring, as a catalog's default prior is: it
only orders calibration's tests. A row's `cost_usd` wins over its tokens. Items that some model has
no row for are dropped (every route must be able to answer every item), and said so.

    {"item": "q17", "model": "small-model", "answer": "B", "correct": 0, "input_tokens": 612, "output_tokens": 2, "gold": "C"}

The generator
-------------
`generate(shape, n_items, seed)` draws a set shaped like real ones: 8-12 models priced from $0.20
to $10 per million input tokens (output 4x input), accuracies from 0.5 to 0.96, errors that
correlate (each item has a latent difficulty every model shares; a model is right when its ability
beats that difficulty plus its own noise), wrong answers that are often the item's one plausible
wrong label, few-shot prompts of 300-900 tokens, 2- or 4-option tasks. `SHAPES` holds a set where a
cheap model qualifies and one (the shape of issue 11's case) where only a cascade or the flagship
reaches a bar of 0.909.

    python bench/recorded.py cascade-or-flagship answers.jsonl --items 600 --seed 1
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from statistics import NormalDist

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MTOK = Decimal(1_000_000)
TRUE_WORDS = ("1", "true", "yes", "y", "t")


@dataclass
class Table:
    """Every model's answer to every item: whether it was right and what it cost. Items are 0..n-1."""

    name: str
    ids: list[str]
    answers: dict[str, list[str | None]]
    right: dict[str, list[bool]]
    cost: dict[str, list[Decimal]]
    priors: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.ids)

    def models(self) -> list[str]:
        """Cheapest first, by mean cost per item."""
        return sorted(self.answers, key=lambda m: (self.usd_per_item(m), m))

    def usd_per_item(self, model: str) -> Decimal:
        return sum(self.cost[model], Decimal(0)) / max(1, self.n)

    def accuracy(self, model: str, items: Iterable[int] | None = None) -> float:
        chosen = range(self.n) if items is None else items
        right = total = 0
        for i in chosen:
            right += self.right[model][i]
            total += 1
        return right / total if total else 0.0


# --- reading and writing --------------------------------------------------------------------------


def read_rows(path: Path) -> Iterator[dict[str, str]]:
    """The file's rows as dicts of strings (JSONL or CSV, told apart by the suffix)."""
    if path.suffix in (".jsonl", ".ndjson", ".json"):
        with path.open() as handle:
            for line in handle:
                if line.strip():
                    yield {k: "" if v is None else str(v) for k, v in json.loads(line).items()}
    else:
        with path.open(newline="") as handle:
            yield from csv.DictReader(handle)


def side_file(path: Path) -> Path:
    return path.with_name(path.name + ".models.json")


def load_table(path: Path) -> Table:
    """Read a recorded-results file (and its side file, if any) into a Table."""
    side: dict[str, dict[str, object]] = json.loads(side_file(path).read_text()) if side_file(path).exists() else {}
    return build_table(path.name, read_rows(path), side)


def build_table(name: str, rows: Iterable[dict[str, str]], side: dict[str, dict[str, object]]) -> Table:
    """A Table from rows of the recorded format and the side file's per-model prices and priors."""
    prices: dict[str, tuple[Decimal, Decimal]] = {
        m: (Decimal(str(v["input_usd_per_mtok"])), Decimal(str(v["output_usd_per_mtok"])))
        for m, v in side.items()
        if "input_usd_per_mtok" in v and "output_usd_per_mtok" in v
    }
    catalog = None
    gold: dict[str, str] = {}
    seen: dict[str, dict[str, tuple[str | None, str, Decimal]]] = {}
    for number, row in enumerate(rows, start=1):
        item, model = row.get("item", ""), row.get("model", "")
        if not item or not model:
            raise ValueError(f"row {number}: needs `item` and `model`")
        answer = row.get("answer") or None
        if row.get("gold"):
            gold[item] = row["gold"]
        raw_cost = row.get("cost_usd") or row.get("cost") or ""
        if raw_cost:
            cost = Decimal(raw_cost)
        elif row.get("input_tokens") or row.get("output_tokens"):
            if model not in prices:
                if catalog is None:
                    from router.catalog import load_catalog

                    catalog = load_catalog(None)
                if model not in catalog.models:
                    raise ValueError(f"row {number}: no price for model {model!r} (side file or catalog)")
                price = catalog.price(model)
                prices[model] = (price.input.at(0), price.output.at(0))
            in_rate, out_rate = prices[model]
            tokens_in, tokens_out = int(row.get("input_tokens") or 0), int(row.get("output_tokens") or 0)
            cost = (tokens_in * in_rate + tokens_out * out_rate) / MTOK
        else:
            raise ValueError(f"row {number}: needs `cost_usd`, or `input_tokens` and `output_tokens`")
        seen.setdefault(model, {})[item] = (answer, row.get("correct", ""), cost)
    if not seen:
        raise ValueError(f"{name}: no rows")
    complete = set.intersection(*(set(v) for v in seen.values()))
    ids = sorted(complete)
    table = Table(name, ids, {}, {}, {}, priors={m: _prior(side.get(m, {})) for m in seen})
    dropped = len(set.union(*(set(v) for v in seen.values()))) - len(ids)
    if dropped:
        table.notes.append(f"{dropped} items dropped: some model has no row for them")
    for model, by_item in seen.items():
        answers, right, costs = [], [], []
        for item in ids:
            answer, correct, cost = by_item[item]
            if correct.strip():
                ok = correct.strip().lower() in TRUE_WORDS
            elif item in gold:
                ok = answer is not None and answer == gold[item]
            else:
                raise ValueError(f"item {item!r}, model {model!r}: needs `correct` or the item's `gold`")
            answers.append(answer)
            right.append(ok)
            costs.append(cost)
        table.answers[model], table.right[model], table.cost[model] = answers, right, costs
    return table


def _prior(entry: dict[str, object]) -> float | None:
    value = entry.get("prior")
    return None if value is None else float(str(value))


def write_rows(path: Path, rows: Iterable[dict[str, object]], side: dict[str, dict[str, object]]) -> None:
    """Write rows in the recorded format (JSONL or CSV by suffix) and the side file beside them."""
    rows = list(rows)
    if path.suffix == ".csv":
        fields = ["item", "model", "answer", "correct", "cost_usd", "input_tokens", "output_tokens", "gold"]
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    else:
        with path.open("w") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
    side_file(path).write_text(json.dumps(side, indent=1) + "\n")


# --- the generator --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelSpec:
    model_id: str
    input_usd_per_mtok: str  # output is OUTPUT_PRICE_FACTOR times this
    accuracy: float  # expected share right over many items
    output_tokens: int = 2  # a label, or a few words around it for chattier models


@dataclass(frozen=True, slots=True)
class Shape:
    name: str
    labels: tuple[str, ...]
    models: tuple[ModelSpec, ...]


# Output tokens cost this many times input tokens, as with most vendors' price sheets.
OUTPUT_PRICE_FACTOR = 4
# How much of a model's miss is the item's shared difficulty (the rest is the model's own noise):
# real models miss the same hard items, so cheap models agreeing is weaker evidence than it looks.
DIFFICULTY_WEIGHT = 0.75
# A wrong answer is this often the item's one plausible wrong label (models then err alike).
SHARED_MISTAKE = 0.6
# Few-shot prompts: instructions, a handful of examples and the item, in tokens.
PROMPT_TOKENS = (300, 900)
# A catalog's prior is a rough judgement from public benchmarks, not a measure of this task.
PRIOR_NOISE = 0.04

SHAPES: dict[str, Shape] = {
    # 2-option task (yes/no): a cheap model is very good at it.
    "cheap-qualifies": Shape(
        "cheap-qualifies",
        ("yes", "no"),
        (
            ModelSpec("nano-1", "0.20", 0.78),
            ModelSpec("mini-2", "0.25", 0.84),
            ModelSpec("small-3", "0.40", 0.935),
            ModelSpec("small-4", "0.60", 0.90, output_tokens=6),
            ModelSpec("mid-5", "1.00", 0.92),
            ModelSpec("mid-6", "1.50", 0.93),
            ModelSpec("large-7", "2.50", 0.945),
            ModelSpec("large-8", "3.00", 0.94, output_tokens=6),
            ModelSpec("xl-9", "8.00", 0.95),
            ModelSpec("flagship-10", "10.00", 0.975),
        ),
    ),
    # 4-option multiple choice, issue 11's case: no cheap model alone reaches 0.909; two of them
    # agreeing, else the flagship, does; two mid-priced models sit at 80% of the flagship's price.
    "cascade-or-flagship": Shape(
        "cascade-or-flagship",
        ("A", "B", "C", "D"),
        (
            ModelSpec("nano-1", "0.20", 0.62),
            ModelSpec("nano-2", "0.25", 0.50),
            ModelSpec("mini-3", "0.30", 0.86),
            ModelSpec("mini-4", "0.40", 0.80, output_tokens=6),
            ModelSpec("small-5", "0.50", 0.88),
            ModelSpec("small-6", "0.80", 0.72),
            ModelSpec("mid-7", "1.25", 0.85),
            ModelSpec("mid-8", "2.00", 0.89),
            ModelSpec("large-9", "3.00", 0.90),
            ModelSpec("xl-10", "8.00", 0.90),
            ModelSpec("xl-11", "8.00", 0.89, output_tokens=6),
            ModelSpec("flagship-12", "10.00", 0.96),
        ),
    ),
}


def generate_rows(
    shape: Shape, n_items: int, seed: int
) -> tuple[list[dict[str, object]], dict[str, dict[str, object]]]:
    """Rows of the recorded format (tokens, not costs; every row carries the gold label) and the side file."""
    rng = random.Random(seed)
    normal = NormalDist()
    noise_weight = (1 - DIFFICULTY_WEIGHT**2) ** 0.5
    side: dict[str, dict[str, object]] = {}
    for spec in shape.models:
        prior = min(0.99, max(0.3, spec.accuracy + rng.gauss(0, PRIOR_NOISE)))
        side[spec.model_id] = {
            "input_usd_per_mtok": spec.input_usd_per_mtok,
            "output_usd_per_mtok": str(Decimal(spec.input_usd_per_mtok) * OUTPUT_PRICE_FACTOR),
            "prior": round(prior, 3),
        }
    rows: list[dict[str, object]] = []
    for i in range(n_items):
        item = f"q{i:06d}"
        gold = rng.choice(shape.labels)
        others = [label for label in shape.labels if label != gold]
        plausible = rng.choice(others)
        difficulty = rng.gauss(0, 1)
        prompt = rng.randint(*PROMPT_TOKENS)
        for spec in shape.models:
            # Right when the shared difficulty and the model's own noise fall below its ability: the
            # mix is a standard normal, so the model's accuracy over many items is `accuracy`.
            right = DIFFICULTY_WEIGHT * difficulty + noise_weight * rng.gauss(0, 1) < normal.inv_cdf(spec.accuracy)
            if right:
                answer = gold
            else:
                answer = plausible if rng.random() < SHARED_MISTAKE else rng.choice(others)
            rows.append(
                {
                    "item": item,
                    "model": spec.model_id,
                    "answer": answer,
                    "correct": int(right),
                    "input_tokens": prompt + rng.randint(-15, 15),  # tokenizers differ a little
                    "output_tokens": max(1, spec.output_tokens + rng.randint(-1, 2)),
                    "gold": gold,
                }
            )
    return rows, side


def generate(shape: str, n_items: int, seed: int) -> Table:
    """A generated recorded set, as bench/quality.py reads it."""
    rows, side = generate_rows(SHAPES[shape], n_items, seed)
    table = build_table(f"generated {shape} (seed {seed})", ({k: str(v) for k, v in r.items()} for r in rows), side)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a generated recorded set (JSONL or CSV, and its side file).")
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("out", type=Path)
    parser.add_argument("--items", type=int, default=600)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rows, side = generate_rows(SHAPES[args.shape], args.items, args.seed)
    write_rows(args.out, rows, side)
    print(
        f"wrote {len(rows):,} rows ({args.items:,} items x {len(side)} models) to {args.out} and {side_file(args.out)}"
    )


if __name__ == "__main__":
    main()

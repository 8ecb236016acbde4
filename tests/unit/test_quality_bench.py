"""bench/quality.py on recorded answers: the format reads back what was written, and the calibration
policy keeps issue 11's hard targets on a quick run (sandbox and a generated set)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from bench.quality import MAX_UNPROVEN_SHARE, MIN_BAR_HELD, Run, evaluate, sandbox_table, summarize
from bench.recorded import SHAPES, generate, generate_rows, load_table, side_file, write_rows


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_recorded_format_reads_back_answers_correctness_and_token_costs(tmp_path: Path, suffix: str) -> None:
    rows, side = generate_rows(SHAPES["cascade-or-flagship"], 40, seed=3)
    path = tmp_path / f"answers{suffix}"
    write_rows(path, rows, side)
    table = load_table(path)
    assert table.n == 40 and set(table.answers) == set(side)
    row = next(r for r in rows if r["item"] == table.ids[7] and r["model"] == "flagship-12")
    price = side["flagship-12"]
    expected = (
        int(str(row["input_tokens"])) * Decimal(str(price["input_usd_per_mtok"]))
        + int(str(row["output_tokens"])) * Decimal(str(price["output_usd_per_mtok"]))
    ) / 1_000_000
    assert table.cost["flagship-12"][7] == expected
    assert table.answers["flagship-12"][7] == row["answer"]
    assert table.right["flagship-12"][7] is bool(row["correct"])
    assert table.priors["flagship-12"] == price["prior"]


def test_recorded_format_takes_cost_usd_judges_by_gold_and_drops_incomplete_items(tmp_path: Path) -> None:
    path = tmp_path / "answers.jsonl"
    lines = [
        {"item": "a", "model": "m1", "answer": "x", "gold": "x", "cost_usd": "0.001"},
        {"item": "a", "model": "m2", "answer": "y", "cost_usd": "0.01"},
        {"item": "b", "model": "m1", "answer": None, "correct": "false", "cost": "0.002"},
        {"item": "b", "model": "m2", "answer": "z", "correct": "true", "cost_usd": "0.02"},
        {"item": "c", "model": "m1", "answer": "x", "correct": 1, "cost_usd": "0.003"},  # m2 has no row for c
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert not side_file(path).exists()
    table = load_table(path)
    assert table.ids == ["a", "b"] and table.notes == ["1 items dropped: some model has no row for them"]
    assert table.right == {"m1": [True, False], "m2": [False, True]}
    assert table.answers["m1"] == ["x", None]
    assert table.cost["m2"] == [Decimal("0.01"), Decimal("0.02")]


def _assert_hard_targets(runs: list[Run]) -> None:
    summary = summarize(runs)
    failures = sorted({r.route for r in runs if r.outcome == "error"})
    assert summary.errors == 0, failures
    assert summary.over_baseline == 0, [r for r in runs if r.all_in_usd > r.baseline_usd]
    assert summary.max_unproven_share <= MAX_UNPROVEN_SHARE, summary
    assert summary.proven > 0, summary  # a check of the bar needs routes to check
    assert summary.bar_held_share >= MIN_BAR_HELD, [r for r in runs if r.outcome == "chosen" and not r.bar_held]


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_on_a_generated_set_calibration_keeps_the_hard_targets(shape: str) -> None:
    """A quick bench run: 500 and 2,000 items, 50, 200 and 1,000 labels, every derived bar, 2 seeds.
    All in never above baseline-only; an unproven stop spends <= 20% of it; the bar holds on
    held-out items in >= 95% of proven runs."""
    runs = evaluate(generate(shape, 2_400, seed=1), sizes=(500, 2_000), seeds=2, quiet=True)
    _assert_hard_targets(runs)


def test_on_held_out_sandbox_items_calibration_keeps_the_hard_targets() -> None:
    runs = evaluate(sandbox_table(2_000), sizes=(500, 2_000), seeds=2, quiet=True)
    _assert_hard_targets(runs)

"""The demo's data: support tickets written from a small lexicon, each with its gold label."""

from __future__ import annotations

import json
import random
from pathlib import Path

DEMO_LABELS = ("billing", "bug", "account", "other")
_TEMPLATES = {
    "billing": [
        "I was charged twice for my subscription this month, please refund one payment.",
        "My invoice shows the wrong price for the team plan.",
        "The card payment failed but I still got a receipt, can you check my billing?",
    ],
    "bug": [
        "The app crashes with an error every time I open settings.",
        "Export is broken: the page goes blank and then shows a 500 error.",
        "Search fails with an exception when the query has an emoji.",
    ],
    "account": [
        "I am locked out after too many password attempts.",
        "Please change the email on my account, I cannot sign in with the old one.",
        "Two-factor codes never arrive so my login fails.",
    ],
    "other": [
        "Hello, a question about your office hours in Berlin.",
        "Are you hiring support engineers this year?",
        "Thanks for the quick help last week!",
    ],
}
_OPENERS = ["", "Hi team, ", "Good morning. ", "Urgent: ", "Quick one: ", "Hello, ", "Sorry to bother you: "]
_NAMES = ["Ana", "Ben", "Chloe", "Dmitri", "Eva", "Farid", "Greta", "Hugo", "Ines", "Jon"]


def write_demo_file(path: Path, n: int = 400, seed: int = 7, labelled: int | None = None) -> Path:
    """Write `n` tickets as JSONL to `path`; the first `labelled` (default: all) carry their gold label."""
    write_demo_tickets(path, n=n, seed=seed, labelled=labelled)
    return path


def write_demo_tickets(path: Path, *, n: int, seed: int = 7, labelled: int | None = None) -> dict[str, str]:
    """Write `n` tickets to `path`; return every ticket's right label by id (to score the results)."""
    rng = random.Random(seed)
    truth: dict[str, str] = {}
    with path.open("w") as handle:
        for i in range(n):
            label = rng.choice(DEMO_LABELS)
            text = (
                f"{rng.choice(_OPENERS)}{rng.choice(_TEMPLATES[label])} "
                f"Customer {rng.choice(_NAMES)}, ref {rng.randint(10000, 99999)}."
            )
            line: dict[str, str] = {"id": f"t{i:05d}", "text": text}
            if labelled is None or i < labelled:
                line["gold"] = label
            truth[line["id"]] = label
            handle.write(json.dumps(line) + "\n")
    return truth

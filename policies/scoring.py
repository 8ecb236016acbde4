"""When an answer counts as right: the same label, or a summary close enough to the reference."""

from __future__ import annotations

from collections import Counter

# A summary passes when its words overlap the reference summary's with an F1 of at least this
# (ROUGE-1 F1): two faithful summaries of the same text share most content words; a summary that
# misses the point or runs off the length shares few.
SUMMARY_PASS_F1 = 0.5


def agrees(task: str, answer: str | None, truth: str) -> bool:
    """Whether an answer counts as right: the same label, or a summary close to the reference."""
    if answer is None:
        return False
    if task == "classify":
        return answer == truth
    return overlap_f1(answer, truth) >= SUMMARY_PASS_F1


def overlap_f1(answer: str, reference: str) -> float:
    """Word-overlap F1 (ROUGE-1) between two texts, case-insensitive, counting repeats."""
    a = Counter(answer.lower().split())
    b = Counter(reference.lower().split())
    common = sum((a & b).values())
    if not common:
        return 0.0
    precision, recall = common / sum(a.values()), common / sum(b.values())
    return 2 * precision * recall / (precision + recall)

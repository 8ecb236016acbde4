"""Calibration, as a cost decision: which model to test next, on which labelled items, and when to stop.

A job that measures quality before it runs has labelled items (gold, or a reference model's
answers). Testing a model on them costs money; what it can buy is a cheaper route for the items
still to run. So every step weighs the two:

    value of a test = P(the model can be proven on the labels there are)
                      x (cost per item of the best route so far - the model's) x items still to run
    cost of a test  = the model's price x the items it needs to be decided

A test runs only while its value exceeds its cost, and only while it keeps two ceilings: the
calibration budget, and the hard rule that calibration plus the worst route still possible (the
cheapest proven route, else the baseline) plus drift checks never costs more than answering every
item of the job with the baseline. A model priced near the best route can save little and is not
tested; the baseline itself is tested only when nothing cheaper can be proven and the labelled items
it answers are ones the baseline-only job would have paid for anyway.

Every label is used: a model is tested a slice at a time (the slice doubling as its record grows)
until its bound decides it or the labels run out. The bounds (policies/confidence.py `proving_bound`)
stay valid however many looks are taken: a fifth of the error allowed goes to an anytime-valid bound
read at every look, the rest to one exact bound read at the last look, when the record holds every
label. The bound shown is the bound used.

Routes are single models or cascades. A cascade (two cheap models; where they agree their answer
stands, else the item escalates to a strong model) is judged from answers already bought: the two
cheap models' answers on the labels they share, and the strong model's answers on the items where
they disagree (bought for that, and only those). Being picked as the best of several pairs on the
same labels overstates a pair, so at the early looks the error is shared out over the pairs
considered (Bonferroni), and the last look's share goes to one pair only, picked before its labels
are scored: the cheapest to run, by how often its two models agree (answers, not labels).

Pure: frozen values in, a Step (with its reasons) out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import combinations
from statistics import NormalDist

from policies.confidence import BOUNDS_NOTE, anytime_lower_bound, anytime_upper_bound, proving_bound, share_to_prove

# A model's first look uses this many labelled items; each later slice doubles its record (25, 50,
# 100, 200, ...), so a clear case is decided in one or two looks and a close one gets every label.
FIRST_SLICE = 25
# Cascades are formed from at most this many of the cheapest measured models (so at most 3 pairs):
# every pair considered costs the chosen one confidence.
CASCADE_POOL = 3
# A cascade is looked at once its two cheap models share this many labelled answers.
CASCADE_MIN_SHARED = 20
# A model whose measured accuracy is below this, or more than CASCADE_SPAN under the bar, adds little
# to a cascade: its agreements are too often wrong, and it takes a pair's place from a better model.
CASCADE_MIN_ACCURACY = 0.6
CASCADE_SPAN = 0.15
# Expected costs come from the job's average item; a slice of real items can cost more. Budget and
# hard-rule checks count every expected cost this much higher, so variance does not break them.
COST_MARGIN = Decimal("1.1")
# Default strength of a catalog prior, in labelled items: enough to order tests, never to prove.
PRIOR_WEIGHT = 4


@dataclass(frozen=True, slots=True)
class Option:
    """A model calibration may test: its expected cost per answer, and what is known before testing."""

    model_id: str
    usd_per_item: Decimal
    prior: float | None = None  # the catalog's prior for the task; orders tests, never proves
    stored: tuple[int, int] | None = None  # a fresh stored (n, right) of this tenant's same kind of job


@dataclass(frozen=True, slots=True)
class CalibrationJob:
    """What the decision needs to know about the job, fixed for its calibration."""

    bar: float
    options: tuple[Option, ...]  # every model meeting the constraints
    labelled: tuple[int, ...]  # labelled item ids, in the order they are used
    n_items: int  # every item of the job: the baseline-only cost answers them all
    n_to_run: int  # items the route will answer after calibration
    baseline_usd_per_item: Decimal
    budget_usd: Decimal  # the calibration budget
    confidence: float = 0.95  # one-sided, over every look (policies/confidence.py proving_bound)
    drift_share: float = 0.0  # share of run items also answered by the baseline (drift checks)
    judge_usd_per_item: Decimal = Decimal(0)  # summaries: judging one answer
    cascades: bool = True  # classification only: answers must be comparable
    run_unproven: bool = False  # --if-unproven best: an unproven job still runs (on at most the baseline)


@dataclass(frozen=True, slots=True)
class Evidence:
    """What calibration has bought so far."""

    right: Mapping[str, Mapping[int, bool]]  # model -> labelled item -> answered right
    answers: Mapping[str, Mapping[int, str | None]]  # model -> item -> answer (cascades compare them)
    spent_usd: Decimal


@dataclass(frozen=True, slots=True)
class Measure:
    """One route's record: n judged, right, and its bounds at the confidence shown (the lower one is
    the proving bound the decision used)."""

    n: int
    right: int
    lower: float
    upper: float
    confidence: float
    source: str  # "this job" | "stored" | "cascade"

    @property
    def mean(self) -> float:
        return self.right / self.n if self.n else 0.0

    @property
    def bounds(self) -> str:
        """What kind of bounds these are, as shown with them."""
        return "one-sided, anytime-valid" if self.source == "stored" else BOUNDS_NOTE


@dataclass(frozen=True, slots=True)
class RouteOption:
    """A route calibration can choose: one model, or a cascade (first, second -> strong)."""

    kind: str  # single | cascade
    model_id: str
    usd_per_item: Decimal  # expected, drift checks included
    measure: Measure
    second_id: str | None = None
    strong_id: str | None = None
    escalated: int = 0  # cascade: items of the n that went to the strong model

    @property
    def name(self) -> str:
        if self.kind == "cascade":
            return f"cascade {self.model_id} + {self.second_id} -> {self.strong_id}"
        return self.model_id


@dataclass(frozen=True, slots=True)
class Step:
    """What to do next.

    test      `model_id` answers `items` (labelled item ids), then decide again
    chosen    `route` is proven: its bound meets the bar
    unproven  nothing is proven and no test is worth its cost or possible; `route` is the
              best-measured option (run only with --if-unproven best), `more_labels` how many more
              labelled items would decide it (0: more labels would not help)
    """

    kind: str
    reason: str
    model_id: str | None = None
    items: tuple[int, ...] = ()
    route: RouteOption | None = None
    more_labels: int = 0
    options: tuple[RouteOption, ...] = field(default=())  # every measured route, cheapest first


def next_step(job: CalibrationJob, evidence: Evidence) -> Step:
    """The next test worth its cost, or the conclusion: the cheapest proven route, or unproven."""
    routes = measured_routes(job, evidence)
    if share_to_prove(len(job.labelled), job.bar, job.confidence) is None and not any(
        r.measure.source == "stored" and r.measure.lower >= job.bar for r in routes
    ):
        least = labels_to_prove(job.bar, job.confidence)
        return Step(
            "unproven",
            f"{len(job.labelled)} labelled items cannot prove a bar of {job.bar:.3f} even if every answer is right "
            f"({percent(job.confidence)} {BOUNDS_NOTE}): at least {least:,} are needed, so about "
            f"{least - len(job.labelled):,} more labelled items would decide it; nothing was tested",
            more_labels=max(0, least - len(job.labelled)),
            options=tuple(routes),
        )
    proven = [r for r in routes if r.measure.lower >= job.bar]
    best = min(proven, key=lambda r: (r.usd_per_item, -r.measure.lower, r.name), default=None)
    # The dearest the run can still turn out: the best proven route; with none, the route a test
    # could prove (None), or the baseline when an unproven job runs anyway.
    worst_route_usd: Decimal | None = best.usd_per_item if best is not None else None
    if best is None and job.run_unproven:
        worst_route_usd = job.baseline_usd_per_item
    tests = _tests(job, evidence, routes, best)
    affordable = [t for t in tests if _affordable(job, evidence, t, worst_route_usd)]
    worth = [t for t in affordable if t.value_usd > t.cost_usd]
    if worth:
        test = max(worth, key=lambda t: (t.value_usd - t.cost_usd, -t.cost_usd))
        return Step("test", test.reason, model_id=test.model_id, items=test.items, options=tuple(routes))
    last_resort = _last_resort(job, evidence, affordable, best)
    if last_resort is not None:
        return Step(
            "test", last_resort.reason, model_id=last_resort.model_id, items=last_resort.items, options=tuple(routes)
        )
    why = _why_stopped(job, evidence, tests, affordable)
    if best is not None:
        return Step(
            "chosen",
            f"{best.name}: {best.measure.right}/{best.measure.n} right, lower bound {best.measure.lower:.3f} >= bar "
            f"{job.bar:.3f} ({percent(best.measure.confidence)} {best.measure.bounds}; {best.measure.source}); {why}",
            model_id=best.model_id,
            route=best,
            options=tuple(routes),
        )
    return _unproven(job, routes, why)


def measured_routes(job: CalibrationJob, evidence: Evidence) -> list[RouteOption]:
    """Every route with a measurement (this job's answers first, else a fresh stored estimate), cheapest first."""
    out: list[RouteOption] = []
    for option in job.options:
        measure = _single_measure(job, evidence, option)
        if measure is not None:
            out.append(RouteOption("single", option.model_id, _with_drift(job, option.usd_per_item, option), measure))
    if job.cascades:
        out.extend(_cascades(job, evidence))
    return sorted(out, key=lambda r: (r.usd_per_item, r.name))


def percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


# --- measures -------------------------------------------------------------------------------------


def _single_measure(job: CalibrationJob, evidence: Evidence, option: Option) -> Measure | None:
    record = evidence.right.get(option.model_id, {})
    n, right = len(record), sum(record.values())
    if n:
        lower = _lower(job, n, right)
        return Measure(n, right, lower, anytime_upper_bound(n, right, job.confidence), job.confidence, "this job")
    if option.stored is None or not option.stored[0]:
        return None
    # A stored estimate is another job's record: no last look of this job's labels, anytime-valid only.
    n, right = option.stored
    return Measure(
        n,
        right,
        anytime_lower_bound(n, right, job.confidence, bar=job.bar),
        anytime_upper_bound(n, right, job.confidence),
        job.confidence,
        "stored",
    )


def _lower(job: CalibrationJob, n: int, right: int, *, ways: int = 1, last: bool = True) -> float:
    """The proving bound of a record on this job's labels (policies/confidence.py proving_bound)."""
    return proving_bound(n, right, len(job.labelled), job.confidence, bar=job.bar, ways=ways, last=last)


def _strong(job: CalibrationJob, evidence: Evidence) -> Option:
    """Where a cascade escalates: the cheapest single model proven on this job, else the best prior,
    else the dearest. Never picked by its record on the items it was asked (the pairs' disagreements
    are the hardest items: every model looks weak there), so it does not drift from one to another."""
    proven = [
        o
        for o in job.options
        if (r := evidence.right.get(o.model_id)) and _lower(job, len(r), sum(r.values())) >= job.bar
    ]
    if proven:
        return min(proven, key=lambda o: (o.usd_per_item, o.model_id))
    return max(job.options, key=lambda o: (o.prior if o.prior is not None else -1.0, o.usd_per_item, o.model_id))


def _pool(job: CalibrationJob, evidence: Evidence, strong: Option) -> list[Option]:
    """The cheap models cascades are formed from: the cheapest few measured well enough to help
    (their own accuracy within CASCADE_SPAN of the bar), each under half the strong model's price."""
    floor = max(CASCADE_MIN_ACCURACY, job.bar - CASCADE_SPAN)
    useful = []
    for option in sorted(job.options, key=lambda o: (o.usd_per_item, o.model_id)):
        record = evidence.right.get(option.model_id, {})
        if option is strong or option.usd_per_item * 2 >= strong.usd_per_item:
            continue
        if len(record) >= CASCADE_MIN_SHARED and sum(record.values()) / len(record) >= floor:
            useful.append(option)
    return useful[:CASCADE_POOL]


def _cascades(job: CalibrationJob, evidence: Evidence) -> list[RouteOption]:
    strong = _strong(job, evidence)
    pool = _pool(job, evidence, strong)
    pairs = list(combinations(pool, 2))
    records = []
    for first, second in pairs:
        shared, missing = _shared(job, evidence, first.model_id, second.model_id, strong.model_id)
        if missing or len(shared) < CASCADE_MIN_SHARED:
            continue
        right = escalated = 0
        a, b = evidence.answers[first.model_id], evidence.answers[second.model_id]
        for item in shared:
            if a[item] is not None and a[item] == b[item]:
                right += evidence.right[first.model_id][item]
            else:
                escalated += 1
                right += evidence.right[strong.model_id][item]
        n = len(shared)
        usd = first.usd_per_item + second.usd_per_item + strong.usd_per_item * Decimal(escalated) / Decimal(n)
        records.append((first, second, n, right, escalated, usd))
    # The last look's share goes to one pair: among those whose record holds every label, the cheapest
    # to run. Its cost comes from how often its models agree, not from the labels, so picking it does not
    # overstate its accuracy.
    complete = [r for r in records if r[2] >= len(job.labelled)]
    last_pair = min(complete, key=lambda r: (r[5], r[0].model_id, r[1].model_id), default=None)
    out = []
    for record in records:
        first, second, n, right, escalated, usd = record
        last = record is last_pair
        plural = "s" if len(pairs) > 1 else ""
        measure = Measure(
            n,
            right,
            _lower(job, n, right, ways=len(pairs), last=last),
            anytime_upper_bound(n, right, job.confidence),
            job.confidence,
            f"cascade, last look: cheapest of {len(pairs)} pair{plural}"
            if last
            else f"cascade, 1 of {len(pairs)} pair{plural}, early looks only",
        )
        out.append(
            RouteOption(
                "cascade",
                first.model_id,
                _with_drift(job, usd, strong),
                measure,
                second_id=second.model_id,
                strong_id=strong.model_id,
                escalated=escalated,
            )
        )
    return out


def _shared(
    job: CalibrationJob, evidence: Evidence, first: str, second: str, strong: str
) -> tuple[list[int], list[int]]:
    """The labelled items both cheap models answered, and those of them (they disagreed) the strong
    model has not answered yet."""
    a, b = evidence.answers.get(first, {}), evidence.answers.get(second, {})
    s = evidence.right.get(strong, {})
    shared = [i for i in job.labelled if i in a and i in b]
    missing = [i for i in shared if (a[i] is None or a[i] != b[i]) and i not in s]
    return shared, missing


def _with_drift(job: CalibrationJob, usd_per_item: Decimal, option: Option | None) -> Decimal:
    """A route's cost per item with its drift checks (a share of items also sent to the baseline)."""
    if option is not None and option.usd_per_item >= job.baseline_usd_per_item:
        return usd_per_item  # the baseline route checks nothing against itself
    return usd_per_item + job.baseline_usd_per_item * Decimal(str(job.drift_share))


# --- tests and their worth ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Test:
    model_id: str
    items: tuple[int, ...]
    cost_usd: Decimal  # this slice
    value_usd: Decimal  # expected saving if it is carried to a decision, less the rest of its cost
    reason: str
    baseline: bool = False
    route_usd: Decimal = Decimal(0)  # per item, the route this test could prove


def _tests(job: CalibrationJob, evidence: Evidence, routes: list[RouteOption], best: RouteOption | None) -> list[_Test]:
    """Every test that could still lead to a cheaper proven route, with its value and its cost."""
    current = best.usd_per_item if best is not None else job.baseline_usd_per_item
    out = [t for option in job.options if (t := _single_test(job, evidence, option, current)) is not None]
    if job.cascades:
        out.extend(_cascade_tests(job, evidence, routes, current))
    return out


def _single_test(job: CalibrationJob, evidence: Evidence, option: Option, current: Decimal) -> _Test | None:
    record = evidence.right.get(option.model_id, {})
    n, right = len(record), sum(record.values())
    remaining = [i for i in job.labelled if i not in record]
    if not remaining:
        return None
    if n and _lower(job, n, right) >= job.bar:
        return None  # already proven
    need = share_to_prove(len(job.labelled), job.bar, job.confidence)
    if need is None:
        return None  # even every label right could not prove the bar
    if n and anytime_upper_bound(n, right, job.confidence) < need:
        return None  # ruled out: it cannot reach what the labels there are could prove
    if option.stored is not None and not n and option.stored[0] and option.stored[1] / option.stored[0] < job.bar:
        return None  # a fresh stored estimate below the bar rules it out
    per_item = _with_drift(job, option.usd_per_item, option)
    saving = current - per_item
    is_baseline = option.usd_per_item >= job.baseline_usd_per_item
    if saving <= 0 and not is_baseline:
        return None
    mean, weight = _belief(option, n, right)
    chance = _chance_at_least(mean, weight, need)
    to_decide = min(len(job.labelled), _items_to_decide(mean, n, job.bar, len(job.labelled), job.confidence))
    slice_n = min(len(remaining), max(FIRST_SLICE, n))  # the record doubles at each look
    label_cost = option.usd_per_item + job.judge_usd_per_item
    after_slice = label_cost * max(0, to_decide - n - slice_n)
    value = Decimal(str(chance)) * max(saving, Decimal(0)) * job.n_to_run - after_slice
    reason = (
        f"test {option.model_id} on {slice_n} more labelled items (has {right}/{n}): "
        f"{chance:.0%} chance to prove it, worth ${max(saving, Decimal(0)) * job.n_to_run:.4f} on "
        f"{job.n_to_run:,} items, for ${label_cost * max(slice_n, to_decide - n):.4f}"
    )
    return _Test(
        option.model_id,
        tuple(remaining[:slice_n]),
        label_cost * slice_n,
        value,
        reason,
        baseline=is_baseline,
        route_usd=per_item,
    )


def _cascade_tests(job: CalibrationJob, evidence: Evidence, routes: list[RouteOption], current: Decimal) -> list[_Test]:
    """The strong model on the items where a promising pair disagreed, or a pair's next slice."""
    strong = _strong(job, evidence)
    pool = _pool(job, evidence, strong)
    # What a pair must reach on every label: the last look's bound (one pair gets it).
    need = share_to_prove(len(job.labelled), job.bar, job.confidence)
    if need is None:
        return []
    measured = {(r.model_id, r.second_id): r for r in routes if r.kind == "cascade"}
    strong_right = evidence.right.get(strong.model_id, {})
    strong_mean = sum(strong_right.values()) / len(strong_right) if strong_right else (strong.prior or 0.9)
    out = []
    for first, second in combinations(pool, 2):
        shared, missing = _shared(job, evidence, first.model_id, second.model_id, strong.model_id)
        a = evidence.answers[first.model_id]
        b = evidence.answers[second.model_id]
        disagree = sum(1 for i in shared if a[i] is None or a[i] != b[i]) / max(1, len(shared))
        agree_right = sum(
            1 for i in shared if a[i] is not None and a[i] == b[i] and evidence.right[first.model_id][i]
        ) / max(1, len(shared))
        mean = agree_right + disagree * strong_mean
        usd = _with_drift(
            job, first.usd_per_item + second.usd_per_item + strong.usd_per_item * Decimal(str(disagree)), strong
        )
        saving = current - usd
        route = measured.get((first.model_id, second.model_id))
        if saving <= 0 or (route is not None and route.measure.lower >= job.bar):
            continue
        if route is not None and route.measure.upper < need:
            continue
        chance = _chance_at_least(mean, len(shared), need)
        worth = Decimal(str(chance)) * saving * job.n_to_run
        name = f"{first.model_id} + {second.model_id} -> {strong.model_id}"
        if missing:
            cost = (strong.usd_per_item + job.judge_usd_per_item) * len(missing)
            reason = (
                f"test {strong.model_id} on the {len(missing)} labelled items where {first.model_id} and "
                f"{second.model_id} disagree: judges cascade {name} ({chance:.0%} chance, worth ${worth:.4f})"
            )
            out.append(_Test(strong.model_id, tuple(missing), cost, worth, reason, route_usd=usd))
            continue
        # Extend the pair: the one with fewer answers first.
        for cheap in sorted((first, second), key=lambda o: len(evidence.right.get(o.model_id, {}))):
            remaining = [i for i in job.labelled if i not in evidence.right.get(cheap.model_id, {})]
            if remaining:
                slice_n = min(len(remaining), max(FIRST_SLICE, len(shared)))
                cost = (cheap.usd_per_item + job.judge_usd_per_item) * slice_n
                expected_escalations = strong.usd_per_item * Decimal(str(disagree)) * slice_n
                reason = (
                    f"test {cheap.model_id} on {slice_n} more labelled items for cascade {name} "
                    f"({chance:.0%} chance, worth ${worth:.4f})"
                )
                out.append(
                    _Test(
                        cheap.model_id,
                        tuple(remaining[:slice_n]),
                        cost,
                        worth - expected_escalations,
                        reason,
                        route_usd=usd,
                    )
                )
                break
    return out


def _affordable(job: CalibrationJob, evidence: Evidence, test: _Test, worst_route_usd: Decimal | None) -> bool:
    """Within the calibration budget, and all in (spent + this test + the dearest route the job can
    still run on) within the baseline-only cost. That route is the best proven one; with none proven
    it is the one this test could prove (a job that proves nothing stops, having spent only its
    calibration), or the baseline when an unproven job runs anyway (--if-unproven best). Costs are
    expected from the job's average item: a slice of real items can cost more, so a test counts
    COST_MARGIN more (the run's many items cost close to the average)."""
    after = evidence.spent_usd + test.cost_usd * COST_MARGIN
    baseline_only = job.baseline_usd_per_item * job.n_items
    route = worst_route_usd if worst_route_usd is not None else test.route_usd
    return after <= job.budget_usd and after + route * job.n_to_run <= baseline_only


def _last_resort(
    job: CalibrationJob, evidence: Evidence, affordable: list[_Test], best: RouteOption | None
) -> _Test | None:
    """Nothing cheaper can be proven: the baseline itself, if it may be, on labels the baseline-only
    job would have paid for anyway (so testing it cannot cost more than running the job on it)."""
    if best is not None:
        return None
    baseline = [t for t in affordable if t.baseline]
    return baseline[0] if baseline else None


def _belief(option: Option, n: int, right: int) -> tuple[float, float]:
    """Mean and weight (in items) of what is believed of a model's accuracy: its record, with its
    prior (or a stored estimate) as a few items' worth, else an even prior."""
    if option.stored is not None and option.stored[0]:
        prior_n, prior_right = option.stored
        prior_mean, prior_weight = prior_right / prior_n, float(prior_n)
    elif option.prior is not None:
        prior_mean, prior_weight = option.prior, float(PRIOR_WEIGHT)
    else:
        prior_mean, prior_weight = 0.5, 2.0
    weight = prior_weight + n
    return (prior_mean * prior_weight + right) / weight, weight


def _chance_at_least(mean: float, weight: float, need: float) -> float:
    """Chance the true accuracy is at least `need`, by the normal approximation of the belief."""
    sd = max(1e-6, (max(mean * (1 - mean), 0.0025) / (weight + 1)) ** 0.5)
    return 1.0 - NormalDist(mean, sd).cdf(need)


def _items_to_decide(mean: float, n: int, bar: float, limit: int, confidence: float) -> int:
    """Labelled items, in all, for the bound at this mean to prove the bar or rule it out (capped at limit)."""
    total = max(n, FIRST_SLICE)
    while total < limit:
        right = round(mean * total)
        if (
            proving_bound(total, right, limit, confidence, bar=bar) >= bar
            or anytime_upper_bound(total, right, confidence) < bar
        ):
            return total
        total *= 2
    return limit


def _why_stopped(job: CalibrationJob, evidence: Evidence, tests: list[_Test], affordable: list[_Test]) -> str:
    if not tests:
        return "no cheaper route is left to test on the labels there are"
    if len(affordable) < len(tests):
        spent = evidence.spent_usd
        blocked = next(t for t in tests if t not in affordable)
        if spent + blocked.cost_usd > job.budget_usd:
            return f"calibration budget ${job.budget_usd:.4f} reached (spent ${spent:.4f}; next test ${blocked.cost_usd:.4f})"
        return "a further test could make the job cost more, all in, than running it on the baseline"
    best = max(tests, key=lambda t: t.value_usd - t.cost_usd)
    return f"no further test is worth its cost (best: {best.model_id}, worth ${best.value_usd:.4f} for ${best.cost_usd:.4f})"


def _unproven(job: CalibrationJob, routes: list[RouteOption], why: str) -> Step:
    if not routes:
        return Step("unproven", f"no model could be measured: {why}")
    best = max(routes, key=lambda r: (r.measure.lower, r.measure.mean, -r.usd_per_item))
    m = best.measure
    more = more_labels(m.n, m.right, job.bar, m.confidence)
    if m.mean <= job.bar:
        outcome = f"its rate {m.mean:.3f} is not above the bar: more labels would not prove it"
        more = 0
    elif more > 10 * max(m.n, 100):
        outcome = (
            f"its rate {m.mean:.3f} is too close to the bar: over {10 * max(m.n, 100):,} more labels would be needed"
        )
    else:
        outcome = f"about {more:,} more labelled items would decide it"
    detail = "; ".join(
        f"{r.name}: {r.measure.right}/{r.measure.n} [{r.measure.lower:.3f}, {r.measure.upper:.3f}]" for r in routes
    )
    return Step(
        "unproven",
        f"no route is proven at bar {job.bar:.3f} ({percent(job.confidence)} {BOUNDS_NOTE}): best "
        f"{best.name} at {m.right}/{m.n} (lower bound {m.lower:.3f}); {outcome}. Stopped: {why}. Measured: {detail}",
        model_id=best.model_id,
        route=best,
        more_labels=more,
        options=tuple(routes),
    )


def labels_to_prove(bar: float, confidence: float) -> int:
    """The fewest labelled items that can prove `bar` at all (every answer right)."""
    n = 1
    while proving_bound(n, n, n, confidence, bar=bar) < bar and n < 10_000_000:
        n = max(n + 1, int(n * 1.1))
    lo = max(1, int(n / 1.1) - 1)
    while lo < n and proving_bound(lo, lo, lo, confidence, bar=bar) < bar:
        lo += 1
    return lo


def more_labels(n: int, right: int, bar: float, confidence: float) -> int:
    """More labelled items, at the same rate, for the bound at the last look on them all to meet the bar
    (0 if it never would)."""
    mean = right / n if n else 0.0
    if mean <= bar:
        return 0
    total = max(n, 1)
    while total < 10_000_000:
        if proving_bound(total, round(mean * total), total, confidence, bar=bar) >= bar:
            return total - n
        total = int(total * 1.2) + 1
    return 0


def cheapest_first(options: Sequence[Option]) -> tuple[Option, ...]:
    return tuple(sorted(options, key=lambda o: (o.usd_per_item, o.model_id)))

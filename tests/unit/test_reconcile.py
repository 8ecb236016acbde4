"""Reconcile without services: the export reader (good and bad files), the comparison's verdicts, the
carry across midnight, the fake's exports, and the command on a SQLite ledger."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from policies.reconcile import ABOVE, BELOW, MATCHES, SHIFTED, BillSide, LedgerSide, Prices, Totals, carry_over, compare
from router.errors import InputError, PennyrouteError
from router.ledger.db import session_scope
from router.ledger.tables import Call, CallStatus, Job, Team
from router.providers.openai_usage import (
    fetch_usage,
    line_item_model,
    parse_costs,
    parse_usage,
    read_costs,
    read_usage,
)
from router.reports.reconcile import model_key
from router.settings import Settings
from tests.fakes.server import start_in_thread
from tests.helpers import run_cli

DAY = date(2026, 12, 3)
T0 = int(datetime(2026, 12, 3, tzinfo=UTC).timestamp())


def usage_result(model: str | None = "gpt-4o-mini-2024-07-18", **counts: Any) -> dict[str, Any]:
    values = {"input_tokens": 1000, "input_cached_tokens": 200, "output_tokens": 50, "num_model_requests": 10}
    return {"object": "organization.usage.completions.result", "model": model, "project_id": None, **values, **counts}


def page(*results: dict[str, Any], start: int = T0, width: int = 86_400) -> dict[str, Any]:
    bucket = {"object": "bucket", "start_time": start, "end_time": start + width, "results": list(results)}
    return {"object": "page", "data": [bucket], "has_more": False, "next_page": None}


def cost_result(line_item: str | None, value: Any, currency: str = "usd") -> dict[str, Any]:
    return {
        "object": "organization.costs.result",
        "amount": {"value": value, "currency": currency},
        "line_item": line_item,
    }


# -- the reader -----------------------------------------------------------------------------------


def test_a_page_sums_per_utc_day_and_model_and_says_which_days_it_covers() -> None:
    export = parse_usage(
        [
            page(usage_result(), usage_result("gpt-4o", num_model_requests=1)),
            page(usage_result(), start=T0 + 86_400, width=3_600),  # one hour of the next day
        ],
        source="u.json",
    )
    assert [(r.day, r.model, r.requests, r.input_tokens, r.cached_input_tokens) for r in export.rows] == [
        (DAY, "gpt-4o", 1, 1000, 200),
        (DAY, "gpt-4o-mini-2024-07-18", 10, 1000, 200),
        (date(2026, 12, 4), "gpt-4o-mini-2024-07-18", 10, 1000, 200),
    ]
    assert export.days == {DAY} and export.partial_days == {date(2026, 12, 4)}


def test_costs_are_read_exactly_from_numbers_and_strings_and_line_items_name_their_model() -> None:
    # One amount as a decimal string (as observed from the API), one as a JSON number, read exactly.
    text = json.dumps(
        page(
            cost_result("gpt-4o-mini-2024-07-18, input", "0.000004500000000000000000000000000000000"),
            cost_result("gpt-4o-mini-2024-07-18, output", "NUMBER", currency="USD"),
        )
    ).replace('"NUMBER"', "0.0000342")
    document = json.loads(text, parse_float=Decimal)
    export = parse_costs(document, source="c.json")
    assert [(r.model, r.amount_usd) for r in export.rows] == [
        ("gpt-4o-mini-2024-07-18", Decimal("0.0000045")),
        ("gpt-4o-mini-2024-07-18", Decimal("0.0000342")),
    ]
    assert line_item_model("gpt-5.4-mini-2026-03-17, cached input") == "gpt-5.4-mini-2026-03-17"
    assert line_item_model("evals | gpt-4o-mini-2024-07-18, input") is None
    assert line_item_model("web search tool calls") is None
    assert model_key("gpt-4o-mini-2024-07-18") == "gpt-4o-mini" and model_key("gpt-4o") == "gpt-4o"


@pytest.mark.parametrize(
    ("document", "says"),
    [
        ({"object": "list", "data": []}, 'u.json: expected a page as the API returns it ({"object": "page"'),
        ([], "u.json: an empty list"),
        ([page(usage_result()), "x"], "u.json: [1]: expected a page"),
        ({"object": "page"}, "u.json: data: missing"),
        (page(usage_result(input_tokens="12")), "u.json: data[0].results[0].input_tokens: expected a whole number, got '12'"),
        (page(usage_result(output_tokens=Decimal("1.5"))), "data[0].results[0].output_tokens: expected a whole number"),
        (page(usage_result(num_model_requests=-1)), "data[0].results[0].num_model_requests: negative"),
        (page(usage_result(num_model_requests=True)), "num_model_requests: expected a whole number, got True"),
        (page(usage_result(input_cached_tokens=2000)), "input_cached_tokens 2,000 exceeds input_tokens 1,000"),
        (page(usage_result(model=None)), "data[0].results[0].model: no model: export the usage grouped by model"),
        (page(cost_result("gpt-4o, input", "1")), "results[0].object: object is 'organization.costs.result', expected"),
        (page(usage_result(), start=T0 + 3_600), "data[0]: the bucket 2026-12-03 01:00 UTC to 2026-12-04 01:00 UTC spans two UTC days"),
        ([page(usage_result()), page(usage_result())], "u.json: [1].data[0]: the bucket starting 2026-12-03 00:00 UTC is also at u.json: [0].data[0]"),
        ({"object": "page", "data": [{"object": "bucket", "start_time": T0, "end_time": T0}]}, "end_time"),
    ],
)  # fmt: skip
def test_a_bad_usage_export_is_refused_naming_the_place(document: Any, says: str) -> None:
    with pytest.raises(InputError) as refused:
        parse_usage(document, source="u.json")
    assert says in str(refused.value)


@pytest.mark.parametrize(
    ("result", "says"),
    [
        (cost_result("gpt-4o, input", "1", currency="eur"), "amount.currency: currency 'eur': the ledger is in USD"),
        (cost_result("gpt-4o, input", "abc"), "amount.value: not an amount: 'abc'"),
        (cost_result("gpt-4o, input", "NaN"), "amount.value: not a finite amount"),
        (cost_result("gpt-4o, input", None), "amount.value: expected an amount"),
        (cost_result(None, "0.5"), "line_item: no line item: export the costs grouped by line item"),
        (usage_result(), "object is 'organization.usage.completions.result', expected 'organization.costs.result'"),
    ],
)
def test_a_bad_costs_export_is_refused_naming_the_place(result: dict[str, Any], says: str) -> None:
    with pytest.raises(InputError) as refused:
        parse_costs(page(result), source="c.json")
    assert says in str(refused.value)


def test_files_that_cannot_be_read_say_why(tmp_path: Path) -> None:
    cases = {
        "missing.json": None,
        "empty.json": "",
        "broken.json": '{"object": "page",\n "data": [}',
        "latin1.json": b"\xff\xfe{",
    }
    said = {}
    for name, content in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            path.write_text(content)
        with pytest.raises(InputError) as refused:
            read_usage(path)
        said[name] = str(refused.value)
    assert "no such file" in said["missing.json"] and "--usage" in said["missing.json"]
    assert "is empty" in said["empty.json"]
    assert said["broken.json"].startswith("line 2, field '--usage'") and "is not JSON" in said["broken.json"]
    assert "not UTF-8" in said["latin1.json"]
    with pytest.raises(InputError, match="is a folder"):
        read_costs(tmp_path)


# -- the comparison -------------------------------------------------------------------------------

PRICES = Prices(Decimal("0.15"), Decimal("0.075"), Decimal("0.60"))
USED = Totals(requests=10, input_tokens=1000, cached_input_tokens=200, output_tokens=50)
USED_USD = PRICES.cost_usd(USED)  # 800 x 0.15 + 200 x 0.075 + 50 x 0.60, per million
WORST = Totals(requests=2, input_tokens=400, output_tokens=100, cost_usd=PRICES.cost_usd(Totals(2, 400, 0, 100)))


@pytest.mark.parametrize(
    ("ledger", "bill", "verdict", "explained", "reason"),
    [
        (LedgerSide(answered=USED.__class__(10, 1000, 200, 50, USED_USD)), BillSide(USED), MATCHES, True, None),
        (LedgerSide(answered=Totals(10, 1000, 200, 50, USED_USD), unknown=WORST), BillSide(USED), ABOVE, True, "its 2 unknown call(s)"),
        (LedgerSide(answered=Totals(10, 1000, 200, 50, USED_USD + Decimal("0.001"))), BillSide(USED), ABOVE, False, "with no unknown calls"),
        (LedgerSide(answered=Totals(10, 1000, 200, 50, USED_USD + Decimal("0.001")), unknown=WORST), BillSide(USED), ABOVE, False, "is unexplained"),
        (LedgerSide(answered=Totals(9, 900, 200, 45, USED_USD - Decimal("0.0000075"))), BillSide(USED), BELOW, True, "requests: ledger 9 < bill 10 (1 short)"),
        (LedgerSide(answered=Totals(10, 1000, 200, 50, USED_USD - Decimal("0.00001"))), BillSide(USED), BELOW, True, "cost: ledger"),
        (LedgerSide(answered=Totals(10, 1000, 200, 50, USED_USD)), BillSide(USED, cost_usd=USED_USD + Decimal("0.01")), BELOW, True, "$0.01 short"),
        (LedgerSide(unknown=WORST), None, ABOVE, True, "its 2 unknown call(s)"),
        (LedgerSide(), BillSide(USED), BELOW, True, "requests: ledger 0 < bill 10"),
    ],
)  # fmt: skip
def test_each_day_and_model_gets_its_verdict(
    ledger: LedgerSide, bill: BillSide | None, verdict: str, explained: bool, reason: str | None
) -> None:
    line = compare(ledger, bill, prices=PRICES, tolerance_usd=Decimal("0.000001"))
    assert line.verdict == verdict, line.reasons
    assert line.explained == explained
    if reason:
        assert reason in line.reasons[0]
    if verdict == BELOW:
        assert line.reasons[0].startswith("LEDGER BELOW THE BILL")


def test_rounding_within_the_tolerance_matches_and_the_bill_is_priced_at_the_ledger_prices() -> None:
    ledger = LedgerSide(answered=Totals(10, 1000, 200, 50, USED_USD - Decimal("0.0000000004")))
    line = compare(ledger, BillSide(USED), prices=PRICES, tolerance_usd=Decimal("0.000001"))
    assert line.verdict == MATCHES and line.bill_cost_from == "usage x ledger prices" and line.bill.cost_usd == USED_USD
    assert compare(ledger, BillSide(USED), prices=PRICES).verdict == BELOW  # no tolerance: a short cost is short


def test_without_prices_only_the_counts_compare_and_in_flight_calls_are_said() -> None:
    line = compare(LedgerSide(answered=Totals(10, 1000, 200, 50, Decimal(1)), in_flight=3), BillSide(USED), prices=None)
    assert line.verdict == MATCHES and line.bill_cost_from == "unpriced"
    assert any("counts compared only" in r for r in line.reasons) and any(
        "3 call(s) still in flight" in r for r in line.reasons
    )


def test_a_shortfall_the_day_before_covers_is_shifted_across_midnight_and_one_it_does_not_stays_below() -> None:
    one = Totals(1, 100, 0, 10, PRICES.cost_usd(Totals(1, 100, 0, 10)))
    day1 = compare(
        LedgerSide(answered=Totals(3, 300, 0, 30, 3 * one.cost_usd)), BillSide(Totals(2, 200, 0, 20)), prices=PRICES
    )
    day2 = compare(
        LedgerSide(answered=Totals(2, 200, 0, 20, 2 * one.cost_usd)), BillSide(Totals(3, 300, 0, 30)), prices=PRICES
    )
    day3 = compare(
        LedgerSide(answered=Totals(1, 100, 0, 10, one.cost_usd)), BillSide(Totals(2, 200, 0, 20)), prices=PRICES
    )
    assert [d.verdict for d in (day1, day2, day3)] == [ABOVE, BELOW, BELOW]
    carried = carry_over([day1, day2, day3])
    assert [d.verdict for d in carried] == [ABOVE, SHIFTED, BELOW]
    assert "midnight" in carried[1].reasons[0]


# -- the fake's exports ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[str]:
    url, stop = start_in_thread(api_key="k", admin_key="admin")
    yield url
    stop()


def test_the_fake_serves_its_bill_in_openais_shapes_paged_and_only_to_the_admin_key(fake: str) -> None:
    httpx.post(f"{fake}/_reset").raise_for_status()
    for n in range(3):
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"hello {n}"}], "max_tokens": 5}
        httpx.post(f"{fake}/v1/chat/completions", json=body, headers={"Authorization": "Bearer k"}).raise_for_status()
    now = int(datetime.now(UTC).timestamp())
    start = now - now % 86_400 - 2 * 86_400  # two empty days, then today
    query: dict[str, Any] = {"start_time": start, "bucket_width": "1d", "group_by": "model", "limit": 2}
    path = f"{fake}/v1/organization/usage/completions"
    assert httpx.get(path, params=query, headers={"Authorization": "Bearer k"}).status_code == 401
    first = httpx.get(path, params=query, headers={"Authorization": "Bearer admin"}).json()
    assert first["has_more"] and [b["results"] for b in first["data"]] == [[], []]
    second = httpx.get(
        path, params={**query, "page": first["next_page"]}, headers={"Authorization": "Bearer admin"}
    ).json()
    export = parse_usage([first, second], source="fake")
    (row,) = export.rows
    assert row.model == "gpt-4o-mini-2024-07-18" and row.requests == 3 and len(export.days) == 3
    costs = httpx.get(
        f"{fake}/v1/organization/costs",
        params={"start_time": start, "group_by": "line_item"},
        headers={"Authorization": "Bearer admin"},
    ).json()
    items = {r.line_item: r.amount_usd for r in parse_costs(costs, source="fake").rows}
    assert set(items) == {"gpt-4o-mini-2024-07-18, input", "gpt-4o-mini-2024-07-18, output"}
    assert items["gpt-4o-mini-2024-07-18, input"] == row.input_tokens * Decimal("0.15") / 1_000_000


def test_a_fetch_follows_the_pages_and_a_refused_key_is_said_without_the_key(fake: str) -> None:
    today = datetime.now(UTC).date()
    pages = fetch_usage(base_url=f"{fake}/v1", admin_key="admin", first=date(today.year, 1, 1), last=today)
    assert len(pages) == -(-((today - date(today.year, 1, 1)).days + 1) // 31)  # 31 days a page
    assert len(parse_usage(pages, source="fake").days) == (today - date(today.year, 1, 1)).days + 1
    with pytest.raises(PennyrouteError) as refused:
        fetch_usage(base_url=f"{fake}/v1", admin_key="sk-proj-wrong-key-0123456789", first=today, last=today)
    assert "the key was refused (HTTP 401)" in str(refused.value) and "wrong-key" not in str(refused.value)


# -- the command, on a SQLite ledger --------------------------------------------------------------


def _ledger_calls(settings: Settings, rows: list[tuple[str, str, int, int, str]]) -> None:
    """Calls of gpt-4o-mini on 2026-12-03 (id, status, input, output, cost), in team growth's ledger."""
    with session_scope(settings) as session:
        team = session.exec(select(Team).where(Team.name == "growth")).one()
        session.add(Job(id="j1", tenant_id=team.tenant_id, team_id=team.id, task="classify", min_quality=0.9))
        session.flush()
        for n, (call_id, status, n_in, n_out, cost) in enumerate(rows):
            session.add(
                Call(
                    id=call_id, job_id="j1", item_id=n, tenant_id=team.tenant_id, team_id=team.id,
                    model_id="gpt-4o-mini", provider="openai", status=status, input_tokens=n_in, output_tokens=n_out,
                    input_usd_per_mtok=Decimal("0.15"), cached_input_usd_per_mtok=Decimal("0.075"),
                    output_usd_per_mtok=Decimal("0.6"), cost_usd=Decimal(cost),
                    started_at=datetime(2026, 12, 3, 12, n, tzinfo=UTC),
                )
            )  # fmt: skip


def _usage_file(tmp_path: Path, requests: int, n_in: int, n_out: int) -> Path:
    path = tmp_path / "usage.json"
    result = usage_result(num_model_requests=requests, input_tokens=n_in, input_cached_tokens=0, output_tokens=n_out)
    path.write_text(json.dumps(page(result)))
    return path


def test_the_command_on_sqlite_finds_a_leak_and_an_explained_excess(sqlite_cli: Settings, tmp_path: Path) -> None:
    _ledger_calls(
        sqlite_cli,
        [("c1", CallStatus.OK, 100, 10, "0.000021"), ("c2", CallStatus.UNKNOWN, 400, 50, "0.00009"),
         ("c3", CallStatus.ERROR, 0, 0, "0")],
    )  # fmt: skip
    flags = ("reconcile", "--since", "2026-12-03", "--until", "2026-12-03", "--tenant", "acme")
    # The provider billed c1 and, late, c2 (fewer tokens than its worst case): above, explained.
    code, text = run_cli(*flags, "--usage", str(_usage_file(tmp_path, 2, 250, 30)), "--json")
    report = json.loads(text)
    assert code == 0 and report["lines"][0]["verdict"] == "above" and report["lines"][0]["explained"]
    assert report["lines"][0]["uncharged_errors"] == 1 and report["lines"][0]["ledger"]["requests"] == 2
    # It billed a third call that the ledger does not have: below, exit 5.
    code, text = run_cli(*flags, "--usage", str(_usage_file(tmp_path, 3, 700, 90)))
    assert code == 5 and "LEDGER BELOW THE BILL" in text and "requests: ledger 2 < bill 3 (1 short)" in text
    out = tmp_path / "r.csv"
    code, _ = run_cli(*flags, "--usage", str(_usage_file(tmp_path, 3, 700, 90)), "-o", str(out))
    header, row = out.read_text().splitlines()
    assert code == 5 and header.startswith("day,model,catalog_models,verdict") and ",below," in row


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (("--month", "2026-13"), "'2026-13' is not a month"),
        (("--since", "2026-12-40"), "--since: '2026-12-40' is not a day"),
        (("--until", "2026-12-01"), "--until needs --since"),
        (("--since", "2026-12-05", "--until", "2026-12-01"), "is before --since"),
        (("--month", "2026-12", "--since", "2026-12-01"), "not both"),
        (("--tolerance", "-1", "--month", "2026-12"), "--tolerance: '-1' is not an amount"),
        (("--provider", "openia", "--month", "2026-12"), "unknown provider 'openia'"),
        (("--provider", "anthropic", "--month", "2026-12"), "only OpenAI's usage export is read today"),
        (("--fetch", "--month", "2026-12"), "--fetch needs an OpenAI organization admin key: set OPENAI_ADMIN_KEY"),
        (("--month", "2026-12", "--team", "nobody"), "unknown team 'nobody'"),
    ],
)
def test_bad_flags_are_named_with_exit_2(
    sqlite_cli: Settings, tmp_path: Path, flags: tuple[str, ...], says: str
) -> None:
    usage = () if "--fetch" in flags else ("--usage", str(_usage_file(tmp_path, 1, 1, 1)))
    code, text = run_cli("reconcile", *usage, *flags)
    assert code == 2 and says in text and "Traceback" not in text


def test_a_bad_export_file_is_named_with_exit_2(sqlite_cli: Settings, tmp_path: Path) -> None:
    path = tmp_path / "usage.json"
    path.write_text(json.dumps(page(usage_result(input_tokens="many"))))
    code, text = run_cli("reconcile", "--usage", str(path), "--month", "2026-12")
    assert code == 2 and "data[0].results[0].input_tokens: expected a whole number, got 'many'" in text
    code, text = run_cli("reconcile", "--month", "2026-12")
    assert code == 2 and "--usage FILE" in text

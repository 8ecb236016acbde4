"""OpenAI's organization usage and costs exports: read from a file, or fetched with an admin key.

Shapes (OpenAI API reference, "Usage" and "Costs"):

    GET {base_url}/organization/usage/completions?start_time=S&end_time=E&bucket_width=1d&group_by=model
        {"object": "page", "has_more": false, "next_page": null,
         "data": [{"object": "bucket", "start_time": 1730419200, "end_time": 1730505600,
                   "results": [{"object": "organization.usage.completions.result", "model": "gpt-4o-mini-2024-07-18",
                                "input_tokens": 1000, "input_cached_tokens": 800, "output_tokens": 500,
                                "num_model_requests": 5, "project_id": null, ...}]}]}
    GET {base_url}/organization/costs?start_time=S&end_time=E&bucket_width=1d&group_by=line_item
        ... "results": [{"object": "organization.costs.result", "amount": {"value": 0.06, "currency": "usd"},
                         "line_item": "gpt-4o-mini-2024-07-18, input", "project_id": null}]

`input_tokens` includes `input_cached_tokens`. Buckets are UTC: a 1d bucket runs from one UTC
midnight to the next. A costs line item is "<model>, <kind>" (kind: input, cached input, output...);
one with a surface in front ("evals | gpt-4o-mini-2024-07-18, input") or no model ("web search tool
calls") is not a chat completion's and is kept apart. Amounts may come as JSON numbers or as decimal
strings ("0.0000045000..."); both are read exactly.

A file holds one page as the API returns it, or a JSON list of pages (every page of a paged fetch).
Anything else is refused with the place that is wrong ("data[2].results[0].input_tokens: ..."), never
guessed at. The dashboard's CSV export has no documented shape, so it is not read.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import httpx

from router.errors import InputError, PennyrouteError
from router.providers.http import build_client, error_message

USAGE_PATH = "/organization/usage/completions"
COSTS_PATH = "/organization/costs"
USAGE_RESULT = "organization.usage.completions.result"
COSTS_RESULT = "organization.costs.result"
DAY_S = 86_400
# The most buckets a page may hold, per the API reference: 31 days of usage, 180 of costs.
USAGE_PAGE_DAYS = 31
COSTS_PAGE_DAYS = 180
# An admin call is one small JSON page: 60 s is long for it, but the API aggregates a month of usage.
FETCH_TIMEOUT_S = 60.0
# A paged fetch that has not ended after this many pages is a server looping on its cursor.
MAX_PAGES = 1_000


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One model's completions usage on one UTC day, as the provider counted it."""

    day: date
    model: str  # the provider's name: often a snapshot, gpt-4o-mini-2024-07-18
    requests: int
    input_tokens: int  # cached included
    cached_input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class CostRow:
    """One line item's cost on one UTC day; `model` None when the line item is not a model's tokens."""

    day: date
    line_item: str
    model: str | None
    amount_usd: Decimal


@dataclass(frozen=True, slots=True)
class Export:
    """What an export holds: its rows, summed per day and model (or line item), and the UTC days its
    buckets cover whole (`days`) or only in part (`partial_days`)."""

    rows: tuple[Any, ...]
    days: frozenset[date]
    partial_days: frozenset[date]


# -- reading --------------------------------------------------------------------------------------


def read_usage(path: Path, *, project: str | None = None) -> Export:
    """The completions usage export in `path` (UsageRow rows); InputError naming the place that is wrong."""
    return parse_usage(_load(path, what="--usage"), source=str(path), project=project)


def read_costs(path: Path, *, project: str | None = None) -> Export:
    """The costs export in `path` (CostRow rows); InputError naming the place that is wrong."""
    return parse_costs(_load(path, what="--costs"), source=str(path), project=project)


def parse_usage(document: Any, *, source: str, project: str | None = None) -> Export:
    """Usage pages (one page, or a list of pages) as UsageRow per UTC day and model."""
    sums: dict[tuple[date, str], list[int]] = {}
    coverage: dict[date, int] = {}
    for where, bucket, day in _buckets(document, source=source, coverage=coverage):
        for k, result in enumerate(_list(bucket, "results", where)):
            at = f"{where}.results[{k}]"
            _object(
                result,
                USAGE_RESULT,
                at,
                hint="this reads the completions usage export (/organization/usage/completions)",
            )
            if project is not None and result.get("project_id") != project:
                continue
            counts = [
                _count(result, "num_model_requests", at),
                _count(result, "input_tokens", at),
                _count(result, "input_cached_tokens", at, optional=True),
                _count(result, "output_tokens", at),
            ]
            model = result.get("model")
            if not isinstance(model, str) or not model:
                if not any(counts):
                    continue  # an empty group carries no usage to attribute
                raise InputError(
                    f"no model: export the usage grouped by model (group_by=model), got {model!r}",
                    field=f"{at}.model",
                )
            if counts[2] > counts[1]:
                raise InputError(
                    f"input_cached_tokens {counts[2]:,} exceeds input_tokens {counts[1]:,} (which includes them)",
                    field=f"{at}.input_cached_tokens",
                )
            total = sums.setdefault((day, model), [0, 0, 0, 0])
            for n, value in enumerate(counts):
                total[n] += value
    rows = tuple(UsageRow(day, model, *values) for (day, model), values in sorted(sums.items()))
    return _export(rows, coverage)


def parse_costs(document: Any, *, source: str, project: str | None = None) -> Export:
    """Costs pages (one page, or a list of pages) as CostRow per UTC day and line item, in USD."""
    sums: dict[tuple[date, str], Decimal] = {}
    coverage: dict[date, int] = {}
    for where, bucket, day in _buckets(document, source=source, coverage=coverage):
        for k, result in enumerate(_list(bucket, "results", where)):
            at = f"{where}.results[{k}]"
            _object(result, COSTS_RESULT, at, hint="this reads the costs export (/organization/costs)")
            if project is not None and result.get("project_id") != project:
                continue
            amount = result.get("amount")
            if not isinstance(amount, Mapping):
                raise InputError(f"expected {{value, currency}}, got {amount!r}", field=f"{at}.amount")
            currency = amount.get("currency")
            if not isinstance(currency, str) or currency.lower() != "usd":
                raise InputError(
                    f"currency {currency!r}: the ledger is in USD and reconcile converts nothing; "
                    "export the costs in USD",
                    field=f"{at}.amount.currency",
                )
            value = _decimal(amount.get("value"), f"{at}.amount.value")
            line_item = result.get("line_item")
            if not isinstance(line_item, str) or not line_item.strip():
                if value == 0:
                    continue
                raise InputError(
                    f"no line item: export the costs grouped by line item (group_by=line_item), got {line_item!r}",
                    field=f"{at}.line_item",
                )
            key = (day, line_item.strip())
            sums[key] = sums.get(key, Decimal(0)) + value
    rows = tuple(CostRow(day, item, line_item_model(item), value) for (day, item), value in sorted(sums.items()))
    return _export(rows, coverage)


def line_item_model(line_item: str) -> str | None:
    """The model a costs line item bills ("gpt-4o-mini-2024-07-18, cached input" -> the model), or None
    for a line item that is not a model's tokens (a surface in front, "evals | ...", or no kind)."""
    if "|" in line_item or "," not in line_item:
        return None
    model, _, _kind = line_item.rpartition(",")
    model = model.strip()
    return model if model and " " not in model else None


def _export(rows: tuple[Any, ...], coverage: dict[date, int]) -> Export:
    whole = frozenset(day for day, seconds in coverage.items() if seconds >= DAY_S)
    return Export(rows, whole, frozenset(coverage) - whole)


def _load(path: Path, *, what: str) -> Any:
    """The JSON document in `path`, numbers read exactly (Decimal); InputError when it cannot be."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"no such file: {path}", field=what) from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder: give the export's file", field=what) from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text: give the JSON export as the API returns it", field=what) from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}", field=what) from None
    if not text.strip():
        raise InputError(f"{path} is empty", field=what)
    try:
        return json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not JSON: {exc.msg} (column {exc.colno})", line=exc.lineno, field=what) from None


def _pages(document: Any, source: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(where, page) of each page: where is "" for a lone page, "[n]." for the n-th of a list."""
    pages = document if isinstance(document, list) else [document]
    if not pages:
        raise InputError("an empty list: expected a page, or a list of pages", field=source)
    for n, page in enumerate(pages):
        where = f"[{n}]." if isinstance(document, list) else ""
        if not isinstance(page, Mapping) or page.get("object") != "page":
            got = f"object {page.get('object')!r}" if isinstance(page, Mapping) else f"a {type(page).__name__}"
            raise InputError(
                'expected a page as the API returns it ({"object": "page", "data": [...]}), or a list of them; '
                f"got {got}",
                field=f"{source}: {where.rstrip('.')}" if where else source,
            )
        yield where, page


def _buckets(document: Any, *, source: str, coverage: dict[date, int]) -> Iterator[tuple[str, Mapping[str, Any], date]]:
    """(where, bucket, its UTC day) of every bucket of every page; each bucket's seconds are added to
    its day's coverage. A bucket that spans two UTC days, or appears twice, is refused."""
    seen: dict[int, str] = {}
    for where, page in _pages(document, source):
        for n, bucket in enumerate(_list(page, "data", f"{source}: {where}")):
            at = f"{source}: {where}data[{n}]"
            _object(bucket, "bucket", at, hint="a page's data holds buckets")
            start, end = _count(bucket, "start_time", at), _count(bucket, "end_time", at)
            if end <= start:
                raise InputError(f"end_time {end} is not after start_time {start}", field=f"{at}.end_time")
            day = datetime.fromtimestamp(start, UTC).date()
            if datetime.fromtimestamp(end - 1, UTC).date() != day:
                raise InputError(
                    f"the bucket {_when(start)} to {_when(end)} spans two UTC days: export with bucket_width=1d "
                    "(or 1h), from a UTC midnight",
                    field=at,
                )
            if start in seen:
                raise InputError(
                    f"the bucket starting {_when(start)} is also at {seen[start]}: pages overlap", field=at
                )
            seen[start] = at
            coverage[day] = coverage.get(day, 0) + (end - start)
            yield at, bucket, day


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _object(value: Any, expected: str, at: str, *, hint: str) -> None:
    if not isinstance(value, Mapping):
        raise InputError(f"expected an object ({expected}), got {type(value).__name__}", field=at)
    if value.get("object") != expected:
        raise InputError(f"object is {value.get('object')!r}, expected {expected!r}: {hint}", field=f"{at}.object")


def _list(value: Mapping[str, Any], key: str, at: str) -> Sequence[Any]:
    """value[key], a list; `at` is where value is ("FILE: " or "FILE: [0]." for a page)."""
    found = value.get(key)
    if not isinstance(found, list):
        where = f"{at}{key}" if at.endswith((" ", ".")) else f"{at}.{key}"
        raise InputError(f"expected a list, got {found!r}" if key in value else "missing", field=where)
    return found


def _count(value: Mapping[str, Any], key: str, at: str, *, optional: bool = False) -> int:
    found = value.get(key)
    if found is None and optional:
        return 0
    if isinstance(found, Decimal) and found == found.to_integral_value():
        found = int(found)  # 5.0 is 5
    if isinstance(found, bool) or not isinstance(found, int):
        raise InputError(f"expected a whole number, got {found!r}" if key in value else "missing", field=f"{at}.{key}")
    if found < 0:
        raise InputError(f"negative: {found}", field=f"{at}.{key}")
    return found


def _decimal(value: Any, at: str) -> Decimal:
    """An amount given as a JSON number (read as Decimal) or a decimal string; finite."""
    if isinstance(value, bool) or not isinstance(value, (int, Decimal, str)):
        raise InputError(f"expected an amount (a number or a decimal string), got {value!r}", field=at)
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise InputError(f"not an amount: {value!r}", field=at) from None
    if not amount.is_finite():
        raise InputError(f"not a finite amount: {value!r}", field=at)
    return amount


# -- fetching -------------------------------------------------------------------------------------


def fetch_usage(*, base_url: str, admin_key: str, first: date, last: date, project: str | None = None) -> Any:
    """Every page of the completions usage export for the UTC days [first, last], grouped by model."""
    params = {"bucket_width": "1d", "group_by": "model", "limit": str(USAGE_PAGE_DAYS)}
    return _fetch(base_url, USAGE_PATH, admin_key, first, last, params, project)


def fetch_costs(*, base_url: str, admin_key: str, first: date, last: date, project: str | None = None) -> Any:
    """Every page of the costs export for the UTC days [first, last], grouped by line item."""
    params = {"bucket_width": "1d", "group_by": "line_item", "limit": str(COSTS_PAGE_DAYS)}
    return _fetch(base_url, COSTS_PATH, admin_key, first, last, params, project)


def _fetch(
    base_url: str, path: str, admin_key: str, first: date, last: date, params: dict[str, str], project: str | None
) -> list[Any]:
    start = int(datetime(first.year, first.month, first.day, tzinfo=UTC).timestamp())
    end = int((datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)).timestamp())
    query: dict[str, str] = {"start_time": str(start), "end_time": str(end), **params}
    if project:
        query["project_ids"] = project
    return asyncio.run(_pages_from(base_url.rstrip("/"), path, admin_key, query))


async def _pages_from(base_url: str, path: str, admin_key: str, query: dict[str, str]) -> list[Any]:
    """GET the pages one after another, following next_page while has_more."""
    client = build_client(
        base_url=base_url,
        headers={"Authorization": f"Bearer {admin_key}"},
        timeout_s=FETCH_TIMEOUT_S,
        max_connections=1,
        backend="httpx",  # one call at a time, once: the plain pool is enough
    )
    pages: list[Any] = []
    url = f"{base_url}{path}"
    try:
        while len(pages) < MAX_PAGES:
            try:
                response = await client.get(url, params=query)
            except httpx.HTTPError as exc:
                raise PennyrouteError(f"GET {url}: no answer ({type(exc).__name__}: {exc})") from None
            if response.status_code in (401, 403):
                raise PennyrouteError(
                    f"GET {url}: the key was refused (HTTP {response.status_code}): the usage API needs an "
                    "organization admin key in OPENAI_ADMIN_KEY, not a project key"
                )
            if response.status_code != 200:
                raise PennyrouteError(
                    f"GET {url}: HTTP {response.status_code}: {error_message(response.content, (admin_key,))}"
                )
            try:
                page = json.loads(response.content, parse_float=Decimal)
            except ValueError:
                raise PennyrouteError(f"GET {url}: the answer is not JSON") from None
            pages.append(page)
            more = isinstance(page, Mapping) and page.get("has_more") and page.get("next_page")
            if not more:
                return pages
            query = {**query, "page": str(page["next_page"])}
        raise PennyrouteError(f"GET {url}: still more pages after {MAX_PAGES}: the cursor does not end")
    finally:
        await client.aclose()

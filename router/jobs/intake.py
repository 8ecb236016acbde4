"""Reading a job's JSONL file: streamed, validated line by line.

A bad line is reported with its number and reason and skipped; the good lines run. The file is
never held in memory whole: lines are read one at a time and written in batches.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from router.catalog import Catalog
from router.chat import CHAT_DEFAULT_MAX_TOKENS, ChatError, read_chat
from router.errors import InputError

TASKS = ("classify", "summarize", "chat")
# Longest id kept; ids are for joining results back, not for storing documents.
MAX_ID_LENGTH = 200


# Calibration may spend up to a fifth of what answering the whole job with the baseline would cost;
# it stops far sooner when tests stop paying for themselves (policies/calibration.py).
DEFAULT_CALIBRATION_BUDGET = "20%"


@dataclass(frozen=True, slots=True)
class JobRequest:
    """A job as the user asked for it, before it is checked."""

    path: Path
    team: str
    task: str
    min_quality: float
    labels: tuple[str, ...] = ()
    max_words: int | None = None
    tenant: str | None = None
    regions: frozenset[str] | None = None
    providers: frozenset[str] | None = None
    models: frozenset[str] | None = None
    on_budget: str = "reject"
    # Where quality estimates come from: auto (calibrate on gold labels when the file has them, else
    # use estimates measured by earlier jobs of this kind, else priors), gold, reference, or prior.
    quality: str = "auto"
    calibrate_only: bool = False  # `pennyroute calibrate`: measure the models, keep the estimates, run no bulk
    # What calibration may spend: a share of the job's baseline-only cost ("20%") or dollars ("5", "$5").
    calibration_budget: str = DEFAULT_CALIBRATION_BUDGET
    run_labelled: bool = False  # also send labelled items to the route (their answers are known)
    if_unproven: str = "stop"  # stop | best: when no route is proven, stop, or run the best-measured one
    volume: int | None = None  # `pennyroute calibrate`: items later jobs of this kind will run
    judge: str | None = None  # summarize: the model that judges summaries (default: the strongest eligible)
    # By when the results are wanted ("2h", "24h", "3d", or an ISO date or time) and how calls are made:
    # auto (the deadline decides: policies/execution_mode.py), sync, or batch (the providers' batch APIs).
    deadline: str | None = None
    mode: str = "auto"
    # chat: the most output tokens an item may ask for (router/chat.py CHAT_DEFAULT_MAX_TOKENS if None)
    max_output_tokens: int | None = None


# The quality bar a job takes when none is given; a chat job's answers are not measured, so it has none.
DEFAULT_MIN_QUALITY = 0.9


def bar_for(task: str, given: float | None) -> float:
    """The quality bar of a job of `task`: the one given, else the default for the task."""
    if given is not None:
        return given
    return 0.0 if task == "chat" else DEFAULT_MIN_QUALITY


ON_BUDGET = ("reject", "downgrade", "pause")
IF_UNPROVEN = ("stop", "best")
QUALITY_MODES = ("auto", "gold", "reference", "prior")
EXECUTION_MODES = ("auto", "sync", "batch")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m|min|h|d)\s*$", re.IGNORECASE)
_UNIT_S = {"m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_deadline(value: str, *, now: datetime) -> datetime:
    """--deadline: a duration from now ("90m", "2h", "24h", "3d") or an ISO date or time ("2026-12-08",
    "2026-12-08T09:00:00+01:00"; a date alone is its midnight UTC; a time without offset is UTC).
    InputError naming the flag when it cannot be read, or is not in the future."""
    match = _DURATION.match(value)
    if match:
        amount = float(match.group(1)) * _UNIT_S[match.group(2).lower()]
        if amount <= 0:
            raise InputError(f"--deadline {value}: must be after now", field="--deadline")
        return now + timedelta(seconds=amount)
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InputError(
            f"--deadline {value!r}: give a duration (90m, 2h, 24h, 3d) or an ISO date or time "
            "(2026-12-08 or 2026-12-08T09:00:00+01:00)",
            field="--deadline",
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if when <= now:
        raise InputError(f"--deadline {value}: is not in the future (now {now:%Y-%m-%d %H:%M} UTC)", field="--deadline")
    return when


def check_request(request: JobRequest) -> None:
    """Raise InputError naming the flag when the request itself is wrong (before any line is read)."""
    if request.on_budget not in ON_BUDGET:
        raise InputError(
            f"unknown --on-budget '{request.on_budget}': use one of {', '.join(ON_BUDGET)}", field="--on-budget"
        )
    if request.quality not in QUALITY_MODES:
        raise InputError(
            f"unknown --quality '{request.quality}': use one of {', '.join(QUALITY_MODES)}", field="--quality"
        )
    if request.if_unproven not in IF_UNPROVEN:
        raise InputError(
            f"unknown --if-unproven '{request.if_unproven}': use one of {', '.join(IF_UNPROVEN)}",
            field="--if-unproven",
        )
    parse_calibration_budget(request.calibration_budget)
    if request.mode not in EXECUTION_MODES:
        raise InputError(f"unknown --mode '{request.mode}': use one of {', '.join(EXECUTION_MODES)}", field="--mode")
    if request.deadline is not None:
        parse_deadline(request.deadline, now=datetime.now(UTC))
    if request.judge is not None and request.task != "summarize":
        raise InputError("--judge applies to summarize jobs: a label is right or wrong without one", field="--judge")
    if request.task not in TASKS:
        raise InputError(f"unknown task '{request.task}': use one of {', '.join(TASKS)}", field="--task")
    if not 0.0 <= request.min_quality <= 1.0:
        raise InputError(f"quality bar {request.min_quality} is outside 0..1 (0.9 means 90%)", field="--min-quality")
    if request.task == "classify":
        if len(request.labels) < 2:
            raise InputError("classify needs at least two labels, e.g. --labels billing,bug,other", field="--labels")
        if any(not label.strip() for label in request.labels):
            raise InputError("a label is empty", field="--labels")
        if len({label.lower() for label in request.labels}) != len(request.labels):
            raise InputError("labels repeat (compared ignoring case)", field="--labels")
    elif request.labels:
        raise InputError("labels only apply to --task classify", field="--labels")
    if request.task == "chat":
        if request.min_quality > 0:
            raise InputError(
                f"a chat job's answers are not measured, so it takes no quality bar (got {request.min_quality}): "
                "give --min-quality 0 and name the model with --models (else the cheapest eligible one runs)",
                field="--min-quality",
            )
        if request.quality not in ("auto", "prior") or request.calibrate_only:
            raise InputError("a chat job is not calibrated: its answers have no measure", field="--quality")
    if request.max_output_tokens is not None:
        if request.task != "chat":
            raise InputError("--max-output-tokens only applies to --task chat", field="--max-output-tokens")
        if request.max_output_tokens < 1:
            raise InputError("--max-output-tokens must be at least 1", field="--max-output-tokens")
    if request.max_words is not None:
        if request.task != "summarize":
            raise InputError("--max-words only applies to --task summarize", field="--max-words")
        if request.max_words < 1:
            raise InputError("--max-words must be at least 1", field="--max-words")
    if not request.path.exists():
        raise InputError(f"file {request.path} does not exist", field="FILE")
    if not request.path.is_file():
        raise InputError(f"{request.path} is not a file", field="FILE")


def check_names(request: JobRequest, catalog: Catalog) -> None:
    """Raise InputError naming the flag when --region, --providers or --models name something the
    catalog does not have (otherwise the job would only hear that no model qualifies)."""
    regions = {model.region for model in catalog.models.values()}
    _known(request.regions, regions, flag="--region", noun="region", listed=True)
    _known(request.providers, catalog.providers, flag="--providers", noun="provider", listed=True)
    _known(request.models, catalog.models, flag="--models", noun="model", listed=False)


def _known(values: frozenset[str] | None, known: Iterable[str], *, flag: str, noun: str, listed: bool) -> None:
    names = sorted(known)
    unknown = sorted(set(values or ()) - set(names))
    if not unknown:
        return
    said = []
    for value in unknown:
        close = [n for n in names if n.lower() == value.lower()] or difflib.get_close_matches(value, names, n=1)
        said.append(f"'{value}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    where = f"the catalog has {', '.join(names)}" if listed else "`pennyroute models` lists them"
    raise InputError(f"unknown {noun}{'s' if len(said) > 1 else ''} {', '.join(said)}: {where}", field=flag)


@dataclass(frozen=True, slots=True)
class LineError:
    line: int
    field: str | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "reason": self.reason}

    def __str__(self) -> str:
        where = f"line {self.line}" + (f", field '{self.field}'" if self.field else "")
        return f"{where}: {self.reason}"


@dataclass(frozen=True, slots=True)
class ParsedItem:
    line: int
    ext_id: str
    text: str
    gold: str | None


def read_items(
    path: Path, *, task: str, labels: tuple[str, ...], max_output_tokens: int | None = None
) -> Iterator[ParsedItem | LineError]:
    """Yield each line of `path` as a ParsedItem or a LineError, one at a time. A chat line's
    conversation is checked (router/chat.py) and kept as its canonical JSON, its cap at most
    `max_output_tokens`."""
    seen: set[str] = set()
    label_set = {label.lower(): label for label in labels}
    cap = (max_output_tokens or CHAT_DEFAULT_MAX_TOKENS) if task == "chat" else None
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            yield _parse(number, raw, task, label_set, seen, cap)


def _parse(
    number: int, raw: bytes, task: str, labels: dict[str, str], seen: set[str], cap: int | None = None
) -> ParsedItem | LineError:
    try:
        obj = json.loads(raw)
    except UnicodeDecodeError:
        return LineError(number, None, "not UTF-8 text")
    except json.JSONDecodeError as exc:
        return LineError(number, None, f"not valid JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(obj, dict):
        return LineError(number, None, 'a line must be a JSON object like {"id": "1", "text": "..."}')
    ext_id = obj.get("id")
    if ext_id is None or ext_id == "":
        return LineError(number, "id", "missing")
    if not isinstance(ext_id, (str, int)) or isinstance(ext_id, bool):
        return LineError(number, "id", "must be a string or an integer")
    ext_id = str(ext_id)
    if len(ext_id) > MAX_ID_LENGTH:
        return LineError(number, "id", f"longer than {MAX_ID_LENGTH} characters")
    if task == "chat":
        return _chat_item(number, obj, ext_id, seen, cap)
    text = obj.get("text")
    if text is None:
        return LineError(number, "text", "missing")
    if not isinstance(text, str):
        return LineError(number, "text", "must be a string")
    if not text.strip():
        return LineError(number, "text", "is empty")
    if "\x00" in text:
        return LineError(number, "text", "contains a NUL character")
    gold = obj.get("gold")
    if gold is not None:
        if not isinstance(gold, str):
            return LineError(number, "gold", "must be a string")
        if task == "classify":
            if gold.lower() not in labels:
                return LineError(number, "gold", f"'{gold}' is not one of the labels ({', '.join(labels.values())})")
            gold = labels[gold.lower()]
    if ext_id in seen:
        return LineError(number, "id", f"duplicate id '{ext_id}' (first seen on an earlier line)")
    seen.add(ext_id)
    return ParsedItem(number, ext_id, text, gold)


def _chat_item(
    number: int, obj: dict[str, Any], ext_id: str, seen: set[str], cap: int | None
) -> ParsedItem | LineError:
    """A chat line: {"id", "messages", and optionally max_tokens, temperature, top_p, stop}."""
    if "gold" in obj:
        return LineError(number, "gold", "a chat item's answer is not measured: give no gold")
    if "text" in obj:
        return LineError(number, "text", 'a chat item gives "messages" (a conversation), not "text"')
    try:
        item = read_chat({k: v for k, v in obj.items() if k != "id"}, cap=cap)
    except ChatError as exc:
        return LineError(number, exc.field, exc.reason)
    if ext_id in seen:
        return LineError(number, "id", f"duplicate id '{ext_id}' (first seen on an earlier line)")
    seen.add(ext_id)
    return ParsedItem(number, ext_id, item.canonical(), None)


def parse_calibration_budget(text: str) -> tuple[str, Decimal]:
    """("share", 0.2) for "20%", ("usd", 5) for "5" or "$5"; InputError naming the flag otherwise."""
    raw = text.strip()
    try:
        if raw.endswith("%"):
            share = Decimal(raw[:-1].strip()) / 100
            if not share.is_finite() or not 0 <= share <= 1:
                raise InvalidOperation
            return "share", share
        amount = Decimal(raw.removeprefix("$").strip())
        if not amount.is_finite() or amount < 0:
            raise InvalidOperation
        return "usd", amount
    except InvalidOperation:
        raise InputError(
            f"--calibration-budget '{text}' is neither a share (e.g. 20%) nor an amount in USD (e.g. 5 or $5)",
            field="--calibration-budget",
        ) from None


def parse_soft_percent(text: str) -> float:
    """--soft as a percentage of the limit in (0, 100]: "80%" and "80" are 80%, and so is 0.8, a fraction
    (a bare number up to 1 is a fraction, never a share under 1%: write "0.8%" for that)."""
    raw = text.strip()
    try:
        number = Decimal(raw.removesuffix("%").strip())
        if not number.is_finite():
            raise InvalidOperation
    except InvalidOperation:
        raise InputError(f"'{text}' is not a percentage (e.g. 80% or 0.8)", field="--soft") from None
    if raw.endswith("%"):
        if not 0 < number <= 100:
            raise InputError(f"{text} must be between 0% and 100%", field="--soft")
        return float(number)
    if not 0 < number <= 100:
        raise InputError(
            f"{text} is neither a fraction of the limit in (0, 1] (0.8 = 80%) nor a percentage up to 100 (80 or 80%)",
            field="--soft",
        )
    return float(number * 100 if number <= 1 else number)

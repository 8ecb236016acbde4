"""The model catalog: providers, models, context windows, regions, quality priors, and prices.

Prices come from genai-prices (effective-dated and offline) unless a catalog entry sets its own.
The price in force is resolved per model and call time; the cost of a call is computed once, from
that price, and stored on the call's ledger row.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from genai_prices import data_snapshot
from genai_prices import types as gp

from policies.types import QualityEstimate
from router.errors import ConfigError, NotFoundError
from router.usage import TokenUsage

TASKS = ("classify", "summarize")
PROVIDER_KINDS = ("openai", "anthropic", "gemini", "mistral")
# OpenAI's reasoning_effort values (the openai SDK's ReasoningEffort); which a model takes is
# `openai_efforts`. Gemini 3 and later take a thinking level instead of a budget (google-genai's
# ThinkingLevel), set with the same catalog key: `gemini_levels`.
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
THINKING_LEVELS = ("minimal", "low", "medium", "high", "xhigh")
MTOK = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class Rate:
    """USD per million tokens; above a tier's start (total input tokens of the call) its price applies."""

    base: Decimal
    tiers: tuple[tuple[int, Decimal], ...] = ()

    def at(self, total_input_tokens: int) -> Decimal:
        for start, price in reversed(self.tiers):
            if total_input_tokens > start:
                return price
        return self.base

    def __str__(self) -> str:
        return f"{self.base}" + "".join(f" (>{start:,}: {price})" for start, price in self.tiers)


ZERO_RATE = Rate(Decimal(0))


@dataclass(frozen=True, slots=True)
class Price:
    """A model's price in force at one time."""

    input: Rate
    output: Rate
    cached_input: Rate = ZERO_RATE
    cache_write: Rate = ZERO_RATE
    source: str = ""

    def cost_usd(self, usage: TokenUsage) -> Decimal:
        """Exact cost of one call: tokens x price, as Decimal."""
        total_in = usage.input_tokens + usage.cached_input_tokens + usage.cache_write_tokens
        return (
            usage.input_tokens * self.input.at(total_in)
            + usage.cached_input_tokens * self.cached_input.at(total_in)
            + usage.cache_write_tokens * self.cache_write.at(total_in)
            + usage.output_tokens * self.output.at(total_in)
        ) / MTOK


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    name: str
    kind: str  # wire format: openai | anthropic
    base_url: str
    api_key_env: str | None
    prices_id: str | None  # genai-prices provider id
    region: str
    requires_key: bool = True  # a self-hosted server may need none
    enabled: bool = True  # a provider can be listed but switched off
    # Calls to this provider in flight at once, per worker process (a self-hosted vLLM or Ollama box
    # behind one URL); narrowed further while it shows overload (router/providers/limits.py). None: no cap.
    max_in_flight: int | None = None
    # The provider's asynchronous batch API: its price as a share of the standard price (0.5: half),
    # and the window within which it answers every line (a line not done by then expires). None: the
    # provider has no batch API (a self-hosted vLLM or Ollama server), unless the catalog sets one.
    batch_multiplier: Decimal | None = None
    batch_window_h: int | None = None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """An LLM as the catalog knows it."""

    model_id: str
    provider: str
    api_model: str  # the name sent to the provider
    context_window: int | None
    region: str
    open_weight: bool
    quality: dict[str, QualityEstimate] = field(default_factory=dict)
    price_override: Price | None = None
    # The account's limits for this model, shared by every worker (router/providers/limits.py); None: no limit.
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens per minute (input + output)
    # A thinking model's reasoning counts inside its output cap (router.providers.base.ChatRequest):
    # None, it does not think; 0, switch thinking off; N, let it think up to N tokens per call.
    thinking: int | None = None
    # OpenAI reasoning models: their reasoning_effort ("none" ... "max"); Gemini 3 and later: their
    # thinkingLevel ("minimal" ... "xhigh"). Checked against what the model takes at load.
    reasoning_effort: str | None = None
    # The model's region (its data residency) holds only in standard processing, not in its provider's
    # batch API: under a region constraint (--region eu) its work is not sent to batch.
    region_sync_only: bool = False

    def output_cap(self, answer_tokens: int) -> int:
        """The most output tokens one call can be billed for: the answer's cap plus any thinking allowed."""
        return answer_tokens + (self.thinking or 0)


# The keys a catalog file may hold. A provider's are ProviderInfo's fields; a model's are ModelInfo's,
# spelled as in the file. A key not listed is a typo until proven otherwise, and is refused.
TOP_KEYS = frozenset({"providers", "models", "defaults"})
DEFAULTS_KEYS = frozenset({"quality_source"})
PROVIDER_KEYS = frozenset(f.name for f in fields(ProviderInfo)) - {"name"}
MODEL_KEYS = (frozenset(f.name for f in fields(ModelInfo)) - {"model_id", "price_override"}) | {
    "id",
    "price",
    "quality_source",
}
PRICE_KEYS = frozenset(
    {"input_usd_per_mtok", "output_usd_per_mtok", "cached_input_usd_per_mtok", "cache_write_usd_per_mtok", "source"}
)


class Catalog:
    """Providers and models, with prices resolved from genai-prices at a given time."""

    def __init__(self, providers: dict[str, ProviderInfo], models: dict[str, ModelInfo]) -> None:
        self.providers = providers
        self.models = models
        for model in models.values():
            if model.provider not in providers:
                raise ConfigError(f"model {model.model_id}: unknown provider '{model.provider}'")

    def model(self, model_id: str) -> ModelInfo:
        try:
            return self.models[model_id]
        except KeyError:
            raise NotFoundError(f"unknown model '{model_id}'; `pennyroute models` lists them") from None

    def price(self, model_id: str, at: datetime | None = None) -> Price:
        """The price of `model_id` in force at `at` (now by default)."""
        model = self.model(model_id)
        if model.price_override is not None:
            return model.price_override
        provider = self.providers[model.provider]
        when = (at or datetime.now(UTC)).replace(second=0, microsecond=0)
        return _genai_price(provider.prices_id, model.api_model, when)


def _rate(value: Decimal | gp.TieredPrices | None) -> Rate:
    if value is None:
        return ZERO_RATE
    if isinstance(value, gp.TieredPrices):
        return Rate(value.base, tuple((tier.start, tier.price) for tier in value.tiers))
    return Rate(Decimal(value))


# Prices change at most per minute (genai-prices has date and time-of-day constraints), so
# resolving once per model and minute keeps the ~60 us lookup off the per-call path.
@lru_cache(maxsize=4096)
def _genai_price(prices_id: str | None, api_model: str, when: datetime) -> Price:
    snapshot = data_snapshot.get_snapshot()
    try:
        provider, model = snapshot.find_provider_model(api_model, None, prices_id, None)
    except LookupError as exc:
        raise ConfigError(f"genai-prices has no price for {prices_id}/{api_model}: set price in the catalog") from exc
    if model is None:
        raise ConfigError(f"genai-prices has no price for {prices_id}/{api_model}: set price in the catalog")
    mp = model.get_prices(when)
    return Price(
        input=_rate(mp.input_mtok),
        output=_rate(mp.output_mtok),
        cached_input=_rate(mp.cache_read_mtok),
        cache_write=_rate(mp.cache_write_mtok),
        source=f"genai-prices {provider.id}/{model.id}",
    )


def load_catalog(path: Path | None = None, *, replace_default: bool = False) -> Catalog:
    """The default catalog, extended (or replaced) by the TOML file at `path`."""
    raw: dict[str, Any] = {"providers": {}, "models": [], "defaults": {}}
    if not (path and replace_default):
        raw = tomllib.loads(files("router").joinpath("data/catalog.toml").read_text())
        check_file(raw, "default catalog")
    if path is not None:
        try:
            extra = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"catalog file {path} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"catalog file {path} is a directory, not a TOML file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"catalog file {path} cannot be read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"catalog file {path} is not valid TOML: {exc}") from None
        check_file(extra, str(path))
        raw = _merge(raw, extra)
    return _build(raw, str(path or "default catalog"))


def check_file(raw: dict[str, Any], where: str) -> None:
    """Refuse a catalog file's shape mistakes, which would otherwise be ignored: unknown keys (with the
    closest known one), a section of the wrong kind, a model without an id, and a model id given twice
    in the file (an id that overrides a default model is fine)."""
    _known_keys(raw, TOP_KEYS, where, "")
    providers = raw.get("providers", {})
    if not isinstance(providers, dict):
        raise ConfigError(f"{where}: providers must be tables, e.g. [providers.openai]")
    for name, entry in providers.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: provider {name}: must be a table ([providers.{name}])")
        _known_keys(entry, PROVIDER_KEYS, where, f"provider {name}: ")
    defaults = raw.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ConfigError(f"{where}: defaults must be a table ([defaults.quality_source])")
    _known_keys(defaults, DEFAULTS_KEYS, where, "defaults: ")
    models = raw.get("models", [])
    if not isinstance(models, list) or not all(isinstance(entry, dict) for entry in models):
        raise ConfigError(f"{where}: models must be an array of tables, each opened with [[models]]")
    seen: set[str] = set()
    for number, entry in enumerate(models, start=1):
        model_id = entry.get("id")
        if not isinstance(model_id, str) or not model_id.strip():
            raise ConfigError(f'{where}: [[models]] entry {number} has no id (a string, e.g. id = "my-model")')
        _known_keys(entry, MODEL_KEYS, where, f"model {model_id}: ")
        if isinstance(entry.get("price"), dict):
            _known_keys(entry["price"], PRICE_KEYS, where, f"model {model_id}: price: ")
        if model_id in seen:
            raise ConfigError(
                f"{where}: model {model_id}: id given twice in this file; keep one entry (an entry with a default "
                "model's id overrides that model)"
            )
        seen.add(model_id)


def _known_keys(entry: dict[str, Any], known: frozenset[str], where: str, what: str) -> None:
    for key in entry:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(sorted(known))}"
            raise ConfigError(f"{where}: {what}unknown key '{key}' ({hint})")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    providers = {**base.get("providers", {})}
    for name, entry in extra.get("providers", {}).items():
        providers[name] = {**providers.get(name, {}), **entry}
    models = {m["id"]: m for m in base.get("models", []) if "id" in m}
    for entry in extra.get("models", []):
        key = entry.get("id")
        models[key] = {**models.get(key, {}), **entry}
    defaults = {**base.get("defaults", {}), **extra.get("defaults", {})}
    return {"providers": providers, "models": list(models.values()), "defaults": defaults}


def _build(raw: dict[str, Any], where: str) -> Catalog:
    providers: dict[str, ProviderInfo] = {}
    for name, entry in raw.get("providers", {}).items():
        kind = entry.get("kind", "openai")
        if kind not in PROVIDER_KINDS:
            raise ConfigError(
                f"{where}: provider {name}: kind must be one of {', '.join(PROVIDER_KINDS)}, not '{kind}'"
            )
        if not entry.get("base_url"):
            raise ConfigError(f"{where}: provider {name}: base_url is required")
        what = f"{where}: provider {name}: "
        providers[name] = ProviderInfo(
            name=name,
            kind=kind,
            base_url=_base_url(entry["base_url"], what),
            api_key_env=_text(entry, "api_key_env", what),
            prices_id=_text(entry, "prices_id", what),
            region=_text(entry, "region", what) or "unknown",
            requires_key=_flag(entry, "requires_key", True, what),
            enabled=_flag(entry, "enabled", True, what),
            max_in_flight=_whole(entry, "max_in_flight", what),
            batch_multiplier=_multiplier(entry, "batch_multiplier", what),
            batch_window_h=_whole(entry, "batch_window_h", what),
        )
    sources = raw.get("defaults", {}).get("quality_source", {})
    models: dict[str, ModelInfo] = {}
    for entry in raw.get("models", []):
        model_id = entry.get("id")
        if not model_id:
            raise ConfigError(f"{where}: a [[models]] entry has no id")
        what = f"{where}: model {model_id}: "
        provider = entry.get("provider")
        if provider is None:
            raise ConfigError(f"{what}provider is required (one of {', '.join(sorted(providers))})")
        if provider not in providers:
            close = difflib.get_close_matches(str(provider), sorted(providers), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"the catalog has {', '.join(sorted(providers))}"
            raise ConfigError(f"{what}provider: unknown provider '{provider}' ({hint})")
        quality = {}
        qualities = entry.get("quality") or {}
        if not isinstance(qualities, dict):
            raise ConfigError(f"{what}quality must be a table, e.g. quality = {{ classify = 0.9, summarize = 0.85 }}")
        for task, value in qualities.items():
            if task not in TASKS:
                raise ConfigError(f"{what}quality for unknown task '{task}' (tasks: {', '.join(TASKS)})")
            if not _is_number(value) or not 0 <= float(value) <= 1:
                raise ConfigError(f"{what}quality {value!r} for {task} is outside 0..1")
            source = (entry.get("quality_source") or {}).get(task) or sources.get(task) or where
            quality[task] = QualityEstimate(value=float(value), n=None, source=source)
        models[model_id] = ModelInfo(
            model_id=model_id,
            provider=provider,
            api_model=_text(entry, "api_model", what) or model_id,
            context_window=_limit(entry, "context_window", model_id, where),
            region=_text(entry, "region", what) or providers[provider].region,
            open_weight=_flag(entry, "open_weight", False, what),
            quality=quality,
            price_override=_price_override(entry.get("price"), model_id, where),
            rpm=_limit(entry, "rpm", model_id, where),
            tpm=_limit(entry, "tpm", model_id, where),
            # The effort first: a value the model refuses is the clearer message.
            reasoning_effort=_reasoning_effort(entry, providers[provider].kind, model_id, where),
            thinking=_thinking(entry, providers[provider].kind, model_id, where),
            region_sync_only=_flag(entry, "region_sync_only", False, what),
        )
    catalog = Catalog(providers, models)
    for model_id in models:  # fail at load, not mid-job, when a price cannot be found
        catalog.price(model_id)
    return catalog


def _limit(entry: dict[str, Any], key: str, model_id: str, where: str) -> int | None:
    return _whole(entry, key, f"{where}: model {model_id}: ")


def _whole(entry: dict[str, Any], key: str, what: str) -> int | None:
    """A positive whole number, or None when the key is absent."""
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{what}{key} must be a positive whole number, not {value!r}")
    return value


def _multiplier(entry: dict[str, Any], key: str, what: str) -> Decimal | None:
    """A share of the standard price: a finite decimal above 0 and at most 1 (a string, e.g. "0.5");
    None when the key is absent."""
    value = entry.get(key)
    if value is None:
        return None
    try:
        amount = Decimal(str(value)) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None
    except InvalidOperation:
        amount = None
    if amount is None or not amount.is_finite() or not Decimal(0) < amount <= 1:
        raise ConfigError(
            f'{what}{key} must be a decimal share of the standard price, above 0 and at most 1 (e.g. "0.5"), '
            f"not {value!r}"
        )
    return amount


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _text(entry: dict[str, Any], key: str, what: str) -> str | None:
    value = entry.get(key)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"{what}{key} must be a non-empty string, not {value!r}")
    return value


def _flag(entry: dict[str, Any], key: str, default: bool, what: str) -> bool:
    value = entry.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{what}{key} must be true or false (unquoted), not {value!r}")
    return value


def _base_url(value: object, what: str) -> str:
    """An http(s) URL with a host, without its trailing slash."""
    if isinstance(value, str):
        try:
            parts = urlsplit(value)
            port_ok = parts.port is None or parts.port > 0  # .port raises ValueError for a port not a number
        except ValueError:
            port_ok = False
        if port_ok and parts.scheme in ("http", "https") and parts.hostname:
            return value.rstrip("/")
    raise ConfigError(
        f"{what}base_url must be an http:// or https:// URL, e.g. http://127.0.0.1:8000/v1, not {value!r}"
    )


def _thinking(entry: dict[str, Any], kind: str, model_id: str, where: str) -> int | None:
    value = entry.get("thinking")
    if value is None:
        api_model = str(entry.get("api_model") or model_id)
        if kind == "openai" and openai_reasoning_model(api_model) and entry.get("reasoning_effort") != "none":
            # Its reasoning is billed as output and counted inside max_completion_tokens: with no room
            # for it, the reasoning eats the answer's cap and every answer is cut off.
            raise ConfigError(
                f"{where}: model {model_id}: {_bare(api_model)} is an OpenAI reasoning model (o-series, gpt-5): "
                "it reasons inside its output cap, so set thinking = N, the most reasoning tokens a call may "
                'take (e.g. thinking = 2048 with reasoning_effort = "low"), or reasoning_effort = "none" where the '
                "model takes it; without either its reasoning eats the answer's cap"
            )
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(
            f"{where}: model {model_id}: thinking must be 0 (off) or the most thinking tokens per call, not {value!r}"
        )
    if kind not in ("openai", "gemini"):
        # Claude thinks only when asked, and Mistral's reasoning models take the usual max_tokens:
        # there is nothing to switch off and no other cap to send.
        raise ConfigError(
            f"{where}: model {model_id}: thinking applies to openai and gemini providers, not {kind}; leave it unset"
        )
    if kind == "gemini":
        _gemini_thinking(str(entry.get("api_model") or model_id), value, f"{where}: model {model_id}: thinking")
    return value


def _gemini_thinking(api_model: str, value: int, what: str) -> None:
    """Refuse a Gemini thinking setting its API refuses: a budget out of the model's range, thinking
    switched off where it cannot be, or thinking on a model that does not think."""
    if gemini_levels(api_model) is not None:
        if value == 0:
            raise ConfigError(
                f"{what}: {api_model} thinks by level and cannot switch thinking off; set thinking to the tokens its "
                'thoughts may take per call (sent as room in maxOutputTokens) and reasoning_effort = "low" '
                "(its thinkingLevel) to keep them few"
            )
        return
    budget = gemini_budget(api_model)
    if budget is None:
        raise ConfigError(f"{what}: {api_model} does not think (Gemini 2.5 takes a budget, 3 and later a level)")
    smallest, largest, can_stop = budget
    if value == 0 and not can_stop:
        raise ConfigError(f"{what}: {api_model} cannot switch thinking off (its smallest budget is {smallest})")
    if value != 0 and not smallest <= value <= largest:
        raise ConfigError(f"{what}: {api_model} takes a thinking budget of {smallest} to {largest}, not {value}")


def _reasoning_effort(entry: dict[str, Any], kind: str, model_id: str, where: str) -> str | None:
    value = entry.get("reasoning_effort")
    if value is None:
        return None
    what = f"{where}: model {model_id}: reasoning_effort"
    api_model = str(entry.get("api_model") or model_id)
    if kind == "gemini":
        levels = gemini_levels(api_model)
        if levels is None:
            raise ConfigError(
                f"{what}: {api_model} takes a thinking budget (thinking = N), not a thinking level; "
                "reasoning_effort (sent as thinkingLevel) is for Gemini 3 and later"
            )
        if value not in levels:
            raise ConfigError(
                f"{what} (its thinkingLevel) must be one of {', '.join(levels)} for {api_model}, not {value!r}"
            )
        return str(value)
    if kind != "openai" or not (openai_reasoning_model(api_model) or entry.get("thinking") is not None):
        raise ConfigError(
            f"{what} is for OpenAI reasoning models (o-series, gpt-5; or an entry that sets thinking) and "
            "Gemini 3 and later (its thinkingLevel)"
        )
    if value not in REASONING_EFFORTS:
        raise ConfigError(f"{what} must be one of {', '.join(REASONING_EFFORTS)}, not {value!r}")
    efforts = openai_efforts(api_model)
    if efforts is not None and value not in efforts:
        raise ConfigError(f"{what} {value!r} is refused by {api_model}, which takes {', '.join(efforts)}")
    return str(value)


# What the providers accept, by model family: the rules the APIs enforce with a 400, checked here at
# load time so that a catalog entry cannot fail every call. Names may carry a router's prefix
# ("openai/gpt-5"); the last path segment is the model.
_OPENAI_REASONING = re.compile(r"^(o\d|gpt-5)(?!.*chat)")
# Documented per-model reasoning_effort values: o-series: low, medium, high; gpt-5 (mini, nano) before
# 5.1: minimal to high, no none; gpt-5-pro: high only; gpt-5.1: none, low, medium, high (no minimal);
# gpt-5.1-codex-max and later: every value the API knows (the API judges those).
_OPENAI_EFFORTS: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = (
    (re.compile(r"^o\d"), ("low", "medium", "high")),
    (re.compile(r"^gpt-5-pro"), ("high",)),
    (re.compile(r"^gpt-5(-mini|-nano|-codex)?(-\d{4}-\d{2}-\d{2})?$"), ("minimal", "low", "medium", "high")),
    (re.compile(r"^gpt-5\.1(?!-codex-max)"), ("none", "low", "medium", "high")),
)
_GEMINI_LEVELS = re.compile(r"^gemini-(?:[3-9]|\d\d)")  # Gemini 3 and later: thinkingLevel, no thinkingBudget
_GEMINI_BUDGETS = re.compile(r"^gemini-2\.5")  # Gemini 2.5: thinkingBudget
# Documented per-model thinking levels: Gemini 3 Pro takes low and high; 3.1 Pro low, medium, high;
# xhigh only from Gemini 4 on. Other Gemini 3 models: minimal to high.
_GEMINI_LEVEL_RULES: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = (
    (re.compile(r"^gemini-3-pro"), ("low", "high")),
    (re.compile(r"^gemini-3\.1-pro"), ("low", "medium", "high")),
    (re.compile(r"^gemini-3"), ("minimal", "low", "medium", "high")),
)
# Gemini 2.5 thinking budgets: (smallest budget that is not 0, largest, whether 0 switches thinking off).
_GEMINI_BUDGET_RULES: tuple[tuple[re.Pattern[str], tuple[int, int, bool]], ...] = (
    (re.compile(r"^gemini-2\.5-pro"), (128, 32768, False)),
    (re.compile(r"^gemini-2\.5-flash-lite"), (512, 24576, True)),
    (re.compile(r"^gemini-2\.5-flash"), (1, 24576, True)),
)


def _bare(api_model: str) -> str:
    return api_model.rsplit("/", 1)[-1]


def openai_reasoning_model(api_model: str) -> bool:
    """Whether an OpenAI model reasons (o-series, gpt-5 but not gpt-5-chat): it refuses `max_tokens` and a
    temperature, and takes `max_completion_tokens`, with or without a catalog `thinking`."""
    return bool(_OPENAI_REASONING.match(_bare(api_model)))


def openai_efforts(api_model: str) -> tuple[str, ...] | None:
    """The reasoning_effort values an OpenAI model is documented to take; None when not known here."""
    name = _bare(api_model)
    return next((efforts for pattern, efforts in _OPENAI_EFFORTS if pattern.match(name)), None)


def gemini_levels(api_model: str) -> tuple[str, ...] | None:
    """The thinking levels a Gemini model takes when it thinks by level (Gemini 3 and later: it refuses
    thinkingBudget); None for a model that does not (Gemini 2.5 takes a budget, older ones no thinking)."""
    name = _bare(api_model)
    if not _GEMINI_LEVELS.match(name):
        return None
    return next((levels for pattern, levels in _GEMINI_LEVEL_RULES if pattern.match(name)), THINKING_LEVELS)


def gemini_budget(api_model: str) -> tuple[int, int, bool] | None:
    """A Gemini 2.5 model's thinking budget range (smallest but 0, largest, whether 0 is allowed); None for
    a model that takes no budget."""
    name = _bare(api_model)
    if not _GEMINI_BUDGETS.match(name):
        return None
    return next((rule for pattern, rule in _GEMINI_BUDGET_RULES if pattern.match(name)), (1, 24576, True))


def _price_override(entry: dict[str, Any] | None, model_id: str, where: str) -> Price | None:
    if not entry:
        return None
    if not isinstance(entry, dict):
        raise ConfigError(
            f'{where}: model {model_id}: price must be a table, e.g. price = {{ input_usd_per_mtok = "0.15" }}'
        )

    def rate(key: str) -> Rate:
        value = entry.get(key, "0")
        try:
            amount = (
                Decimal(str(value)) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None
            )
        except InvalidOperation:
            amount = None
        if amount is None or not amount.is_finite() or amount < 0:
            raise ConfigError(
                f"{where}: model {model_id}: price.{key} must be a decimal number of USD, 0 or more "
                f'(as a string, e.g. "0.15"), not {value!r}'
            )
        return Rate(amount)

    return Price(
        input=rate("input_usd_per_mtok"),
        output=rate("output_usd_per_mtok"),
        cached_input=rate("cached_input_usd_per_mtok"),
        cache_write=rate("cache_write_usd_per_mtok"),
        source=str(entry.get("source", where)),
    )

"""The model catalog: providers, models, context windows, regions, quality priors, and prices.

Prices come from genai-prices (effective-dated and offline) unless a catalog entry sets its own.
The price in force is resolved per model and call time; the cost of a call is computed once, from
that price, and stored on the call's ledger row.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from genai_prices import data_snapshot
from genai_prices import types as gp

from policies.types import QualityEstimate
from router.errors import ConfigError, NotFoundError
from router.usage import TokenUsage

TASKS = ("classify", "summarize")
PROVIDER_KINDS = ("openai", "anthropic", "gemini", "mistral")
REASONING_EFFORTS = ("minimal", "low", "medium", "high")
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
    reasoning_effort: str | None = None  # OpenAI reasoning models: "minimal", "low", "medium", "high"

    def output_cap(self, answer_tokens: int) -> int:
        """The most output tokens one call can be billed for: the answer's cap plus any thinking allowed."""
        return answer_tokens + (self.thinking or 0)


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
    if path is not None:
        try:
            extra = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"catalog file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"catalog file {path} is not valid TOML: {exc}") from None
        raw = _merge(raw, extra)
    return _build(raw, str(path or "default catalog"))


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
        providers[name] = ProviderInfo(
            name=name,
            kind=kind,
            base_url=str(entry["base_url"]).rstrip("/"),
            api_key_env=entry.get("api_key_env"),
            prices_id=entry.get("prices_id"),
            region=str(entry.get("region", "unknown")),
            requires_key=bool(entry.get("requires_key", True)),
            enabled=bool(entry.get("enabled", True)),
        )
    sources = raw.get("defaults", {}).get("quality_source", {})
    models: dict[str, ModelInfo] = {}
    for entry in raw.get("models", []):
        model_id = entry.get("id")
        if not model_id:
            raise ConfigError(f"{where}: a [[models]] entry has no id")
        provider = entry.get("provider")
        if provider not in providers:
            raise ConfigError(f"{where}: model {model_id}: unknown provider '{provider}'")
        quality = {}
        for task, value in (entry.get("quality") or {}).items():
            if task not in TASKS:
                raise ConfigError(f"{where}: model {model_id}: quality for unknown task '{task}'")
            if not 0 <= float(value) <= 1:
                raise ConfigError(f"{where}: model {model_id}: quality {value} for {task} is outside 0..1")
            source = (entry.get("quality_source") or {}).get(task) or sources.get(task) or where
            quality[task] = QualityEstimate(value=float(value), n=None, source=source)
        models[model_id] = ModelInfo(
            model_id=model_id,
            provider=provider,
            api_model=entry.get("api_model", model_id),
            context_window=entry.get("context_window"),
            region=str(entry.get("region", providers[provider].region)),
            open_weight=bool(entry.get("open_weight", False)),
            quality=quality,
            price_override=_price_override(entry.get("price"), model_id, where),
            rpm=_limit(entry, "rpm", model_id, where),
            tpm=_limit(entry, "tpm", model_id, where),
            thinking=_thinking(entry, providers[provider].kind, model_id, where),
            reasoning_effort=_reasoning_effort(entry, providers[provider].kind, model_id, where),
        )
    catalog = Catalog(providers, models)
    for model_id in models:  # fail at load, not mid-job, when a price cannot be found
        catalog.price(model_id)
    return catalog


def _limit(entry: dict[str, Any], key: str, model_id: str, where: str) -> int | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{where}: model {model_id}: {key} must be a positive whole number, not {value!r}")
    return value


def _thinking(entry: dict[str, Any], kind: str, model_id: str, where: str) -> int | None:
    value = entry.get("thinking")
    if value is None:
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
    return value


def _reasoning_effort(entry: dict[str, Any], kind: str, model_id: str, where: str) -> str | None:
    value = entry.get("reasoning_effort")
    if value is None:
        return None
    if kind != "openai" or entry.get("thinking") is None:
        raise ConfigError(
            f"{where}: model {model_id}: reasoning_effort is for OpenAI reasoning models, which also set thinking"
        )
    if value not in REASONING_EFFORTS:
        raise ConfigError(
            f"{where}: model {model_id}: reasoning_effort must be one of {', '.join(REASONING_EFFORTS)}, not {value!r}"
        )
    return str(value)


def _price_override(entry: dict[str, Any] | None, model_id: str, where: str) -> Price | None:
    if not entry:
        return None
    try:

        def rate(key: str) -> Rate:
            return Rate(Decimal(str(entry.get(key, "0"))))

        price = Price(
            input=rate("input_usd_per_mtok"),
            output=rate("output_usd_per_mtok"),
            cached_input=rate("cached_input_usd_per_mtok"),
            cache_write=rate("cache_write_usd_per_mtok"),
            source=str(entry.get("source", where)),
        )
    except InvalidOperation:
        raise ConfigError(f"{where}: model {model_id}: prices must be decimal numbers (as strings)") from None
    if any(r.base < 0 for r in (price.input, price.output, price.cached_input, price.cache_write)):
        raise ConfigError(f"{where}: model {model_id}: prices cannot be negative")
    return price

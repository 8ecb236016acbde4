"""Feeding the catalog and settings to the routing policy, and keeping its decision as data."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from decimal import Decimal
from typing import Any

from policies.cheapest_qualifying import choose_model
from policies.types import Candidate, Decision, JobProfile
from router.catalog import Catalog
from router.settings import Settings


def unavailable_reason(catalog: Catalog, settings: Settings, provider_name: str, *, simulated: bool) -> str | None:
    """Why a provider cannot take calls now, or None when it can."""
    provider = catalog.providers[provider_name]
    if not provider.enabled:
        return f"provider {provider_name} is disabled in the catalog (enabled = false)"
    if simulated or not provider.requires_key:
        return None
    if settings.api_key(provider.api_key_env) is None:
        return f"no API key: set {provider.api_key_env}"
    return None


def candidates(
    catalog: Catalog, settings: Settings, *, task: str, simulated: bool, at: datetime | None = None
) -> list[Candidate]:
    """Every catalog model as a routing candidate for `task`, priced at `at`."""
    out = []
    for model in catalog.models.values():
        price = catalog.price(model.model_id, at)
        out.append(
            Candidate(
                model_id=model.model_id,
                provider=model.provider,
                input_usd_per_mtok=price.input.base,
                output_usd_per_mtok=price.output.base,
                context_window=model.context_window,
                region=model.region,
                open_weight=model.open_weight,
                quality=model.quality.get(task),
                unavailable_reason=unavailable_reason(catalog, settings, model.provider, simulated=simulated),
                thinking_tokens_per_item=model.thinking or 0,
            )
        )
    return out


def max_context(profile: JobProfile, pool: list[Candidate]) -> int | None:
    """The largest context window among models that meet the job's constraints (None: unlimited, 0: none)."""
    probe = choose_model(
        JobProfile(
            task=profile.task,
            min_quality=0.0,
            n_items=0,
            total_input_tokens=0,
            max_input_tokens=0,
            output_tokens_per_item=profile.output_tokens_per_item,
            allowed_providers=profile.allowed_providers,
            allowed_models=profile.allowed_models,
            regions=profile.regions,
            confidence=profile.confidence,
        ),
        pool,
    )
    windows = [
        c.context_window for c, v in zip(_by_id(pool, probe), probe.verdicts, strict=True) if v.meets_constraints
    ]
    if not windows:
        return 0
    if any(w is None for w in windows):
        return None
    return max(w for w in windows if w is not None)


def _by_id(pool: list[Candidate], decision: Decision) -> list[Candidate]:
    index = {c.model_id: c for c in pool}
    return [index[v.model_id] for v in decision.verdicts]


def decision_as_json(decision: Decision) -> dict[str, Any]:
    """The decision as JSON-safe data (Decimals as strings) for the job row."""

    def clean(value: Any) -> Any:
        if isinstance(value, Decimal):
            return str(value)
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return clean(asdict(decision))

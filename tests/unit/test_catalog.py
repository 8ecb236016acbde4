"""The catalog: prices from genai-prices, computed exactly; custom entries; clear errors."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from genai_prices import Usage, calc_price

from router.catalog import load_catalog
from router.errors import ConfigError
from router.usage import TokenUsage

CATALOG = load_catalog()


def test_default_catalog_covers_the_required_vendors() -> None:
    providers = {m.provider for m in CATALOG.models.values()}
    assert {"mistral", "openai", "anthropic", "google", "local"} <= providers
    assert any(m.open_weight and m.provider == "local" for m in CATALOG.models.values())
    assert all(m.quality.keys() == {"classify", "summarize"} for m in CATALOG.models.values())


@pytest.mark.parametrize(
    ("model_id", "usage"),
    [
        ("gpt-4o", TokenUsage(input_tokens=1234, output_tokens=56)),
        ("gpt-4o-mini", TokenUsage(input_tokens=900, output_tokens=7, cached_input_tokens=300)),
        (
            "claude-haiku-4-5",
            TokenUsage(input_tokens=5000, output_tokens=300, cached_input_tokens=1000, cache_write_tokens=200),
        ),
        ("claude-sonnet-4-5", TokenUsage(input_tokens=250_000, output_tokens=1000)),  # above the 200k tier
        ("gemini-2.5-pro", TokenUsage(input_tokens=150_000, output_tokens=2000)),
        ("mistral-medium-2508", TokenUsage(input_tokens=777, output_tokens=3)),
    ],
)
def test_cost_matches_genai_prices_exactly(model_id: str, usage: TokenUsage) -> None:
    model = CATALOG.model(model_id)
    provider = CATALOG.providers[model.provider]
    when = datetime(2026, 11, 1, tzinfo=UTC)
    # genai-prices counts cached and cache-write tokens inside input_tokens.
    reference = calc_price(
        Usage(
            input_tokens=usage.input_tokens + usage.cached_input_tokens + usage.cache_write_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cached_input_tokens,
            cache_write_tokens=usage.cache_write_tokens,
        ),
        model.api_model,
        provider_id=provider.prices_id,
        genai_request_timestamp=when,
    ).total_price
    ours = CATALOG.price(model_id, when).cost_usd(usage)
    assert isinstance(ours, Decimal) and ours == reference


def test_prices_are_effective_dated() -> None:
    # genai-prices records a Mistral Medium "latest" price change on 2026-06-16.
    custom = load_catalog_text('[[models]]\nid = "mistral-medium-latest"\nprovider = "mistral"\n')
    before = custom.price("mistral-medium-latest", datetime(2026, 6, 1, tzinfo=UTC))
    after = custom.price("mistral-medium-latest", datetime(2026, 7, 1, tzinfo=UTC))
    assert (before.input.base, after.input.base) == (Decimal("0.4"), Decimal("1.5"))


def load_catalog_text(text: str, tmp: Path | None = None) -> object:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "c.toml"
    path.write_text(text)
    return load_catalog(path)


def test_custom_model_with_own_price_extends_the_default() -> None:
    catalog = load_catalog_text(
        '[providers.vllm]\nkind = "openai"\nbase_url = "http://127.0.0.1:9000/v1"\nrequires_key = false\nregion = "eu"\n\n'
        '[[models]]\nid = "qwen-local"\nprovider = "vllm"\ncontext_window = 32768\nopen_weight = true\n'
        'price = { input_usd_per_mtok = "0.01", output_usd_per_mtok = "0.03" }\nquality = { classify = 0.85 }\n'
    )
    assert "gpt-4o" in catalog.models and "qwen-local" in catalog.models  # type: ignore[attr-defined]
    cost = catalog.price("qwen-local").cost_usd(TokenUsage(input_tokens=1_000_000, output_tokens=1_000_000))  # type: ignore[attr-defined]
    assert cost == Decimal("0.04")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[models]]\nid = "x"\nprovider = "nope"\n', "unknown provider 'nope'"),
        ('[[models]]\nid = "x"\nprovider = "openai"\nquality = { classify = 1.5 }\n', "outside 0..1"),
        ('[[models]]\nid = "not-a-real-model-xyz"\nprovider = "openai"\n', "genai-prices has no price"),
        ('[providers.p]\nkind = "grpc"\nbase_url = "http://x"\n', "kind must be one of"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_bad_catalogs_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_catalog_text(text)

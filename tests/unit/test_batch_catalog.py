"""The catalog's batch keys: a provider's batch_multiplier and batch_window_h, a model's region_sync_only."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from router.catalog import MODEL_KEYS, PROVIDER_KEYS, load_catalog
from router.errors import ConfigError


def test_the_default_catalog_prices_the_vendors_batch_apis_at_half() -> None:
    catalog = load_catalog()
    for name in ("openai", "anthropic", "google", "mistral"):
        assert catalog.providers[name].batch_multiplier == Decimal("0.5")
        assert catalog.providers[name].batch_window_h == 24
    # A self-hosted server has no batch API unless the catalog gives it one.
    assert catalog.providers["local"].batch_multiplier is None
    assert catalog.providers["local"].batch_window_h is None
    assert not any(m.region_sync_only for m in catalog.models.values())


def test_the_new_keys_are_known() -> None:
    assert {"batch_multiplier", "batch_window_h"} <= PROVIDER_KEYS
    assert "region_sync_only" in MODEL_KEYS


def test_a_catalog_file_overrides_the_multiplier_and_flags_a_model(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        '[providers.mistral]\nbatch_multiplier = "0.6"\nbatch_window_h = 12\n'
        '[[models]]\nid = "mistral-small-2603"\nregion_sync_only = true\n'
    )
    catalog = load_catalog(path)
    assert catalog.providers["mistral"].batch_multiplier == Decimal("0.6")
    assert catalog.providers["mistral"].batch_window_h == 12
    assert catalog.models["mistral-small-2603"].region_sync_only


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('batch_multiplier = "0"', "batch_multiplier must be a decimal share"),
        ('batch_multiplier = "1.5"', "batch_multiplier must be a decimal share"),
        ('batch_multiplier = "-0.5"', "batch_multiplier must be a decimal share"),
        ('batch_multiplier = "NaN"', "batch_multiplier must be a decimal share"),
        ('batch_multiplier = "Infinity"', "batch_multiplier must be a decimal share"),
        ('batch_multiplier = "half"', "batch_multiplier must be a decimal share"),
        ("batch_multiplier = true", "batch_multiplier must be a decimal share"),
        ("batch_window_h = 0", "batch_window_h must be a positive whole number"),
        ('batch_window_h = "24"', "batch_window_h must be a positive whole number"),
        ('batch_multipler = "0.5"', "unknown key 'batch_multipler' (did you mean 'batch_multiplier'?)"),
    ],
)
def test_bad_batch_keys_are_refused(tmp_path: Path, body: str, expected: str) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(f"[providers.openai]\n{body}\n")
    with pytest.raises(ConfigError, match=None) as caught:
        load_catalog(path)
    assert expected in str(caught.value)
    assert "provider openai" in str(caught.value)


def test_a_multiplier_of_one_is_allowed(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text("[providers.openai]\nbatch_multiplier = 1\n")
    assert load_catalog(path).providers["openai"].batch_multiplier == Decimal(1)


def test_region_sync_only_must_be_a_flag(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('[[models]]\nid = "mistral-small-2603"\nregion_sync_only = "yes"\n')
    with pytest.raises(ConfigError, match="region_sync_only must be true or false"):
        load_catalog(path)

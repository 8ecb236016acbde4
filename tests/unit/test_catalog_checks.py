"""Catalog mistakes that used to be ignored or crash: each is a ConfigError naming the file, the model
or provider, and the field. Unknown names in --region, --providers and --models are named too."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.catalog import MODEL_KEYS, PROVIDER_KEYS, load_catalog
from router.errors import ConfigError, InputError
from router.jobs.intake import JobRequest, check_names

CATALOG = load_catalog()


def _refused(tmp_path: Path, body: str) -> str:
    path = tmp_path / "mine.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as caught:
        load_catalog(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message  # the file is named first
    return message.removeprefix(f"{path}: ")


def _model(extra: str, model_id: str = "my-model") -> str:
    return (
        f'[[models]]\nid = "{model_id}"\nprovider = "openai"\n'
        f'price = {{ input_usd_per_mtok = "1", output_usd_per_mtok = "2" }}\n{extra}\n'
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            _model("context_windw = 8000"),
            "model my-model: unknown key 'context_windw' (did you mean 'context_window'?)",
        ),
        (_model("open_weights = true"), "model my-model: unknown key 'open_weights' (did you mean 'open_weight'?)"),
        (
            '[providers.local]\nbase_urll = "http://gpu:8000/v1"\n',
            "provider local: unknown key 'base_urll' (did you mean 'base_url'?)",
        ),
        ('[[model]]\nid = "x"\n', "unknown key 'model' (did you mean 'models'?)"),
        (
            '[[models]]\nid = "m"\nprovider = "openai"\nprice = { input_usd_per_mtk = "1" }\n',
            "model m: price: unknown key 'input_usd_per_mtk' (did you mean 'input_usd_per_mtok'?)",
        ),
        (
            '[defaults]\nquality_sources = { classify = "ours" }\n',
            "defaults: unknown key 'quality_sources' (did you mean 'quality_source'?)",
        ),
    ],
)
def test_unknown_keys_are_refused_with_the_closest_known_one(tmp_path: Path, body: str, expected: str) -> None:
    assert _refused(tmp_path, body) == expected


@pytest.mark.parametrize(
    ("window", "shown"), [("-5", "-5"), ("0", "0"), ("8000.5", "8000.5"), ('"8k"', "'8k'"), ("nan", "nan")]
)
def test_context_windows_must_be_positive_whole_numbers(tmp_path: Path, window: str, shown: str) -> None:
    message = _refused(tmp_path, _model(f"context_window = {window}"))
    assert message == f"model my-model: context_window must be a positive whole number, not {shown}"


def test_a_model_id_given_twice_in_one_file_is_refused(tmp_path: Path) -> None:
    message = _refused(tmp_path, _model("context_window = 1000") + _model("context_window = 2000"))
    assert message.startswith("model my-model: id given twice in this file")


def test_a_user_file_may_override_a_default_model_by_id(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('[[models]]\nid = "gpt-4o"\ncontext_window = 1000\n')
    assert load_catalog(path).model("gpt-4o").context_window == 1000
    assert CATALOG.model("gpt-4o").context_window != 1000


@pytest.mark.parametrize(
    "url", ["api.openai.com/v1", "ftp://gpu:8000/v1", "http://", "http://gpu:port/v1", "localhost:8000", "42"]
)
def test_base_url_must_be_an_http_url(tmp_path: Path, url: str) -> None:
    value = url if url == "42" else f'"{url}"'
    message = _refused(tmp_path, f"[providers.local]\nbase_url = {value}\n")
    assert message.startswith("provider local: base_url must be an http:// or https:// URL"), message


@pytest.mark.parametrize(
    ("price", "shown"),
    [('"nan"', "'nan'"), ("nan", "nan"), ('"inf"', "'inf'"), ("inf", "inf"), ('"-1"', "'-1'"), ('"cheap"', "'cheap'")],
)
def test_prices_must_be_finite_and_not_negative(tmp_path: Path, price: str, shown: str) -> None:
    body = f'[[models]]\nid = "m"\nprovider = "openai"\nprice = {{ input_usd_per_mtok = "1", output_usd_per_mtok = {price} }}\n'
    message = _refused(tmp_path, body)
    assert message.startswith("model m: price.output_usd_per_mtok must be a decimal number of USD, 0 or more")
    assert message.endswith(f"not {shown}")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            '[providers.local]\nenabled = "true"\n',
            "provider local: enabled must be true or false (unquoted), not 'true'",
        ),
        (_model("open_weight = 1"), "model my-model: open_weight must be true or false (unquoted), not 1"),
        (_model('quality = { classify = "high" }'), "model my-model: quality 'high' for classify is outside 0..1"),
        (_model("quality = { classify = nan }"), "model my-model: quality nan for classify is outside 0..1"),
        (
            '[[models]]\nid = "m"\nprovider = "openia"\n',
            "model m: provider: unknown provider 'openia' (did you mean 'openai'?)",
        ),
        ('[[models]]\nid = "m"\n', "model m: provider is required (one of anthropic, google, local, mistral, openai)"),
        ('[[models]]\nprovider = "openai"\n', '[[models]] entry 1 has no id (a string, e.g. id = "my-model")'),
        ('[models]\nid = "m"\n', "models must be an array of tables, each opened with [[models]]"),
        (_model("region = 3"), "model my-model: region must be a non-empty string, not 3"),
    ],
)
def test_field_values_of_the_wrong_kind_are_named(tmp_path: Path, body: str, expected: str) -> None:
    assert _refused(tmp_path, body) == expected


def test_a_catalog_path_that_is_a_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_catalog(tmp_path)


def test_the_known_keys_follow_the_catalog_types() -> None:
    assert {"kind", "base_url", "api_key_env", "prices_id", "region", "requires_key", "enabled"} <= PROVIDER_KEYS
    assert {"id", "context_window", "price", "quality", "quality_source", "rpm", "thinking"} <= MODEL_KEYS
    assert "model_id" not in MODEL_KEYS and "name" not in PROVIDER_KEYS


def _request(**names: frozenset[str]) -> JobRequest:
    return JobRequest(path=Path("in.jsonl"), team="t", task="classify", min_quality=0.9, **names)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ({"regions": frozenset({"mars"})}, "--region: unknown region 'mars': the catalog has eu, local, us"),
        ({"regions": frozenset({"EU", "us"})}, "--region: unknown region 'EU' (did you mean 'eu'?): the catalog has"),
        (
            {"providers": frozenset({"openia"})},
            "--providers: unknown provider 'openia' (did you mean 'openai'?): "
            "the catalog has anthropic, google, local, mistral, openai",
        ),
        (
            {"models": frozenset({"gpt-5", "gpt-4o"})},
            "--models: unknown model 'gpt-5' (did you mean 'gpt-4o'?): `pennyroute models` lists them",
        ),
        ({"models": frozenset({"x1", "x2"})}, "--models: unknown models 'x1', 'x2': `pennyroute models` lists them"),
    ],
)
def test_unknown_names_in_flags_are_named(names: dict[str, frozenset[str]], expected: str) -> None:
    with pytest.raises(InputError) as caught:
        check_names(_request(**names), CATALOG)
    assert str(caught.value).startswith(expected), str(caught.value)


def test_known_names_in_flags_pass() -> None:
    check_names(
        _request(
            regions=frozenset({"eu", "local"}),
            providers=frozenset({"mistral"}),
            models=frozenset({"mistral-small-2603"}),
        ),
        CATALOG,
    )

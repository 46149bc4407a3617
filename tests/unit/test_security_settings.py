"""The security settings: API keys parsed and checked (never quoted back), limits' defaults."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.settings import Settings, SettingsError, get_settings


@pytest.fixture
def from_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings read from the environment as a process reads them, for one test."""
    for name in ("PROMPTBATCH_PROVIDER", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.usefixtures("from_env")
@pytest.mark.parametrize(
    "value", ["sekrit-1,,b", "sekrit-1,", ",sekrit-1", " ", "sekrit-1, b", "sekrit 1", "a,\tb"]
)
def test_an_empty_or_blank_key_is_a_clear_error_that_quotes_no_key(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("PROMPTBATCH_API_KEYS", value)
    with pytest.raises(SettingsError, match="PROMPTBATCH_API_KEYS") as caught:
        get_settings()
    assert "sekrit" not in str(caught.value)


@pytest.mark.usefixtures("from_env")
def test_keys_are_read_comma_separated_and_kept_out_of_repr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROMPTBATCH_API_KEYS", "sekrit-one,sekrit-two")
    settings = get_settings()
    assert settings.api_key_list == ("sekrit-one", "sekrit-two")
    assert "sekrit" not in repr(settings)
    assert "sekrit" not in str(settings.model_dump())


@pytest.mark.usefixtures("from_env")
def test_an_empty_value_means_no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMPTBATCH_API_KEYS", "")
    assert get_settings().api_key_list == ()


def test_limits_default_to_64_mib_bodies_and_no_rate_or_queue_limit() -> None:
    settings = Settings(redis_url="redis://x", provider="offline")
    assert settings.max_body_bytes == 64 * 1024 * 1024
    assert settings.rate_limit_per_min == 0
    assert settings.max_queued_prompts == 0
    assert settings.api_key_list == ()


@pytest.mark.usefixtures("from_env")
@pytest.mark.parametrize(
    ("name", "value"),
    [("PROMPTBATCH_MAX_BODY_BYTES", "0"), ("PROMPTBATCH_RATE_LIMIT_PER_MIN", "-1"),
     ("PROMPTBATCH_MAX_QUEUED_PROMPTS", "-5")],
)  # fmt: skip
def test_a_negative_limit_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        get_settings()

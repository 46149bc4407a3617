"""Submission validation: limits and defaults applied, each refusal naming its field."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from pydantic import ValidationError

from api.planning import plan_batch
from shared.errors import InvalidRequest
from shared.schemas import BatchCreate
from shared.settings import Settings, SettingsError, get_settings


def _settings(**overrides: object) -> Settings:
    return Settings(**{"redis_url": "redis://x", "provider": "offline", **overrides})  # type: ignore[arg-type]


def _refusal(body: Mapping[str, object], **limits: object) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        plan_batch(BatchCreate.model_validate(body), _settings(**limits))
    return caught.value


def test_plain_and_object_prompts_resolve_with_default_custom_ids() -> None:
    body = {"prompts": ["a", {"prompt": "b", "custom_id": "q2"}, {"prompt": "c"}]}
    plan = plan_batch(BatchCreate.model_validate(body), _settings())
    assert plan.items == [("0", "a"), ("q2", "b"), ("2", "c")]
    assert plan.model == "gpt-4o-mini"
    assert plan.max_concurrency == 16
    assert plan.provider == "offline"


def test_too_many_prompts_names_prompts() -> None:
    error = _refusal({"prompts": ["a", "b", "c"]}, max_prompts=2)
    assert error.param == "prompts"


def test_prompt_too_long_names_its_index() -> None:
    error = _refusal({"prompts": ["ok", "x" * 11]}, max_prompt_chars=10)
    assert error.param == "prompts[1]"


def test_blank_prompt_is_refused() -> None:
    assert _refusal({"prompts": ["ok", "   "]}).param == "prompts[1]"


def test_duplicate_custom_id_names_the_second() -> None:
    body = {"prompts": [{"prompt": "a", "custom_id": "x"}, {"prompt": "b", "custom_id": "x"}]}
    assert _refusal(body).param == "prompts[1].custom_id"


def test_concurrency_over_the_ceiling_names_max_concurrency() -> None:
    error = _refusal({"prompts": ["a"], "max_concurrency": 65})
    assert error.param == "max_concurrency"


def test_max_tokens_over_the_cap_names_params_max_tokens() -> None:
    error = _refusal({"prompts": ["a"], "params": {"max_tokens": 10**6}})
    assert error.param == "params.max_tokens"


@pytest.mark.parametrize(
    "body",
    [
        {"prompts": ["a"], "colour": "blue"},
        {"prompts": [{"prompt": "a", "extra": 1}]},
        {"prompts": ["a"], "params": {"temperature": 0.2, "top_k": 3}},
        {"prompts": []},
        {"prompts": ["a"], "params": {"temperature": 3}},
    ],
)
def test_schema_refuses_unknown_fields_and_bad_values(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        BatchCreate.model_validate(body)


def test_openai_provider_without_key_or_base_url_is_refused() -> None:
    with pytest.raises(ValidationError, match="OPENAI_API_KEY"):
        _settings(provider="openai", openai_api_key=None, openai_base_url=None)


def test_provider_defaults_to_openai_only_with_a_key() -> None:
    assert _settings(provider=None, openai_api_key=None).resolved_provider == "offline"
    assert _settings(provider=None, openai_api_key="sk-x").resolved_provider == "openai"


def test_missing_redis_url_says_what_to_do() -> None:
    with pytest.raises(SettingsError, match=r"REDIS_URL is not set.*make run"):
        _settings(redis_url=None).require_redis_url()


@pytest.mark.parametrize(
    ("variable", "value"), [("PROMPTBATCH_MAX_PROMPTS", "-3"), ("PORT", "abc")]
)
def test_bad_environment_is_a_settings_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsError, match=rf"Invalid configuration: {variable}: "):
            get_settings()
    finally:
        get_settings.cache_clear()


def test_a_worker_s_leases_outlive_any_redis_outage_it_rides_out() -> None:
    defaults = _settings()
    beats = 3 * defaults.worker_heartbeat_s
    assert defaults.redis_retry_s + beats <= defaults.lease_s
    assert _settings(lease_s=9).redis_retry_s == 3  # derived from a shorter lease
    with pytest.raises(ValidationError, match="PROMPTBATCH_WORKER_REDIS_RETRY_S must be shorter"):
        _settings(worker_redis_retry_s=60)

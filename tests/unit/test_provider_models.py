"""Other providers' chat models: params as each takes them, built only when configured and
installed, and their reasons for ending a reply in OpenAI's words."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from shared.settings import Settings
from worker import providers
from worker.llm import finish_reason
from worker.providers import ProviderModels, provider_call_params

PARAMS = {"temperature": 0.2, "max_completion_tokens": 64, "stop": ["END"]}


def test_each_provider_gets_the_output_limit_under_its_own_name() -> None:
    assert provider_call_params("anthropic", PARAMS) == {
        "temperature": 0.2, "max_tokens": 64, "stop": ["END"],
    }  # fmt: skip
    assert provider_call_params("google_genai", PARAMS)["max_output_tokens"] == 64
    # ChatOllama takes them as one `options` object, not as keywords of its client's call
    assert provider_call_params("ollama", PARAMS) == {
        "options": {"temperature": 0.2, "num_predict": 64, "stop": ["END"]}
    }
    assert provider_call_params("ollama", {}) == {}


def test_a_provider_is_offered_only_when_configured_and_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(
        provider="offline", anthropic_api_key=SecretStr("k"), ollama_base_url="http://o:11434"
    )
    models = ProviderModels(settings)
    assert models.offered() == ["anthropic", "ollama"]  # no GOOGLE_API_KEY
    monkeypatch.setattr(providers, "find_spec", lambda name: None)  # the extra not installed
    assert models.offered() == []
    assert not models.runs("anthropic")


def test_a_built_model_is_kept_per_provider_and_model_name() -> None:
    settings = Settings(provider="offline", anthropic_api_key=SecretStr("k"))
    models = ProviderModels(settings)
    first = models.get("anthropic", "claude-sonnet-4-5")
    assert models.get("anthropic", "claude-sonnet-4-5") is first
    assert models.get("anthropic", "claude-haiku-4-5") is not first


@pytest.mark.parametrize(
    ("said", "openai"),
    [
        ({"stop_reason": "end_turn"}, "stop"),
        ({"stop_reason": "max_tokens"}, "length"),
        ({"stop_reason": "tool_use"}, "tool_calls"),
        ({"finish_reason": "MAX_TOKENS"}, "length"),
        ({"finish_reason": "SAFETY"}, "content_filter"),
        ({"done_reason": "stop"}, "stop"),
        ({"finish_reason": "stop"}, "stop"),
        ({}, None),
    ],
)
def test_reasons_a_reply_ended_are_said_in_openais_words(
    said: dict[str, str], openai: str | None
) -> None:
    assert finish_reason(said) == openai

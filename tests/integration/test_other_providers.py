"""A batch that names another LangChain provider (`"anthropic:claude-sonnet-4-5"`) runs on that
provider's own chat model: LangChain's real `ChatAnthropic` against the mock's Messages API
over HTTP, beside a default-model batch that still goes to OpenAI's endpoint."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import SecretStr
from redis.asyncio import Redis

from shared import keys
from tests import mock_anthropic
from tests.conftest import api_client
from tests.helpers import MockProvider, Proc
from tests.integration.flows import (
    all_results,
    openai_settings,
    openai_worker,
    submit,
    wait_final,
)

ANTHROPIC_KEY = "sk-ant-test"


def _messages_calls(mock: MockProvider) -> list[dict[str, Any]]:
    return [r for r in mock.requests() if r.get("api") == "messages"]


def _chat_calls(mock: MockProvider) -> list[dict[str, Any]]:
    return [r for r in mock.requests() if "messages" in r and r.get("api") is None]


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    return "".join(block["text"] for block in system)


async def test_an_anthropic_batch_is_answered_by_the_messages_api_beside_an_openai_one(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    anthropic = {"ANTHROPIC_API_KEY": ANTHROPIC_KEY, "ANTHROPIC_BASE_URL": mock.url}
    openai_worker(workers, mock, **anthropic)
    settings = openai_settings(redis_url, mock).model_copy(
        update={"anthropic_api_key": SecretStr(ANTHROPIC_KEY)}
    )
    few_shot = [
        {"role": "user", "content": "I love it"},
        {"role": "assistant", "content": "positive"},
        {"role": "user", "content": "And this one? [[cached=2]]"},
    ]
    async with api_client(settings) as client:
        claude = await submit(
            client,
            model="anthropic:claude-sonnet-4-5",
            system="Answer in one line.",
            prompts=[
                "Where is Seoul in the world?",
                {"custom_id": "few", "messages": few_shot},
                "hi",
            ],
            params={"max_tokens": 5, "temperature": 0.1},
        )
        gpt = await submit(client, prompts=["the default model"])
        assert claude["provider"] == "anthropic"
        assert claude["model"] == "claude-sonnet-4-5"
        assert gpt["provider"] == "openai"
        claude_done = await wait_final(client, claude["id"])
        await wait_final(client, gpt["id"])
        items = await all_results(client, claude["id"])
    assert claude_done["status"] == "completed"
    assert claude_done["request_counts"]["succeeded"] == 3

    sent = _messages_calls(mock)
    assert len(sent) == 3
    for request in sent:
        assert request["model"] == "claude-sonnet-4-5"
        assert _system_text(request["system"]) == "Answer in one line."  # top-level
        assert {m["role"] for m in request["messages"]} <= {"user", "assistant"}
        assert request["max_tokens"] == 5
        assert request["temperature"] == 0.1
        said = request["headers"]  # the key, as the anthropic SDK sends it (either header)
        assert ANTHROPIC_KEY in (said.get("x-api-key"), said.get("authorization", "")[7:])
    turns = next(r["messages"] for r in sent if len(r["messages"]) == 3)
    assert [(m["role"], _system_text(m["content"])) for m in turns] == [
        ("user", "I love it"), ("assistant", "positive"), ("user", "And this one? [[cached=2]]"),
    ]  # fmt: skip
    chat = _chat_calls(mock)
    assert [r["messages"][-1]["content"] for r in chat] == ["the default model"]  # only gpt's

    seoul, few, hi = items
    assert seoul["output"] == "mock reply to: Where is"  # cut at max_tokens 5 words
    assert seoul["finish_reason"] == "length"  # Anthropic's max_tokens
    assert hi["output"] == "mock reply to: hi"
    assert hi["finish_reason"] == "stop"  # Anthropic's end_turn
    assert seoul["usage"]["input_tokens"] == len(
        ["Answer", "in", "one", "line.", "Where", "is", "Seoul", "in", "the", "world?"]
    )
    assert seoul["usage"]["output_tokens"] == 5
    assert few["usage"]["cached_tokens"] == 2  # cache_read_input_tokens
    assert few["usage"]["input_tokens"] == len(
        [
            "Answer",
            "in",
            "one",
            "line.",
            "I",
            "love",
            "it",
            "positive",
            "And",
            "this",
            "one?",
            "[[cached=2]]",
        ]
    )
    assert claude_done["usage"]["input_tokens"] == sum(i["usage"]["input_tokens"] for i in items)
    # pacing learned Anthropic's limits from its anthropic-ratelimit-* headers
    async with Redis.from_url(redis_url) as redis:
        learned = await redis.hgetall(keys.pacing("claude-sonnet-4-5"))
    assert int(learned[b"rl"]) == mock_anthropic.LIMIT_REQUESTS
    assert int(learned[b"tl"]) == mock_anthropic.LIMIT_TOKENS


async def test_an_unconfigured_provider_is_a_422_and_a_colon_in_a_model_name_is_no_provider(
    redis_url: str, mock: MockProvider
) -> None:
    async with api_client(openai_settings(redis_url, mock)) as client:
        for model in ("google_genai:gemini-2.5-flash", "anthropic:claude-sonnet-4-5", "ollama:x"):
            refused = await client.post("/v1/batches", json={"model": model, "prompts": ["x"]})
            assert refused.status_code == 422, refused.text
            error = refused.json()["error"]
            assert error["param"] == "model"
            assert model.split(":")[0] in error["message"]
        kept = await submit(client, model="llama3.1:8b", prompts=["x"])
        assert (kept["provider"], kept["model"]) == ("openai", "llama3.1:8b")


async def test_anthropics_429_and_529_are_waited_out_and_retried(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    anthropic = {"ANTHROPIC_API_KEY": ANTHROPIC_KEY, "ANTHROPIC_BASE_URL": mock.url}
    openai_worker(workers, mock, PROMPTBATCH_MAX_RETRIES="0", **anthropic)  # no SDK retries
    settings = openai_settings(redis_url, mock).model_copy(
        update={"anthropic_api_key": SecretStr(ANTHROPIC_KEY)}
    )
    async with api_client(settings) as client:
        batch = await submit(
            client, model="anthropic:claude-haiku-4-5",
            prompts=["busy [[fail=529:2]]", "slow down [[fail=429:1]]"],
        )  # fmt: skip
        done = await wait_final(client, batch["id"])
        items = await all_results(client, batch["id"])
    assert done["request_counts"]["succeeded"] == 2, items
    assert len(_messages_calls(mock)) == 5  # 3 for the overloaded one, 2 for the 429
    assert done["pacing"]["provider_429s"] >= 1

"""The offline model, the chain, and how a provider's answer becomes an item's result."""

from __future__ import annotations

from langchain_core.exceptions import ModelInvalidRequestError, ModelRateLimitError
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from shared.chat import BatchParams
from shared.llm import OFFLINE_PREFIX, OfflineChatModel, build_chain, error_info, outcome_of


async def test_offline_model_is_deterministic_with_usage() -> None:
    model = OfflineChatModel()
    messages = [SystemMessage(content="be brief"), HumanMessage(content="where is Seoul")]
    first = await model.ainvoke(messages)
    second = await model.ainvoke(messages)
    assert first.content == second.content == f"{OFFLINE_PREFIX}where is Seoul"
    assert isinstance(first, AIMessage)
    assert first.usage_metadata is not None
    assert first.usage_metadata["input_tokens"] == 5
    assert first.usage_metadata["output_tokens"] == 6


async def test_chain_passes_system_prompt_and_keeps_braces_literal() -> None:
    chain = build_chain(OfflineChatModel(), "m", "Answer {in} one line.", BatchParams())
    reply = await chain.ainvoke("what is {x}?")
    assert reply.content == f"{OFFLINE_PREFIX}what is {{x}}?"
    assert outcome_of(reply).usage is not None
    assert outcome_of(reply).usage.input_tokens == 7  # type: ignore[union-attr]


async def test_chain_applies_max_tokens() -> None:
    chain = build_chain(OfflineChatModel(), "m", None, BatchParams(max_tokens=3))
    reply = await chain.ainvoke("one two three four")
    assert reply.content == "[offline] You asked:"


async def test_abatch_as_completed_keeps_each_output_with_its_prompt() -> None:
    chain = build_chain(OfflineChatModel(latency_s=0.001), "m", None, BatchParams())
    prompts = [f"prompt {i}" for i in range(50)]
    seen = {
        index: result
        async for index, result in chain.abatch_as_completed(
            prompts, config={"max_concurrency": 7}, return_exceptions=True
        )
    }
    assert {i: outcome_of(r).output for i, r in seen.items()} == {
        i: f"{OFFLINE_PREFIX}{p}" for i, p in enumerate(prompts)
    }


class _SdkStatusError(Exception):
    """Shaped like an SDK's status error: a status code and a JSON body."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"Error code: {status_code}")
        self.status_code = status_code
        self.body = {"message": message}


def test_provider_errors_keep_the_provider_message_and_a_type() -> None:
    bad = error_info(ModelInvalidRequestError("prompt too long"))
    assert (bad.type, bad.message) == ("invalid_request", "prompt too long")
    assert error_info(ModelRateLimitError("slow down")).type == "rate_limited"


def test_sdk_errors_are_typed_by_status_with_the_body_message() -> None:
    bad = error_info(_SdkStatusError(400, "no such thing"))
    assert (bad.type, bad.message) == ("invalid_request", "no such thing")
    assert error_info(_SdkStatusError(503, "x")).type == "provider_error"


def test_an_exception_fails_the_item() -> None:
    outcome = outcome_of(ValueError("boom"))
    assert outcome.status == "failed"
    assert outcome.output is None
    assert outcome.error is not None
    assert (outcome.error.type, outcome.error.message) == ("internal_error", "boom")

"""Naming another provider in `model` at submit: only a configured one, only the params its
chat model takes (as a JSON body, and as a large OpenAI Batch upload staged a page at a time)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr

from api.ingest import INLINE_BYTES
from tests.conftest import api_client, make_settings


@pytest.fixture
async def anthropic_client(redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(redis_url, anthropic_api_key=SecretStr("sk-ant-test"))
    async with api_client(settings) as http:
        yield http


async def test_a_configured_provider_runs_the_batch_its_model_names(
    anthropic_client: httpx.AsyncClient,
) -> None:
    response = await anthropic_client.post(
        "/v1/batches", json={"model": "anthropic:claude-sonnet-4-5", "prompts": ["hi"],
                             "params": {"max_tokens": 50, "temperature": 0.5}},
    )  # fmt: skip
    assert response.status_code == 202, response.text
    batch = response.json()
    assert (batch["provider"], batch["model"]) == ("anthropic", "claude-sonnet-4-5")
    unnamed = (await anthropic_client.post("/v1/batches", json={"prompts": ["hi"]})).json()
    assert unnamed["provider"] == "offline"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"params": {"seed": 7}}, "params.seed"),
        ({"params": {"response_format": {"type": "json_object"}}}, "params.response_format"),
        (
            {"prompts": [{"prompt": "x", "params": {"logprobs": True}}]},
            "prompts[0].params.logprobs",
        ),
        ({"mode": "provider_batch"}, "mode"),
        ({"endpoint": "/v1/embeddings"}, "model"),
    ],
)
async def test_what_another_providers_model_does_not_take_is_a_422(
    anthropic_client: httpx.AsyncClient, body: dict[str, object], param: str
) -> None:
    request = {"model": "anthropic:claude-sonnet-4-5", "prompts": ["x"], **body}
    response = await anthropic_client.post("/v1/batches", json=request)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param


async def test_a_large_upload_naming_another_provider_is_checked_line_by_line(
    anthropic_client: httpx.AsyncClient,
) -> None:
    def line(n: int, **params: object) -> str:
        body = {
            "model": "anthropic:claude-sonnet-4-5",
            "max_tokens": 20,
            **params,
            "messages": [{"role": "user", "content": f"question {n} " + "x" * 200}],
        }
        return json.dumps({"custom_id": f"c{n}", "method": "POST",
                           "url": "/v1/chat/completions", "body": body})  # fmt: skip

    lines = [line(n) for n in range(400)] + [line(400, seed=3)]
    payload = ("\n".join(lines) + "\n").encode()
    assert len(payload) > INLINE_BYTES  # staged a page at a time, not parsed whole
    response = await anthropic_client.post(
        "/v1/batches", content=payload, headers={"Content-Type": "application/x-ndjson"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == "line[401].body.seed"

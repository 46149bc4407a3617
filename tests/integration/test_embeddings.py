"""`/v1/embeddings` batches through real workers: LangChain's `OpenAIEmbeddings` against the
mock's `/v1/embeddings` over HTTP (and the offline embedding): inputs grouped into few calls,
each vector written to its own item, a refused input failing alone."""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Callable

import openai
import pytest

from shared.settings import Settings
from tests.conftest import api_client, make_settings
from tests.helpers import MockProvider, Proc
from tests.integration.flows import (
    all_results,
    openai_settings,
    openai_worker,
    submit,
    wait_final,
)
from tests.integration.test_openai_surface import lines_of, poll_final, sdk_clients
from tests.mock_openai import mock_vector
from worker.embeddings import offline_vector


def _close(got: list[float], want: list[float]) -> bool:
    """Equal as float32 carries them (the OpenAI SDK asks for base64 of float32s)."""
    return len(got) == len(want) and all(
        math.isclose(g, w, abs_tol=1e-6) for g, w in zip(got, want, strict=True)
    )


def _embedding_calls(mock: MockProvider) -> list[list[str]]:
    return [r["input"] for r in mock.requests() if "input" in r]


async def test_200_inputs_come_back_each_with_its_own_vector_in_few_calls(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    openai_worker(workers, mock)
    texts = [f"document number {i} about topic {i % 7}" for i in range(200)]
    prompts: list[object] = list(texts)
    prompts[5] = {"custom_id": "doc-5", "input": texts[5]}
    async with api_client(openai_settings(redis_url, mock)) as client:
        batch = await submit(
            client, endpoint="/v1/embeddings", prompts=prompts, params={"dimensions": 12},
            model="text-embedding-3-small",
        )  # fmt: skip
        assert batch["endpoint"] == "/v1/embeddings"
        done = await wait_final(client, batch["id"])
        items = await all_results(client, batch["id"])
    assert done["status"] == "completed"
    assert done["request_counts"]["succeeded"] == 200
    calls = _embedding_calls(mock)
    assert len(calls) == 1  # 200 inputs fit one group (PROMPTBATCH_EMBED_GROUP, 256)
    assert sorted(t for call in calls for t in call) == sorted(texts)  # each input sent once
    assert items[5]["custom_id"] == "doc-5"
    for item, text in zip(items, texts, strict=True):
        assert item["status"] == "succeeded"
        assert _close(item["embedding"], mock_vector(text, 12)), item["index"]
        assert item["output"] is None
    words = sum(len(t.split()) for t in texts)
    assert sum(item["usage"]["input_tokens"] for item in items) == words  # the provider's count
    assert done["usage"]["input_tokens"] == words
    sent = [r for r in mock.requests() if "input" in r]
    assert {r["model"] for r in sent} == {"text-embedding-3-small"}
    assert {r["dimensions"] for r in sent} == {12}


async def test_a_refused_input_fails_alone_and_its_group_still_embeds(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    openai_worker(workers, mock)
    texts = [f"text {i}" for i in range(16)]
    texts[9] = "text nine [[status=400]]"
    async with api_client(openai_settings(redis_url, mock)) as client:
        batch = await submit(client, endpoint="/v1/embeddings", prompts=texts)
        done = await wait_final(client, batch["id"])
        items = await all_results(client, batch["id"])
    assert done["status"] == "completed"
    assert done["request_counts"]["failed"] == 1
    assert items[9]["status"] == "failed"
    assert "400" in items[9]["error"]["message"]
    for item in items[:9] + items[10:]:
        assert item["status"] == "succeeded"
        assert _close(item["embedding"], mock_vector(texts[item["index"]]))
    # one call of 16, then halves down to the bad input alone: 1 + 2 + 2 + 2 + 2
    assert len(_embedding_calls(mock)) <= 9


async def test_the_offline_model_embeds_without_a_network(
    settings: Settings, workers: Callable[..., Proc], redis_url: str
) -> None:
    workers()
    texts = ["alpha", "beta", "alpha"]
    async with api_client(make_settings(redis_url)) as client:
        batch = await submit(
            client, endpoint="/v1/embeddings", prompts=texts, params={"dimensions": 4}
        )
        assert batch["provider"] == "offline"
        await wait_final(client, batch["id"])
        items = await all_results(client, batch["id"])
    assert [item["embedding"] for item in items] == [offline_vector(t, 4) for t in texts]
    assert items[0]["embedding"] == items[2]["embedding"] != items[1]["embedding"]


def _embedding_lines(texts: list[str], **body: object) -> bytes:
    rows = [
        {"custom_id": f"e{n}", "method": "POST", "url": "/v1/embeddings",
         "body": {"model": "text-embedding-3-small", "input": text, **body}}
        for n, text in enumerate(texts)
    ]  # fmt: skip
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


async def test_an_openai_batch_file_of_embeddings_returns_each_vector_under_its_custom_id(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    openai_worker(workers, mock)
    texts = [f"line {n} of the file" for n in range(30)]
    ndjson = {"Content-Type": "application/x-ndjson"}
    async with api_client(openai_settings(redis_url, mock)) as client:
        response = await client.post(
            "/v1/batches", content=_embedding_lines(texts, dimensions=6), headers=ndjson
        )
        assert response.status_code == 202, response.text
        batch = response.json()
        assert batch["endpoint"] == "/v1/embeddings"
        await wait_final(client, batch["id"])
        items = await all_results(client, batch["id"])
    for n, item in enumerate(items):
        assert item["custom_id"] == f"e{n}"
        assert _close(item["embedding"], mock_vector(texts[n], 6))


async def test_the_openai_sdk_runs_an_embeddings_batch_file_through_the_openai_surface(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    openai_worker(workers, mock)
    texts = [f"sdk text {n}" for n in range(12)]
    async with sdk_clients(redis_url, mock) as (sdk, _, native):
        uploaded = await sdk.files.create(
            file=("e.jsonl", _embedding_lines(texts, encoding_format="base64")), purpose="batch"
        )
        with pytest.raises(openai.BadRequestError) as refused:  # the file is not chat lines
            await sdk.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                completion_window="24h",
            )  # fmt: skip
        assert refused.value.body["param"] == "endpoint"  # type: ignore[index]
        created = await sdk.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
        )
        assert created.endpoint == "/v1/embeddings"
        done = await poll_final(sdk, created.id)
        assert done.status == "completed"
        assert done.output_file_id is not None
        lines = lines_of((await sdk.files.content(done.output_file_id)).text)
        native_items = await all_results(native, created.id)
    assert [line["custom_id"] for line in lines] == [f"e{n}" for n in range(12)]
    for line, text, item in zip(lines, texts, native_items, strict=True):
        body = line["response"]["body"]
        assert body["object"] == "list"
        packed = base64.b64decode(body["data"][0]["embedding"])  # as the file asked
        vector = list(struct.unpack(f"<{len(packed) // 4}f", packed))
        assert _close(vector, mock_vector(text))
        assert _close(item["embedding"], vector)  # the native view: floats
        assert body["usage"]["prompt_tokens"] == item["usage"]["input_tokens"] > 0


async def test_a_provider_failure_fails_its_group_whole_and_a_refused_key_halts_the_batch(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    openai_worker(workers, mock, PROMPTBATCH_MAX_RETRIES="0")
    down = [f"down {i}" for i in range(8)]
    down[3] = "down three [[status=503]]"  # the provider failing, not this input: no split
    async with api_client(openai_settings(redis_url, mock)) as client:
        batch = await submit(client, endpoint="/v1/embeddings", prompts=down)
        done = await wait_final(client, batch["id"])
        assert done["request_counts"]["failed"] == 8
        assert len(_embedding_calls(mock)) == 1
        mock.reset()
        refused = [f"key {i}" for i in range(300)]
        refused[0] = "key zero [[status=401]]"
        batch = await submit(client, endpoint="/v1/embeddings", prompts=refused, max_concurrency=1)
        done = await wait_final(client, batch["id"])
    assert done["status"] == "failed"
    assert done["error"]["type"] == "provider_auth"
    assert done["request_counts"]["succeeded"] == 0
    assert len(_embedding_calls(mock)) == 1  # the next group was never sent


async def test_a_refusal_of_the_whole_request_is_not_split_down_to_every_input(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    openai_worker(workers, mock)
    texts = [f"text {i}" for i in range(200)]
    async with api_client(openai_settings(redis_url, mock)) as client:
        batch = await submit(  # more dimensions than the model has: every request is a 400
            client, endpoint="/v1/embeddings", prompts=texts, params={"dimensions": 4000}
        )
        done = await wait_final(client, batch["id"])
    assert done["request_counts"]["failed"] == 200
    assert len(_embedding_calls(mock)) == 3  # the group, then its two halves: refused alike


async def test_a_token_budget_stops_embedding_after_the_group_that_crossed_it(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    openai_worker(workers, mock)
    texts = [f"three words {i}" for i in range(600)]  # groups of 256, 256 and 88
    async with api_client(openai_settings(redis_url, mock)) as client:
        batch = await submit(
            client, endpoint="/v1/embeddings", prompts=texts, max_total_tokens=10,
            max_concurrency=1,
        )  # fmt: skip
        done = await wait_final(client, batch["id"])
    assert len(_embedding_calls(mock)) == 1  # the first group crossed it: nothing after
    assert done["status"] == "cancelled"
    assert done["error"]["type"] == "budget_exceeded"
    assert done["request_counts"]["succeeded"] == 256
    assert done["request_counts"]["cancelled"] == 344

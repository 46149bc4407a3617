"""The official `openai` SDK's files-and-batches workflow against `/openai/v1`, unchanged: upload,
create, poll, read the output and error files, list, cancel, delete; another key sees nothing.
Real API (in process), real worker processes, the real ChatOpenAI against the mock, real Redis."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import httpx2
import openai
import pytest
from asgi_lifespan import LifespanManager
from openai import AsyncOpenAI
from openai.types import Batch as SDKBatch
from pydantic import SecretStr

from api.main import create_app
from tests.helpers import MockProvider, Proc, wait_for
from tests.integration.flows import all_results, openai_settings, openai_worker, wait_final

pytestmark = pytest.mark.integration

KEYS = ("key-a", "key-b")


def jsonl(prompts: list[str], **params: Any) -> bytes:
    """An OpenAI Batch input file: one request line per prompt, custom ids `r0`, `r1`, ..."""
    rows = [
        {"custom_id": f"r{n}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}],
                  **params}}
        for n, prompt in enumerate(prompts)
    ]  # fmt: skip
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


@asynccontextmanager
async def sdk_clients(
    redis_url: str, mock: MockProvider, **overrides: Any
) -> AsyncIterator[tuple[AsyncOpenAI, AsyncOpenAI, httpx.AsyncClient]]:
    """The SDK as key-a and as key-b (over the SDK's own HTTP client, in process), and a plain
    client of the native API as key-a."""
    settings = openai_settings(redis_url, mock).model_copy(
        update={"api_keys": SecretStr(",".join(KEYS)), **overrides}
    )
    async with LifespanManager(create_app(settings)) as manager:
        sdk_http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=manager.app))
        native = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://testserver",
            headers={"Authorization": f"Bearer {KEYS[0]}"},
        )  # fmt: skip
        base = "http://testserver/openai/v1"
        async with sdk_http, native:
            ours = AsyncOpenAI(base_url=base, api_key=KEYS[0], http_client=sdk_http, max_retries=0)
            theirs = AsyncOpenAI(
                base_url=base, api_key=KEYS[1], http_client=sdk_http, max_retries=0
            )
            yield ours, theirs, native


async def poll_final(client: AsyncOpenAI, batch_id: str) -> SDKBatch:
    async def final() -> SDKBatch | None:
        batch = await client.batches.retrieve(batch_id)
        return batch if batch.status in ("completed", "failed", "cancelled", "expired") else None

    found = await wait_for(final, 60, what=f"batch {batch_id} to finish")
    assert found is not None
    return found


def lines_of(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


async def test_the_sdk_workflow_runs_unchanged_and_every_line_answers_its_request(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    openai_worker(workers, mock)
    prompts = ["one", "two [[status=400]]", "three [[cached=2]] [[reasoning=1]]", "four"]
    async with sdk_clients(redis_url, mock) as (client, _, native):
        uploaded = await client.files.create(
            file=("requests.jsonl", jsonl(prompts)), purpose="batch"
        )
        assert (uploaded.object, uploaded.purpose, uploaded.bytes) == (
            "file", "batch", len(jsonl(prompts)),
        )  # fmt: skip
        created = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions",
            completion_window="24h", metadata={"name": "sdk"},
        )  # fmt: skip
        assert (created.object, created.input_file_id, created.metadata) == (
            "batch", uploaded.id, {"name": "sdk"},
        )  # fmt: skip
        done = await poll_final(client, created.id)
        output = (await client.files.content(done.output_file_id or "")).text
        assert done.error_file_id is not None
        errors = (await client.files.content(done.error_file_id)).text
        # One batch, two views: the same batch at /v1.
        same = (await native.get(f"/v1/batches/{created.id}")).json()

    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (4, 3)
    assert done.request_counts.failed == 1
    assert done.completed_at is not None
    assert done.created_at <= done.completed_at
    assert done.usage is not None
    assert done.usage.input_tokens_details.cached_tokens == 2
    assert done.usage.output_tokens_details.reasoning_tokens == 1
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens > 0
    answered = lines_of(output)
    assert [line["custom_id"] for line in answered] == ["r0", "r2", "r3"]  # input order
    for line in answered:
        prompt = prompts[int(line["custom_id"][1:])]
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == f"mock reply to: {prompt}"
        assert body["choices"][0]["finish_reason"] == "stop"
        assert body["usage"]["total_tokens"] > 0
    [refused] = lines_of(errors)
    assert refused["custom_id"] == "r1"
    assert refused["response"]["status_code"] == 400  # the provider's answer, its status kept
    assert "refused" in refused["response"]["body"]["error"]["message"]
    assert (same["id"], same["status"], same["metadata"]) == (
        created.id,
        "completed",
        {"name": "sdk"},
    )


async def test_a_batch_made_at_v1_is_an_openai_batch_and_lists_page_by_page(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    openai_worker(workers, mock)
    async with sdk_clients(redis_url, mock) as (client, _, native):
        uploaded = await client.files.create(file=("a.jsonl", jsonl(["a"])), purpose="batch")
        first = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        response = await native.post("/v1/batches", json={"prompts": ["b", "c"]})
        assert response.status_code == 202
        second = response.json()["id"]
        viewed = await poll_final(client, second)
        await poll_final(client, first.id)
        output = lines_of((await client.files.content(viewed.output_file_id or "")).text)
        page = await client.batches.list(limit=1)
        every = [batch.id async for batch in client.batches.list(limit=1)]
        other = await client.files.create(file=("b.jsonl", jsonl(["b"])), purpose="batch")
        files = [file.id async for file in client.files.list(limit=1)]  # page by page
        deleted = await client.files.delete(uploaded.id)
        with pytest.raises(openai.NotFoundError):
            await client.files.retrieve(uploaded.id)
        native_items = await all_results(native, first.id)  # and the other way round

    assert viewed.status == "completed"
    assert viewed.input_file_id is None
    assert [line["custom_id"] for line in output] == ["0", "1"]
    assert [batch.id for batch in page.data] == [second]
    assert page.has_more
    assert every == [second, first.id]
    assert files == [other.id, uploaded.id]
    assert (deleted.id, deleted.deleted) == (uploaded.id, True)
    assert [(i["custom_id"], i["status"]) for i in native_items] == [("r0", "succeeded")]


async def test_another_key_gets_404s_and_a_malformed_file_is_refused_naming_its_line(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    openai_worker(workers, mock)
    async with sdk_clients(redis_url, mock) as (client, other, _):
        content = jsonl(["a", "b [[status=400]]"])
        uploaded = await client.files.create(file=("a.jsonl", content), purpose="batch")
        created = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        for call in (
            other.files.retrieve(uploaded.id),
            other.files.content(uploaded.id),
            other.files.delete(uploaded.id),
            other.batches.retrieve(created.id),
            other.batches.cancel(created.id),
            other.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                completion_window="24h",
            ),
        ):  # fmt: skip
            with pytest.raises(openai.NotFoundError):
                await call
        assert [batch.id async for batch in other.batches.list()] == []
        done = await poll_final(client, created.id)
        for result_file in (done.output_file_id, done.error_file_id):
            assert result_file is not None
            with pytest.raises(openai.NotFoundError):
                await other.files.content(result_file)
        bad = jsonl(["a"]) + b'{"custom_id": "r1", "method": "POST"}\n'
        with pytest.raises(openai.BadRequestError) as refused:
            await client.files.create(file=("bad.jsonl", bad), purpose="batch")
        with pytest.raises(openai.BadRequestError) as wrong_endpoint:
            await client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="24h"
            )
        files = [file.id async for file in client.files.list()]

    assert "Line 2" in refused.value.message
    assert wrong_endpoint.value.param == "endpoint"
    assert files == [uploaded.id]  # the refused upload left nothing


async def test_a_cancelled_batch_keeps_what_ran_and_its_error_file_names_the_rest(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    openai_worker(workers, mock)
    prompts = [f"p{n} [[latency=200]]" for n in range(40)]
    async with sdk_clients(redis_url, mock, default_concurrency=2) as (client, _, native):
        uploaded = await client.files.create(file=("c.jsonl", jsonl(prompts)), purpose="batch")
        created = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )

        async def started() -> bool:
            batch = await client.batches.retrieve(created.id)
            return batch.request_counts is not None and batch.request_counts.completed >= 2

        await wait_for(started, 30, what="the first requests to be answered")
        cancelling = await client.batches.cancel(created.id)
        done = await poll_final(client, created.id)
        output = lines_of((await client.files.content(done.output_file_id or "")).text)
        assert done.error_file_id is not None
        errors = lines_of((await client.files.content(done.error_file_id)).text)
        native_view = await wait_final(native, created.id)

    assert cancelling.status in ("cancelling", "cancelled")
    assert done.status == "cancelled" == native_view["status"]
    assert done.cancelling_at is not None
    assert done.cancelled_at is not None
    assert done.created_at <= done.cancelling_at <= done.cancelled_at
    assert done.request_counts is not None
    assert len(output) == done.request_counts.completed >= 2  # what ran is kept
    assert len(errors) >= 30
    assert len(output) + len(errors) == 40
    ids = [line["custom_id"] for line in output + errors]
    assert sorted(ids, key=lambda i: int(i[1:])) == [f"r{n}" for n in range(40)]
    assert {(line["response"], line["error"]["code"]) for line in errors} == {
        (None, "batch_cancelled")
    }

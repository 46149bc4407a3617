"""The mock provider's Files and Batch API behaves as OpenAI's does, driven by the real `openai`
SDK (in process): phases, shuffled output and an error file, validation refusals, expiry and
cancel with partial output, and the count of every line it answered."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import httpx2
import pytest
from openai import AsyncOpenAI
from openai.types import Batch

from tests.mock_openai import MockState, create_app


def request_lines(prompts: list[str]) -> bytes:
    rows = [
        {"custom_id": f"c{n}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "m", "messages": [{"role": "user", "content": prompt}]}}
        for n, prompt in enumerate(prompts)
    ]  # fmt: skip
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


@pytest.fixture
async def sdk() -> AsyncIterator[tuple[AsyncOpenAI, httpx.AsyncClient]]:
    app = create_app(MockState())
    async with (
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app)) as sdk_http,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mock") as http,
    ):
        yield AsyncOpenAI(base_url="http://mock/v1", api_key="k", http_client=sdk_http), http


async def _submit(client: AsyncOpenAI, prompts: list[str]) -> Batch:
    uploaded = await client.files.create(file=("in.jsonl", request_lines(prompts)), purpose="batch")
    return await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
        metadata={"part": "0"},
    )  # fmt: skip


async def _statuses(client: AsyncOpenAI, batch_id: str) -> tuple[list[str], Batch]:
    """Every status a batch shows, polled until it is final."""
    seen: list[str] = []
    for _ in range(10):
        batch = await client.batches.retrieve(batch_id)
        seen.append(batch.status)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return seen, batch
    raise AssertionError(f"not final: {seen}")


async def _lines(client: AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(line) for line in (await client.files.content(file_id)).text.splitlines()]


async def test_a_batch_runs_through_openai_s_phases_to_shuffled_output_and_an_error_file(
    sdk: tuple[AsyncOpenAI, httpx.AsyncClient],
) -> None:
    client, http = sdk
    prompts = [f"prompt {n}" for n in range(40)] + ["no [[status=400]]"]
    created = await _submit(client, prompts)
    seen, done = await _statuses(client, created.id)
    output = await _lines(client, done.output_file_id)
    errors = await _lines(client, done.error_file_id)
    stats = (await http.get("/_batch_api")).json()

    assert created.status == "validating"
    assert seen == ["in_progress", "finalizing", "completed"]
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (40, 1)
    order = [line["custom_id"] for line in output]
    assert sorted(order, key=lambda c: int(c[1:])) == [f"c{n}" for n in range(40)] != order
    for line in output:
        body = line["response"]["body"]
        prompt = prompts[int(line["custom_id"][1:])]
        assert body["choices"][0]["message"]["content"] == f"mock reply to: {prompt}"
    [refused] = errors
    assert (refused["custom_id"], refused["response"]["status_code"]) == ("c40", 400)
    assert (stats["created"], set(stats["runs"].values())) == (1, {1})  # each line once


@pytest.mark.parametrize(
    ("settings", "code"),
    [({"max_lines": 2}, "max_requests_exceeded"),
     ({"enqueued_token_limit": 5}, "token_limit_exceeded")],
)  # fmt: skip
async def test_a_batch_past_the_provider_s_limits_fails_at_validation(
    sdk: tuple[AsyncOpenAI, httpx.AsyncClient], settings: dict[str, int], code: str
) -> None:
    client, http = sdk
    await http.post("/_batch_api", json=settings)
    created = await _submit(client, ["a b c", "d e f", "g h i"])
    seen, done = await _statuses(client, created.id)
    assert seen == ["failed"]
    assert done.errors is not None
    assert done.errors.data is not None
    assert [error.code for error in done.errors.data] == [code]
    assert (await http.get("/_batch_api")).json()["runs"] == {}


async def test_an_expired_or_cancelled_batch_keeps_half_its_answers(
    sdk: tuple[AsyncOpenAI, httpx.AsyncClient],
) -> None:
    client, http = sdk
    await http.post("/_batch_api", json={"expire": True})
    expired = await _submit(client, [f"e{n}" for n in range(6)])
    _, expired_done = await _statuses(client, expired.id)
    await http.post("/_batch_api", json={"expire": False})
    cancelled = await _submit(client, [f"k{n}" for n in range(6)])
    await client.batches.retrieve(cancelled.id)  # in progress
    cancelling = await client.batches.cancel(cancelled.id)
    seen, cancelled_done = await _statuses(client, cancelled.id)

    assert expired_done.status == "expired"
    assert len(await _lines(client, expired_done.output_file_id)) == 3
    expired_errors = await _lines(client, expired_done.error_file_id)
    assert {line["error"]["code"] for line in expired_errors} == {"batch_expired"}
    assert len(expired_errors) == 3
    assert cancelling.status == "cancelling"
    assert seen == ["cancelled"]
    assert len(await _lines(client, cancelled_done.output_file_id)) == 3
    cancelled_errors = await _lines(client, cancelled_done.error_file_id)
    assert {line["error"]["code"] for line in cancelled_errors} == {"batch_cancelled"}


async def test_batches_list_newest_first_with_their_metadata(
    sdk: tuple[AsyncOpenAI, httpx.AsyncClient],
) -> None:
    client, _ = sdk
    ids = [(await _submit(client, ["a"])).id for _ in range(3)]
    listed = [batch async for batch in client.batches.list(limit=2)]
    assert [batch.id for batch in listed] == ids[::-1]
    assert {batch.metadata["part"] for batch in listed if batch.metadata} == {"0"}

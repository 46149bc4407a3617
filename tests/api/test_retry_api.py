"""`POST /v1/batches/{id}/retry` through the real app and a real Redis, no worker: results are
written as a worker would write them, then the route answers 202, 409, 404 or 422."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from shared import jobs, keys
from shared.results import ItemOutcome, PendingItem
from shared.schemas import ErrorInfo, FinalItemStatus
from shared.settings import Settings
from shared.store import BatchStore
from tests.conftest import api_client, make_settings
from tests.helpers import bearer

KEY_A, KEY_B = "key-a-7b0e3c1d9f2a4e68", "key-b-2c5f8a0b6d1e4f93"


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[BatchStore]:
    redis = Redis.from_url(redis_url)
    yield BatchStore(redis)
    await redis.aclose()


async def ended(
    client: httpx.AsyncClient,
    store: BatchStore,
    statuses: Sequence[FinalItemStatus],
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A batch submitted through the API whose items ended as `statuses` (written as its
    worker would write them); the batch as the API shows it then."""
    prompts = [f"prompt {i}" for i in range(len(statuses))]
    submitted = await client.post("/v1/batches", json={"prompts": prompts}, headers=headers)
    assert submitted.status_code == 202, submitted.text
    batch_id = submitted.json()["id"]
    spec = await store.spec(batch_id)
    assert spec is not None
    error = ErrorInfo(type="invalid_request", message="refused")
    done = [
        (PendingItem(i, str(i), prompts[i]), ItemOutcome(status=s, output="ok")
         if s == "succeeded" else ItemOutcome(status=s, error=error))
        for i, s in enumerate(statuses)
    ]  # fmt: skip
    await store.record_many(spec, done)
    await store.redis.delete(keys.QUEUE)  # as if its jobs had run
    shown = await client.get(f"/v1/batches/{batch_id}", headers=headers)
    batch: dict[str, Any] = shown.json()
    return batch


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"type", "message", "param"}
    error: dict[str, Any] = body["error"]
    return error


async def test_a_retry_answers_202_with_the_batch_running_again_and_its_chunks_queued(
    client: httpx.AsyncClient, store: BatchStore
) -> None:
    batch = await ended(client, store, ["succeeded", "failed", "succeeded", "failed"])
    assert batch["status"] == "completed"

    response = await client.post(f"/v1/batches/{batch['id']}/retry")

    assert response.status_code == 202, response.text
    retried = response.json()
    assert retried["id"] == batch["id"]
    assert retried["object"] == "batch"
    assert retried["status"] == "in_progress"
    assert retried["request_counts"] == {
        "total": 4, "succeeded": 2, "failed": 0, "cancelled": 0, "expired": 0, "pending": 2,
    }  # fmt: skip
    assert retried["finished_at"] is None
    assert retried["expires_at"] is None
    assert retried["started_at"] == batch["started_at"]
    assert await store.redis.zrange(keys.QUEUE, 0, -1) == [keys.job_id(batch["id"], 0).encode()]
    assert (await client.get(f"/v1/batches/{batch['id']}")).json() == retried
    results = (await client.get(f"/v1/batches/{batch['id']}/results")).json()["data"]
    assert [item["status"] for item in results] == ["succeeded", "pending"] * 2
    assert results[0]["output"] == "ok"


async def test_include_retries_cancelled_and_expired_items_too(
    client: httpx.AsyncClient, store: BatchStore
) -> None:
    statuses: list[FinalItemStatus] = ["succeeded", "failed", "cancelled", "expired"]
    for include, pending in (("cancelled", 2), ("expired", 2), ("cancelled,expired", 3),
                             ("expired,cancelled,expired", 3)):  # fmt: skip
        batch = await ended(client, store, statuses)
        response = await client.post(
            f"/v1/batches/{batch['id']}/retry", params={"include": include}
        )
        assert response.status_code == 202, response.text
        assert response.json()["request_counts"]["pending"] == pending, include
        assert response.json()["request_counts"]["succeeded"] == 1


async def test_a_batch_that_is_not_final_is_409(
    client: httpx.AsyncClient, store: BatchStore
) -> None:
    submitted = (await client.post("/v1/batches", json={"prompts": ["a"]})).json()
    error = _error(await client.post(f"/v1/batches/{submitted['id']}/retry"), 409)
    assert error["type"] == "conflict"
    assert error["message"] == (
        f"Batch {submitted['id']} is queued; only a final batch can be retried."
    )
    assert error["param"] is None


async def test_a_batch_with_nothing_to_retry_is_409_and_stays_as_it_was(
    client: httpx.AsyncClient, store: BatchStore
) -> None:
    batch = await ended(client, store, ["succeeded", "cancelled"])
    error = _error(await client.post(f"/v1/batches/{batch['id']}/retry"), 409)
    assert error["type"] == "conflict"
    assert error["message"] == f"Batch {batch['id']} has no failed items to retry."
    expired = await client.post(f"/v1/batches/{batch['id']}/retry?include=expired")
    assert "no failed or expired items" in _error(expired, 409)["message"]
    assert (await client.get(f"/v1/batches/{batch['id']}")).json() == batch


@pytest.mark.parametrize(
    "include",
    ["", "failed", "succeeded", "cancelled,", "cancelled;expired", "CANCELLED", "x" * 500],
)
async def test_an_include_that_is_not_cancelled_or_expired_is_422(
    client: httpx.AsyncClient, store: BatchStore, include: str
) -> None:
    batch = await ended(client, store, ["failed"])
    response = await client.post(f"/v1/batches/{batch['id']}/retry", params={"include": include})
    error = _error(response, 422)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "include"
    assert "cancelled and expired" in error["message"]
    assert len(error["message"]) < 250
    assert (await client.get(f"/v1/batches/{batch['id']}")).json()["status"] == "completed"


async def test_an_unknown_batch_is_404(client: httpx.AsyncClient) -> None:
    for batch_id in ("batch_" + "0" * 32, "not-a-batch-id"):
        error = _error(await client.post(f"/v1/batches/{batch_id}/retry"), 404)
        assert error["type"] == "not_found"
        assert error["message"] == f"No batch {batch_id}."


async def test_another_keys_batch_is_404_and_is_left_alone(
    redis_url: str, store: BatchStore
) -> None:
    settings: Settings = make_settings(redis_url, api_keys=f"{KEY_A},{KEY_B}")
    async with api_client(settings) as client:
        batch = await ended(client, store, ["failed"], headers=bearer(KEY_A))
        path = f"/v1/batches/{batch['id']}/retry"
        assert _error(await client.post(path, headers=bearer(KEY_B)), 404)["type"] == "not_found"
        assert (await client.get(f"/v1/batches/{batch['id']}", headers=bearer(KEY_A))).json() == (
            batch
        )
        again = await client.post(path, headers=bearer(KEY_A))
        assert again.status_code == 202, again.text


async def test_the_retry_route_is_in_the_openapi_document_with_its_answers(
    client: httpx.AsyncClient,
) -> None:
    document = (await client.get("/openapi.json")).json()
    operation = document["paths"]["/v1/batches/{batch_id}/retry"]["post"]
    assert {"202", "404", "409", "422"} <= set(operation["responses"])
    [include] = [p for p in operation["parameters"] if p["name"] == "include"]
    assert include["in"] == "query"
    assert include["required"] is False
    assert include["schema"]["pattern"] == "^(cancelled|expired)(,(cancelled|expired))*$"


async def test_retried_items_count_against_the_queued_prompt_ceiling_but_are_never_refused(
    redis_url: str, store: BatchStore
) -> None:
    settings = make_settings(redis_url, max_queued_prompts=5)
    async with api_client(settings) as client:
        first = await ended(client, store, ["succeeded", "failed", "failed", "failed"])
        # Final, it counts for nothing: 4 more prompts fit under the ceiling of 5.
        second = await client.post("/v1/batches", json={"prompts": ["a", "b", "c", "d"]})
        assert second.status_code == 202, second.text
        # 3 retried items on top of 4 queued: over the ceiling, and still retried.
        retried = await client.post(f"/v1/batches/{first['id']}/retry")
        assert retried.status_code == 202, retried.text
        # They count from then on: 7 queued leaves no room for one more prompt.
        refused = await client.post("/v1/batches", json={"prompts": ["e"]})
        assert refused.status_code == 429, refused.text
        assert "has 7 prompts queued" in refused.json()["error"]["message"]


async def test_a_retry_while_an_earlier_run_still_holds_a_chunk_is_a_409(
    redis_url: str, store: BatchStore
) -> None:
    async with api_client(make_settings(redis_url)) as client:
        batch = await ended(client, store, ["failed", "succeeded"])
        # That run's end (arq deletes its job) would take the retry's queued job with it.
        await store.redis.set(jobs.arq_in_progress(keys.job_id(batch["id"], 0)), b"w", px=30_000)
        refused = await client.post(f"/v1/batches/{batch['id']}/retry")
        await store.redis.delete(jobs.arq_in_progress(keys.job_id(batch["id"], 0)))
        accepted = await client.post(f"/v1/batches/{batch['id']}/retry")
    assert _error(refused, 409)["type"] == "conflict"
    assert accepted.status_code == 202, accepted.text


async def test_a_batch_that_spent_its_token_budget_is_not_retried(
    redis_url: str, store: BatchStore
) -> None:
    async with api_client(make_settings(redis_url)) as client:
        batch = await ended(client, store, ["failed", "succeeded"])
        spent = {"max_total_tokens": 10, "input_tokens": 8, "output_tokens": 2}
        await store.redis.hset(keys.batch(batch["id"]), mapping=spent)  # type: ignore[misc]
        refused = await client.post(f"/v1/batches/{batch['id']}/retry")
    assert "token budget" in str(_error(refused, 409)["message"])


async def test_every_answer_documents_request_counts_expired_as_always_there(
    redis_url: str,
) -> None:
    async with api_client(make_settings(redis_url)) as client:
        doc = (await client.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    counts = next(s for name, s in schemas.items() if name.startswith("RequestCounts"))
    assert "expired" in counts["required"]

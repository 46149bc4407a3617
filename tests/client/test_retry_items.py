"""`Client.retry` / `Batch.retry` and their asyncio twins against a real API process, a real
worker on the OpenAI path and Redis, the mock failing one prompt once."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from promptbatch import APIError, AsyncClient, Client
from tests.helpers import MockProvider, Proc
from tests.integration.flows import openai_worker

pytestmark = pytest.mark.integration


@pytest.fixture
def url(live_api: Callable[..., str], workers: Callable[..., Proc], mock: MockProvider) -> str:
    openai_worker(workers, mock)
    return live_api(PROMPTBATCH_PROVIDER="openai", OPENAI_BASE_URL=f"{mock.url}/v1")


def prompts(tag: str) -> list[str]:
    return [f"{tag} fine", f"{tag} refused once [[fail=400:1]]", f"{tag} fine too"]


def test_a_batch_handle_retries_its_failed_items_and_waits_for_the_new_end(
    url: str, mock: MockProvider
) -> None:
    with Client(url) as pb:
        batch = pb.submit(prompts("sync"), model="mock-1").wait()
        assert batch.info.status == "completed"
        assert batch.info.request_counts.failed == 1

        info = batch.retry()

        assert info is batch.info
        assert info.status == "in_progress"
        assert (info.request_counts.pending, info.request_counts.succeeded) == (1, 2)
        assert batch.wait().info.status == "completed"
        assert [item.status for item in batch.results()] == ["succeeded"] * 3
        assert mock.stats()["calls"] == 4
        with pytest.raises(APIError) as nothing:
            batch.retry(include=["cancelled", "expired"])
        assert nothing.value.status_code == 409
        assert "no failed, cancelled or expired items" in nothing.value.message


async def test_the_async_client_retries_by_id_and_by_handle(url: str) -> None:
    async with AsyncClient(url) as pb:
        first = await (await pb.submit(prompts("async"), model="mock-1")).wait()
        assert first.info.request_counts.failed == 1

        again = await pb.retry(first.id)

        assert again.id == first.id
        assert again.info.status == "in_progress"
        await again.wait()
        assert again.info.request_counts.succeeded == 3
        with pytest.raises(APIError) as nothing:
            await first.retry()
        assert nothing.value.status_code == 409
        assert first.info.status == "completed"  # a refused retry leaves the snapshot as it was
        with pytest.raises(APIError) as unknown:
            await pb.retry("batch_" + "0" * 32)
        assert unknown.value.status_code == 404

"""Steps the integration tests share: settings and workers for the mock, submit, wait, read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from shared.schemas import FINAL_BATCH_STATUSES
from shared.settings import Settings
from tests.conftest import make_settings
from tests.helpers import MockProvider, Proc, wait_for


def openai_settings(redis_url: str, mock: MockProvider) -> Settings:
    return make_settings(redis_url, provider="openai", openai_base_url=f"{mock.url}/v1")


def openai_worker(start: Callable[..., Proc], mock: MockProvider, **env: str) -> Proc:
    return start(OPENAI_BASE_URL=f"{mock.url}/v1", OPENAI_API_KEY="sk-test", **env)


async def submit(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/batches", json=body)
    assert response.status_code == 202, response.text
    batch: dict[str, Any] = response.json()
    return batch


async def wait_final(client: httpx.AsyncClient, batch_id: str, timeout_s: float = 60) -> Any:
    async def final() -> Any:
        batch = (await client.get(f"/v1/batches/{batch_id}")).json()
        return batch if batch["status"] in FINAL_BATCH_STATUSES else None

    return await wait_for(final, timeout_s, what=f"batch {batch_id} to finish")


async def all_results(client: httpx.AsyncClient, batch_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 1000}
    while True:
        page = (await client.get(f"/v1/batches/{batch_id}/results", params=params)).json()
        items += page["data"]
        if not page["has_more"]:
            return items
        params["after"] = page["next_after"]

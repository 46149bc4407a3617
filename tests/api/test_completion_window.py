"""`completion_window` through the real app and a real Redis (no worker): accepted and shown
with its deadline, or refused with a 422 naming it and nothing stored."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import redis as sync_redis

from shared import keys


@pytest.mark.parametrize(
    ("window", "label", "seconds"),
    [("30m", "30m", 1800), ("24h", "24h", 86400), ("3600", "3600s", 3600), (3600, "3600s", 3600)],
)
async def test_a_window_is_accepted_and_shown_with_its_deadline(
    client: httpx.AsyncClient, window: Any, label: str, seconds: int
) -> None:
    response = await client.post(
        "/v1/batches", json={"prompts": ["a"], "completion_window": window}
    )
    assert response.status_code == 202, response.text
    batch = response.json()
    assert batch["completion_window"] == label
    created = datetime.fromisoformat(batch["created_at"])
    assert datetime.fromisoformat(batch["deadline_at"]) - created == timedelta(seconds=seconds)
    assert batch["expired_at"] is None
    assert (await client.get(f"/v1/batches/{batch['id']}")).json() == batch


async def test_without_a_window_there_is_no_deadline(client: httpx.AsyncClient) -> None:
    batch = (await client.post("/v1/batches", json={"prompts": ["a"]})).json()
    assert (batch["completion_window"], batch["deadline_at"], batch["expired_at"]) == (
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    "window", ["8d", "0", "-1", "abc", 7 * 24 * 3600 + 1, 0, -1, True, 1.5, "1.5h"]
)
async def test_a_bad_window_is_a_422_naming_it_and_nothing_is_stored(
    client: httpx.AsyncClient, redis_url: str, window: Any
) -> None:
    body: dict[str, Any] = {"prompts": ["a"], "completion_window": window}
    response = await client.post("/v1/batches", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == "completion_window"
    assert error["type"] == "invalid_request_error"
    with sync_redis.Redis.from_url(redis_url) as redis:
        assert redis.zcard(keys.QUEUE) == redis.zcard(keys.ACTIVE) == 0
        assert list(redis.scan_iter(match="*batch_*")) == []

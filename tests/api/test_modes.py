"""`mode` on submit: `direct` by default, `provider_batch` only with a provider that has a Batch
API and without a token budget, refused at submit (nothing stored) otherwise."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from shared.settings import Settings
from tests.conftest import api_client, make_settings


async def test_a_batch_runs_direct_unless_it_asks_and_the_offline_model_has_no_batch_api(
    client: httpx.AsyncClient,
) -> None:
    plain = await client.post("/v1/batches", json={"prompts": ["a"]})
    handed = await client.post("/v1/batches", json={"prompts": ["a"], "mode": "provider_batch"})
    unknown = await client.post("/v1/batches", json={"prompts": ["a"], "mode": "later"})
    listed = (await client.get("/v1/batches")).json()["data"]

    assert (plain.json()["mode"], plain.json()["provider_batches"]) == ("direct", [])
    assert (handed.status_code, handed.json()["error"]["param"]) == (422, "mode")
    assert "has none" in handed.json()["error"]["message"]
    assert (unknown.status_code, unknown.json()["error"]["param"]) == (422, "mode")
    assert [batch["id"] for batch in listed] == [plain.json()["id"]]  # nothing else stored


async def test_a_provider_batch_takes_no_token_budget_and_may_be_the_default(
    redis_url: str,
) -> None:
    settings = make_settings(
        redis_url, provider="openai", openai_base_url="http://127.0.0.1:9/v1",
        default_mode="provider_batch",
    )  # fmt: skip
    async with api_client(settings) as client:
        budgeted = await client.post(
            "/v1/batches", json={"prompts": ["a"], "max_total_tokens": 100}
        )
        by_default = await client.post("/v1/batches", json={"prompts": ["a"]})
        direct = await client.post("/v1/batches", json={"prompts": ["a"], "mode": "direct"})

    assert (budgeted.status_code, budgeted.json()["error"]["param"]) == (422, "max_total_tokens")
    assert by_default.json()["mode"] == "provider_batch"
    assert direct.json()["mode"] == "direct"


def test_provider_batch_by_default_needs_a_provider_with_a_batch_api() -> None:
    with pytest.raises(ValidationError, match="PROMPTBATCH_DEFAULT_MODE=provider_batch"):
        Settings(redis_url="redis://x", provider="offline", default_mode="provider_batch")

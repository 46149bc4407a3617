"""Isolation: one bad item or reply harms only itself. Real API (in process), real worker
processes, the real ChatOpenAI over HTTP against the mock, a real Redis."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.conftest import api_client
from tests.helpers import MockProvider, Proc
from tests.integration.flows import all_results, openai_settings, openai_worker, submit, wait_final

pytestmark = pytest.mark.integration

#: Hours of backtracking for Python's `re` on "echo: " and 48 a's that do not end the string.
EVIL = {
    "type": "json_schema",
    "json_schema": {"name": "evil", "schema": {"type": "string", "pattern": "^(echo: )?(a+)+$"}},
}


async def test_a_backtracking_pattern_fails_its_item_and_a_bystander_batch_completes_at_once(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    openai_worker(workers, mock)
    async with api_client(openai_settings(redis_url, mock)) as client:
        evil = await submit(
            client,
            prompts=["a" * 48 + "! [[echo_json]]", "aaaa [[echo_json]]"],
            params={"response_format": EVIL},
        )
        began = time.monotonic()
        bystander = await submit(client, prompts=[f"bystander {i}" for i in range(20)])
        done = await wait_final(client, bystander["id"], timeout_s=30)
        assert time.monotonic() - began < 10  # seconds, where the reply check took hours
        assert done["status"] == "completed"
        evil_done = await wait_final(client, evil["id"], timeout_s=30)
        items = await all_results(client, evil["id"])
    assert evil_done["status"] == "completed"
    assert items[0]["status"] == "failed"
    assert items[0]["error"]["type"] == "invalid_output"
    assert "does not match" in items[0]["error"]["message"]
    assert items[1]["status"] == "succeeded"
    assert items[1]["output_json"] == "echo: aaaa"


async def test_a_schema_whose_ref_does_not_resolve_is_a_422_naming_the_item(
    redis_url: str, mock: MockProvider
) -> None:
    schema = {"type": "object", "properties": {"a": {"$ref": "#/$defs/nope"}}}
    poisoned = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    async with api_client(openai_settings(redis_url, mock)) as client:
        response = await client.post("/v1/batches", json={"prompts": [
            "a", "b", {"prompt": "c", "params": {"response_format": poisoned}}, "d", "e",
        ]})  # fmt: skip
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "prompts[2].params.response_format"
    assert "does not resolve" in error["message"]

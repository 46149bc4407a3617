"""Isolation: one bad item or reply harms only itself. Real API (in process), real worker
processes, the real ChatOpenAI over HTTP against the mock, a real Redis."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from bench.measure import reset_peak, rss_mb
from shared import workers as shared_workers
from tests.conftest import api_client
from tests.helpers import MockProvider, Proc, wait_until
from tests.integration.flows import all_results, openai_settings, openai_worker, submit, wait_final
from tests.servers import start_api

pytestmark = pytest.mark.integration

#: Hours of backtracking for Python's `re` on "echo: " and 48 a's that do not end the string.
EVIL = {
    "type": "json_schema",
    "json_schema": {"name": "evil", "schema": {"type": "string", "pattern": "^(echo: )?(a+)+$"}},
}


def _doubling(levels: int) -> dict[str, Any]:
    """A schema of 2**levels subschemas to check (each level refers to the next one twice)."""
    defs: dict[str, Any] = {
        f"d{n}": {"allOf": [{"$ref": f"#/$defs/d{n + 1}"}, {"$ref": f"#/$defs/d{n + 1}"}]}
        for n in range(levels)
    }
    defs[f"d{levels}"] = {"type": "string", "pattern": "^echo: a+$"}
    return {
        "type": "json_schema",
        "json_schema": {"name": "evil", "schema": {"$defs": defs, "$ref": "#/$defs/d0"}},
    }


@pytest.mark.parametrize(
    ("evil", "why"),
    [
        (EVIL, "does not match"),  # hours of backtracking for Python's `re`
        (_doubling(30), "could not be checked against the schema within"),  # a billion checks
    ],
    ids=["backtracking-pattern", "doubling-refs"],
)
async def test_an_evil_reply_check_fails_its_item_and_a_bystander_batch_completes_at_once(
    redis_url: str,
    mock: MockProvider,
    workers: Callable[..., Proc],
    evil: dict[str, Any],
    why: str,
) -> None:
    openai_worker(workers, mock)
    async with api_client(openai_settings(redis_url, mock)) as client:
        evil_batch = await submit(
            client,
            prompts=["a" * 48 + "! [[echo_json]]", "aaaa [[echo_json]]"],
            params={"response_format": evil},
        )
        began = time.monotonic()
        bystander = await submit(client, prompts=[f"bystander {i}" for i in range(20)])
        done = await wait_final(client, bystander["id"], timeout_s=30)
        assert time.monotonic() - began < 10  # seconds, where the reply check took hours
        assert done["status"] == "completed"
        evil_done = await wait_final(client, evil_batch["id"], timeout_s=30)
        items = await all_results(client, evil_batch["id"])
    assert evil_done["status"] == "completed"
    assert items[0]["status"] == "failed"
    assert items[0]["error"]["type"] == "invalid_output"
    assert why in items[0]["error"]["message"]
    if evil is EVIL:
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


async def test_a_template_that_would_render_gigabytes_is_a_422_without_the_api_growing(
    redis_url: str, tmp_path: Path
) -> None:
    api = start_api(redis_url, tmp_path / "api.log")
    try:
        pid = api.proc.popen.pid
        await reset_peak(pid)  # the peak starts again from here
        before_mb = await rss_mb(pid)
        # 180 KB: "{x}" 30,000 times, x 30,000 characters long (900 million characters).
        body = {
            "template": {"messages": [["human", "{x}" * 30_000]]},
            "inputs": [{"x": "x" * 30_000}],
        }
        began = time.monotonic()
        async with httpx.AsyncClient(timeout=60) as http:
            response = await http.post(f"{api.url}/v1/batches", json=body)
        took = time.monotonic() - began
        grew_mb = await rss_mb(pid, "VmHWM") - before_mb
    finally:
        api.proc.stop()
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "inputs[0]"
    assert "longer than 100000 characters" in error["message"]
    assert took < 2
    assert grew_mb < 100, f"the API grew {grew_mb:.0f} MB"


async def test_a_key_the_provider_refuses_halts_the_batch_keeping_what_finished(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    openai_worker(workers, mock)
    # The key is revoked after ten items: each call from then on is a 401.
    prompts = [f"fine {i} [[latency=1]]" for i in range(10)]
    prompts += [f"refused {i} [[status=401]] [[latency=300]]" for i in range(990)]
    async with api_client(openai_settings(redis_url, mock)) as client:
        batch = await submit(client, prompts=prompts, max_concurrency=4)
        done = await wait_final(client, batch["id"])
        items = await all_results(client, batch["id"])
    assert done["status"] == "failed"
    assert done["error"]["type"] == "provider_auth"
    assert "refused this prompt with 401" in done["error"]["message"]  # the provider's words
    counts = done["request_counts"]
    assert (counts["succeeded"], counts["failed"], counts["pending"]) == (10, 990, 0)
    assert [i["status"] for i in items[:10]] == ["succeeded"] * 10  # kept
    refused = {i["error"]["type"] for i in items[10:]}
    assert refused <= {"provider_auth", "authentication_error"}
    assert "refused this prompt with 401" in items[-1]["error"]["message"]
    # Two refusals halt it; calls in flight then finish: a few dozen calls, not 990.
    assert int(str(mock.stats()["calls"])) < 10 + 50


async def test_a_worker_without_the_batch_s_provider_hands_its_chunks_to_one_that_has_it(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    # The offline model only, as during a rolling deploy; it counts heartbeats 30 s old.
    lacking = workers(PROMPTBATCH_WORKER_ALIVE_S="30")
    redis = Redis.from_url(redis_url)
    try:  # a worker that has the provider is alive somewhere: the chunks wait for it
        await shared_workers.beat(redis, "elsewhere:1:x", alive_s=30, providers=["openai"])
    finally:
        await redis.aclose()
    prompts = [f"item {i}" for i in range(40)]
    async with api_client(openai_settings(redis_url, mock)) as client:
        batch = await submit(client, prompts=prompts)
        wait_until(lambda: "handed back" in lacking.log(), what="a chunk handed back")
        assert (await client.get(f"/v1/batches/{batch['id']}")).json()["status"] == "queued"
        openai_worker(workers, mock)
        done = await wait_final(client, batch["id"])
    assert done["status"] == "completed"
    assert done["request_counts"]["succeeded"] == 40
    assert mock.stats()["calls"] == 40

"""A batch handed to the provider's own Batch API (`"mode": "provider_batch"`), end to end: real
workers make the provider batches through the real `openai` SDK against the mock's Batch API,
and every line comes back to its own item."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable

import httpx
import pytest

from shared.settings import Settings
from tests.conftest import api_client
from tests.helpers import MockProvider, Proc, wait_for, wait_until
from tests.integration.flows import all_results, openai_settings, openai_worker, submit, wait_final

pytestmark = pytest.mark.integration

#: The provider's lines per batch here, and ours (so 1,200 items make three provider batches).
MAX_LINES = 500


def handing_off(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc], **batch_api: float | bool
) -> Settings:
    """The mock's Batch API as `batch_api` says (and `MAX_LINES` lines a batch), a worker that
    looks at provider batches often, and the API's settings to match."""
    mock.batch_api(max_lines=MAX_LINES, **batch_api)
    openai_worker(workers, mock, PROMPTBATCH_PROVIDER_POLL_S="0.05")
    return openai_settings(redis_url, mock).model_copy(
        update={"provider_batch_max_lines": MAX_LINES}
    )


async def test_a_batch_goes_to_the_provider_in_batches_and_every_answer_lands_on_its_item(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    settings = handing_off(redis_url, mock, workers)
    prompts = [f"item {n}" + (" [[status=400]]" if n % 100 == 7 else "") for n in range(1200)]
    async with api_client(settings) as client:
        batch = await submit(client, prompts=prompts, mode="provider_batch")
        done = await wait_final(client, batch["id"], timeout_s=120)
        items = await all_results(client, batch["id"])
        metrics = (await client.get("/metrics")).text
    at_provider = mock.batch_api()

    assert (batch["mode"], done["status"]) == ("provider_batch", "completed")
    assert 'promptbatch_provider_batches{status="completed"} 3.0' in metrics
    assert 'promptbatch_provider_batches{status="in_progress"} 0.0' in metrics
    assert at_provider["created"] == 3  # 1,200 lines in batches of 500
    assert mock.stats()["calls"] == 0  # and no direct call
    assert set(at_provider["runs"].values()) == {1}  # each line answered once
    assert [b["status"] for b in done["provider_batches"]] == ["completed"] * 3
    assert [item["custom_id"] for item in items] == [str(n) for n in range(1200)]
    for n, item in enumerate(items):
        if n % 100 == 7:  # the provider's 400 fails its item alone, with its message
            assert (item["status"], item["error"]["type"]) == ("failed", "invalid_request")
            assert "refused this prompt with 400" in item["error"]["message"]
        else:
            assert (item["status"], item["output"]) == ("succeeded", f"mock reply to: {prompts[n]}")
    counts = done["request_counts"]
    assert (counts["succeeded"], counts["failed"]) == (1188, 12)
    used = sum(item["usage"]["total_tokens"] for item in items if item["usage"])
    assert done["usage"]["total_tokens"] == used > 0


#: Workers whose chunks another takes over within seconds of their death.
FAST_LEASE = {
    "PROMPTBATCH_LEASE_S": "2",
    "PROMPTBATCH_WORKER_HEARTBEAT_S": "0.5",
    "PROMPTBATCH_WORKER_REDIS_RETRY_S": "0.5",
    "PROMPTBATCH_WORKER_ALIVE_S": "1.5",
    "PROMPTBATCH_PROVIDER_POLL_S": "0.05",
}


@pytest.mark.parametrize("step", ["upload", "create", "poll", "content"])
async def test_a_worker_killed_at_any_step_is_resumed_without_paying_twice(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc], step: str
) -> None:
    """Killed during the upload, right after the provider batch was created (before its id was
    recorded), while polling, or while its results were read: another worker finishes the
    batch, and the provider saw one batch per part, each line once, and no upload left
    unused."""
    mock.batch_api(max_lines=MAX_LINES, hold=step)
    first = openai_worker(workers, mock, **FAST_LEASE)
    settings = openai_settings(redis_url, mock).model_copy(
        update={"provider_batch_max_lines": MAX_LINES}
    )
    prompts = [f"item {n}" for n in range(MAX_LINES)]  # one provider batch
    async with api_client(settings) as client:
        batch = await submit(client, prompts=prompts, mode="provider_batch")
        wait_until(lambda: mock.batch_api()["held"] >= 1, what=f"the worker to reach {step}")
        first.popen.send_signal(signal.SIGKILL)
        first.popen.wait()
        mock.batch_api(hold=None)
        openai_worker(workers, mock, **FAST_LEASE)
        done = await wait_final(client, batch["id"], timeout_s=60)
        items = await all_results(client, batch["id"])
    at_provider = mock.batch_api()
    inputs = httpx.get(f"{mock.url}/v1/files", params={"purpose": "batch"}).json()["data"]

    assert done["status"] == "completed"
    assert [item["output"] for item in items] == [f"mock reply to: {p}" for p in prompts]
    assert at_provider["created"] == 1
    assert sorted(at_provider["runs"].values()) == [1] * MAX_LINES
    assert inputs == []  # the used input file deleted once done, an unused upload dropped


async def test_a_cancel_cancels_the_provider_batch_and_keeps_what_it_finished(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    settings = handing_off(redis_url, mock, workers, phase_s=0.5)
    async with api_client(settings) as client:
        batch = await submit(client, prompts=[f"item {n}" for n in range(100)],
                             mode="provider_batch")  # fmt: skip

        async def running() -> bool:
            shown = (await client.get(f"/v1/batches/{batch['id']}")).json()["provider_batches"]
            return bool(shown) and shown[0]["status"] == "in_progress"

        await wait_for(running, 30, what="the provider batch to run")
        cancelled = await client.post(f"/v1/batches/{batch['id']}/cancel")
        done = await wait_final(client, batch["id"], timeout_s=60)
        items = await all_results(client, batch["id"])

    assert cancelled.json()["status"] == "cancelling"
    assert done["status"] == "cancelled"
    assert [b["status"] for b in done["provider_batches"]] == ["cancelled"]
    counts = done["request_counts"]
    assert (counts["succeeded"], counts["cancelled"], counts["pending"]) == (50, 50, 0)
    kept = [item for item in items if item["status"] == "succeeded"]
    assert all(item["output"] == f"mock reply to: item {item['index']}" for item in kept)


async def test_an_expired_provider_batch_leaves_its_unrun_items_expired_and_a_retry_runs_them(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    settings = handing_off(redis_url, mock, workers, expire=True)
    prompts = [f"item {n}" for n in range(100)]
    async with api_client(settings) as client:
        batch = await submit(client, prompts=prompts, mode="provider_batch")
        expired = await wait_final(client, batch["id"], timeout_s=60)
        mock.batch_api(expire=False)
        retried = await client.post(f"/v1/batches/{batch['id']}/retry?include=expired")
        done = await wait_final(client, batch["id"], timeout_s=60)
        items = await all_results(client, batch["id"])
    at_provider = mock.batch_api()

    counts = expired["request_counts"]
    assert expired["status"] == "expired"
    assert (counts["succeeded"], counts["expired"], counts["pending"]) == (50, 50, 0)
    assert retried.status_code == 202
    assert done["status"] == "completed"
    assert [item["output"] for item in items] == [f"mock reply to: {p}" for p in prompts]
    assert at_provider["created"] == 2  # the retry went as a second provider batch
    assert sorted(at_provider["runs"].values()) == [1] * 100  # no line answered twice


async def test_a_part_refused_for_the_provider_s_token_queue_goes_again_later_never_failed(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    # The provider's queue takes fewer tokens than the batch alone holds.
    settings = handing_off(redis_url, mock, workers, enqueued_token_limit=10)
    prompts = [f"item {n} of a long queue" for n in range(20)]
    async with api_client(settings) as client:
        batch = await submit(client, prompts=prompts, mode="provider_batch")
        wait_until(lambda: mock.batch_api()["created"] >= 2, what="the part to be refused twice")
        mock.batch_api(enqueued_token_limit=0)  # the provider's queue has room again
        done = await wait_final(client, batch["id"], timeout_s=60)
        items = await all_results(client, batch["id"])
    at_provider = mock.batch_api()

    assert done["status"] == "completed"
    assert [item["output"] for item in items] == [f"mock reply to: {p}" for p in prompts]
    assert at_provider["created"] >= 3  # refused, refused, then run
    assert sorted(at_provider["runs"].values()) == [1] * 20


async def test_the_openai_surface_takes_mode_as_an_extra_body_field(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    openai_worker(workers, mock, PROMPTBATCH_PROVIDER_POLL_S="0.05")
    rows = [
        {
            "custom_id": f"r{n}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": f"q{n}"}]},
        }
        for n in range(3)
    ]
    lines = "".join(json.dumps(row) + "\n" for row in rows)  # fmt: skip
    async with api_client(openai_settings(redis_url, mock)) as client:
        uploaded = await client.post(
            "/openai/v1/files", files={"file": ("in.jsonl", lines)}, data={"purpose": "batch"}
        )
        created = await client.post("/openai/v1/batches", json={
            "input_file_id": uploaded.json()["id"], "endpoint": "/v1/chat/completions",
            "completion_window": "24h", "mode": "provider_batch",
        })  # fmt: skip
        done = await wait_final(client, created.json()["id"], timeout_s=60)

    assert (done["mode"], done["status"]) == ("provider_batch", "completed")
    assert mock.batch_api()["created"] == 1
    assert mock.stats()["calls"] == 0


async def test_a_completion_window_shorter_than_the_provider_s_cancels_it_and_expires_the_rest(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    settings = handing_off(redis_url, mock, workers, phase_s=2.0)  # 2 s a phase at the provider
    async with api_client(settings) as client:
        batch = await submit(client, prompts=[f"item {n}" for n in range(100)],
                             mode="provider_batch", completion_window=3)  # fmt: skip
        done = await wait_final(client, batch["id"], timeout_s=60)
        items = await all_results(client, batch["id"])

    assert done["status"] == "expired"
    assert [b["status"] for b in done["provider_batches"]] == ["cancelled"]
    counts = done["request_counts"]
    assert (counts["succeeded"], counts["expired"], counts["pending"]) == (50, 50, 0)
    kept = [item for item in items if item["status"] == "succeeded"]
    assert all(item["output"] == f"mock reply to: item {item['index']}" for item in kept)


async def test_a_provider_that_answers_500_for_a_while_is_looked_at_again_not_the_batch_s_end(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    settings = handing_off(redis_url, mock, workers, fail_polls=5)
    async with api_client(settings) as client:
        batch = await submit(client, prompts=["a", "b"], mode="provider_batch")
        done = await wait_final(client, batch["id"], timeout_s=60)
    assert done["status"] == "completed"
    assert mock.batch_api()["created"] == 1


async def test_a_batch_s_chunks_wait_at_the_provider_side_by_side_not_one_after_another(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    """At max_concurrency 1 a batch's window is one chunk; a chunk waiting at the provider
    takes no place in it, so its three provider batches are made at once (one after another
    would take the provider's three phases of a second each per batch)."""
    settings = handing_off(redis_url, mock, workers, phase_s=1.0)
    async with api_client(settings) as client:
        batch = await submit(client, prompts=[f"item {n}" for n in range(3 * MAX_LINES)],
                             mode="provider_batch", max_concurrency=1)  # fmt: skip
        wait_until(lambda: mock.batch_api()["created"] == 3, what="three provider batches")
        shown = (await client.get(f"/v1/batches/{batch['id']}")).json()["provider_batches"]
        done = await wait_final(client, batch["id"], timeout_s=60)
    assert "completed" not in [b["status"] for b in shown]  # all three made before any ended
    assert done["status"] == "completed"


async def test_a_batch_at_the_provider_is_deleted_only_once_it_has_ended(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    settings = handing_off(redis_url, mock, workers, phase_s=1.0)
    async with api_client(settings) as client:
        batch = await submit(client, prompts=["a", "b"], mode="provider_batch")
        wait_until(lambda: mock.batch_api()["created"] == 1, what="the provider batch")
        refused = await client.delete(f"/v1/batches/{batch['id']}")
        await client.post(f"/v1/batches/{batch['id']}/cancel")
        done = await wait_final(client, batch["id"], timeout_s=60)
        deleted = await client.delete(f"/v1/batches/{batch['id']}")
    assert refused.status_code == 409
    assert "still at the provider" in refused.json()["error"]["message"]
    assert [b["status"] for b in done["provider_batches"]] == ["cancelled"]
    assert deleted.status_code == 204


async def test_a_chunk_past_the_provider_s_bytes_goes_as_several_provider_batches(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    mock.batch_api(max_lines=MAX_LINES)
    openai_worker(workers, mock, PROMPTBATCH_PROVIDER_POLL_S="0.05",
                  PROMPTBATCH_PROVIDER_BATCH_MAX_BYTES="2000")  # fmt: skip
    settings = openai_settings(redis_url, mock).model_copy(
        update={"provider_batch_max_lines": MAX_LINES}
    )
    prompts = [f"item {n} " + "word " * 40 for n in range(20)]  # about 400 bytes a line
    async with api_client(settings) as client:
        batch = await submit(client, prompts=prompts, mode="provider_batch")
        done = await wait_final(client, batch["id"], timeout_s=60)
        items = await all_results(client, batch["id"])
    at_provider = mock.batch_api()

    assert done["status"] == "completed"
    assert at_provider["created"] == len(done["provider_batches"]) >= 4  # 20 lines, 4 or so a file
    assert [item["output"] for item in items] == [f"mock reply to: {p}" for p in prompts]
    assert sorted(at_provider["runs"].values()) == [1] * 20


async def test_a_provider_that_refuses_the_key_for_good_fails_the_items_and_the_batch_ends(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    settings = handing_off(redis_url, mock, workers, fail_polls=1000, poll_status=401)
    async with api_client(settings) as client:
        batch = await submit(client, prompts=["a", "b"], mode="provider_batch")
        done = await wait_final(client, batch["id"], timeout_s=60)
        items = await all_results(client, batch["id"])
        deleted = await client.delete(f"/v1/batches/{batch['id']}")
    assert done["request_counts"]["failed"] == 2
    assert {item["error"]["type"] for item in items} == {"authentication_error"}
    assert deleted.status_code == 204  # ended: nothing left at the provider to wait for

"""`Client` and `AsyncClient` against a real API process, a real worker and Redis."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from rich.console import Console

from promptbatch import (
    APIConnectionError,
    APIError,
    AsyncClient,
    Batch,
    Client,
    PromptItem,
    PromptTemplate,
)
from tests.helpers import Proc, free_port
from worker.llm import OFFLINE_PREFIX

pytestmark = pytest.mark.integration

PROMPTS = [f"client question {i}" for i in range(30)]


def recording_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=120, color_system=None), out


def test_submit_wait_with_progress_and_read_results_in_order(
    live_api: Callable[..., str], workers: Callable[..., Proc]
) -> None:
    workers()
    console, screen = recording_console()
    prompts: list[str | PromptItem] = [*PROMPTS[:-1], PromptItem(custom_id="last", prompt="end")]
    with Client(live_api()) as pb:
        batch = pb.submit(
            prompts, system="Be brief.", params={"max_tokens": 50}, metadata={"k": "v"}
        )
        submitted = batch.info
        assert submitted.status == "queued"
        assert batch.wait(progress=True, console=console) is batch
        items = list(batch.results())
        lines = list(batch.openai_results())
        listed = pb.list(limit=5)

    assert batch.info.status == "completed"
    assert batch.info.metadata == {"k": "v"}
    assert batch.info.request_counts.succeeded == 30
    assert [item.index for item in items] == list(range(30))
    assert [item.output for item in items] == [f"{OFFLINE_PREFIX}{p}" for p in PROMPTS[:-1]] + [
        f"{OFFLINE_PREFIX}end"
    ]
    assert items[-1].custom_id == "last"
    assert [line.custom_id for line in lines] == [item.custom_id for item in items]
    assert listed.data[0].id == batch.id
    drawn = screen.getvalue()
    assert "100%" in drawn
    assert "30/30" in drawn


async def test_the_async_client_does_the_same(
    live_api: Callable[..., str], workers: Callable[..., Proc]
) -> None:
    workers()
    console, screen = recording_console()
    async with AsyncClient(live_api()) as pb:
        batch = await pb.submit(PROMPTS, max_concurrency=4)
        assert await batch.wait(progress=True, console=console) is batch
        items = [item async for item in batch.results()]
        lines = [line async for line in batch.openai_results()]
        again = await pb.get(batch.id)
        listed = await pb.list(limit=5)

    assert batch.info.status == "completed"
    assert [item.output for item in items] == [f"{OFFLINE_PREFIX}{p}" for p in PROMPTS]
    assert [line.custom_id for line in lines] == [str(i) for i in range(30)]
    assert again.info.request_counts == batch.info.request_counts
    assert listed.data[0].id == batch.id
    assert "30/30" in screen.getvalue()


def test_errors_carry_the_api_error_body(live_api: Callable[..., str]) -> None:
    with Client(live_api()) as pb:
        with pytest.raises(APIError) as unknown:
            pb.get("batch_nope")
        with pytest.raises(APIError) as invalid:
            pb.submit(["a", "b"], max_concurrency=1000)
        real = pb.submit(["c"])
        gone = Batch(pb, real.info.model_copy(update={"id": "batch_nope"}))
        with pytest.raises(APIError) as unknown_results:
            next(gone.results())

    assert (unknown.value.status_code, unknown.value.type) == (404, "not_found")
    assert unknown.value.message == "No batch batch_nope."
    assert (invalid.value.status_code, invalid.value.param) == (422, "max_concurrency")
    assert unknown_results.value.status_code == 404


async def test_a_server_that_is_down_is_a_connection_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url) as pb, pytest.raises(APIConnectionError, match="cannot reach"):
        pb.get("batch_x")
    async with AsyncClient(url) as apb:
        with pytest.raises(APIConnectionError, match="cannot reach"):
            await apb.submit(["hello"])


REVIEWS = [
    {"custom_id": "lamp-1", "product": "lamp", "review": "bright, {really}"},
    {"custom_id": "desk-1", "product": "desk", "review": "wobbly"},
    {"custom_id": "lamp-2", "product": "lamp", "review": "too blue"},
]
RESULT_KEYS = ["output", "status", "error", "output_json", "finish_reason"]


def test_a_template_batch_reads_back_as_rows_of_inputs_and_outputs(
    live_api: Callable[..., str], workers: Callable[..., Proc]
) -> None:
    workers()
    template = [("system", "You rate {product} reviews."), ("human", "Review: {review}")]
    with Client(live_api()) as pb:
        batch = pb.submit(template=template, inputs=REVIEWS).wait()
        rows = list(batch.rows())

    assert batch.info.request_counts.succeeded == 3
    assert [list(row) for row in rows] == [["custom_id", "product", "review", *RESULT_KEYS]] * 3
    assert [{k: row[k] for k in ("custom_id", "product", "review")} for row in rows] == REVIEWS
    assert [row["output"] for row in rows] == [
        f"{OFFLINE_PREFIX}Review: {r['review']}" for r in REVIEWS
    ]
    assert {(row["status"], row["error"], row["finish_reason"]) for row in rows} == {
        ("succeeded", None, "stop")
    }


async def test_the_async_client_reads_rows_with_the_parsed_json(
    live_api: Callable[..., str], workers: Callable[..., Proc]
) -> None:
    workers()
    async with AsyncClient(live_api()) as pb:
        batch = await pb.submit(
            template=PromptTemplate(messages=[("human", "Rate: {review}")]),
            inputs=REVIEWS,
            params={"response_format": {"type": "json_object"}},
        )
        await batch.wait()
        rows = [row async for row in batch.rows()]

    assert [row["custom_id"] for row in rows] == [r["custom_id"] for r in REVIEWS]
    assert [row["output_json"] for row in rows] == [
        {"you_asked": f"Rate: {r['review']}"} for r in REVIEWS
    ]
    assert [row["status"] for row in rows] == ["succeeded"] * 3


def test_a_few_shot_messages_item_is_answered_from_its_last_user_message(
    live_api: Callable[..., str], workers: Callable[..., Proc]
) -> None:
    workers()
    messages = [
        {"role": "system", "content": "Classify sentiment."},
        {"role": "user", "content": "I love it"},
        {"role": "assistant", "content": "positive"},
        {"role": "user", "content": "It broke on day two"},
    ]
    with Client(live_api()) as pb:
        batch = pb.submit(
            [{"custom_id": "few", "messages": messages, "params": {"temperature": 0}}, "plain"]
        ).wait()
        items = list(batch.results())

    assert [(i.custom_id, i.status) for i in items] == [("few", "succeeded"), ("1", "succeeded")]
    assert items[0].output == f"{OFFLINE_PREFIX}It broke on day two"
    assert items[1].output == f"{OFFLINE_PREFIX}plain"


def test_rows_of_a_batch_got_by_id_start_with_its_custom_id(
    live_api: Callable[..., str], workers: Callable[..., Proc]
) -> None:
    workers()
    with Client(live_api()) as pb:
        submitted = pb.submit(template="Rate: {review}", inputs=REVIEWS).wait()
        again = pb.get(submitted.id)
        rows = list(again.rows())

    assert again.inputs is None
    assert [list(row) for row in rows] == [["custom_id", *RESULT_KEYS]] * 3
    assert [row["custom_id"] for row in rows] == [r["custom_id"] for r in REVIEWS]
    assert [row["output"] for row in rows] == [
        f"{OFFLINE_PREFIX}Rate: {r['review']}" for r in REVIEWS
    ]

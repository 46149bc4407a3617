"""Large submissions are staged a page at a time (`api/ingest.py`): the batch is the same as
one written whole, and a refusal at any point leaves nothing in Redis."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from typing import Any

import httpx
import orjson
import pytest
from fastapi.exceptions import RequestValidationError
from redis.asyncio import Redis

from api import bodies, planning
from shared import keys
from shared.batches import BatchPlan
from shared.chat import BatchParams
from shared.errors import ServiceUnavailable
from shared.model import PAGE
from shared.staging import Staged, encode_page
from shared.store import BatchStore
from tests.conftest import api_client, make_settings

NDJSON = {"Content-Type": "application/x-ndjson"}


def line(i: int, **body: object) -> str:
    request = {"messages": [{"role": "user", "content": f"question {i}"}], **body}
    return json.dumps({"custom_id": f"task-{i}", "method": "POST",
                       "url": "/v1/chat/completions", "body": request})  # fmt: skip


def upload(count: int, bad: int | None = None) -> bytes:
    """An OpenAI Batch file of `count` lines (well past one page and the inline size); line
    `bad` (from 1) asks for an impossible `n`."""
    return "".join(
        (line(i, n=2) if i + 1 == bad else line(i)) + "\n" for i in range(count)
    ).encode()


async def everything(redis_url: str) -> list[bytes]:
    async with Redis.from_url(redis_url) as redis:
        return sorted([name async for name in redis.scan_iter("*")])


async def test_a_large_upload_is_the_batch_it_describes_in_input_order(
    client: httpx.AsyncClient, redis_url: str
) -> None:
    count = 2 * PAGE + 500
    response = await client.post("/v1/batches", content=upload(count), headers=NDJSON)
    assert response.status_code == 202, response.text
    batch_id = response.json()["id"]
    assert response.json()["request_counts"]["total"] == count
    async with Redis.from_url(redis_url) as redis:
        items = await BatchStore(redis).pending_items(batch_id, 0, count)
        ttl = await redis.ttl(keys.inputs(batch_id))
    assert [item.custom_id for item in items] == [f"task-{i}" for i in range(count)]
    assert items[PAGE].prompt == [{"role": "user", "content": f"question {PAGE}"}]
    assert ttl == -1  # staged items expire unless their batch is created; this one was


@pytest.mark.parametrize("bad", [1, PAGE, 2 * PAGE + 1], ids=["first", "end-of-page-1", "page-3"])
async def test_a_bad_line_on_any_page_is_422_naming_it_and_leaves_nothing(
    client: httpx.AsyncClient, redis_url: str, bad: int
) -> None:
    body = upload(2 * PAGE + 500, bad=bad)
    response = await client.post("/v1/batches", content=body, headers=NDJSON)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == f"line[{bad}].body.n"
    assert await everything(redis_url) == []


async def test_an_upload_over_max_prompts_is_refused_before_a_line_is_read(
    redis_url: str,
) -> None:
    # Every line is bad: had one been validated, the error would name it instead.
    body = "".join(line(i, n=2) + "\n" for i in range(3000)).encode()
    async with api_client(make_settings(redis_url, max_prompts=2999)) as client:
        response = await client.post("/v1/batches", content=body, headers=NDJSON)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["param"], "got 3000" in error["message"]) == ("line[3000]", True)
    assert await everything(redis_url) == []


async def test_a_repeated_upload_gets_its_batch_and_leaves_no_staged_items(
    client: httpx.AsyncClient, redis_url: str
) -> None:
    body, retry = upload(PAGE + 10), {**NDJSON, "Idempotency-Key": "upload-1"}
    first = await client.post("/v1/batches", content=body, headers=retry)
    again = await client.post("/v1/batches", content=body, headers=retry)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]
    inputs = [name for name in await everything(redis_url) if name.endswith(b":inputs")]
    assert inputs == [keys.inputs(first.json()["id"]).encode()]
    other = await client.post("/v1/batches", content=upload(PAGE + 11), headers=retry)
    assert other.status_code == 409  # the same key with another file
    assert len([n for n in await everything(redis_url) if n.endswith(b":inputs")]) == 1


async def test_a_large_json_submission_refused_by_the_ceiling_leaves_nothing(
    redis_url: str,
) -> None:
    prompts = [f"prompt {i}" for i in range(PAGE + 500)]
    settings = make_settings(redis_url, max_queued_prompts=2 * PAGE)
    async with api_client(settings) as client:
        taken = await client.post("/v1/batches", json={"prompts": prompts})
        assert taken.status_code == 202, taken.text
        before = await everything(redis_url)
        refused = await client.post("/v1/batches", json={"prompts": prompts})
    assert refused.status_code == 429, refused.text  # its items were staged, then dropped
    assert await everything(redis_url) == before
    async with Redis.from_url(redis_url) as redis:
        items = await BatchStore(redis).pending_items(taken.json()["id"], 0, len(prompts))
    assert [item.prompt for item in items] == prompts


async def test_dropping_staged_items_never_touches_a_created_batch(
    client: httpx.AsyncClient, redis_url: str
) -> None:
    response = await client.post("/v1/batches", json={"prompts": ["a", "b"]})
    batch_id = response.json()["id"]
    async with Redis.from_url(redis_url) as redis:
        store = BatchStore(redis)
        await store.drop_staged(batch_id)
        assert await redis.llen(keys.inputs(batch_id)) == 2
        await store.stage_items("batch_" + "0" * 32, encode_page([("x", "y")]))
        await store.drop_staged("batch_" + "0" * 32)
        assert await redis.exists(keys.inputs("batch_" + "0" * 32)) == 0


@pytest.mark.parametrize("bad", [5, PAGE, 2 * PAGE + 500])
async def test_a_bad_item_of_a_long_json_list_is_named_as_in_a_short_one(
    client: httpx.AsyncClient, redis_url: str, bad: int
) -> None:
    prompts: list[object] = [f"prompt {i}" for i in range(3 * PAGE)]
    prompts[bad] = {"prompt": "x", "colour": "red"}
    response = await client.post("/v1/batches", json={"prompts": prompts})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == f"prompts[{bad}].colour"
    short = await client.post("/v1/batches", json={"prompts": ["a", {"prompt": "x", "colour": 1}]})
    assert short.json()["error"]["param"] == "prompts[1].colour"  # the same naming
    assert await everything(redis_url) == []


async def test_the_garbage_collector_is_paused_only_while_a_large_body_is_handled(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []
    real = planning.plan_batch

    def plan(*args: Any) -> Any:
        seen.append(gc.isenabled())
        return real(*args)

    monkeypatch.setattr("api.routes.batches.plan_batch", plan)
    small = await client.post("/v1/batches", json={"prompts": ["a"]})
    large = await client.post("/v1/batches", json={"prompts": ["a" * 30] * (3 * PAGE)})
    refused = await client.post("/v1/batches", json={"prompts": ["a" * 30] * (3 * PAGE) + [""]})
    assert (small.status_code, large.status_code, refused.status_code) == (202, 202, 422)
    assert seen == [True, False, False]
    assert gc.isenabled()  # back on after the answer, whether the body was taken or refused


async def test_a_batch_is_never_created_without_all_its_staged_items(redis_url: str) -> None:
    batch_id = "batch_" + "1" * 32
    plan = BatchPlan(
        items=[], model="m", system=None, params=BatchParams(), max_concurrency=1,
        metadata=None, provider="offline", staged=Staged(batch_id, 2),
    )  # fmt: skip
    async with Redis.from_url(redis_url) as redis:
        store = BatchStore(redis)
        # One of two: the other was lost.
        await store.stage_items(batch_id, encode_page([("a", "x")]))
        with pytest.raises(ServiceUnavailable):
            await store.create(plan, chunk_size=10)
        assert await redis.exists(keys.batch(batch_id)) == 0
        await store.stage_items(batch_id, encode_page([("b", "y")]))
        batch, created = await store.create(plan, chunk_size=10)
        assert (batch.id, created, batch.request_counts.total) == (batch_id, True, 2)
        assert await redis.ttl(keys.inputs(batch_id)) == -1
        assert [i.custom_id for i in await store.pending_items(batch_id, 0, 2)] == ["a", "b"]


async def _items_staged(redis_url: str) -> int:
    """How many times Redis has been asked to append items (`stage_items`), ever."""
    async with Redis.from_url(redis_url) as redis:
        stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_rpush", {}).get("calls", 0))


async def test_an_upload_over_its_key_s_rate_is_refused_before_anything_is_staged(
    redis_url: str,
) -> None:
    settings = make_settings(redis_url, rate_limit_per_min=1)
    body = upload(PAGE + 500)
    async with api_client(settings) as client:
        taken = await client.post("/v1/batches", content=body, headers=NDJSON)
        assert taken.status_code == 202, taken.text
        staged = await _items_staged(redis_url)
        refused = await client.post("/v1/batches", content=body, headers=NDJSON)
    assert refused.status_code == 429, refused.text
    assert await _items_staged(redis_url) == staged  # no page of it reached Redis


async def test_a_key_s_large_submissions_in_progress_are_capped(redis_url: str) -> None:
    settings = make_settings(redis_url, max_uploads_per_key=1)
    async with api_client(settings) as client, Redis.from_url(redis_url) as redis:
        # One large submission of this key is being staged (by another API process, say).
        await redis.zadd(keys.uploads(keys.PUBLIC_OWNER), {"in-progress": time.time() * 1000})
        staged = await _items_staged(redis_url)
        refused = await client.post("/v1/batches", content=upload(PAGE + 500), headers=NDJSON)
        assert refused.status_code == 429, refused.text
        assert "large submissions in progress" in refused.json()["error"]["message"]
        assert await _items_staged(redis_url) == staged
        small = await client.post("/v1/batches", json={"prompts": ["a"]})  # not an upload
        assert small.status_code == 202, small.text
        await redis.zrem(keys.uploads(keys.PUBLIC_OWNER), "in-progress")  # it ended
        taken = await client.post("/v1/batches", content=upload(PAGE + 500), headers=NDJSON)
        assert taken.status_code == 202, taken.text
        assert await redis.zcard(keys.uploads(keys.PUBLIC_OWNER)) == 0  # its slot given back


async def test_an_upload_refused_for_the_upload_cap_gives_its_admission_back(
    redis_url: str,
) -> None:
    settings = make_settings(redis_url, max_uploads_per_key=1, rate_limit_per_min=5)
    async with api_client(settings) as client, Redis.from_url(redis_url) as redis:
        await redis.zadd(keys.uploads(keys.PUBLIC_OWNER), {"in-progress": time.time() * 1000})
        refused = await client.post("/v1/batches", content=upload(PAGE + 500), headers=NDJSON)
        assert refused.status_code == 429, refused.text
        assert await redis.zcard(keys.submissions(keys.PUBLIC_OWNER)) == 0  # not counted


async def test_an_upload_of_exactly_the_queued_ceiling_is_admitted(redis_url: str) -> None:
    count = PAGE + 500
    settings = make_settings(redis_url, max_queued_prompts=count)
    async with api_client(settings) as client:
        taken = await client.post("/v1/batches", content=upload(count), headers=NDJSON)
    assert taken.status_code == 202, taken.text  # its final newline is not a prompt


def _long_json_body(megabytes: int) -> bytes:
    """A submission of `megabytes` MB of short chat items, as a client would send it."""
    item = {"messages": [{"role": "user", "content": "q" * 1000}], "params": {"temperature": 0.5}}
    count = megabytes * 1024 * 1024 // len(json.dumps(item))
    prompts = [{**item, "custom_id": f"c{i}"} for i in range(count)]
    metadata = {"n": 2**40, "pi": 3.14, "ok": True, "none": None}
    return json.dumps({"prompts": prompts, "metadata": metadata}).encode()


def test_a_large_json_body_is_decoded_as_a_small_one_is() -> None:
    raw = _long_json_body(3)
    assert len(raw) > bodies.PIECEWISE_BYTES
    assert bodies.json_value(raw) == orjson.loads(raw)


@pytest.mark.parametrize(
    ("tail", "where"),
    [(b",, 1]}", "inside"), (b"]} trailing", "inside"), (b"]", "end"), (b"]} {}", "inside")],
)
def test_a_malformed_large_json_body_is_a_json_decode_error(tail: bytes, where: str) -> None:
    raw = _long_json_body(2)
    broken = raw[: raw.rindex(b"]")] + tail
    with pytest.raises(RequestValidationError) as refused:
        bodies.json_value(broken)
    (error,) = refused.value.errors()
    assert (error["type"], error["msg"]) == ("json_invalid", "JSON decode error")
    offset = error["loc"][1]
    if where == "end":  # it stopped short: the error is at the end of the body
        assert offset == len(broken)
    else:  # the offset of the 64 KB piece the parser stopped in
        assert offset <= len(broken) - len(tail) < offset + bodies.PARSE_PIECE


async def test_decoding_a_60_mb_json_body_leaves_the_event_loop_free() -> None:
    """orjson decodes a body in one call that holds the GIL throughout (0.3 s for 60 MB here);
    the event loop, waiting for it meanwhile, must never wait a tenth of a second. (With the
    cyclic GC paused, as the API pauses it for a large body.)"""
    raw = _long_json_body(60)
    worst = 0.0
    with bodies.gc_paused():
        decoding = asyncio.ensure_future(asyncio.to_thread(bodies.json_value, raw))
        while not decoding.done():
            tick = time.perf_counter()
            await asyncio.sleep(0)
            worst = max(worst, time.perf_counter() - tick)
        value = await decoding
    assert len(value["prompts"]) > 50_000
    assert worst < 0.1, f"the loop waited {worst * 1000:.0f} ms at once"


#: A body past PIECEWISE_BYTES whatever the few bytes of JSON in front of it.
PADDING = b" " * (bodies.PIECEWISE_BYTES + 1)


@pytest.mark.parametrize(
    "text",
    [rb"\ud83d\ude00", rb"\ud800", rb"\udc00 and", rb"\\ud800", rb"\\\ud800", rb"\u00e9",
     rb"a\ud800\ud83d\ude00"],
)  # fmt: skip
def test_a_large_body_s_escapes_are_read_as_orjson_reads_them(text: bytes) -> None:
    raw = b'{"prompts": ["' + text + b'"]}' + PADDING
    try:
        expected: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:  # a lone surrogate is no character: refused, never "?"
        with pytest.raises(RequestValidationError):
            bodies.json_value(raw)
    else:
        assert bodies.json_value(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [b"[" * 1025 + b"]" * 1025, b"[" * 200_000, b'{"prompts": ["\xc0\xaf"]}', b'["\xed\xa0\x80"]'],
    ids=["1025-deep", "200000-deep", "overlong-utf8", "encoded-surrogate"],
)
def test_a_large_body_nested_too_deep_or_not_utf8_is_a_json_decode_error(raw: bytes) -> None:
    """Nesting past orjson's 1,024 levels made ijson grow with the depth's square (2 GB at
    30,000 levels); bytes that are not UTF-8 escaped as a 500."""
    with pytest.raises(RequestValidationError) as refused:
        bodies.json_value(raw + PADDING)
    assert refused.value.errors()[0]["type"] == "json_invalid"
    assert bodies.json_value(b"[" * 1024 + b"]" * 1024 + PADDING) is not None

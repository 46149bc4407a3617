"""`/openai/v1/files` and the errors of the OpenAI surface: bounds, refusals that leave nothing
behind, OpenAI's error shape and status codes, and listing page by page."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis

from api import ingest
from tests.conftest import api_client, make_settings

FILES = "/openai/v1/files"


def line(n: int) -> bytes:
    row = {"custom_id": f"r{n}", "method": "POST", "url": "/v1/chat/completions",
           "body": {"messages": [{"role": "user", "content": f"prompt {n}"}]}}  # fmt: skip
    return json.dumps(row).encode() + b"\n"


def jsonl(count: int) -> bytes:
    return b"".join(line(n) for n in range(count))


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(redis_url, max_file_lines=3, max_file_bytes=10_000)
    async with api_client(settings) as http:
        yield http


async def upload(
    client: httpx.AsyncClient, content: bytes, purpose: str = "batch"
) -> httpx.Response:
    return await client.post(
        FILES, files={"file": ("in.jsonl", content)}, data={"purpose": purpose}
    )


async def _stored_keys(redis_url: str) -> list[bytes]:
    async with Redis.from_url(redis_url) as redis:
        return [key async for key in redis.scan_iter("pb:{file-*")]


async def test_a_file_past_its_bounds_or_wrong_is_refused_and_leaves_nothing(
    client: httpx.AsyncClient, redis_url: str
) -> None:
    too_many = await upload(client, jsonl(4))
    too_big = await upload(client, jsonl(3) + b" " * 10_000 + b"\n")
    wrong_line = await upload(client, line(0) + b'{"custom_id": "r1"}\n')
    no_lines = await upload(client, b"\n\n")
    wrong_purpose = await upload(client, jsonl(1), purpose="fine-tune")
    not_a_form = await client.post(FILES, json={"file": "x", "purpose": "batch"})
    no_file = await client.post(FILES, data={"purpose": "batch"}, files={"other": ("a", b"")})
    no_type = await client.post(FILES, content=b"", headers={"Content-Type": ""})
    deep = await upload(client, line(0) + b"[" * 4000 + b"]" * 4000 + b"\n")
    huge_number = await upload(client, line(0) + b'{"n": ' + b"9" * 5000 + b"}\n")
    short_life = await client.post(
        FILES, files={"file": ("in.jsonl", jsonl(1))},
        data={"purpose": "batch", "expires_after[anchor]": "created_at",
              "expires_after[seconds]": "60"},
    )  # fmt: skip

    assert (too_many.status_code, too_many.json()["error"]["param"]) == (400, "file")
    assert "at most 3 request lines; got 4" in too_many.json()["error"]["message"]
    assert too_big.status_code == 413
    assert wrong_line.status_code == 400
    assert wrong_line.json()["error"]["message"].startswith("Line 2")
    assert set(wrong_line.json()["error"]) == {"message", "type", "param", "code"}  # OpenAI's
    assert (no_lines.status_code, no_lines.json()["error"]["param"]) == (400, "file")
    assert (wrong_purpose.status_code, wrong_purpose.json()["error"]["param"]) == (400, "purpose")
    assert not_a_form.status_code == 400
    assert (no_file.status_code, no_file.json()["error"]["param"]) == (400, "file")
    assert no_type.status_code == 400
    assert (deep.status_code, deep.json()["error"]["param"]) == (400, "line[2]")
    assert (huge_number.status_code, huge_number.json()["error"]["param"]) == (400, "line[2]")
    assert short_life.status_code == 400
    assert short_life.json()["error"]["param"] == "expires_after.seconds"
    assert (await client.get(FILES)).json()["data"] == []
    assert await _stored_keys(redis_url) == []


async def test_a_line_past_the_longest_is_refused_unread(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "MAX_LINE_BYTES", 300)
    response = await upload(client, line(0) + b'{"custom_id": "' + b"x" * 400 + b'"}\n')
    assert (response.status_code, response.json()["error"]["param"]) == (400, "line[2]")
    assert "longer than 300 bytes" in response.json()["error"]["message"]


async def test_a_file_asked_to_expire_sooner_says_when(client: httpx.AsyncClient) -> None:
    made = await client.post(
        FILES, files={"file": ("in.jsonl", jsonl(1))},
        data={"purpose": "batch", "expires_after[anchor]": "created_at",
              "expires_after[seconds]": "3600"},
    )  # fmt: skip
    assert made.json()["expires_at"] - made.json()["created_at"] == 3600


async def test_a_stored_file_reads_back_as_sent_and_is_deleted_whole(
    client: httpx.AsyncClient, redis_url: str
) -> None:
    content = jsonl(3)
    made = (await upload(client, content)).json()
    found = (await client.get(f"{FILES}/{made['id']}")).json()
    body = (await client.get(f"{FILES}/{made['id']}/content")).content
    deleted = await client.delete(f"{FILES}/{made['id']}")
    gone = await client.get(f"{FILES}/{made['id']}")

    assert found == made
    assert (made["object"], made["bytes"], made["purpose"], made["status"]) == (
        "file", len(content), "batch", "processed",
    )  # fmt: skip
    assert made["expires_at"] > made["created_at"]
    assert body == content
    assert deleted.json() == {"id": made["id"], "object": "file", "deleted": True}
    assert gone.status_code == 404
    assert set(gone.json()["error"]) == {"message", "type", "param", "code"}
    assert await _stored_keys(redis_url) == []


async def test_files_list_newest_first_page_by_page_and_either_order(
    client: httpx.AsyncClient,
) -> None:
    ids = [(await upload(client, jsonl(1))).json()["id"] for _ in range(3)]
    first = (await client.get(FILES, params={"limit": 2})).json()
    await client.delete(f"{FILES}/{first['last_id']}")  # the cursor need not be there any more
    rest = (await client.get(FILES, params={"limit": 2, "after": first["last_id"]})).json()
    oldest = (await client.get(FILES, params={"order": "asc"})).json()

    assert [f["id"] for f in first["data"]] == ids[::-1][:2]
    assert (first["has_more"], first["first_id"]) == (True, ids[2])
    assert ([f["id"] for f in rest["data"]], rest["has_more"]) == ([ids[0]], False)
    assert [f["id"] for f in oldest["data"]] == [ids[0], ids[2]]


async def test_the_openai_surface_answers_400_where_v1_answers_422(
    client: httpx.AsyncClient,
) -> None:
    missing = await client.post("/openai/v1/batches", json={"endpoint": "/v1/chat/completions"})
    unknown = await client.get("/openai/v1/batches/batch_" + "0" * 32)
    no_file = await client.post("/openai/v1/batches", json={
        "input_file_id": "file-nope", "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    })  # fmt: skip
    native = await client.post("/v1/batches", json={})

    assert (missing.status_code, missing.json()["error"]["param"]) == (400, "input_file_id")
    assert unknown.status_code == 404
    assert no_file.status_code == 404
    assert native.status_code == 422
    assert "code" not in native.json()["error"]  # /v1 keeps its own shape


@pytest.mark.parametrize("bound", ["files", "bytes"])
async def test_a_key_holds_at_most_its_share_of_files(redis_url: str, bound: str) -> None:
    content = jsonl(1)
    most = (
        {"max_files_per_key": 2} if bound == "files"
        else {"max_file_storage_bytes": 2 * len(content) + 1}
    )  # fmt: skip
    async with api_client(make_settings(redis_url, **most)) as client:
        kept = [await upload(client, content) for _ in range(2)]
        refused = await upload(client, content)
        await client.delete(f"{FILES}/{kept[0].json()['id']}")
        again = await upload(client, content)

    assert [response.status_code for response in kept] == [200, 200]
    assert (refused.status_code, refused.json()["error"]["param"]) == (400, "file")
    assert "Delete some first" in refused.json()["error"]["message"]
    assert again.status_code == 200

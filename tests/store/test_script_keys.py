"""Every Lua script touches only keys it was given in KEYS, as Redis asks of scripts (and as a
cluster would enforce), checked on a real Redis: its MONITOR shows each script's call with its
KEYS, then each command the script ran; `COMMAND GETKEYS` says which keys those touched.

The scenario runs the batch's whole life through the scheduler on a real arq worker: batches
of two owners (one with more batches than a call names in advance), runs, a cancel, a retry,
a delete, the reconciler.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import AsyncIterator

from arq.connections import ArqRedis
from arq.worker import Worker
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from api.lifecycle import cancel, delete, retry, submit
from shared import scheduler
from shared.schemas import FINAL_BATCH_STATUSES
from shared.store import BatchStore
from tests.conftest import make_settings
from tests.store.conftest import make_plan
from tests.store.workers import arq_worker, worker_ctx
from worker.llm import OfflineChatModel
from worker.scheduler import reconcile

_QUOTED = re.compile(rb'"((?:\\.|[^"\\])*)"')
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"a": b"\a", b"b": b"\b"}
_END = b"the-scenario-ended"


def _unquote(text: bytes) -> bytes:
    """An argument as MONITOR quotes it (`sdscatrepr`), back to its bytes."""
    out, i = bytearray(), 0
    while i < len(text):
        if text[i : i + 1] == b"\\":
            code = text[i + 1 : i + 2]
            if code == b"x":
                out += bytes([int(text[i + 2 : i + 4], 16)])
                i += 4
                continue
            out += _ESCAPES.get(code, code)
            i += 2
            continue
        out += text[i : i + 1]
        i += 1
    return bytes(out)


@contextlib.asynccontextmanager
async def _monitored(redis_url: str) -> AsyncIterator[list[tuple[bool, list[bytes]]]]:
    """What the server runs while the block runs: (from a script?, command and arguments)."""
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"MONITOR\r\n")
    assert await reader.readline() == b"+OK\r\n"
    seen: list[tuple[bool, list[bytes]]] = []
    try:
        yield seen
        async with Redis.from_url(redis_url) as client:
            await client.echo(_END)
        while True:
            line = await reader.readline()
            assert line, "MONITOR closed"
            source, _, command = line.partition(b"] ")
            args = [_unquote(arg) for arg in _QUOTED.findall(command)]
            if args == [b"ECHO", _END]:
                break
            seen.append((source.endswith(b" lua"), args))
    finally:
        writer.close()


async def _touched(
    redis: Redis, args: list[bytes], known: dict[tuple[bytes, ...], set[bytes]]
) -> set[bytes]:
    """The keys a command touches, as the server itself reads them."""
    if tuple(args) not in known:
        try:
            found = await redis.command_getkeys(*args)
        except ResponseError:  # a command of no keys (TIME)
            found = []
        known[tuple(args)] = {key if isinstance(key, bytes) else key.encode() for key in found}
    return known[tuple(args)]


async def _run_all(worker: Worker, store: BatchStore, batch_ids: list[str]) -> None:
    """Let the worker poll and run jobs until every batch is final (a generous bound)."""
    for _ in range(500):
        batches = [await store.get(batch_id) for batch_id in batch_ids]
        if all(batch.status in FINAL_BATCH_STATUSES for batch in batches):
            return
        await worker._poll_iteration()
        await asyncio.gather(*worker.tasks.values())
    raise AssertionError("the batches did not finish")


async def test_every_script_touches_only_the_keys_it_was_given(redis_url: str) -> None:
    settings = make_settings(redis_url, chunk_size=2)
    client = ArqRedis.from_url(redis_url)
    store = BatchStore(client)
    worker = arq_worker(settings, client, worker_ctx(client, settings, "w", OfflineChatModel()))
    try:
        async with _monitored(redis_url) as seen:
            many = [  # more batches than a refill names in advance
                (await submit(store, make_plan(6, max_concurrency=1), settings, owner="ka"))[0].id
                for _ in range(scheduler.REACH_BATCHES + 3)
            ]
            other = (await submit(store, make_plan(8), settings, owner="kb"))[0].id
            stopped = (await submit(store, make_plan(8), settings, owner="kb"))[0].id
            await cancel(store, client, stopped)
            await _run_all(worker, store, [*many, other, stopped])
            await retry(store, client, stopped, ["cancelled"])
            await delete(store, client, many[0])
            await reconcile(client, store, settings.lease_s)
            await _run_all(worker, store, [*many[1:], other, stopped])
    finally:
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        await client.aclose()

    calls: list[tuple[bytes, set[bytes], set[bytes]]] = []  # script, its KEYS, what it touched
    known: dict[tuple[bytes, ...], set[bytes]] = {}
    async with Redis.from_url(redis_url) as redis:
        for from_script, args in seen:
            name = args[0].upper()
            if not from_script and name in (b"EVALSHA", b"EVAL"):
                sha = args[1] if name == b"EVALSHA" else hashlib.sha1(args[1]).hexdigest().encode()
                count = int(args[2])
                calls.append((sha, set(args[3 : 3 + count]), set()))
            elif from_script:
                calls[-1][2].update(await _touched(redis, args, known))
    outside = {sha: touched - given for sha, given, touched in calls if touched - given}
    assert outside == {}
    ran = {sha.decode() for sha, _, _ in calls}
    for script in ("sched_join", "sched_refill", "sched_requeue", "sched_begin", "sched_release"):
        assert hashlib.sha1(scheduler.script(script).encode()).hexdigest() in ran, script
    assert len(ran) >= 12  # the batch's own scripts ran too

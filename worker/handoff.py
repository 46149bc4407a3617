"""A chunk of a batch handed to the provider's own Batch API (`"mode": "provider_batch"`): half
the price, within the provider's completion window, with promptbatch's results, order, cancel,
retry and crash safety kept.

A provider-mode batch's chunks are `PROMPTBATCH_PROVIDER_BATCH_MAX_LINES` items each; a chunk is
one provider batch, or several when its lines pass `PROMPTBATCH_PROVIDER_BATCH_MAX_BYTES` (its
*parts*). A run of the chunk's job takes each part one step on and, until every part is done,
hands the job back to be run again after `PROMPTBATCH_PROVIDER_POLL_S`: no job slot is held
while the provider works (that may take a day).

Never paid twice: each step is recorded in Redis (`keys.handoff`) before the next is taken.
- The parts (item index ranges) are planned once, so a resumed run uploads the same lines.
- A part's nonce is recorded before its provider batch is created, and the provider batch
  carries it in its metadata: a run that finds a nonce but no batch id (the worker before it
  died right after the create) looks for a provider batch with that nonce among the newest
  ones and creates one only if there is none.
- An uploaded file whose id was recorded is used again.
- Each result line is written into its own item, matched by our own custom id (`i<index>`),
  never by order (the provider shuffles them); an item is written once, so a run that dies
  while reading is resumed by one that reads the files again and writes only what is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from typing import IO, Any, cast

import openai
from langchain_core.messages import AIMessage
from langchain_openai import ChatOpenAI
from openai import AsyncOpenAI
from redis.asyncio import Redis

from shared import keys
from shared.batches import BatchSpec
from shared.metrics import PROVIDER_BATCHES
from shared.model import PROVIDER_BATCH_FIELD, decode
from shared.results import ItemOutcome, PendingItem
from shared.schemas import ErrorInfo, ProviderBatch, ProviderBatchCounts
from shared.settings import Settings
from worker.llm import batch_kwargs, call_kwargs, checked_outcome, refusal_error, to_messages
from worker.scheduler import Run

log = logging.getLogger("promptbatch.worker")

#: A provider batch that will change no more.
FINAL = frozenset({"completed", "failed", "expired", "cancelled"})
#: How a provider refuses a batch for its enqueued-token quota: submitted again later.
QUEUE_FULL = "token_limit_exceeded"
#: Results written to Redis at a time (each line is parsed on the loop: a hundred take
#: milliseconds, and the write between them lets the loop's other work in).
WRITE_EVERY = 100
#: Metadata keys a provider batch carries (OpenAI allows 16 of up to 64 characters).
META_BATCH, META_PART, META_NONCE = "promptbatch_batch", "promptbatch_part", "promptbatch_nonce"
#: The longest a chunk waits between looks, in `PROMPTBATCH_PROVIDER_POLL_S`.
MOST_BACKOFF = 8
#: How many of the provider's newest batches (and files) are looked through for a nonce.
LOOK_BACK = 500


class ChunkLost(Exception):
    """Another worker holds the chunk now (this run stalled past its lease), or its batch is
    gone: stop here."""


class LookAgain(Exception):
    """The batch was cancelled or its window ended while this step ran: step again at once."""


def refused_for_good(exc: openai.APIStatusError) -> bool:
    """A 4xx the provider will answer again (not 408, 409 or 429, which are "later")."""
    return 400 <= exc.status_code < 500 and exc.status_code not in (408, 409, 429)


def custom_id(index: int) -> str:
    """Our own custom id of an item's request line: user ids never collide."""
    return f"i{index}"


def request_line(model: ChatOpenAI, spec: BatchSpec, item: PendingItem) -> bytes:
    """The item's request as an OpenAI Batch input line: the body ChatOpenAI would send for it
    (its messages, the batch's params with its own over them)."""
    kwargs = batch_kwargs(model, spec.model, spec.params)
    if item.params:
        kwargs |= call_kwargs(model, item.params)
    body = model._get_request_payload(to_messages(spec.system, item.prompt), **kwargs)
    body.pop("stream", None)
    body |= body.pop("extra_body", None) or {}
    line = {"custom_id": custom_id(item.index), "method": "POST",
            "url": "/v1/chat/completions", "body": body}  # fmt: skip
    return json.dumps(line, ensure_ascii=False).encode() + b"\n"


def plan_parts(sizes: Sequence[tuple[int, int]], most_bytes: int) -> list[tuple[int, int]]:
    """Index ranges [first, last] of (index, line bytes), in order, none past `most_bytes`
    (a line alone may be)."""
    parts: list[tuple[int, int]] = []
    held = 0
    for index, size in sizes:
        if parts and held + size <= most_bytes:
            parts[-1] = (parts[-1][0], index)
            held += size
        else:
            parts.append((index, index))
            held = size
    return parts


def reply_of(model: ChatOpenAI, body: dict[str, Any]) -> AIMessage:
    """A `chat.completion` body as the message ChatOpenAI would have returned for it."""
    result = model._create_chat_result(body)
    generation = result.generations[0]
    message = cast(AIMessage, generation.message)
    message.response_metadata = {**(generation.generation_info or {}),
                                 **message.response_metadata}  # fmt: skip
    return message


class Handoff:
    """One chunk of a provider-mode batch at the provider: its state, and its steps."""

    def __init__(self, ctx: dict[str, Any], spec: BatchSpec, chunk: int, run: Run) -> None:
        self.ctx, self.spec, self.chunk, self.run = ctx, spec, chunk, run
        self.redis: Redis = ctx["redis"]
        self.api: AsyncOpenAI = ctx["batch_api"]
        self.model: ChatOpenAI = ctx["models"][spec.provider]
        self.settings: Settings = ctx["settings"]
        self.key = keys.handoff(spec.id, chunk)
        self.state: dict[str, str] = {}
        self.moved = False  # whether a provider batch moved on since the last look
        self._pending: dict[int, PendingItem] | None = None

    async def step(self) -> bool:
        """Take every part one step on; True once all are done (their items written, or left
        pending for the caller to end: cancelled or expired)."""
        self.state = decode(await self.redis.hgetall(self.key))  # type: ignore[misc]
        if "parts" not in self.state:
            await self._plan(list((await self.pending()).values()))
        parts = json.loads(self.state["parts"])
        stopping = self.spec.status == "cancelling" or self.spec.overdue()
        done = True
        for part, (first, last) in enumerate(parts):
            if self.state.get(f"{part}:done"):
                continue
            remote_id = self.state.get(f"{part}:batch")
            if remote_id is None and f"{part}:nonce" in self.state:
                # A worker before this one may have made it and died before saying so.
                found = await self._find(self.state[f"{part}:nonce"])
                if found is not None:
                    remote_id = await self._keep(part, "batch", found)
            if remote_id is None:
                if stopping:  # never handed over: its items are ended by the caller
                    await self._drop_upload(part)
                    await self._record(part, "done", "1")
                    continue
                items = [i for i in (await self.pending()).values() if first <= i.index <= last]
                remote_id = await self._hand_over(part, items)
                if remote_id is None:  # refused by the provider: its items failed
                    await self._record(part, "done", "1")
                    continue
            if not await self._poll(part, remote_id, stopping):
                done = False
        return done

    async def give_up(self) -> None:
        """Every part ends here (the provider refuses the chunk for good)."""
        for part in range(len(json.loads(self.state.get("parts", "[]")))):
            await self._record(part, "done", "1")

    async def pending(self) -> dict[int, PendingItem]:
        """The chunk's items without a result, by index (read when first needed: a look at a
        provider batch that is still running reads none)."""
        if self._pending is None:
            start, end = self.spec.chunk_bounds(self.chunk)
            found = await self.ctx["store"].pending_items(self.spec.id, start, end)
            self._pending = {item.index: item for item in found}
        return self._pending

    async def next_look_ms(self) -> int:
        """When to look again: after `PROMPTBATCH_PROVIDER_POLL_S`, doubled for each look in a
        row that found nothing moved (up to eight times): a provider batch that sits in its
        queue for hours is not asked every minute."""
        if self.moved:
            await self.redis.hset(self.key, "quiet", "0")  # type: ignore[misc]
            quiet = 0
        else:
            quiet = int(await self.redis.hincrby(self.key, "quiet", 1))  # type: ignore[misc]
        times = min(MOST_BACKOFF, 1 << min(quiet, 3))
        wait_ms = round(self.settings.provider_poll_s * 1000 * times)
        if self.spec.deadline_ms is not None:  # look again when the batch's window ends
            ahead_ms = self.spec.deadline_ms - time.time_ns() // 1_000_000
            if ahead_ms > 0:
                wait_ms = min(wait_ms, ahead_ms)
        return wait_ms

    async def _plan(self, pending: list[PendingItem]) -> None:
        sizes = await asyncio.to_thread(
            lambda: [(item.index, len(request_line(self.model, self.spec, item)))
                     for item in pending]
        )  # fmt: skip
        parts = plan_parts(sizes, self.settings.provider_batch_max_bytes)
        await self.redis.hsetnx(self.key, "parts", json.dumps(parts))  # type: ignore[misc]
        await self.redis.pexpire(self.key, self.ctx["store"].result_ttl_ms or 30 * 24 * 3600_000)
        self.state = decode(await self.redis.hgetall(self.key))  # type: ignore[misc]

    async def _keep(self, part: int, name: str, value: str) -> str:
        """Record `value` for the part unless a value is recorded already (another run's, that
        took the chunk over); the value kept."""
        field = f"{part}:{name}"
        if not await self.redis.hsetnx(self.key, field, value):  # type: ignore[misc]
            value = (await self.redis.hget(self.key, field)).decode()  # type: ignore[misc]
        self.state[field] = value
        return value

    async def _record(self, part: int, name: str, value: str) -> None:
        await self.redis.hset(self.key, f"{part}:{name}", value)  # type: ignore[misc]
        self.state[f"{part}:{name}"] = value

    async def _hand_over(self, part: int, items: list[PendingItem]) -> str | None:
        """The part's provider batch, created (its lines uploaded first); None if the provider
        refused it for good (its items failed). The nonce is recorded before the create; the
        create is made once (no retry: a retry could make a second batch), and a create that
        failed is looked for by its nonce on the next step before another is made."""
        nonce = self.state.get(f"{part}:nonce")
        if nonce is None:
            await self.redis.hsetnx(self.key, f"{part}:nonce", secrets.token_hex(8))  # type: ignore[misc]
            nonce = (await self.redis.hget(self.key, f"{part}:nonce")).decode()  # type: ignore[misc]
        elif f"{part}:file" not in self.state:
            await self._drop_orphans(nonce)  # uploaded by a worker that died before saying so
        await self._still_ours()
        try:
            file_id = self.state.get(f"{part}:file")
            if file_id is None:
                uploaded = await self._upload(part, nonce, items)
                file_id = await self._keep(part, "file", uploaded)
                if file_id != uploaded:  # another run's upload was recorded first
                    await self.api.files.delete(uploaded)
            await self._still_ours()
            created = await self.api.with_options(max_retries=0).batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h",
                metadata={META_BATCH: self.spec.id, META_PART: f"{self.chunk}.{part}",
                          META_NONCE: nonce},
            )  # fmt: skip
        except openai.APIStatusError as exc:
            if not refused_for_good(exc):
                raise
            await self._fail(part, items, f"The provider refused the batch's file: {exc.message}")
            return None
        kept = await self._keep(part, "batch", created.id)
        if kept != created.id:
            # Another run made one too (this one stalled past its lease): the first is kept,
            # this one cancelled (and named, should the cancel fail, for a later step to see).
            await self.redis.hset(self.key, f"{part}:extra", created.id)  # type: ignore[misc]
            await self.api.batches.cancel(created.id)
            return kept
        log.info("batch %s chunk %d part %d: handed to the provider as %s (%d lines)",
                 self.spec.id, self.chunk, part, created.id, len(items))  # fmt: skip
        return created.id

    async def _still_ours(self) -> None:
        """Before anything is paid for: the run still holds its chunk (a run that stalled past
        its lease waits for a renewal to say, and stops if another worker has it), and its
        batch is still there and still to run (cancelled or past its window meanwhile: the
        next step, at once, sees it)."""
        await self.ctx["leases"].held(self.run)
        if self.run.lost.is_set():
            raise ChunkLost
        now = await self.ctx["store"].spec(self.spec.id)
        if now is None:
            raise ChunkLost  # deleted: nothing to hand over
        if now.status == "cancelling" or now.overdue():
            raise LookAgain

    async def _fail(self, part: int, items: list[PendingItem], message: str) -> None:
        error = ErrorInfo(type="provider_error", message=message)
        await self.ctx["store"].record_many(
            self.spec, [(item, ItemOutcome(status="failed", error=error)) for item in items]
        )

    async def _drop_upload(self, part: int) -> None:
        """Delete the part's uploaded file at the provider, if one was recorded."""
        file_id = self.state.get(f"{part}:file")
        if file_id is not None:
            with contextlib.suppress(openai.NotFoundError):
                await self.api.files.delete(file_id)

    async def _find(self, nonce: str) -> str | None:
        """A provider batch already made for this nonce (by a worker that died before it could
        record its id), among the provider's newest."""
        seen = 0
        async for remote in self.api.batches.list(limit=100):
            if (remote.metadata or {}).get(META_NONCE) == nonce:
                return remote.id
            seen += 1
            if seen >= LOOK_BACK:
                break
        return None

    async def _drop_orphans(self, nonce: str) -> None:
        """Delete the files a worker uploaded for this nonce and died before recording: they
        would never be used (their names carry the nonce)."""
        seen = 0
        async for uploaded in self.api.files.list(purpose="batch"):
            if nonce in uploaded.filename:
                await self.api.files.delete(uploaded.id)
            seen += 1
            if seen >= LOOK_BACK:  # the newest files: an upload of moments ago is among them
                break

    async def _upload(self, part: int, nonce: str, items: list[PendingItem]) -> str:
        """The part's lines as an input file at the provider (spooled, then streamed up)."""
        spool = await asyncio.to_thread(self._spool, items)
        try:
            name = f"promptbatch-{self.spec.id}-{self.chunk}.{part}-{nonce}.jsonl"
            uploaded = await self.api.files.create(file=(name, spool), purpose="batch")
        finally:
            await asyncio.to_thread(spool.close)
        return uploaded.id

    def _spool(self, items: list[PendingItem]) -> IO[bytes]:
        spool = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)  # noqa: SIM115
        for item in items:
            spool.write(request_line(self.model, self.spec, item))
        spool.seek(0)
        return spool

    async def _poll(self, part: int, remote_id: str, stopping: bool) -> bool:
        """Look at the part's provider batch; True once it is final and its results written."""
        remote = await self.api.batches.retrieve(remote_id)
        await self._show(part, remote)
        if remote.status not in FINAL:
            if stopping and remote.status != "cancelling":
                await self.api.batches.cancel(remote_id)
            return False
        errors = [e for e in (remote.errors.data if remote.errors else None) or []]
        if remote.status == "failed" and any(e.code == QUEUE_FULL for e in errors):
            # The provider's queue is full: the same lines go again, as a new provider batch.
            await self.redis.hdel(self.key, f"{part}:batch", f"{part}:nonce")  # type: ignore[misc]
            log.info("batch %s chunk %d part %d: the provider's token queue is full; "
                     "submitted again later", self.spec.id, self.chunk, part)  # fmt: skip
            return False
        if remote.status == "failed":
            message = "; ".join(e.message or e.code or "" for e in errors) or "failed"
            first, last = json.loads(self.state["parts"])[part]
            items = [item for index, item in (await self.pending()).items()
                     if first <= index <= last]  # fmt: skip
            await self._fail(part, items, f"The provider refused the batch: {message}")
        for file_id in (remote.output_file_id, remote.error_file_id):
            if file_id:
                await self._read(file_id, await self.pending())
        await self._record(part, "done", "1")
        if remote.input_file_id:
            try:
                await self.api.files.delete(remote.input_file_id)
            except openai.APIError as exc:  # a file left at the provider, not a result lost
                log.warning("batch %s: input file not deleted (%s)", self.spec.id,
                            type(exc).__name__)  # fmt: skip
        return True

    async def _show(self, part: int, remote: Any) -> None:
        """The part's provider batch as the batch object shows it (`provider_batches`)."""
        counts = remote.request_counts
        said = ProviderBatchCounts()
        if counts is not None:
            said = ProviderBatchCounts(
                total=counts.total, completed=counts.completed, failed=counts.failed
            )
        shown = ProviderBatch(id=remote.id, status=remote.status, request_counts=said)
        field, value = f"{PROVIDER_BATCH_FIELD}{self.chunk:06d}.{part:03d}", shown.model_dump_json()
        before = await self.redis.hget(keys.batch(self.spec.id), field)  # type: ignore[misc]
        if before is not None and before.decode() == value:
            return
        self.moved = True
        was = None if before is None else ProviderBatch.model_validate_json(before).status
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.batch(self.spec.id), field, value)
            if was != shown.status:  # `/metrics` counts provider batches by status
                pipe.hincrby(keys.STATS, PROVIDER_BATCHES + shown.status, 1)
                if was is not None:
                    pipe.hincrby(keys.STATS, PROVIDER_BATCHES + was, -1)
            await pipe.execute()

    async def _read(self, file_id: str, pending: dict[int, PendingItem]) -> None:
        """Write each line of a result file into its own item (matched by custom id); an item
        written already is left as it is."""
        batch: list[tuple[PendingItem, ItemOutcome]] = []
        async for line in self._lines(file_id):
            item = pending.get(_index(line.get("custom_id")))
            response = line.get("response")
            if item is None or not isinstance(response, dict):
                continue  # not ours, written already, or never run (ended by the caller)
            batch.append((item, await self._outcome(item, response)))
            if len(batch) >= WRITE_EVERY:
                await self.ctx["store"].record_many(self.spec, batch)
                batch = []
        if batch:
            await self.ctx["store"].record_many(self.spec, batch)

    async def _lines(self, file_id: str) -> AsyncIterator[dict[str, Any]]:
        """A result file's lines, streamed; one that is not a JSON object is passed over (its
        item stays pending, and ends as the batch does)."""
        async with self.api.files.with_streaming_response.content(file_id) as response:
            async for text in response.iter_lines():
                try:
                    line = json.loads(text) if text.strip() else None
                except ValueError:
                    line = None
                if isinstance(line, dict):
                    yield line

    async def _outcome(self, item: PendingItem, response: dict[str, Any]) -> ItemOutcome:
        status, body = response.get("status_code"), response.get("body") or {}
        if status != 200:
            return ItemOutcome(status="failed", error=refusal_error(status, body))
        fmt = (item.params or {}).get("response_format", self.spec.params.response_format)
        try:
            return await checked_outcome(reply_of(self.model, body), fmt)
        except Exception as exc:  # the type only: a reply may quote the prompt
            message = f"The provider's answer could not be read ({type(exc).__name__})."
            return ItemOutcome(status="failed",
                               error=ErrorInfo(type="invalid_output", message=message))  # fmt: skip


def _index(value: object) -> int:
    """An item index of our own custom id (`i<index>`), or -1."""
    if isinstance(value, str) and value.startswith("i") and value[1:].isdigit():
        return int(value[1:])
    return -1

"""`/v1/embeddings` batches: the offline embedding, LangChain's `OpenAIEmbeddings`, and a
chunk's inputs embedded a group at a time, each vector written to its own item."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

import openai
from langchain_core.embeddings import Embeddings
from langchain_openai import OpenAIEmbeddings
from pydantic import SecretStr
from redis.exceptions import RedisError

from shared.batches import BatchSpec
from shared.results import ItemOutcome, PendingItem
from shared.schemas import ErrorInfo, Provider, Usage
from shared.settings import Settings
from worker.concurrency import BatchLimiter
from worker.context import CURRENT_CALL, CallRun, WorkerContext
from worker.llm import REFUSED_KEY, error_info, halt_refused, rate_limited

log = logging.getLogger("promptbatch.worker")

#: The offline embedding's length when a batch asks for none.
OFFLINE_DIMENSIONS = 16


def offline_vector(text: str, dimensions: int | None = None) -> list[float]:
    """A deterministic unit vector of `text` (SHA-256 in counter mode): the same text always
    gets the same vector, and different texts different ones."""
    size = dimensions or OFFLINE_DIMENSIONS
    values: list[float] = []
    counter = 0
    while len(values) < size:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        values += [(byte - 127.5) / 127.5 for byte in digest]
        counter += 1
    values = values[:size]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


class OfflineEmbeddings(Embeddings):
    """The offline model's embeddings: `offline_vector` of each text, no network."""

    def __init__(self, latency_s: float = 0.0) -> None:
        self.latency_s = latency_s

    def embed_documents(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
        return [offline_vector(text, kwargs.get("dimensions")) for text in texts]

    def embed_query(self, text: str) -> list[float]:
        return offline_vector(text)

    async def aembed_documents(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
        """In a thread: hashing a group of long texts takes a while, never the event loop's."""
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        _EMBED_USAGE.get([]).append(sum(max(1, len(text.split())) for text in texts))
        return await asyncio.to_thread(self.embed_documents, texts, **kwargs)


#: The input tokens the provider reported for the current call's answers.
_EMBED_USAGE: ContextVar[list[int]] = ContextVar("promptbatch_embed_usage")


class _CountedEmbeddings:
    """The OpenAI SDK's embeddings resource as `OpenAIEmbeddings` calls it, noting the usage
    of each answer (LangChain returns the vectors alone)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def create(self, **kwargs: Any) -> Any:
        response = await self._inner.create(**kwargs)
        usage = getattr(response, "usage", None)
        seen = _EMBED_USAGE.get(None)
        if seen is not None and usage is not None:
            seen.append(int(usage.prompt_tokens))
        return response


def build_embedders(
    settings: Settings, http_client: openai.DefaultAioHttpClient
) -> dict[Provider, Embeddings]:
    """The embeddings this process can run: offline always, openai if configured. Texts go
    to the provider as text (`check_embedding_ctx_length=False`): LangChain would otherwise
    tokenize them with tiktoken, whose files it downloads, and most OpenAI-compatible servers
    take text only."""
    found: dict[Provider, Embeddings] = {
        "offline": OfflineEmbeddings(settings.offline_latency_ms / 1000)
    }
    if settings.configured("openai"):
        embedder = OpenAIEmbeddings(
            model=settings.default_embedding_model,  # each call names its batch's
            openai_api_key=settings.openai_api_key or SecretStr("not-needed"),
            openai_api_base=settings.openai_base_url,
            check_embedding_ctx_length=False,
            chunk_size=settings.embed_group,
            request_timeout=settings.request_timeout_s,
            max_retries=settings.max_retries,
            http_async_client=http_client,
        )
        embedder.async_client = _CountedEmbeddings(embedder.async_client)
        found["openai"] = embedder
    return found


def groups(
    items: Sequence[PendingItem], most: int, most_tokens: int
) -> Iterator[list[PendingItem]]:
    """Items in groups of at most `most`, and at most `most_tokens` estimated tokens (an
    item larger than that alone in its group)."""
    group: list[PendingItem] = []
    tokens = 0
    for item in items:
        cost = _tokens(item)
        if group and (len(group) == most or tokens + cost > most_tokens):
            yield group
            group, tokens = [], 0
        group.append(item)
        tokens += cost
    if group:
        yield group


def _tokens(item: PendingItem) -> int:
    return max(1, len(str(item.prompt)) // 4)


def shared_usage(total: int, items: Sequence[PendingItem]) -> list[Usage]:
    """A call's input tokens shared among its items by their length (the provider counts a
    request's tokens, not each input's); the shares add up to `total`."""
    sizes = [max(1, len(str(item.prompt))) for item in items]
    whole = sum(sizes)
    shares = [total * size // whole for size in sizes]
    for n in range(total - sum(shares)):  # the remainder, a token each from the first
        shares[n % len(shares)] += 1
    return [Usage.of(share, 0) for share in shares]


#: Errors about what was sent (a group holding them is split to find the input); any other
#: failure (the provider down, a timeout) is the whole group's, as it would be each input's.
_INPUT_ERRORS = frozenset({"invalid_request", "context_length_exceeded"})


class _Stop(Protocol):
    def __bool__(self) -> bool: ...


class _Feed(Protocol):
    share: asyncio.Semaphore

    def start(self, pending: int) -> None: ...

    async def held(self) -> None: ...

    def started(self, item: PendingItem) -> None: ...


class _Stopped(Exception):
    """The run may start no more calls: its items are left for another run."""


@dataclass
class _Answer:
    """What the provider said to one call: the vectors (or its error), the input tokens it
    counted, and how the call went (paced, 429s)."""

    vectors: list[list[float]] | None
    error: ErrorInfo | None
    used: int
    run: CallRun
    written: bool = False

    @property
    def input_error(self) -> bool:
        return self.error is not None and self.error.type in _INPUT_ERRORS


async def run_embeddings(
    ctx: WorkerContext,
    spec: BatchSpec,
    embedder: Embeddings,
    chunk: int,
    limiter: BatchLimiter,
    stop: _Stop,
    feed: _Feed,
) -> dict[str, int]:
    """Embed a chunk's pending items, a group per provider call (each holding one of the
    batch's slots), writing each item's vector as its group's answer arrives.

    A group the provider refuses for what was sent (a 400) is split in two and both halves
    sent again, and so on down to the refused input, which then fails alone: about two calls
    per halving. When both halves are refused alike the refusal is not one input's (a wrong
    model, a `dimensions` the model lacks): both fail as they are, without more calls. Any
    other failure (the provider down, a timeout) is its whole group's. A refused key halts
    the batch, as a chat batch's does. With a token budget, a group's results are written
    before its slot is let go, so the next call sees them counted."""
    store, settings, pacer, metrics = ctx["store"], ctx["settings"], ctx["pacer"], ctx["metrics"]
    start, end = spec.chunk_bounds(chunk)
    await store.mark_started(spec.id)
    pending = await store.pending_items(spec.id, start, end)
    feed.start(len(pending))
    counts = {"written": 0, "failed": 0, "stopped": 0}
    kwargs: dict[str, Any] = {"model": spec.model}
    if spec.params.dimensions is not None:
        kwargs["dimensions"] = spec.params.dimensions
    budgeted = spec.max_total_tokens is not None
    halted = False

    async def send(group: list[PendingItem]) -> _Answer:
        """One provider call for `group` (its 429s waited out and sent again)."""
        tokens = sum(_tokens(item) for item in group)
        run = CallRun()
        CURRENT_CALL.set(run)
        give_up = time.monotonic() + settings.item_deadline_s
        try:
            while True:
                if stop or halted or (budgeted and await store.stopped(spec.id)):
                    raise _Stopped
                run.paced_s += await pacer.reserve(spec.model, tokens)
                await feed.held()
                if stop or halted:
                    raise _Stopped
                for item in group:
                    feed.started(item)
                seen: list[int] = []
                _EMBED_USAGE.set(seen)
                began = time.perf_counter()
                try:
                    texts = [str(item.prompt) for item in group]
                    vectors = await embedder.aembed_documents(texts, **kwargs)
                except Exception as exc:  # the provider's answer to this group
                    if rate_limited(exc) and time.monotonic() < give_up:
                        continue
                    return _Answer(None, error_info(exc), 0, run)
                finally:
                    metrics.observe_latency(time.perf_counter() - began)
                    pacer.answered(spec.model)
                used = sum(seen) or tokens  # a provider that says no usage: the estimate
                pacer.settle(spec.model, tokens, used)
                return _Answer(vectors, None, used, run)
        finally:
            pacer.answered(spec.model)

    async def call(group: list[PendingItem]) -> _Answer | None:
        """`send` in one of the batch's slots, the answer written there when the batch has a
        budget (None: the run stopped first; its items are left for another run)."""
        try:
            async with feed.share, limiter.slot():
                answer = await send(group)
                if budgeted and not answer.input_error:
                    await write(group, answer)
                return answer
        except _Stopped:
            counts["stopped"] += len(group)
            return None

    async def write(group: list[PendingItem], answer: _Answer) -> None:
        nonlocal halted
        answer.written = True
        paced_ms, limited = round(answer.run.paced_s * 1000), answer.run.rate_limited

        def failed(error: ErrorInfo) -> list[ItemOutcome]:
            one = ItemOutcome(status="failed", error=error, paced_ms=paced_ms, rate_limited=limited)
            return [one] * len(group)

        if answer.error is not None:
            if answer.error.type in REFUSED_KEY and not halted:
                halted = True  # no more calls from this run; the watch stops the others
                await halt_refused(store, spec.id, answer.error)
            outcomes = failed(answer.error)
        elif answer.vectors is None or len(answer.vectors) != len(group):
            got = len(answer.vectors or ())
            outcomes = failed(ErrorInfo(
                type="provider_error",
                message=f"The provider answered {got} vectors for {len(group)} inputs.",
            ))  # fmt: skip
        else:
            usages = shared_usage(answer.used, group)
            outcomes = [
                ItemOutcome(
                    status="succeeded",
                    embedding=vector,
                    usage=usage,
                    paced_ms=paced_ms,
                    rate_limited=limited,
                )
                for vector, usage in zip(answer.vectors, usages, strict=True)
            ]
        codes = await asyncio.gather(*(
            ctx["writes"].record(spec, item, outcome)
            for item, outcome in zip(group, outcomes, strict=True)
        ))  # fmt: skip
        for code, outcome in zip(codes, outcomes, strict=True):
            if code in ("written", "finished"):
                counts["written"] += 1
                counts["failed"] += outcome.status == "failed"

    async def settle(group: list[PendingItem], answer: _Answer) -> None:
        """Write a group's answer; a group refused for an input, split until it is found."""
        if not answer.input_error or len(group) == 1:
            if not answer.written:
                await write(group, answer)
            return
        halves = [group[: len(group) // 2], group[len(group) // 2 :]]
        answers = await asyncio.gather(*(call(half) for half in halves))
        if all(a is not None and a.input_error for a in answers):  # not one input's doing
            for half, half_answer in zip(halves, answers, strict=True):
                assert half_answer is not None
                await write(half, half_answer)
            return
        await asyncio.gather(*(
            settle(half, half_answer)
            for half, half_answer in zip(halves, answers, strict=True)
            if half_answer is not None
        ))  # fmt: skip

    async def embed(group: list[PendingItem]) -> None:
        """A group embedded and written; anything unforeseen fails its items, not the batch."""
        try:
            answer = await call(group)
            if answer is not None:
                await settle(group, answer)
        except (RedisError, _Stopped):
            raise
        except Exception as exc:  # the type only: its text may quote an input
            log.error("batch %s: a group of %d inputs could not be finished (%s)",
                      spec.id, len(group), type(exc).__name__)  # fmt: skip
            error = ErrorInfo(
                type="internal_error",
                message=f"The worker could not finish this item ({type(exc).__name__}).",
            )
            await write(group, _Answer(None, error, 0, CallRun()))

    began = time.perf_counter()
    found = groups(pending, settings.embed_group, settings.embed_group_tokens)
    done = await asyncio.gather(*(embed(group) for group in found), return_exceptions=True)
    for result in done:
        if isinstance(result, BaseException):
            raise result  # Redis stayed away (the chunk runs again), or a bug
    log.info(
        "batch %s chunk %d: %d embedded (%d failed, %d left for another run) in %.2fs",
        spec.id, chunk, counts["written"], counts["failed"], counts["stopped"],
        time.perf_counter() - began,
    )  # fmt: skip
    return counts

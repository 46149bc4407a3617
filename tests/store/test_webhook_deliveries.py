"""Webhook deliveries in Redis, driven in process: a final batch's outbox entry becomes one
delivery per subscribed endpoint exactly once (even when two workers hold it), a dead
consumer's entries are taken over, due deliveries are leased to one worker at a time, and a
delivery is given up once its retry window has passed."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from redis.asyncio import Redis

from shared import keys
from shared.results import ItemOutcome
from shared.settings import Settings
from shared.store import BatchStore
from shared.webhooks import WebhookEndpoints
from tests.conftest import make_settings
from tests.store.conftest import item, make_plan
from worker import webhooks
from worker.webhooks import AGAIN, DONE, GIVEN_UP, LOST, RETRY, SENT, Outbox, Sender

OWNER = "key_" + "1" * 32
URL = "http://127.0.0.1:9/hook"


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return make_settings(redis_url, webhook_retry_s=60)


async def _finish_a_batch(store: BatchStore, owner: str = OWNER) -> str:
    """A batch of one item, stored for `owner` and finished (completed) as a worker would."""
    batch, _ = await store.create(make_plan(1), chunk_size=100, owner=owner)
    spec = await store.spec(batch.id)
    assert spec is not None
    await store.record_many(spec, [(item(0), ItemOutcome(status="succeeded", output="x"))])
    return spec.id


async def _one_delivery_scheduled(
    redis: Redis, store: BatchStore, settings: Settings
) -> WebhookEndpoints:
    """One endpoint of OWNER's, and the delivery of one finished batch to it, scheduled."""
    endpoints = WebhookEndpoints(redis)
    await endpoints.create(OWNER, URL, ["batch.completed"])
    outbox = Outbox(redis, endpoints, "w", settings)
    await outbox.join()
    await _finish_a_batch(store)
    assert await outbox.read() == 1
    return endpoints


async def _due(redis: Redis) -> list[str]:
    """Every owner's deliveries, due or leased."""
    owners = [owner.decode() for owner in await redis.zrange(keys.WEBHOOK_OWNERS, 0, -1)]
    return [
        member.decode()
        for owner in owners
        for member in await redis.zrange(keys.webhook_due(owner), 0, -1)
    ]


async def test_a_final_batch_becomes_one_delivery_per_subscribed_endpoint(
    redis: Redis, store: BatchStore, settings: Settings
) -> None:
    endpoints = WebhookEndpoints(redis)
    every = await endpoints.create(OWNER, URL, ["batch.completed", "batch.failed"])
    completed = await endpoints.create(OWNER, URL, ["batch.completed"])
    await endpoints.create(OWNER, URL, ["batch.cancelled"])  # hears nothing of a completion
    other = await endpoints.create("key_" + "2" * 32, URL, ["batch.completed"])
    outbox = Outbox(redis, endpoints, "worker-1", settings)
    await outbox.join()
    batch_id = await _finish_a_batch(store)
    assert await redis.xlen(keys.OUTBOX) == 1

    assert await outbox.read() == 2
    due = await _due(redis)
    assert {d.split(":")[1] for d in due} == {every.id, completed.id}
    assert other.id not in "".join(due)
    assert await redis.xlen(keys.OUTBOX) == 0  # taken off the outbox as it was scheduled
    assert (await redis.xpending(keys.OUTBOX, keys.WEBHOOK_GROUP))["pending"] == 0
    fields = await redis.hgetall(keys.webhook_delivery(due[0]))  # type: ignore[misc]
    assert fields[b"owner"] == OWNER.encode()
    assert fields[b"type"] == b"batch.completed"
    assert fields[b"attempts"] == b"0"
    assert fields[b"msg"].decode() == due[0].split(":")[0]  # the event id is the webhook-id
    assert batch_id.encode() in fields[b"body"]
    assert 0 < await redis.pttl(keys.webhook_delivery(due[0])) <= (60 + 24 * 3600) * 1000


async def test_an_entry_two_workers_hold_is_fanned_out_once(
    redis: Redis, store: BatchStore, settings: Settings
) -> None:
    endpoints = WebhookEndpoints(redis)
    await endpoints.create(OWNER, URL, ["batch.completed"])
    first, second = (Outbox(redis, endpoints, f"w{n}", settings) for n in (1, 2))
    await first.join()
    await _finish_a_batch(store)
    [[_, [(entry_id, fields)]]] = await redis.xreadgroup(
        keys.WEBHOOK_GROUP, "w1", {keys.OUTBOX: ">"}, count=10
    )

    scheduled = await asyncio.gather(
        first.fan_out(entry_id.decode(), fields), second.fan_out(entry_id.decode(), fields)
    )
    assert sorted(scheduled) == [0, 1]
    assert len(await _due(redis)) == 1
    # Even once its delivery is done, the entry makes no second one (the slower of two
    # workers, one of which took the entry over from the other, comes late).
    sender = Sender(redis, endpoints, settings)
    try:
        [delivery], _ = await sender.take(16)
        assert await sender.settle(delivery, SENT) == DONE
    finally:
        await sender.close()
    assert await second.fan_out(entry_id.decode(), fields) == 0
    assert await _due(redis) == []


async def test_a_dead_consumers_entries_are_taken_over_and_the_consumer_forgotten(
    redis: Redis, store: BatchStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoints = WebhookEndpoints(redis)
    await endpoints.create(OWNER, URL, ["batch.completed"])
    alive = Outbox(redis, endpoints, "alive", settings)
    await alive.join()
    await _finish_a_batch(store)
    await redis.xreadgroup(keys.WEBHOOK_GROUP, "dead", {keys.OUTBOX: ">"}, count=10)
    assert await alive.read() == 0  # the entry is the dead consumer's: not new to the group
    assert await alive.take_over() == 0  # and not stale yet

    monkeypatch.setattr(webhooks, "STALE_MS", 0)
    monkeypatch.setattr(webhooks, "FORGET_MS", -1)
    assert await alive.take_over() == 1
    assert len(await _due(redis)) == 1
    assert await redis.xlen(keys.OUTBOX) == 0
    await alive.take_over()  # the dead consumer has nothing pending now: it is forgotten
    consumers = await redis.xinfo_consumers(keys.OUTBOX, keys.WEBHOOK_GROUP)
    assert [c["name"] for c in consumers] == [b"alive"]


async def test_a_due_delivery_is_leased_to_one_sender_at_a_time(
    redis: Redis, store: BatchStore, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhooks, "PER_OWNER_SENDS", webhooks.MOST_SENDS)  # one owner here
    endpoints = WebhookEndpoints(redis)
    for _ in range(10):
        await endpoints.create(OWNER, URL, ["batch.completed"])
    outbox = Outbox(redis, endpoints, "w", settings)
    await outbox.join()
    for _ in range(2):
        await _finish_a_batch(store)
    assert await outbox.read() == 20
    one, two = Sender(redis, endpoints, settings), Sender(redis, endpoints, settings)
    try:
        (taken_one, _), (taken_two, _) = await asyncio.gather(one.take(16), two.take(16))
        ids_one, ids_two = {d.id for d in taken_one}, {d.id for d in taken_two}
        assert not ids_one & ids_two
        assert ids_one | ids_two == set(await _due(redis))
        assert sorted([len(ids_one), len(ids_two)]) == [4, 16]
        assert (await one.take(16))[0] == []  # every one is leased
        assert all(d.attempts == 1 for d in taken_one + taken_two)

        # A lease that ended (its worker died) makes the delivery due again, for another.
        lapsed = taken_one[0]
        await redis.zadd(keys.webhook_due(OWNER), {lapsed.id: 0}, xx=True)
        await redis.zadd(keys.WEBHOOK_OWNERS, {OWNER: 0}, xx=True)
        [again], _ = await two.take(16)
        assert (again.id, again.msg_id, again.attempts) == (lapsed.id, lapsed.msg_id, 2)
        assert await one.settle(lapsed, RETRY, 1.0) == LOST  # no longer the first one's
        assert await two.settle(again, RETRY, 1.0) == AGAIN
        assert await two.settle(again, SENT) == DONE
        assert lapsed.id not in await _due(redis)
        assert not await redis.exists(keys.webhook_delivery(lapsed.id))
    finally:
        await one.close()
        await two.close()


async def test_a_delivery_is_given_up_once_its_next_attempt_falls_past_the_window(
    redis: Redis, store: BatchStore, redis_url: str
) -> None:
    settings = make_settings(redis_url, webhook_retry_s=30)
    endpoints = await _one_delivery_scheduled(redis, store, settings)
    sender = Sender(redis, endpoints, settings)
    try:
        [delivery], _ = await sender.take(16)
        assert await sender.settle(delivery, RETRY, 0.0) == AGAIN  # within 30 s of the first
        [delivery], _ = await sender.take(16)
        assert delivery.attempts == 2
        assert await sender.settle(delivery, RETRY, 31.0) == GIVEN_UP
        assert await _due(redis) == []
        assert not await redis.exists(keys.webhook_delivery(delivery.id))
    finally:
        await sender.close()


async def test_an_owner_at_its_sends_leaves_its_other_deliveries_due_for_later(
    redis: Redis, store: BatchStore, settings: Settings
) -> None:
    """However many of one owner's deliveries are due before another's, the other's is taken
    in the same take (they are dealt over the owners in turn)."""
    endpoints = WebhookEndpoints(redis)
    other = "key_" + "2" * 32
    for _ in range(16):  # an owner whose endpoints, say, never answer
        await endpoints.create(OWNER, URL, ["batch.completed"])
    await endpoints.create(other, URL, ["batch.completed"])
    outbox = Outbox(redis, endpoints, "w", settings)
    await outbox.join()
    for _ in range(20):  # the busy owner's batches first: its 320 deliveries are due first
        await _finish_a_batch(store)
    await _finish_a_batch(store, other)
    assert await outbox.read() == 16 * 20 + 1
    sender = Sender(redis, endpoints, settings)
    try:
        taken, wait_s = await sender.take(webhooks.MOST_SENDS)
        owners = [delivery.owner for delivery in taken]
        assert owners.count(OWNER) == webhooks.PER_OWNER_SENDS
        assert owners.count(other) == 1  # past the busy owner's, in the same take
        for delivery in taken:  # as `run` holds them while they are sent
            sender._sending[asyncio.ensure_future(asyncio.sleep(0))] = delivery
        again, wait_s = await sender.take(webhooks.MOST_SENDS)
        assert again == []  # the busy owner's others stay due...
        assert wait_s == webhooks.IDLE_S  # ... until one of its sends ends and wakes it
        leased = [delivery.id for delivery in taken]
        assert len([d for d in await _due(redis) if d not in leased]) == (
            16 * 20 - webhooks.PER_OWNER_SENDS
        )
    finally:
        await asyncio.gather(*sender._sending, return_exceptions=True)
        await sender.close()


async def test_deliveries_an_older_worker_scheduled_are_moved_to_their_owners_and_sent(
    redis: Redis, store: BatchStore, settings: Settings
) -> None:
    """A rolling deploy: older workers kept every owner's deliveries in one set."""
    endpoints = await _one_delivery_scheduled(redis, store, settings)
    [delivery_id] = await _due(redis)
    # As an older worker had it: in the one set, leased by that worker until 1234.
    await redis.delete(keys.webhook_due(OWNER), keys.WEBHOOK_OWNERS)
    await redis.zadd(keys.LEGACY_WEBHOOK_DUE, {delivery_id: 1234, "evt_gone:we_gone": 5})
    sender = Sender(redis, endpoints, settings)
    try:
        [delivery], _ = await sender.take(16)
        assert delivery.id == delivery_id  # its lease had ended: due again, here
        assert delivery.attempts == 1
        assert not await redis.exists(keys.LEGACY_WEBHOOK_DUE)  # the one gone is dropped
        assert await sender.settle(delivery, SENT) == DONE
        assert await _due(redis) == []
        assert not await redis.exists(keys.WEBHOOK_OWNERS)
    finally:
        await sender.close()


async def test_endpoints_that_never_answer_delay_only_their_own_owners_deliveries(
    redis: Redis, store: BatchStore, redis_url: str
) -> None:
    """Sixteen owners whose endpoint never answers, and one with sixteen such endpoints, all
    due first: another owner's delivery is still sent at once, not after their timeouts."""
    settings = make_settings(redis_url, webhook_allow_private=True, webhook_timeout_s=60)
    hung: list[asyncio.StreamWriter] = []
    delivered = asyncio.Event()

    async def never_answers(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hung.append(writer)

    async def answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length"))  # fmt: skip
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        writer.close()
        delivered.set()

    servers = [await asyncio.start_server(cb, "127.0.0.1", 0) for cb in (never_answers, answers)]
    dead, alive = (f"http://127.0.0.1:{s.sockets[0].getsockname()[1]}/hook" for s in servers)
    endpoints = WebhookEndpoints(redis)
    owners = [f"key_{n:032x}" for n in range(16)]
    for owner in owners:
        await endpoints.create(owner, dead, ["batch.completed"])
    for _ in range(16):
        await endpoints.create(OWNER, dead, ["batch.completed"])
    patient = "key_" + "f" * 32
    await endpoints.create(patient, alive, ["batch.completed"])
    outbox = Outbox(redis, endpoints, "w", settings)
    await outbox.join()
    for owner in [*owners, OWNER, OWNER]:
        await _finish_a_batch(store, owner)
    await _finish_a_batch(store, patient)
    assert await outbox.read() == 16 + 2 * 16 + 1
    sender = Sender(redis, endpoints, settings)
    running = asyncio.create_task(sender.run())
    try:
        await asyncio.wait_for(delivered.wait(), 10)  # the dead ones hold theirs for 60 s
        sending = Counter(delivery.owner for delivery in sender._sending.values())
        assert {owner: sending[owner] for owner in owners} == dict.fromkeys(owners, 1)
        assert sending[OWNER] == webhooks.PER_OWNER_SENDS  # its 28 others wait their turn
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await sender.close()
        for writer in hung:
            writer.close()
        for server in servers:
            server.close()


async def test_past_a_full_worker_freed_slots_go_to_the_owners_in_turn(
    redis: Redis, store: BatchStore, settings: Settings
) -> None:
    """Seventeen owners whose endpoints hang fill every send slot and keep a backlog due; an
    owner whose delivery falls due then gets one of the next slots freed, after each of them
    has been served once more, not after their whole backlogs."""
    endpoints = WebhookEndpoints(redis)
    busy = [f"key_{n:032x}" for n in range(17)]
    for owner in busy:
        for _ in range(8):
            await endpoints.create(owner, URL, ["batch.completed"])
    patient = "key_" + "f" * 32
    await endpoints.create(patient, URL, ["batch.completed"])
    outbox = Outbox(redis, endpoints, "w", settings)
    await outbox.join()
    for owner in busy:
        await _finish_a_batch(store, owner)
    assert await outbox.read() == 17 * 8
    sender = Sender(redis, endpoints, settings)
    held: list[asyncio.Task[None]] = []

    async def hang() -> None:
        await asyncio.Event().wait()

    def sending(taken: list[webhooks.Delivery]) -> None:
        for delivery in taken:  # as `run` holds them while they are sent (they hang)
            hanging = asyncio.create_task(hang())
            held.append(hanging)
            sender._sending[hanging] = delivery

    try:
        taken, _ = await sender.take(webhooks.MOST_SENDS)
        assert len(taken) == webhooks.MOST_SENDS
        sending(taken)
        await _finish_a_batch(store, patient)  # due now, behind 72 of the others'
        assert await outbox.read() == 1
        freed = 0
        while True:
            # One hung attempt times out: its slot is free, its delivery due again later.
            timed_out, ended = next(iter(sender._sending.items()))
            del sender._sending[timed_out]
            timed_out.cancel()
            assert await sender.settle(ended, RETRY, 30.0) == AGAIN
            freed += 1
            [delivery], _ = await sender.take(1)
            sending([delivery])
            if delivery.owner == patient:
                break
            assert freed < 40, "the patient owner waits for the others' whole backlogs"
        assert freed <= 17 + 1  # at most one more turn of each of the others
    finally:
        for hanging in held:
            hanging.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        sender._sending.clear()
        await sender.close()

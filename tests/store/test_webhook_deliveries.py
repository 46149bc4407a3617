"""Webhook deliveries in Redis, driven in process: a final batch's outbox entry becomes one
delivery per subscribed endpoint exactly once (even when two workers hold it), a dead
consumer's entries are taken over, due deliveries are leased to one worker at a time, and a
delivery is given up once its retry window has passed."""

from __future__ import annotations

import asyncio

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


async def _due(redis: Redis) -> list[str]:
    return [member.decode() for member in await redis.zrange(keys.WEBHOOK_DUE, 0, -1)]


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
        await redis.zadd(keys.WEBHOOK_DUE, {lapsed.id: 0}, xx=True)
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
    endpoints = WebhookEndpoints(redis)
    await endpoints.create(OWNER, URL, ["batch.completed"])
    outbox = Outbox(redis, endpoints, "w", settings)
    await outbox.join()
    await _finish_a_batch(store)
    await outbox.read()
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
    endpoints = WebhookEndpoints(redis)
    other = "key_" + "2" * 32
    for _ in range(webhooks.MOST_SENDS):  # an owner whose endpoints, say, never answer
        await endpoints.create(OWNER, URL, ["batch.completed"])
    await endpoints.create(other, URL, ["batch.completed"])
    outbox = Outbox(redis, endpoints, "w", settings)
    await outbox.join()
    await _finish_a_batch(store)  # the busy owner's batch first: its deliveries are due first
    await _finish_a_batch(store, other)
    assert await outbox.read() == webhooks.MOST_SENDS + 1
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
            webhooks.MOST_SENDS - webhooks.PER_OWNER_SENDS
        )
    finally:
        await asyncio.gather(*sender._sending, return_exceptions=True)
        await sender.close()

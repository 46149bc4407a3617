"""Webhook delivery, worker side: durable and at least once.

The script that makes a batch final queues an event on the outbox stream (`keys.OUTBOX`).
Every worker reads the outbox through one consumer group: `Outbox` turns each entry into one
delivery per endpoint of that owner's that asked for the event (none for an owner without
endpoints), scheduled in Redis (`keys.webhook_due` of the owner, `keys.webhook_delivery`), and
takes the entry off the outbox in the same script. `Sender` takes due deliveries (leased in a
script, so no two workers send one attempt), dealt over their owners in turn, at most
`PER_OWNER_SENDS` of one owner's at once, signs them (Standard Webhooks), and POSTs them, each
host looked up in threads of the sender's own, one lookup at a time per owner: a 2xx ends a
delivery; any other answer, an error, a timeout, or an address that is not public schedules the
next attempt after an exponential backoff with full jitter, until `PROMPTBATCH_WEBHOOK_RETRY_S`
has passed since the first attempt. Every attempt of one event to one endpoint has the same
`webhook-id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import zip_longest
from typing import Any

import httpx
import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from standardwebhooks import Webhook

from shared import keys, lua
from shared.settings import Settings
from shared.webhooks import (
    EventType,
    IPAddress,
    StoredEndpoint,
    UnsafeUrl,
    WebhookEndpoints,
    checked_url,
    event_type,
)
from worker.lookups import OwnerLookups

log = logging.getLogger("promptbatch.worker.webhooks")

#: Backoff after a failed attempt: a random wait (full jitter) of up to BASE * 2^(n-1)
#: seconds after the n-th attempt, at most CAP: the first retry comes within a second.
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 3600.0
#: Attempts one worker has in flight at most (each waits on the network, at most its timeout).
MOST_SENDS = 64
#: Threads that resolve webhook host names, apart from the event loop's resolver; an owner
#: uses one at a time.
RESOLVER_THREADS = 16
#: An attempt's lease outlives its timeout by this much before another worker may take it.
LEASE_MARGIN_S = 10.0
#: Longest an idle sender waits before it looks for due deliveries again.
IDLE_S = 1.0
#: A delivery's hash outlives its retry window by this much, then expires whatever happened.
DELIVERY_GRACE_S = 24 * 3600
#: Outbox entries read at once, and how long a read waits for one.
READ_COUNT = 100
READ_BLOCK_MS = 2000
#: An outbox entry unacknowledged for this long belongs to a consumer that died (an entry
#: takes a few Redis calls to handle): another worker takes it over.
STALE_MS = 60_000
#: How often a worker looks for such entries, and forgets consumers idle for FORGET_MS.
CLAIM_EVERY_S = 30.0
FORGET_MS = 3600 * 1000

#: A delivery's fields as the outbox stores them (then `attempts` and `first_at`).
DELIVERY_FIELDS = ("owner", "endpoint", "type", "msg", "body")
#: What happened to an attempt (`settle_delivery.lua`), and what the script made of it.
SENT, DROP, RETRY = 1, 2, 3
#: Sends one owner may have in flight at once on a worker, of its `MOST_SENDS`: an owner whose
#: endpoints are slow or down holds no more, and the others' deliveries go on (it takes
#: sixteen such owners at once to fill a worker's slots, and then the slots freed go to the
#: owners in turn: one just served waits behind those waiting since before).
PER_OWNER_SENDS = 4
#: An owner's due deliveries a `take` reads per send it may start for the owner: enough to
#: reach past those that other workers lease meanwhile.
CANDIDATES_PER_SEND = 4
#: Deliveries an older worker scheduled in the one set of all owners' moved at a time.
ADOPT_PAGE = 100
LOST, DONE, AGAIN, GIVEN_UP = 0, 1, 2, 3


def _script(name: str) -> str:
    """`worker/lua/<name>.lua` after what the delivery scripts share (`deliveries.lua`)."""
    return lua.load(
        "worker",
        "deliveries",
        name,
        DELIVERY_FIELDS=list(DELIVERY_FIELDS),
        SENT=SENT,
        DROP=DROP,
        RETRY=RETRY,
        LOST=LOST,
        DONE=DONE,
        AGAIN=AGAIN,
        GIVEN_UP=GIVEN_UP,
    )


# Read at import, so that registering a script never reads a file on the event loop.
_SCHEDULE = _script("schedule_deliveries")
_CLAIM = _script("claim_deliveries")
_SETTLE = _script("settle_delivery")
_ADOPT = _script("adopt_deliveries")


def backoff_s(attempts: int) -> float:
    """How long to wait after the `attempts`-th failed attempt: full jitter over an
    exponential ceiling (1, 2, 4 ... s, at most an hour)."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** min(attempts - 1, 32))
    # Spreads retries out; nothing secret depends on it.
    return random.uniform(0, ceiling)  # noqa: S311


def event_id(entry_id: str, batch_id: str) -> str:
    """The id of the event an outbox entry announces: derived from the entry, so that the
    same entry always makes the same event (and the same `webhook-id`)."""
    return "evt_" + hashlib.sha256(f"{entry_id}:{batch_id}".encode()).hexdigest()[:32]


def event_body(event: str, type_: EventType, created_at_s: int, batch_id: str) -> str:
    """The JSON an endpoint receives (and the text that is signed)."""
    body = {
        "id": event,
        "object": "event",
        "type": type_,
        "created_at": created_at_s,
        "data": {"id": batch_id},
    }
    return orjson.dumps(body).decode()


class Outbox:
    """Reads the outbox as one consumer of the group every worker shares, and schedules each
    entry's deliveries. Entries a dead consumer left unacknowledged are taken over."""

    def __init__(
        self,
        redis: Redis,
        endpoints: WebhookEndpoints,
        consumer: str,
        settings: Settings,
        scheduled: Callable[[], None] = lambda: None,
    ) -> None:
        self.redis = redis
        self.endpoints = endpoints
        self.consumer = consumer
        self.ttl_ms = int((settings.webhook_retry_s + DELIVERY_GRACE_S) * 1000)
        self.scheduled = scheduled
        self._schedule = redis.register_script(_SCHEDULE)

    async def run(self) -> None:
        """Until cancelled: read entries and schedule them; a failure is logged and retried."""
        claimed_at = -CLAIM_EVERY_S
        while True:
            try:
                if time.monotonic() - claimed_at >= CLAIM_EVERY_S:
                    await self.join()
                    await self.take_over()
                    claimed_at = time.monotonic()
                await self.read()
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # the outbox was deleted (Redis lost its data)
                    claimed_at = -CLAIM_EVERY_S
                    continue
                log.warning("webhook outbox failed: %s", type(exc).__name__)
                await asyncio.sleep(IDLE_S)
            except Exception as exc:  # Redis away: try again shortly
                log.warning("webhook outbox failed: %s", type(exc).__name__)
                await asyncio.sleep(IDLE_S)

    async def join(self) -> None:
        """Create the consumer group (and the stream) unless they exist: from the start of the
        stream, so events queued before any worker ran are delivered too."""
        try:
            await self.redis.xgroup_create(keys.OUTBOX, keys.WEBHOOK_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self) -> int:
        """Schedule the entries new to the group (waiting up to READ_BLOCK_MS for some)."""
        found = await self.redis.xreadgroup(
            keys.WEBHOOK_GROUP,
            self.consumer,
            {keys.OUTBOX: ">"},
            count=READ_COUNT,
            block=READ_BLOCK_MS,
        )
        entries = [entry for _, stream_entries in found or () for entry in stream_entries]
        return await self.handle(entries)

    async def take_over(self) -> int:
        """Schedule the entries other consumers left unacknowledged for STALE_MS, and forget
        consumers that have been idle for FORGET_MS with nothing pending."""
        handled, start = 0, "0-0"
        while True:
            reply = await self.redis.xautoclaim(
                keys.OUTBOX,
                keys.WEBHOOK_GROUP,
                self.consumer,
                min_idle_time=STALE_MS,
                start_id=start,
                count=READ_COUNT,
            )
            handled += await self.handle(reply[1])
            start = _text(reply[0])
            if start == "0-0":
                break
        for consumer in await self.redis.xinfo_consumers(keys.OUTBOX, keys.WEBHOOK_GROUP):
            name = _text(consumer["name"])
            gone = not consumer["pending"] and int(consumer["idle"]) > FORGET_MS
            if gone and name != self.consumer:
                await self.redis.xgroup_delconsumer(keys.OUTBOX, keys.WEBHOOK_GROUP, name)
        return handled

    async def handle(self, entries: Sequence[Any]) -> int:
        """Schedule the deliveries of each entry; returns how many were scheduled."""
        scheduled = 0
        for entry_id, fields in entries:
            scheduled += await self.fan_out(_text(entry_id), fields or {})
        if scheduled:
            self.scheduled()
        return scheduled

    async def fan_out(self, entry_id: str, fields: dict[bytes, bytes]) -> int:
        """One delivery per subscribed endpoint of the entry's owner, scheduled as the entry
        leaves the outbox. An entry that announces no event is only taken off."""
        entry = {_text(k): _text(v) for k, v in fields.items()}
        type_ = event_type(entry.get("status", ""))
        owner, batch_id = entry.get("owner"), entry.get("batch")
        args: list[str | int] = [keys.WEBHOOK_GROUP, entry_id, self.ttl_ms, owner or ""]
        hashes: list[str] = []
        if type_ is None or not owner or not batch_id:
            log.warning("outbox entry %s announces no event; dropped", entry_id)
        else:
            event = event_id(entry_id, batch_id)
            at_s = int(entry.get("at") or time.time() * 1000) // 1000
            body = event_body(event, type_, at_s, batch_id)
            for endpoint in await self.endpoints.subscribed(owner, type_):
                delivery_id = f"{event}:{endpoint.id}"
                args += [delivery_id, owner, endpoint.id, type_, event, body]
                hashes.append(keys.webhook_delivery(delivery_id))
        due = keys.webhook_due(owner or "")
        outbox = [keys.OUTBOX, keys.WEBHOOK_OWNERS, keys.WEBHOOK_SERVED, due]
        scheduled = await self._schedule(keys=[*outbox, *hashes], args=args)
        return max(0, int(scheduled))


@dataclass(frozen=True, slots=True)
class Delivery:
    """One attempt's worth of a delivery, as `claim_deliveries.lua` leased it."""

    id: str
    lease: str
    owner: str
    endpoint_id: str
    type: str
    msg_id: str
    body: str
    attempts: int

    @classmethod
    def of(cls, reply: Sequence[bytes]) -> Delivery:
        delivery_id, lease, *flat = (_text(part) for part in reply)
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        return cls(
            id=delivery_id,
            lease=lease,
            owner=fields.get("owner", ""),
            endpoint_id=fields.get("endpoint", ""),
            type=fields.get("type", ""),
            msg_id=fields.get("msg", ""),
            body=fields.get("body", ""),
            attempts=int(fields.get("attempts", "1")),
        )


class Sender:
    """Sends due deliveries, up to MOST_SENDS at once, until cancelled (then `close`)."""

    def __init__(self, redis: Redis, endpoints: WebhookEndpoints, settings: Settings) -> None:
        self.redis = redis
        self.endpoints = endpoints
        self.timeout_s = settings.webhook_timeout_s
        self.allow_private = settings.webhook_allow_private
        self.window_ms = int(settings.webhook_retry_s * 1000)
        self.lease_ms = int((settings.webhook_timeout_s + LEASE_MARGIN_S) * 1000)
        self.ttl_ms = int((settings.webhook_retry_s + DELIVERY_GRACE_S) * 1000)
        # Not from the environment (no proxy): the address checked is the address called.
        # No connection is kept: each attempt connects to the address it has just checked.
        self.http = httpx.AsyncClient(
            timeout=settings.webhook_timeout_s,
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"user-agent": "promptbatch-webhooks"},
        )
        # Webhook host names are resolved in threads of their own: a tenant whose name server
        # answers slowly ties up one of these, never the event loop's (which provider calls
        # use) nor another tenant's.
        self.lookups = OwnerLookups(RESOLVER_THREADS)
        self._claim = redis.register_script(_CLAIM)
        self._settle = redis.register_script(_SETTLE)
        self._adopt = redis.register_script(_ADOPT)
        self._sending: dict[asyncio.Task[None], Delivery] = {}
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Look for due deliveries now (new ones were scheduled, or a send slot freed)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()  # before looking: a wake-up from here on is not missed
            wait_s = IDLE_S
            free = MOST_SENDS - len(self._sending)
            if free > 0:
                try:
                    taken, wait_s = await self.take(free)
                except Exception as exc:  # Redis away: try again shortly
                    log.warning("webhook sender failed: %s", type(exc).__name__)
                    taken = []
                for delivery in taken:
                    task = asyncio.create_task(self.send(delivery), name="webhook")
                    self._sending[task] = delivery
                    task.add_done_callback(self._sent)
                if len(taken) == free:
                    wait_s = 0.0
            if wait_s > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await self._wake.wait()

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.pop(task, None)
        self._wake.set()

    async def take(self, most: int) -> tuple[list[Delivery], float]:
        """Lease up to `most` due deliveries, dealt over their owners in turn (the owner
        waiting longest, since its delivery was due or since it was last served, first), at
        most `PER_OWNER_SENDS` sending at once per owner; returns them and how long until the
        next is due for an owner below its cap."""
        await self.adopt()
        sending = Counter(delivery.owner for delivery in self._sending.values())
        at_cap = sum(1 for n in sending.values() if n >= PER_OWNER_SENDS)
        # The owners in the order they have waited (a leased delivery scores its lease's end,
        # after every due one), enough of them to reach past those at their cap.
        found = await self.redis.zrange(keys.WEBHOOK_OWNERS, 0, at_cap + most - 1)
        owners = [o for o in map(_text, found) if sending[o] < PER_OWNER_SENDS]
        async with self.redis.pipeline(transaction=False) as pipe:
            for owner in owners:
                room = min(most, PER_OWNER_SENDS - sending[owner])
                pipe.zrange(keys.webhook_due(owner), 0, CANDIDATES_PER_SEND * room - 1)
            heads: list[list[bytes]] = await pipe.execute()
        # Each owner's first, then each one's second...; the script checks each again, by
        # Redis's clock, and names each one's keys.
        queues = [[(o, _text(i)) for i in ids] for o, ids in zip(owners, heads, strict=True)]
        rounds = zip_longest(*queues)
        dealt = [candidate for row in rounds for candidate in row if candidate is not None]
        in_flight: list[str | int] = [n for pair in sending.items() for n in pair]
        args: list[str | int] = [self.lease_ms, self.ttl_ms, most, PER_OWNER_SENDS, len(sending)]
        now, next_due, *taken = await self._claim(
            keys=[
                keys.WEBHOOK_OWNERS,
                keys.WEBHOOK_SERVED,
                *(k for o, i in dealt for k in (keys.webhook_due(o), keys.webhook_delivery(i))),
            ],
            args=[*args, *in_flight, *(part for o, i in dealt for part in (i, o))],
        )
        wait_s = IDLE_S
        if float(next_due) >= 0:
            wait_s = min(IDLE_S, max(0.0, (float(next_due) - float(now)) / 1000))
        return [Delivery.of(reply) for reply in taken], wait_s

    async def adopt(self) -> int:
        """Move the deliveries an older worker scheduled in the one set of all owners' (a
        rolling deploy) to their owners' own sets, a page at a time; returns how many."""
        moved = 0
        while found := await self.redis.zrange(keys.LEGACY_WEBHOOK_DUE, 0, ADOPT_PAGE - 1):
            ids = [_text(raw) for raw in found]
            async with self.redis.pipeline(transaction=False) as pipe:
                for delivery_id in ids:
                    pipe.hget(keys.webhook_delivery(delivery_id), "owner")
                owners = [_text(o or b"") for o in await pipe.execute()]
            pairs = list(zip(ids, owners, strict=True))
            adopted = await self._adopt(
                keys=[
                    keys.LEGACY_WEBHOOK_DUE,
                    keys.WEBHOOK_OWNERS,
                    keys.WEBHOOK_SERVED,
                    *(k for i, o in pairs for k in (keys.webhook_delivery(i), keys.webhook_due(o))),
                ],
                args=[part for pair in pairs for part in pair],
            )
            moved += int(adopted)
            if len(ids) < ADOPT_PAGE or not int(adopted):  # the rest on a later take
                break
        return moved

    async def send(self, delivery: Delivery) -> None:
        """Make one attempt of a delivery and settle it (a Redis failure here leaves the
        delivery leased: it is attempted again once the lease ends)."""
        try:
            endpoint = await self.endpoints.get(delivery.owner, delivery.endpoint_id)
            if endpoint is None:
                await self.settle(delivery, DROP)
                log.info("webhook %s: endpoint %s is gone; dropped", delivery.type,
                         delivery.endpoint_id)  # fmt: skip
                return
            failure = await self.attempt(delivery, endpoint)
            if failure is None:
                await self.settle(delivery, SENT)
                log.info("webhook %s delivered to endpoint %s (attempt %d)", delivery.type,
                         delivery.endpoint_id, delivery.attempts)  # fmt: skip
                return
            wait_s = backoff_s(delivery.attempts)
            settled = await self.settle(delivery, RETRY, wait_s)
            self._report(delivery, failure, settled, wait_s)
        except asyncio.CancelledError:
            # The worker is stopping: the delivery is due again at once, for another worker.
            with contextlib.suppress(Exception):
                await asyncio.shield(self.settle(delivery, RETRY, 0.0))
            raise
        except Exception as exc:
            log.warning("webhook %s to endpoint %s: %s; attempted again after its lease",
                        delivery.type, delivery.endpoint_id, type(exc).__name__)  # fmt: skip

    def _report(self, delivery: Delivery, failure: str, settled: int, wait_s: float) -> None:
        what, endpoint, n = delivery.type, delivery.endpoint_id, delivery.attempts
        if settled == GIVEN_UP:
            log.warning("webhook %s to endpoint %s given up after %d attempts (last: %s)",
                        what, endpoint, n, failure)  # fmt: skip
        elif settled == AGAIN:
            log.info("webhook %s to endpoint %s: attempt %d failed (%s); next in %.1f s",
                     what, endpoint, n, failure, wait_s)  # fmt: skip

    async def attempt(self, delivery: Delivery, endpoint: StoredEndpoint) -> str | None:
        """POST the delivery, signed, to the endpoint's URL at the addresses checked just now
        (the next one when one cannot be reached), all within the attempt's timeout; None on
        a 2xx, else what went wrong (no URL, body or secret in it: it is logged)."""
        try:
            async with asyncio.timeout(self.timeout_s):
                url, addresses = await checked_url(
                    endpoint.url,
                    allow_private=self.allow_private,
                    resolver=self.lookups.of(delivery.owner),
                )
                headers = signed_headers(endpoint.secret, delivery.msg_id, delivery.body)
                for address in addresses:
                    try:
                        status = await self._post(url, address, headers, delivery.body)
                    except httpx.ConnectError:
                        if address == addresses[-1]:
                            raise
                    else:
                        break
        except UnsafeUrl as exc:
            return f"refused: {exc.reason}"
        except TimeoutError:
            return "timed out"
        except Exception as exc:  # a connection refused or reset, TLS, a bad address...
            return type(exc).__name__
        return None if 200 <= status < 300 else f"HTTP {status}"

    async def _post(
        self, url: httpx.URL, address: IPAddress, signed: dict[str, str], body: str
    ) -> int:
        """POST `body` to `url` at `address`; the answer's status (its body is never read)."""
        target, headers, extensions = _pinned(url, address)
        async with self.http.stream(
            "POST", target, content=body, headers={**headers, **signed}, extensions=extensions
        ) as response:
            return response.status_code

    async def settle(self, delivery: Delivery, outcome: int, wait_s: float = 0.0) -> int:
        wait_ms = int(wait_s * 1000)
        args: list[str | int] = [
            delivery.id, delivery.lease, outcome, wait_ms, self.window_ms, delivery.owner
        ]  # fmt: skip
        due = keys.webhook_due(delivery.owner)
        names = [keys.WEBHOOK_OWNERS, keys.WEBHOOK_SERVED, due, keys.webhook_delivery(delivery.id)]
        return int(await self._settle(keys=names, args=args))

    async def close(self) -> None:
        """Stop the attempts in flight (each is due again at once) and close the HTTP pool."""
        sending = list(self._sending)
        for task in sending:
            task.cancel()
        await asyncio.gather(*sending, return_exceptions=True)
        await self.http.aclose()
        self.lookups.shutdown()  # a hung lookup is let go


def signed_headers(secret: str, msg_id: str, body: str) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt: its id, its time, its signature."""
    now = int(time.time())
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(now, tz=UTC), body)
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(now),
        "webhook-signature": signature,
    }


def _pinned(url: httpx.URL, address: IPAddress) -> tuple[httpx.URL, dict[str, str], dict[str, Any]]:
    """The request to `url` sent to `address` (the one just checked: a second lookup could
    answer otherwise), with the URL's own host in `Host` and, for https, in TLS's SNI (so the
    certificate is checked against it)."""
    headers = {"host": url.netloc.decode("ascii")}
    extensions: dict[str, Any] = {}
    if url.scheme == "https":
        extensions["sni_hostname"] = url.raw_host.decode("ascii")
    return url.copy_with(host=str(address)), headers, extensions


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

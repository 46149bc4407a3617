"""Webhooks without a network: which addresses count as public, which URLs may be called at
all, the event types, the backoff, and the signed headers of an attempt."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from shared.errors import InvalidRequest
from shared.schemas import FINAL_BATCH_STATUSES
from shared.webhooks import (
    EVENT_TYPES,
    event_type,
    is_public_address,
    new_secret,
    parse_url,
    resolve,
)
from worker import webhooks
from worker.lookups import OwnerLookups
from worker.webhooks import RESOLVER_THREADS

REFUSED = [
    "127.0.0.1", "127.255.0.1", "10.0.0.1", "10.255.255.255", "172.16.0.1", "172.31.255.1",
    "192.168.0.1", "192.168.255.254", "169.254.169.254", "169.254.0.1", "0.0.0.0", "100.64.0.1",
    "224.0.0.1", "239.255.255.250", "255.255.255.255", "240.0.0.1", "192.0.0.8", "192.0.2.1",
    "198.18.0.1", "198.51.100.7", "203.0.113.9",
    "::1", "::", "fc00::", "fc00::1", "fd00:ec2::254", "fe80::", "fe80::1", "fec0::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::7f00:1",
    "64:ff9b::7f00:1", "64:ff9b::a00:1", "64:ff9b:1::1", "2002:7f00:1::", "2002:a9fe:a9fe::",
    "2001::1", "2001:db8::1",
]  # fmt: skip
ALLOWED = [
    "93.184.216.34", "1.1.1.1", "8.8.8.8", "2606:4700::", "2606:4700:4700::1111",
    "2001:4860:4860::8888", "::ffff:93.184.216.34", "64:ff9b::5db8:d822", "2002:5db8:d822::",
]  # fmt: skip


@pytest.mark.parametrize("address", REFUSED)
def test_loopback_private_link_local_and_reserved_addresses_are_refused(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/", "file:///etc/passwd", "gopher://example.com/", "http://", "https:///x",
     "example.com/hook", "//example.com/hook", "http://[::1", "http://a b.example/",
     "http://example.com:0/", "http://example.com:70000/", "http://exa%00mple.com/"],
)  # fmt: skip
def test_only_http_urls_with_a_host_may_be_called(url: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_url(url)
    assert refused.value.param == "url"


@pytest.mark.parametrize(
    ("url", "host", "port"),
    [("https://example.com/hooks?a=1", "example.com", None),
     ("http://EXAMPLE.com:8080", "example.com", 8080),
     ("https://[2606:4700::1]:8443/x", "2606:4700::1", 8443),
     ("https://bücher.example/", "xn--bcher-kva.example", None)],
)  # fmt: skip
def test_a_url_is_read_as_the_http_client_reads_it(url: str, host: str, port: int | None) -> None:
    parsed = parse_url(url)
    assert parsed.raw_host.decode() == host
    assert parsed.port == port


def test_there_is_one_event_per_final_batch_status() -> None:
    assert set(EVENT_TYPES) == {f"batch.{status}" for status in FINAL_BATCH_STATUSES}
    assert event_type("completed") == "batch.completed"
    assert event_type("expired") == "batch.expired"
    assert event_type("in_progress") is None
    assert event_type("cancelling") is None


def test_backoff_is_full_jitter_doubling_from_a_second_up_to_an_hour() -> None:
    for attempts, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (12, 2048.0), (13, 3600.0)]:
        waits = [webhooks.backoff_s(attempts) for _ in range(200)]
        assert all(0 <= wait <= ceiling for wait in waits)
        assert max(waits) > ceiling / 2  # spread over the whole range, not a fixed delay
    assert webhooks.backoff_s(10_000) <= 3600.0


def test_an_outbox_entry_always_makes_the_same_event() -> None:
    first = webhooks.event_id("1764633600000-0", "batch_" + "a" * 32)
    assert first == webhooks.event_id("1764633600000-0", "batch_" + "a" * 32)
    assert first != webhooks.event_id("1764633600000-1", "batch_" + "a" * 32)
    assert first.startswith("evt_")
    body = json.loads(webhooks.event_body(first, "batch.failed", 1764633600, "batch_x"))
    assert body == {"id": first, "object": "event", "type": "batch.failed",
                    "created_at": 1764633600, "data": {"id": "batch_x"}}  # fmt: skip


def test_an_attempt_is_signed_as_standard_webhooks_says() -> None:
    secret = new_secret()
    body = webhooks.event_body("evt_1", "batch.completed", 1764633600, "batch_x")
    headers = webhooks.signed_headers(secret, "evt_1", body)
    assert headers["webhook-id"] == "evt_1"
    assert headers["content-type"] == "application/json"
    assert Webhook(secret).verify(body, headers)["data"] == {"id": "batch_x"}
    # The signature by hand: HMAC-SHA256 over "<id>.<timestamp>.<body>" with the secret's bytes.
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"evt_1.{headers['webhook-timestamp']}.{body}".encode()
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
    with pytest.raises(Exception, match="signature"):
        Webhook(new_secret()).verify(body, headers)


async def test_a_slow_name_server_ties_up_the_webhook_resolver_never_the_loop_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    looked_up = socket.getaddrinfo
    release = threading.Event()

    def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "slow.example":  # a tenant's name server that does not answer
            release.wait(30)
        return looked_up("127.0.0.1", *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    loop = asyncio.get_running_loop()
    webhooks = ThreadPoolExecutor(RESOLVER_THREADS, thread_name_prefix="webhook-dns")
    slow = httpx.URL("http://slow.example/hook")
    try:
        hung = [
            asyncio.ensure_future(resolve(slow, allow_private=True, resolver=webhooks))
            for _ in range(4 * RESOLVER_THREADS)
        ]
        # What a provider call resolves meanwhile, in the loop's own resolver threads.
        found = await asyncio.wait_for(loop.getaddrinfo("api.provider.example", 443), 5)
        assert found
        assert not any(task.done() for task in hung)
    finally:
        release.set()
        await asyncio.gather(*hung, return_exceptions=True)
        webhooks.shutdown()


async def test_an_owner_s_hung_name_server_holds_one_lookup_thread_never_another_owner_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    looked_up = socket.getaddrinfo
    release = threading.Event()
    hanging = 0

    def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> Any:
        nonlocal hanging
        if host == "slow.example":  # a tenant's name server that does not answer
            hanging += 1
            release.wait(30)
        return looked_up("127.0.0.1", *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    lookups = OwnerLookups(RESOLVER_THREADS)
    slow, fast = httpx.URL("http://slow.example/hook"), httpx.URL("http://fast.example/hook")
    try:
        # Attempt after attempt, each given up at its timeout (the lookup goes on in its thread).
        for _ in range(2 * RESOLVER_THREADS):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await resolve(slow, allow_private=True, resolver=lookups.of("tenant-slow"))
        # Every other owner's lookup is answered meanwhile, all at once.
        others = [
            resolve(fast, allow_private=True, resolver=lookups.of(f"tenant-{n}"))
            for n in range(2 * RESOLVER_THREADS)
        ]
        found = await asyncio.wait_for(asyncio.gather(*others), 5)
        assert all(addresses == [ipaddress.ip_address("127.0.0.1")] for addresses in found)
        assert hanging == 1  # the slow owner's later lookups wait for its first, in no thread
        assert lookups.busy("tenant-slow")
        assert await _turn_freed(lookups, "tenant-0")
    finally:
        release.set()
        lookups.shutdown()


async def test_an_owner_s_lookups_resume_after_a_thousand_given_up_behind_a_hung_one() -> None:
    """Each attempt gives up at its timeout while the owner's first lookup hangs: when the name
    server answers at last, the owner's next lookup runs at once (no chain of callbacks a
    thousand deep to unwind, and none of those given up ever runs)."""
    release = threading.Event()
    ran: list[str] = []

    def lookup(name: str) -> str:
        ran.append(name)
        if name == "hung":
            release.wait(30)
        return name

    lookups = OwnerLookups(2)
    loop = asyncio.get_running_loop()
    try:
        hung = loop.run_in_executor(lookups.of("tenant"), lookup, "hung")
        for n in range(1000):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0):
                    await loop.run_in_executor(lookups.of("tenant"), lookup, f"given-up-{n}")
        release.set()
        assert await asyncio.wait_for(hung, 5) == "hung"
        after = loop.run_in_executor(lookups.of("tenant"), lookup, "after")
        assert await asyncio.wait_for(after, 5) == "after"
        assert ran == ["hung", "after"]
        assert await _turn_freed(lookups, "tenant")
    finally:
        release.set()
        lookups.shutdown()


async def _turn_freed(lookups: OwnerLookups, owner: str) -> bool:
    """Whether `owner`'s turn is free within 5 s. The thread that ran its lookup frees the
    turn just after it delivers the answer, so a waiter can see the answer a moment first."""
    deadline = asyncio.get_running_loop().time() + 5
    while lookups.busy(owner) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    return not lookups.busy(owner)

"""Webhooks, what both sides share: the event types, the endpoint bodies and their data model
(an owner's endpoints in Redis), and the address check that keeps webhook URLs off loopback,
private and link-local networks (SSRF), run by the API when an endpoint is added and by the
worker before every attempt. Layout in `shared/keys.py`; deliveries are `worker/webhooks.py`."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import re
import secrets
import socket
import time
from collections.abc import Iterable
from concurrent.futures import Executor
from datetime import UTC, datetime
from functools import partial
from typing import Literal, get_args

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.asyncio import Redis

from shared import keys, lua
from shared.errors import Conflict, InvalidRequest, NotFound

#: What an endpoint can hear of: a batch becoming final, one type per final status.
EventType = Literal["batch.completed", "batch.failed", "batch.cancelled", "batch.expired"]
EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)

#: Endpoints one key may have; adding one more is a 409.
MAX_ENDPOINTS = 16
MAX_URL_CHARS = 2048
#: How long resolving a webhook URL's host may take before the URL counts as unresolvable.
RESOLVE_TIMEOUT_S = 5.0

#: What every endpoint id looks like: `we_` and 32 hex digits (random, unguessable).
ENDPOINT_ID = re.compile(r"we_[0-9a-f]{32}")
EXAMPLE_ENDPOINT_ID = "we_" + "0" * 32
#: A host name as DNS spells it (IDNA already encoded), or an IP literal (checked apart).
_HOST_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def event_type(status: str) -> EventType | None:
    """The event a batch that became final with `status` sends (None for any other status)."""
    name = f"batch.{status}"
    return name if name in EVENT_TYPES else None


# -- the HTTP bodies ----------------------------------------------------------------------------


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1,
        max_length=MAX_URL_CHARS,
        description="An http(s) URL whose host resolves to public addresses only (unless "
        "PROMPTBATCH_WEBHOOK_ALLOW_PRIVATE=true). Redirects are not followed.",
        examples=["https://example.com/hooks/promptbatch"],
    )
    events: list[EventType] = Field(
        default_factory=lambda: list(EVENT_TYPES),
        min_length=1,
        max_length=16,
        description="The events to send (all four unless given).",
    )


class WebhookEndpoint(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    events: list[EventType]
    created_at: datetime


class WebhookEndpointCreated(WebhookEndpoint):
    #: `whsec_` and the base64 of 32 random bytes: the signing key, shown only once.
    secret: str


class WebhookList(BaseModel):
    object: Literal["list"] = "list"
    data: list[WebhookEndpoint]
    #: Always false: a key has at most `MAX_ENDPOINTS` endpoints, all listed at once.
    has_more: bool = False
    next_after: str | None = None


class StoredEndpoint(BaseModel):
    """An endpoint as stored in `keys.webhooks(owner)`, secret included."""

    id: str
    url: str
    events: list[EventType]
    secret: str
    created_at: int  # epoch ms

    def public(self) -> WebhookEndpoint:
        created = datetime.fromtimestamp(self.created_at / 1000, tz=UTC)
        return WebhookEndpoint(id=self.id, url=self.url, events=self.events, created_at=created)


def new_secret() -> str:
    """A signing secret in the Standard Webhooks form: `whsec_` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def is_endpoint_id(value: str) -> bool:
    return ENDPOINT_ID.fullmatch(value) is not None


def _in_order(events: Iterable[EventType]) -> list[EventType]:
    """The events asked for, each once, in the order of `EVENT_TYPES`."""
    asked = set(events)
    return [name for name in EVENT_TYPES if name in asked]


# -- the data model -----------------------------------------------------------------------------

# Read at import, so that registering the script never reads a file on the event loop.
_ADD = lua.load("shared", "add_endpoint")


class WebhookEndpoints:
    """An owner's webhook endpoints in Redis: the only code that knows their layout."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._add = redis.register_script(_ADD)

    async def create(self, owner: str, url: str, events: Iterable[EventType]) -> StoredEndpoint:
        """Add an endpoint (its URL already checked); a Conflict beyond `MAX_ENDPOINTS`."""
        endpoint = StoredEndpoint(
            id=f"we_{secrets.token_hex(16)}",
            url=url,
            events=_in_order(events),
            secret=new_secret(),
            created_at=time.time_ns() // 1_000_000,
        )
        args: list[str | int] = [endpoint.id, endpoint.model_dump_json(), MAX_ENDPOINTS]
        if not await self._add(keys=[keys.webhooks(owner)], args=args):
            raise Conflict(
                f"This key has {MAX_ENDPOINTS} webhook endpoints, the most it may have; "
                "delete one first."
            )
        return endpoint

    async def all(self, owner: str) -> list[StoredEndpoint]:
        """The owner's endpoints, oldest first (one stored unreadably is left out)."""
        raw = await self.redis.hvals(keys.webhooks(owner))  # type: ignore[misc]
        found = [endpoint for value in raw if (endpoint := _parse(value)) is not None]
        return sorted(found, key=lambda endpoint: (endpoint.created_at, endpoint.id))

    async def listing(self, owner: str) -> WebhookList:
        return WebhookList(data=[endpoint.public() for endpoint in await self.all(owner)])

    async def get(self, owner: str, endpoint_id: str) -> StoredEndpoint | None:
        """One endpoint of the owner's, or None (never another owner's)."""
        if not is_endpoint_id(endpoint_id):
            return None
        raw = await self.redis.hget(keys.webhooks(owner), endpoint_id)  # type: ignore[misc]
        return None if raw is None else _parse(raw)

    async def read(self, owner: str, endpoint_id: str) -> WebhookEndpoint:
        endpoint = await self.get(owner, endpoint_id)
        if endpoint is None:
            raise NotFound(f"No webhook endpoint {_shown(endpoint_id)}.")
        return endpoint.public()

    async def delete(self, owner: str, endpoint_id: str) -> None:
        """Remove an endpoint: it hears of no event from now on, and its deliveries still
        scheduled are dropped at their next attempt."""
        removed = is_endpoint_id(endpoint_id) and await self.redis.hdel(  # type: ignore[misc]
            keys.webhooks(owner), endpoint_id
        )
        if not removed:
            raise NotFound(f"No webhook endpoint {_shown(endpoint_id)}.")

    async def subscribed(self, owner: str, event: EventType) -> list[StoredEndpoint]:
        """The owner's endpoints that asked for `event`."""
        return [endpoint for endpoint in await self.all(owner) if event in endpoint.events]


def _parse(raw: bytes) -> StoredEndpoint | None:
    try:
        return StoredEndpoint.model_validate_json(raw)
    except ValidationError:
        return None


def _shown(value: str) -> str:
    return value if len(value) <= 64 else value[:64] + "…"


# -- the address check (SSRF) -------------------------------------------------------------------


class UnsafeUrl(InvalidRequest):
    """A webhook URL that may not be called: not http(s), no host, unresolvable, or resolving
    to an address that is not public."""

    def __init__(self, message: str, reason: str = "not a valid URL") -> None:
        super().__init__(message, param="url")
        #: A few words for a log line: no URL, host or address in them.
        self.reason = reason


_UNRESOLVED = "the host does not resolve"
_NOT_PUBLIC_REASON = "the host resolves to a non-public address"

#: IPv6 ranges that carry an IPv4 address in their last 32 bits and reach it: NAT64's
#: well-known prefix (RFC 6052). IPv4-mapped and 6to4 addresses are read by `ipaddress`.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
#: Not globally reachable (IANA's special-purpose registries), whatever this Python's
#: `ipaddress` says: its tables differ between releases.
_NOT_PUBLIC = tuple(
    ipaddress.ip_network(network)
    for network in ("192.0.0.0/24", "192.88.99.0/24", "64:ff9b:1::/48", "2001::/23")
)


def is_public_address(address: IPAddress) -> bool:
    """Whether `address` is on the public internet: not loopback, private (RFC 1918, CGNAT,
    IPv6 ULA), link-local (cloud metadata at 169.254.169.254 included), unspecified,
    multicast or reserved, nor an IPv6 form of such an IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return is_public_address(address.ipv4_mapped)
        if address in _NAT64:
            return is_public_address(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if address.sixtofour is not None:  # 6to4: reaches the IPv4 address it carries
            return is_public_address(address.sixtofour)
        if address.is_site_local:
            return False
    if any(address in network for network in _NOT_PUBLIC):
        return False
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
        or address.is_reserved
    )


def parse_url(url: str) -> httpx.URL:
    """The URL as it will be called (parsed by the HTTP client itself, so the check and the
    call cannot read it differently); an UnsafeUrl unless it is http(s) with a host."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise UnsafeUrl("The webhook URL is not a valid URL.") from None
    if parsed.scheme not in ("http", "https"):
        raise UnsafeUrl("A webhook URL must be http or https.", "not http(s)")
    host = parsed.raw_host.decode("ascii", errors="replace")
    if not host or not (_is_ip(host) or _HOST_NAME.fullmatch(host)):
        raise UnsafeUrl("A webhook URL must have a host name or IP address.")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise UnsafeUrl("The webhook URL's port is out of range.")
    return parsed


async def resolve(
    url: httpx.URL, *, allow_private: bool, resolver: Executor | None = None
) -> list[IPAddress]:
    """Every address the URL's host resolves to (off the event loop: in `resolver`'s threads
    when given, else the loop's own), each of them public unless `allow_private`; an
    UnsafeUrl otherwise."""
    host = url.raw_host.decode("ascii")
    port = url.port or (443 if url.scheme == "https" else 80)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            if resolver is None:
                found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            else:  # a slow name server ties up these threads, and only these
                lookup = partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
                found = await loop.run_in_executor(resolver, lookup)
    except (OSError, TimeoutError, UnicodeError, ValueError):
        raise UnsafeUrl("The webhook URL's host does not resolve.", _UNRESOLVED) from None
    addresses: list[IPAddress] = []
    for *_, sockaddr in found:
        try:
            address = ipaddress.ip_address(sockaddr[0])
        except ValueError:
            raise UnsafeUrl(
                "The webhook URL's host resolves to an unusable address.", _NOT_PUBLIC_REASON
            ) from None
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UnsafeUrl("The webhook URL's host does not resolve.", _UNRESOLVED)
    if not allow_private and not all(is_public_address(a) for a in addresses):
        raise UnsafeUrl(
            "The webhook URL's host resolves to a loopback, private, link-local or otherwise "
            "non-public address; webhooks are sent to public addresses only.",
            _NOT_PUBLIC_REASON,
        )
    return addresses


async def checked_url(
    url: str, *, allow_private: bool, resolver: Executor | None = None
) -> tuple[httpx.URL, list[IPAddress]]:
    """`parse_url`, then `resolve`: the URL and the addresses it may be called at."""
    parsed = parse_url(url)
    return parsed, await resolve(parsed, allow_private=allow_private, resolver=resolver)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True

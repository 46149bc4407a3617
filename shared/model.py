"""What the parts of the Redis data model share: one client, how long a final batch is kept,
the batch scripts (`shared/lua/`), and the decoding of what Redis answers."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import cache
from typing import Any, cast

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from shared import keys, lua
from shared.schemas import (
    CHAT,
    FINAL_ITEM_STATUSES,
    Batch,
    BatchStatus,
    Endpoint,
    ErrorInfo,
    Mode,
    Pacing,
    Provider,
    ProviderBatch,
    RequestCounts,
    Usage,
)

#: Items pushed per RPUSH and read per page: big enough to save round trips, small enough
#: that no single Redis command blocks the server for long.
PAGE = 1000

#: How long a final batch is kept unless the store is told otherwise.
DEFAULT_RESULT_TTL_S = 7 * 24 * 3600

#: The kinds of tokens counted, per batch (`<kind>_tokens`) and service-wide (`tokens:<kind>`).
TOKEN_KINDS = ("input", "output", "cached", "reasoning")
TOKEN_FIELDS = tuple(f"{kind}_tokens" for kind in TOKEN_KINDS)

#: The error type of a batch, and of its items not started, once its token budget is spent.
BUDGET_EXCEEDED = "budget_exceeded"
#: The error type of a batch the provider refused (a 401 or 403 repeated), and of its items
#: not started: the batch ends failed.
PROVIDER_AUTH = "provider_auth"

#: Batch field -> service-wide counter, for each number a result adds to both.
SUMS = {
    **{f"{kind}_tokens": f"tokens:{kind}" for kind in TOKEN_KINDS},
    "paced_ms": "pacing:wait_ms",
    "rate_limited": "pacing:rate_limited",
}
#: Values per result in `record.lua`'s ARGV: index, result, status, chunk, custom_id, the sums.
RECORD_STRIDE = 5 + len(SUMS)


@cache
def batch_script(name: str) -> str:
    """`shared/lua/<name>.lua` after the prelude every batch script shares (`batch.lua`)."""
    return lua.load(
        "shared",
        "batch",
        name,
        keys=keys.BATCH_SCRIPT_KEYS,
        OWN_KEYS=len(keys.batch_keys("")),
        EVENTS_MAXLEN=keys.EVENTS_MAXLEN,
        STRIDE=RECORD_STRIDE,
        SUM_FIELDS=list(SUMS),
        SUM_STATS=list(SUMS.values()),
        BUDGET_EXCEEDED=BUDGET_EXCEEDED,
        PROVIDER_AUTH=PROVIDER_AUTH,
    )


# Read at import, so that registering a script never reads a file on the event loop.
for _name in ("record", "start", "fail", "cancel", "attempt"):
    batch_script(_name)


class ModelPart:
    """A part of the data model. Every part takes the same client and retention, so one
    `BatchStore` (which is all of them) serves whoever needs several."""

    def __init__(self, redis: Redis, *, result_ttl_s: int = DEFAULT_RESULT_TTL_S) -> None:
        self.redis = redis
        self.result_ttl_ms = result_ttl_s * 1000
        self._scripts: dict[str, AsyncScript] = {}

    async def run_script(
        self, name: str, batch_id: str, args: Sequence[bytes | str | int] = ()
    ) -> object:
        """Run the batch script `name` on one batch (its KEYS: `keys.batch_script_keys`)."""
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.redis.register_script(batch_script(name))
        return await script(keys=keys.batch_script_keys(batch_id), args=list(args))


def decode(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def from_ms(ms: str | None) -> datetime | None:
    """An epoch-ms field as a time (None when unset)."""
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC) if ms else None


def usage_of(fields: Mapping[str, str]) -> Usage:
    """The token counts summed into a batch's hash."""
    return Usage.of(*(int(fields.get(name, 0)) for name in TOKEN_FIELDS))


def pacing_of(fields: Mapping[str, str]) -> Pacing:
    """How the provider's limits shaped a batch, as summed into its hash."""
    paced_s = int(fields.get("paced_ms", 0)) / 1000
    return Pacing(wait_s=paced_s, provider_429s=int(fields.get("rate_limited", 0)))


#: The prefix of a batch hash's fields that hold its provider batches, one each, as last polled
#: (`provider_batch:<chunk>.<part>`, a `ProviderBatch`'s JSON; written by `worker/handoff.py`).
PROVIDER_BATCH_FIELD = "provider_batch:"


def batch_from_fields(f: Mapping[str, str]) -> Batch:
    """The batch object of a batch hash's fields."""
    total = int(f["total"])
    final = {name: int(f.get(name, 0)) for name in FINAL_ITEM_STATUSES}
    metadata: Any = json.loads(f["metadata"]) if "metadata" in f else None
    status = cast(BatchStatus, f["status"])
    return Batch(
        id=f["id"],
        status=status,
        model=f["model"],
        provider=cast(Provider, f["provider"]),
        created_at=cast(datetime, from_ms(f["created_at"])),
        started_at=from_ms(f.get("started_at")),
        finished_at=from_ms(f.get("finished_at")),
        expires_at=from_ms(f.get("expires_at")),
        request_counts=RequestCounts(total=total, pending=total - sum(final.values()), **final),
        usage=usage_of(f),
        max_total_tokens=int(f["max_total_tokens"]) if "max_total_tokens" in f else None,
        completion_window=f.get("completion_window"),
        deadline_at=from_ms(f.get("deadline_ms")),
        expired_at=from_ms(f.get("finished_at")) if status == "expired" else None,
        pacing=pacing_of(f),
        mode=cast(Mode, f.get("mode", "direct")),
        endpoint=cast(Endpoint, f.get("endpoint", CHAT)),
        provider_batches=[
            ProviderBatch.model_validate_json(value)
            for name, value in sorted(f.items())
            if name.startswith(PROVIDER_BATCH_FIELD)
        ],
        metadata=metadata,
        error=ErrorInfo.model_validate_json(f["error"]) if "error" in f else None,
    )

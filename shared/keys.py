"""Every Redis key the service uses, named here and only here, with its lifetime beside it.

A batch's own keys share the hash tag `{<batch id>}`, so they live in one cluster slot and one
Lua script may touch them together. Nothing here expires yet: a batch lives until it is deleted.
"""

from __future__ import annotations

PREFIX = "pb"

#: arq's queue (a sorted set of job ids). arq owns its own `arq:job:*` / `arq:in-progress:*` keys.
QUEUE = f"{PREFIX}:queue"

#: Sorted set: worker id -> last heartbeat (epoch ms). Members older than the liveness window
#: are pruned by whoever reads it; the set itself never expires.
WORKERS = f"{PREFIX}:workers"

#: Owner of batches when the API runs without keys (local development).
PUBLIC_OWNER = "public"


def batch(batch_id: str) -> str:
    """Hash: the batch's fields and counters (status, counts, usage, timestamps)."""
    return f"{PREFIX}:{{{batch_id}}}:batch"


def inputs(batch_id: str) -> str:
    """List: one JSON `[custom_id, prompt]` per item, in input order. Written once at submit."""
    return f"{PREFIX}:{{{batch_id}}}:inputs"


def results(batch_id: str) -> str:
    """Hash: item index -> JSON result. Each field is written once (HSETNX), never changed."""
    return f"{PREFIX}:{{{batch_id}}}:results"


def batch_keys(batch_id: str) -> tuple[str, ...]:
    """Every key that belongs to one batch (for rollback and delete)."""
    return batch(batch_id), inputs(batch_id), results(batch_id)


def batch_index(owner: str) -> str:
    """Sorted set: an owner's batch ids scored by creation time (epoch µs), for listing."""
    return f"{PREFIX}:index:{owner}"


def job_id(batch_id: str, chunk: int) -> str:
    """arq job id of one chunk of a batch: deterministic, so enqueueing twice is a no-op."""
    return f"{batch_id}:{chunk}"

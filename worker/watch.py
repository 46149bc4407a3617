"""Tell a worker's runs, within a fraction of a second, that their batch was cancelled or deleted.

One check per interval covers every batch the worker is running (one pipelined HGET each), so
the cost does not grow with the number of provider calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from shared.schemas import BatchStatus
from shared.store import BatchStore

#: Statuses in which a batch's runs must start no more provider calls (None: it is gone).
STOP_STATUSES: frozenset[BatchStatus | None] = frozenset(
    {"cancelling", "cancelled", "failed", None}
)


class BatchWatch:
    def __init__(self, store: BatchStore) -> None:
        self._store = store
        self._watched: dict[str, tuple[asyncio.Event, int]] = {}

    @contextlib.contextmanager
    def watch(self, batch_id: str) -> Iterator[asyncio.Event]:
        """An event that is set once the batch is cancelled, failed or gone."""
        stopped, users = self._watched.get(batch_id) or (asyncio.Event(), 0)
        self._watched[batch_id] = (stopped, users + 1)
        try:
            yield stopped
        finally:
            stopped, users = self._watched[batch_id]
            if users == 1:
                del self._watched[batch_id]
            else:
                self._watched[batch_id] = (stopped, users - 1)

    async def check(self) -> None:
        """Read the statuses of the watched batches once and set the events of stopped ones."""
        batch_ids = list(self._watched)
        if not batch_ids:
            return
        for batch_id, status in zip(batch_ids, await self._store.statuses(batch_ids), strict=True):
            if status in STOP_STATUSES and batch_id in self._watched:
                self._watched[batch_id][0].set()

"""Batch snapshots for tests that script what a server answers."""

from __future__ import annotations

from datetime import UTC, datetime

from shared.schemas import Batch, BatchStatus, RequestCounts, Usage

SNAPSHOT_ID = "batch_events_test"


def snapshot(status: BatchStatus, done: int, total: int = 3, failed: int = 0) -> Batch:
    counts = RequestCounts(
        total=total, succeeded=done - failed, failed=failed, cancelled=0, pending=total - done
    )
    return Batch(
        id=SNAPSHOT_ID, status=status, model="m", provider="offline",
        created_at=datetime(2026, 1, 1, tzinfo=UTC), started_at=None, finished_at=None,
        request_counts=counts, usage=Usage(), metadata=None, error=None,
    )  # fmt: skip

"""A live progress bar of one batch (done/total, failed, cancelled and expired, rate, ETA), in a
terminal or notebook."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from shared.schemas import Batch


class RateColumn(ProgressColumn):
    """Items finished per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f}/s" if speed else "-/s", style="progress.data.speed")


#: Waiting for turns that grows by less than this between two snapshots is not "paced".
PACED_S = 0.1


class BatchProgress:
    """Shows a batch's snapshots as they come; use as a context manager around `update` calls."""

    def __init__(self, console: Console | None = None) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            TaskProgressColumn(),
            MofNCompleteColumn(),
            TextColumn("failed {task.fields[failed]}"),
            TextColumn("{task.fields[stopped]}"),
            RateColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[paced]}", style="yellow"),
            console=console,
        )
        self._task: TaskID | None = None
        self._pacing = (0.0, 0)

    def __enter__(self) -> BatchProgress:
        self._progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def update(self, batch: Batch) -> None:
        counts = batch.request_counts
        done = counts.total - counts.pending
        paced = self._paced(batch)
        # Items that ended without running, shown once there are any.
        stopped = "  ".join(
            f"{name} {n}"
            for name, n in (("cancelled", counts.cancelled), ("expired", counts.expired))
            if n
        )
        if self._task is None:
            self._task = self._progress.add_task(
                batch.status, total=counts.total, completed=done, failed=counts.failed,
                stopped=stopped, paced=paced,
            )  # fmt: skip
        self._progress.update(
            self._task, description=batch.status, completed=done, failed=counts.failed,
            stopped=stopped, paced=paced,
        )  # fmt: skip

    def _paced(self, batch: Batch) -> str:
        """`paced by the provider's limits` while the batch's calls wait for their turn or are
        answered 429 (either grew since the last snapshot), with the 429s so far; for a batch
        handed to the provider's Batch API, what the provider says of it."""
        if batch.provider_batches:
            return at_provider(batch)
        before = self._pacing
        self._pacing = (batch.pacing.wait_s, batch.pacing.provider_429s)
        if self._pacing[0] < before[0] + PACED_S and self._pacing[1] <= before[1]:
            return ""
        answered = self._pacing[1]
        return "paced by the provider's limits" + (f", {answered} answered 429" if answered else "")


def at_provider(batch: Batch) -> str:
    """`at the provider: in_progress, 1,200 of 3,000`: its provider batches' statuses, and
    how many of their requests the provider has answered."""
    parts = batch.provider_batches
    statuses = ", ".join(sorted({part.status for part in parts}))
    answered = sum(part.request_counts.completed + part.request_counts.failed for part in parts)
    total = sum(part.request_counts.total for part in parts)
    return f"at the provider: {statuses}, {answered:,} of {total:,}"

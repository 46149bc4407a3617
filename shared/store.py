"""The Redis data model as one handle: every part (batches, results, chunks, progress,
retries, staging) over one client. A caller that needs one part may type it as that part;
layout in `shared/keys.py`."""

from __future__ import annotations

from shared.batches import Batches
from shared.chunks import Chunks
from shared.progress import Progress
from shared.results import Results
from shared.retries import Retries
from shared.staging import Staging


class BatchStore(Batches, Results, Chunks, Progress, Retries, Staging):
    """Reads and writes batches in Redis: the only code that knows their layout."""

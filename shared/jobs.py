"""The seam to arq, shared side: the job format and arq's keys.

arq is in maintenance mode. Everything the service knows of it lives here and in
`worker/main.py` (the worker's settings): nothing else imports arq or knows how it lays out its
keys, so swapping it touches those two files (and the scheduler's `enqueue` in
`shared/lua/sched.lua`, which writes a job record in the format `serialize_job` gives it; a test
holds the two together). Our own keys (the queue's name, job ids) are in `shared/keys.py`;
arq's per-job keys are derived here from arq's constants.
"""

from __future__ import annotations

import json
import logging
from typing import Any, cast

from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.jobs import serialize_job

log = logging.getLogger("promptbatch.jobs")

#: Name of the task function the worker registers for one chunk of a batch.
RUN_CHUNK = "run_chunk"

#: How long a queued job's record lives: far longer than any queue wait; if it lapses anyway,
#: the reconciler queues the chunk again.
JOB_EXPIRES_MS = 7 * 24 * 3600 * 1000

#: The arguments each job function takes: ids and counts, nothing else. A payload naming any
#: other function, or carrying other arguments, is refused before a worker runs anything.
JOB_ARGS: dict[str, tuple[type, ...]] = {RUN_CHUNK: (str, int)}

_JOB_FIELDS = frozenset({"t", "f", "a", "k", "et"})
#: arq's record of a finished job is read back through the same function and adds these.
_RESULT_FIELDS = frozenset({"s", "r", "st", "ft", "q", "id"})


def arq_job(job_id: str) -> str:
    """arq's record of a queued job (its JSON payload); we write it with the queue entry."""
    return f"{job_key_prefix}{job_id}"


def arq_retry(job_id: str) -> str:
    """arq's count of a job's tries (kept a day); deleted with a deleted batch's jobs."""
    return f"{retry_key_prefix}{job_id}"


#: The value arq gives the claim it sets when it starts a job (a run then puts its worker's
#: name there).
ARQ_CLAIM = "1"


def arq_in_progress(job_id: str) -> str:
    """arq's claim on a running job. arq sets it for job_timeout + 10 s; the running worker
    shortens it to its lease and renews it, so it lapses soon after the worker dies."""
    return f"{in_progress_key_prefix}{job_id}"


def job_payload(batch_id: str, chunk: int, enqueued_ms: int) -> bytes:
    """A chunk's job record as arq writes it (what the scheduler's Lua `enqueue` writes too)."""
    return serialize_job(RUN_CHUNK, (batch_id, chunk), {}, None, enqueued_ms, serializer=dumps_job)


def dumps_job(data: dict[str, Any]) -> bytes:
    """arq job payloads are JSON, not arq's default format: whoever writes Redis must not be
    able to run code in a worker."""
    return json.dumps(data, default=str).encode()


def loads_job(raw: bytes) -> dict[str, Any]:
    """Read a job payload, refusing (ValueError) anything but the JSON this service writes.

    arq logs the refusal and drops the job without running it; the worker goes on serving.
    """
    try:
        data = json.loads(raw)
        _check_job(data)
    except ValueError as exc:  # the reason only: never the payload
        log.warning("refused a job payload: %s", exc)
        raise
    return cast(dict[str, Any], data)


def _check_job(data: object) -> None:
    if not isinstance(data, dict):
        raise ValueError("job payload is not a JSON object")
    fields = data.keys()
    if not (_JOB_FIELDS.issubset(fields) and _RESULT_FIELDS.union(_JOB_FIELDS).issuperset(fields)):
        raise ValueError("job payload does not have arq's job fields")
    function = data["f"]
    expected = JOB_ARGS.get(function) if isinstance(function, str) else None
    if expected is None:
        raise ValueError("job payload names no job function of this service")
    args = data["a"]
    if not (
        isinstance(args, list)
        and len(args) == len(expected)
        and all(type(arg) is kind for arg, kind in zip(args, expected, strict=True))
    ):
        raise ValueError(f"job payload's arguments are not those of {function}")
    if data["k"] != {}:
        raise ValueError("job payload has keyword arguments; jobs take none")
    if not (isinstance(data["t"], int | None) and type(data["et"]) is int):
        raise ValueError("job payload's try count or enqueue time is not a number")

"""The worker reads only the JSON jobs this service writes; anything else is refused."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest

from shared.jobs import RUN_CHUNK, dumps_job, loads_job

JOB: dict[str, Any] = {"t": None, "f": RUN_CHUNK, "a": ["batch_x", 0], "k": {}, "et": 1700000000}


def test_a_job_as_arq_enqueues_it_is_read() -> None:
    assert loads_job(dumps_job(JOB)) == JOB


def test_arqs_record_of_a_finished_job_is_read() -> None:
    record = JOB | {"t": 1, "s": True, "r": {"written": 2}, "st": 1, "ft": 2, "q": "pb:queue",
                    "id": "batch_x:0"}  # fmt: skip
    assert loads_job(dumps_job(record)) == record


def _variant(**change: Any) -> bytes:
    return json.dumps(JOB | change).encode()


@pytest.mark.parametrize(
    "raw",
    [
        pickle.dumps(JOB),
        b"[1, 2]",
        b"not json",
        json.dumps({k: v for k, v in JOB.items() if k != "et"}).encode(),
        _variant(extra="field"),
        _variant(f="os.system"),
        _variant(f=["run_chunk"]),
        _variant(a=["batch_x", "0"]),
        _variant(a=["batch_x", True]),
        _variant(a=["batch_x"]),
        _variant(a=["batch_x", 0, 1]),
        _variant(a={"batch_id": "batch_x"}),
        _variant(k={"chunk": 0}),
        _variant(et="soon"),
        _variant(t="1"),
    ],
    ids=["pickled", "array", "not-json", "missing-field", "extra-field", "unknown-function",
         "function-not-a-string", "chunk-as-string", "chunk-as-bool", "too-few-args",
         "too-many-args", "args-as-object", "kwargs", "enqueue-time", "try-count"],
)  # fmt: skip
def test_anything_else_is_refused_and_logged_without_the_payload(
    raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - json's own decode error is a ValueError
        loads_job(raw)
    assert "refused a job payload" in caplog.text
    assert "batch_x" not in caplog.text

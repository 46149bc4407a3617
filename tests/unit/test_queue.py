"""Job payloads are JSON, never pickle."""

from __future__ import annotations

import pickle

import pytest

from shared.jobs import dumps_job, loads_job


def test_job_payload_round_trips_as_json() -> None:
    data = {"t": 1, "f": "run_chunk", "a": ["batch_x", 0], "k": {}, "et": 123}
    raw = dumps_job(data)
    assert raw.startswith(b"{")
    assert loads_job(raw) == data


def test_a_pickled_payload_is_refused() -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - json's own decode error is a ValueError
        loads_job(pickle.dumps({"f": "run_chunk"}))


def test_a_payload_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ValueError, match="not a JSON object"):
        loads_job(b"[1, 2]")

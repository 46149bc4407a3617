"""`promptbatch submit` retries through the Python client: a real CLI process, a real API
process and Redis, and between them a proxy that lets the first submit reach the API (and be
stored) but drops its answer. One batch is made, whatever the connection did."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.cli.runner import run_cli
from tests.helpers import DroppingProxy

pytestmark = pytest.mark.integration

SUBMIT = ("POST", "/v1/batches")


def listed_ids(api_url: str) -> list[str]:
    response = httpx.get(f"{api_url}/v1/batches", params={"limit": 100})
    response.raise_for_status()
    return [batch["id"] for batch in response.json()["data"]]


def test_submit_whose_answer_is_lost_retries_with_its_key_and_makes_one_batch(
    live_api: Callable[..., str], tmp_path: Path
) -> None:
    api = live_api()
    (tmp_path / "prompts.txt").write_text("first\nsecond\n")

    with DroppingProxy(api) as proxy:
        done = run_cli(proxy.url, "submit", "prompts.txt", cwd=tmp_path)
        assert proxy.dropped.is_set()
        submits = proxy.seen(*SUBMIT)

    assert done.returncode == 0, done.stderr
    assert listed_ids(api) == [done.stdout.strip()]
    assert len(submits) == 2
    keys = {request.headers.get("idempotency-key") for request in submits}
    assert len(keys) == 1
    assert next(iter(keys))


def test_submit_sends_the_key_it_is_given_so_submitting_again_gives_the_same_batch(
    live_api: Callable[..., str], tmp_path: Path
) -> None:
    api = live_api()
    (tmp_path / "prompts.txt").write_text("nightly\n")
    key = ("--idempotency-key", "nightly-2026-11-25")

    with DroppingProxy(api) as proxy:
        first = run_cli(proxy.url, "submit", "prompts.txt", *key, cwd=tmp_path)
        submits = proxy.seen(*SUBMIT)
    again = run_cli(api, "submit", "prompts.txt", *key, cwd=tmp_path)
    fresh = run_cli(api, "submit", "prompts.txt", cwd=tmp_path)

    for done in (first, again, fresh):
        assert done.returncode == 0, done.stderr
    assert [r.headers.get("idempotency-key") for r in submits] == ["nightly-2026-11-25"] * 2
    assert again.stdout == first.stdout
    assert fresh.stdout != first.stdout
    assert sorted(listed_ids(api)) == sorted([first.stdout.strip(), fresh.stdout.strip()])

"""`promptbatch retry ID` as a person runs it: a real subprocess against a real API process, real
workers and Redis, the OpenAI-compatible mock failing some prompts once."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.cli.runner import assert_one_error_line, run_cli
from tests.helpers import MockProvider, Proc
from tests.integration.flows import openai_worker

pytestmark = pytest.mark.integration

PROMPTS = ["fine one", "refused once [[fail=400:1]]", "fine two"]


@pytest.fixture
def mock_api(live_api: Callable[..., str], workers: Callable[..., Proc], mock: MockProvider) -> str:
    """A real API and worker on the OpenAI path, against the mock provider; the API's URL."""
    openai_worker(workers, mock)
    return live_api(PROMPTBATCH_PROVIDER="openai", OPENAI_BASE_URL=f"{mock.url}/v1")


def submitted_with_a_failure(url: str, tmp_path: Path, tag: str) -> str:
    """A batch of `PROMPTS` (tagged, so the mock counts them apart) run to its end by
    `submit --wait`, one item failed; its id."""
    (tmp_path / f"{tag}.txt").write_text("".join(f"{tag} {p}\n" for p in PROMPTS))
    done = run_cli(url, "submit", f"{tag}.txt", "--model", "mock-1", "--wait",
                   "-o", f"{tag}.jsonl", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = re.search(r"(batch_\w+) completed: 2 succeeded, 1 failed, 0 cancelled", done.stderr)
    assert found is not None, done.stderr
    batch_id = found.group(1)
    assert f"run the failed ones again: promptbatch retry {batch_id}" in done.stderr
    return batch_id


def test_retry_wait_runs_the_failed_items_again_and_writes_every_result(
    mock_api: str, mock: MockProvider, tmp_path: Path
) -> None:
    batch_id = submitted_with_a_failure(mock_api, tmp_path, "waited")

    done = run_cli(mock_api, "retry", batch_id, "--wait", "-o", "out.jsonl", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert f"Retrying 1 item of {batch_id}." in done.stderr
    assert f"{batch_id} completed: 3 succeeded, 0 failed, 0 cancelled" in done.stderr
    assert "run the failed ones again" not in done.stderr
    items = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [item["status"] for item in items] == ["succeeded"] * 3
    assert [item["output"] for item in items] == [f"mock reply to: waited {p}" for p in PROMPTS]
    assert mock.stats()["calls"] == 4  # the two that had succeeded were not sent again

    again = run_cli(mock_api, "retry", batch_id, cwd=tmp_path)
    assert_one_error_line(again, "409", f"Batch {batch_id} has no failed items to retry.")


def test_retry_prints_the_batch_running_again_and_how_to_follow_it(
    mock_api: str, tmp_path: Path
) -> None:
    batch_id = submitted_with_a_failure(mock_api, tmp_path, "unwaited")

    done = run_cli(mock_api, "retry", batch_id, "--include", "cancelled,expired", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{batch_id}  in_progress\n"
    assert f"Retrying 1 item of {batch_id}. Follow it: promptbatch watch {batch_id}" in (
        done.stderr
    )
    watched = run_cli(mock_api, "watch", batch_id, cwd=tmp_path)
    assert watched.returncode == 0, watched.stderr
    statuses = [json.loads(line)["status"] for line in watched.stdout.splitlines()]
    assert statuses == ["succeeded"] * 3
    status = run_cli(mock_api, "status", batch_id, cwd=tmp_path)
    assert "3/3 done: 3 succeeded, 0 failed, 0 cancelled, 0 pending" in status.stdout


def test_retry_errors_are_one_line(mock_api: str, mock: MockProvider, tmp_path: Path) -> None:
    running = httpx.post(
        f"{mock_api}/v1/batches", json={"prompts": ["held [[gate=cli-retry]]"], "model": "m"}
    )
    assert running.status_code == 202, running.text
    batch_id = running.json()["id"]
    try:
        busy = run_cli(mock_api, "retry", batch_id, cwd=tmp_path)
        assert_one_error_line(busy, "409", "only a final batch can be retried")
        bad = run_cli(mock_api, "retry", batch_id, "--include", "succeeded", cwd=tmp_path)
        assert_one_error_line(bad, "422", "include is a comma-separated list", "param: include")
    finally:
        mock.open_gate("cli-retry")
    unknown = run_cli(mock_api, "retry", "batch_" + "0" * 32, cwd=tmp_path)
    assert_one_error_line(unknown, "404", "No batch")

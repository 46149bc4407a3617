"""The client's retry request and the statuses it shows, against httpx.MockTransport (no
server); the `promptbatch` command's summaries of those statuses, run in process."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from rich.console import Console
from typer.testing import CliRunner

from promptbatch import APIError, Client, cli
from promptbatch._requests import retry_params
from promptbatch.display import BatchProgress
from shared.schemas import Batch, BatchStatus, ItemResult, RequestCounts
from tests.client.snapshots import SNAPSHOT_ID, snapshot


def ended(status: BatchStatus, **counts: int) -> Batch:
    """A final snapshot of 4 items, counted as given (the rest succeeded)."""
    batch = snapshot(status, 4, total=4)
    fields = {"failed": 0, "cancelled": 0, "expired": 0, **counts}
    batch.request_counts = RequestCounts(
        total=4, succeeded=4 - sum(fields.values()), pending=0, **fields
    )
    return batch


def scripted(
    answers: dict[tuple[str, str], httpx.Response],
) -> tuple[httpx.Client, list[httpx.Request]]:
    sent: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return answers.get((request.method, request.url.path), httpx.Response(404, json={}))

    return httpx.Client(transport=httpx.MockTransport(handle), base_url="http://api"), sent


def test_a_retry_posts_to_retry_with_include_comma_separated() -> None:
    running = snapshot("in_progress", 2, total=4)
    path = f"/v1/batches/{SNAPSHOT_ID}/retry"
    http, sent = scripted(
        {("POST", path): httpx.Response(202, json=running.model_dump(mode="json"))}
    )
    with Client(http=http) as pb:
        batch = pb.retry(SNAPSHOT_ID)
        assert batch.info == running
        assert batch.retry(include=["cancelled", "expired", "cancelled"]).status == "in_progress"
        batch.retry(include="expired")
    assert [request.url.params.get("include") for request in sent] == [
        None, "cancelled,expired", "expired",
    ]  # fmt: skip
    assert [request.method for request in sent] == ["POST"] * 3


def test_retry_params_leave_include_out_when_there_is_none() -> None:
    assert retry_params([]) == {}
    assert retry_params(("cancelled",)) == {"include": "cancelled"}


def test_a_retry_is_not_sent_again_after_a_503() -> None:
    """It may have been done: sending it again could retry items that failed since."""
    path = f"/v1/batches/{SNAPSHOT_ID}/retry"
    error = {"type": "service_unavailable", "message": "later", "param": None}
    unavailable = httpx.Response(503, json={"error": error})
    http, sent = scripted({("POST", path): unavailable})
    with Client(http=http, retry_backoff_s=0.01) as pb, pytest.raises(APIError) as refused:
        pb.retry(SNAPSHOT_ID)
    assert refused.value.status_code == 503
    assert len(sent) == 1


def test_the_progress_line_shows_cancelled_and_expired_items_once_there_are_any() -> None:
    bar = BatchProgress(Console(record=True, width=200, force_terminal=False))
    shown = []
    with bar:
        for batch in (ended("completed"), ended("cancelled", cancelled=1),
                      ended("expired", cancelled=1, expired=2)):  # fmt: skip
            bar.update(batch)
            shown.append(bar._progress.tasks[0].fields["stopped"])
    assert shown == ["", "cancelled 1", "cancelled 1  expired 2"]


# -- the command's summaries: the API scripted, the command run in process ---------------------


def run_watch(monkeypatch: pytest.MonkeyPatch, final: Batch) -> Any:
    """`promptbatch watch` of a batch that is already final as `final` (no events stream: it
    is read once), its results streamed as all succeeded."""
    item = ItemResult(index=0, custom_id="0", status="succeeded", output="ok")
    path = f"/v1/batches/{SNAPSHOT_ID}"
    http, _ = scripted(
        {
            ("GET", path): httpx.Response(200, json=final.model_dump(mode="json")),
            ("GET", f"{path}/results"): httpx.Response(200, text=item.model_dump_json() + "\n"),
        }
    )
    monkeypatch.setattr(cli, "Client", lambda *_, **__: Client(http=http))
    return CliRunner().invoke(cli.app, ["watch", SNAPSHOT_ID])


def test_a_completed_batch_with_failed_items_says_how_to_retry_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    done = run_watch(monkeypatch, ended("completed", failed=1))
    assert done.exit_code == 0, done.output
    assert f"{SNAPSHOT_ID} completed: 3 succeeded, 1 failed, 0 cancelled" in done.stderr
    assert f"run the failed ones again: promptbatch retry {SNAPSHOT_ID}" in done.stderr


def test_an_expired_batch_is_summed_up_and_fails_the_command_saying_how_to_run_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    done = run_watch(monkeypatch, ended("expired", expired=2))
    assert done.exit_code == 1
    assert f"{SNAPSHOT_ID} expired: 2 succeeded, 0 failed, 0 cancelled, 2 expired" in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: batch {SNAPSHOT_ID} expired: its completion window ended with 2 items not run "
        f"(run them: promptbatch retry {SNAPSHOT_ID} --include expired)"
    )
    assert (
        done.stdout.strip()
        == ItemResult(  # the results are written all the same
            index=0, custom_id="0", status="succeeded", output="ok"
        ).model_dump_json()
    )


def test_status_counts_expired_items_when_there_are_any(monkeypatch: pytest.MonkeyPatch) -> None:
    final = ended("expired", failed=1, expired=1)
    http, _ = scripted({("GET", f"/v1/batches/{SNAPSHOT_ID}"): httpx.Response(
        200, json=final.model_dump(mode="json"))})  # fmt: skip
    monkeypatch.setattr(cli, "Client", lambda *_, **__: Client(http=http))
    done = CliRunner().invoke(cli.app, ["status", SNAPSHOT_ID])
    assert done.exit_code == 0, done.output
    assert "4/4 done: 2 succeeded, 1 failed, 0 cancelled, 1 expired, 0 pending" in done.stdout

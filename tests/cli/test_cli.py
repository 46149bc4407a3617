"""The `promptbatch` command as a person runs it: a real subprocess against a real API process,
a real worker and Redis (and the OpenAI-compatible mock where a batch must be held open)."""

from __future__ import annotations

import csv
import json
import re
import secrets
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cli.runner import PROMPTBATCH, assert_one_error_line, cli_env, run_cli
from tests.helpers import MockProvider, Proc, free_port, wait_until
from tests.integration.flows import openai_worker
from worker.embeddings import offline_vector
from worker.llm import OFFLINE_PREFIX

pytestmark = pytest.mark.integration

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SUBMITTED = re.compile(r"Submitted (batch_\w+)")


def bar_frames(stderr: str) -> list[str]:
    """Each drawing of the progress bar, escape codes dropped, in the order drawn."""
    text = ANSI.sub("", stderr)
    return [frame.strip() for frame in re.split(r"[\r\n]", text) if "ETA" in frame]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def openai_line(custom_id: str, prompt: str, model: str = "gpt-4o-mini") -> str:
    body = {
        "model": model,
        "messages": [
            {"role": "system", "content": "Answer in one line."},
            {"role": "user", "content": prompt},
        ],
        "temperature": 0.2,
        "max_tokens": 64,
    }
    line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    return json.dumps(line)


def test_submit_wait_writes_100_results_in_order_and_the_bar_reaches_100_percent(
    live_api: Callable[..., str], workers: Callable[..., Proc], tmp_path: Path
) -> None:
    workers()
    url = live_api()
    prompts = [f"prompt number {i}" for i in range(100)]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")

    done = run_cli(url, "submit", "prompts.txt", "--wait", "-o", "out.jsonl", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    items = read_jsonl(tmp_path / "out.jsonl")
    assert [item["index"] for item in items] == list(range(100))
    assert [item["status"] for item in items] == ["succeeded"] * 100
    assert [item["output"] for item in items] == [f"{OFFLINE_PREFIX}{p}" for p in prompts]
    frames = bar_frames(done.stderr)
    assert frames, done.stderr
    last = frames[-1]
    assert "completed" in last
    assert "100%" in last
    assert "100/100" in last
    assert "failed 0" in last


def test_an_openai_batch_file_round_trips_in_openai_output_lines(
    live_api: Callable[..., str], workers: Callable[..., Proc], tmp_path: Path
) -> None:
    workers()
    url = live_api()
    ids = [f"request-{secrets.token_hex(3)}-{i}" for i in range(12)]
    lines = [openai_line(custom_id, f"question {custom_id}") for custom_id in ids]
    (tmp_path / "batch.jsonl").write_text("\n".join(lines) + "\n")

    done = run_cli(url, "submit", "batch.jsonl", "--wait", "-o", "out.jsonl", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [line["custom_id"] for line in out] == ids
    for line, custom_id in zip(out, ids, strict=True):
        assert set(line) == {"id", "custom_id", "response", "error"}
        assert line["id"].startswith("batch_req_")
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        assert line["response"]["request_id"]
        body = line["response"]["body"]
        assert body["object"] == "chat.completion"
        assert body["model"] == "gpt-4o-mini"
        message = body["choices"][0]["message"]
        assert message["role"] == "assistant"
        assert message["content"] == f"{OFFLINE_PREFIX}question {custom_id}"
        usage = body["usage"]
        assert usage["completion_tokens"] > 0
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    # The same file posted to the API as NDJSON, its results read back in OpenAI's format.
    posted = httpx.post(
        f"{url}/v1/batches",
        content=(tmp_path / "batch.jsonl").read_bytes(),
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert posted.status_code == 202, posted.text
    batch_id = posted.json()["id"]
    watched = run_cli(url, "watch", batch_id, "--format", "openai", cwd=tmp_path)
    assert watched.returncode == 0, watched.stderr
    again = [json.loads(line) for line in watched.stdout.splitlines()]
    assert [line["custom_id"] for line in again] == ids
    assert [line["response"]["body"]["choices"] for line in again] == [
        line["response"]["body"]["choices"] for line in out
    ]


def test_submit_status_list_and_results_of_a_batch(
    live_api: Callable[..., str], workers: Callable[..., Proc], tmp_path: Path
) -> None:
    workers()
    url = live_api()
    rows = [{"custom_id": "alpha", "prompt": "first"}, {"custom_id": "beta", "prompt": "second"}]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    submitted = run_cli(url, "submit", "prompts.jsonl", "--system", "Be brief.", cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.strip()
    assert batch_id.startswith("batch_")
    assert f"promptbatch watch {batch_id}" in submitted.stderr

    watched = run_cli(url, "watch", batch_id, cwd=tmp_path)
    assert watched.returncode == 0, watched.stderr
    items = [json.loads(line) for line in watched.stdout.splitlines()]
    assert [(i["custom_id"], i["output"]) for i in items] == [
        ("alpha", f"{OFFLINE_PREFIX}first"), ("beta", f"{OFFLINE_PREFIX}second"),
    ]  # fmt: skip

    status = run_cli(url, "status", batch_id, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert f"{batch_id}  completed" in status.stdout
    assert "2/2 done: 2 succeeded, 0 failed" in status.stdout
    as_json = json.loads(run_cli(url, "status", batch_id, "--json", cwd=tmp_path).stdout)
    assert as_json["request_counts"]["succeeded"] == 2

    listed = run_cli(url, "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith(f"{batch_id}  completed")

    results = run_cli(url, "results", batch_id, "-o", "results.jsonl", cwd=tmp_path)
    assert results.returncode == 0, results.stderr
    assert read_jsonl(tmp_path / "results.jsonl") == items


@pytest.fixture
def mock_api(live_api: Callable[..., str], workers: Callable[..., Proc], mock: MockProvider) -> str:
    """A real API and worker on the OpenAI path, against the mock provider; the API's URL."""
    openai_worker(workers, mock)
    return live_api(PROMPTBATCH_PROVIDER="openai", OPENAI_BASE_URL=f"{mock.url}/v1")


def _ignoring_sigint() -> None:
    """In the child before it runs: SIGINT ignored, as a parent using nohup or a shell
    script's `&` leaves it (Python then keeps it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("parent", ["terminal", "sigint-ignored"])
def test_ctrl_c_while_waiting_stops_watching_not_the_batch(
    mock_api: str, mock: MockProvider, tmp_path: Path, parent: str
) -> None:
    url = mock_api
    gate = f"cli-{secrets.token_hex(4)}"
    (tmp_path / "prompts.txt").write_text("".join(f"held {i} [[gate={gate}]]\n" for i in range(3)))
    stderr = tmp_path / "stderr.txt"
    args = [PROMPTBATCH, "submit", "prompts.txt", "--model", "mock-1", "--wait", "-o", "out.jsonl"]
    with stderr.open("w") as err:
        setup = _ignoring_sigint if parent == "sigint-ignored" else None
        watcher = subprocess.Popen(
            args, env=cli_env(url), cwd=tmp_path, stderr=err, preexec_fn=setup
        )
    try:
        found = wait_until(lambda: SUBMITTED.search(stderr.read_text()), what="the submission")
        assert found is not None
        batch_id = found.group(1)
        watcher.send_signal(signal.SIGINT)
        code = watcher.wait(timeout=60)
    finally:
        watcher.kill()
        watcher.wait()

    assert code == 130
    said = stderr.read_text()
    assert "Stopped watching" in said
    assert f"promptbatch watch {batch_id} -o out.jsonl" in said
    assert f"promptbatch status {batch_id}" in said
    assert not (tmp_path / "out.jsonl").exists()
    assert httpx.get(f"{url}/v1/batches/{batch_id}").json()["status"] in ("queued", "in_progress")

    mock.open_gate(gate)
    resumed = run_cli(url, "watch", batch_id, "-o", "out.jsonl", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    items = read_jsonl(tmp_path / "out.jsonl")
    assert [item["status"] for item in items] == ["succeeded"] * 3


def test_cancel_stops_a_running_batch(mock_api: str, mock: MockProvider, tmp_path: Path) -> None:
    url = mock_api
    (tmp_path / "prompts.txt").write_text("".join(f"slow {i} [[latency=300]]\n" for i in range(30)))
    submitted = run_cli(url, "submit", "prompts.txt", "--concurrency", "2", cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.strip()
    wait_until(lambda: int(str(mock.stats()["calls"])) >= 2, what="the first calls")

    cancelled = run_cli(url, "cancel", batch_id, cwd=tmp_path)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "cancel" in cancelled.stdout
    wait_until(
        lambda: httpx.get(f"{url}/v1/batches/{batch_id}").json()["status"] == "cancelled",
        what="the batch to be cancelled",
    )
    counts = httpx.get(f"{url}/v1/batches/{batch_id}").json()["request_counts"]
    assert counts["succeeded"] + counts["cancelled"] == 30
    assert counts["cancelled"] >= 20  # calls in flight finished; no new ones started
    again = run_cli(url, "cancel", batch_id, cwd=tmp_path)
    assert_one_error_line(again, "409", "already cancelled")


# -- errors: one line on stderr, a failing exit ---------------------------------------------------


def test_a_server_that_is_down_is_one_error_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = run_cli(url, "status", "batch_anything", cwd=tmp_path)
    assert_one_error_line(done, "cannot reach the promptbatch API", url, "PROMPTBATCH_URL")


def test_a_refused_api_key_is_one_error_line(live_api: Callable[..., str], tmp_path: Path) -> None:
    url = live_api(PROMPTBATCH_API_KEYS="the-right-key")
    done = run_cli(url, "--api-key", "wrong", "list", cwd=tmp_path)
    assert_one_error_line(done, "401", "The API key is not valid.", "--api-key")
    allowed = run_cli(url, "--api-key", "the-right-key", "list", cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stderr


def test_an_unknown_batch_is_one_error_line(live_api: Callable[..., str], tmp_path: Path) -> None:
    done = run_cli(live_api(), "status", "batch_nope", cwd=tmp_path)
    assert_one_error_line(done, "404", "No batch batch_nope.")


def test_a_rejected_submission_is_one_error_line_naming_the_field(
    live_api: Callable[..., str], tmp_path: Path
) -> None:
    (tmp_path / "prompts.txt").write_text("one\ntwo\n")
    done = run_cli(live_api(), "submit", "prompts.txt", "--concurrency", "1000", cwd=tmp_path)
    assert_one_error_line(done, "422", "max_concurrency is at most", "param: max_concurrency")


def test_a_bad_line_in_the_input_file_is_one_error_line_naming_it(tmp_path: Path) -> None:
    lines = [openai_line("a", "fine"), openai_line("b", "other").replace("chat/completions", "x")]
    (tmp_path / "batch.jsonl").write_text("\n".join(lines) + "\n")
    url = f"http://127.0.0.1:{free_port()}"  # refused before anything is sent
    done = run_cli(url, "submit", "batch.jsonl", cwd=tmp_path)
    assert_one_error_line(done, "batch.jsonl", "Line 2", "url must be /v1/chat/completions")


def test_an_openai_batch_file_of_embeddings_comes_back_as_vectors_in_lines_and_csv(
    live_api: Callable[..., str], workers: Callable[..., Proc], tmp_path: Path
) -> None:
    workers()  # the offline model: its embedding is a hash of the text
    url = live_api()
    texts = ["first text", "second text", "third text"]
    lines = [
        json.dumps({"custom_id": f"t{n}", "method": "POST", "url": "/v1/embeddings",
                    "body": {"model": "text-embedding-3-small", "input": text, "dimensions": 3}})
        for n, text in enumerate(texts)
    ]  # fmt: skip
    (tmp_path / "embed.jsonl").write_text("\n".join(lines) + "\n")

    done = run_cli(url, "submit", "embed.jsonl", "--wait", "-o", "out.jsonl", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [line["custom_id"] for line in out] == ["t0", "t1", "t2"]
    vectors = [line["response"]["body"]["data"][0]["embedding"] for line in out]
    assert vectors == [offline_vector(text, 3) for text in texts]

    done = run_cli(url, "submit", "embed.jsonl", "--wait", "-o", "out.csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with (tmp_path / "out.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["custom_id"] for row in rows] == ["t0", "t1", "t2"]
    assert [json.loads(row["embedding"]) for row in rows] == vectors
    assert {row["status"] for row in rows} == {"succeeded"}

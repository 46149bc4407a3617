"""The client's requests and error handling, against httpx.MockTransport (no server)."""

from __future__ import annotations

import json

import httpx
import pytest
from pydantic import ValidationError
from rich.console import Console

from promptbatch import (
    APIError,
    AsyncClient,
    Batch,
    BatchParams,
    Client,
    ItemResult,
    PromptItem,
    PromptTemplate,
)
from promptbatch._requests import batch_request
from promptbatch.display import BatchProgress
from shared.schemas import ErrorInfo, Pacing, ProviderBatch, ProviderBatchCounts
from tests.client.snapshots import snapshot


def recording(
    responses: dict[tuple[str, str], httpx.Response],
) -> tuple[Client, list[httpx.Request]]:
    sent: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return responses[(request.method, request.url.path)]

    http = httpx.Client(transport=httpx.MockTransport(handle), base_url="http://api")
    return Client(http=http), sent


def test_the_api_key_is_sent_as_a_bearer_key_on_every_request() -> None:
    with Client("http://api", api_key="sk-123") as keyed, Client("http://api") as anonymous:
        assert keyed.http.headers["authorization"] == "Bearer sk-123"
        assert "authorization" not in anonymous.http.headers


def test_submit_sends_the_batch_body_and_cancel_posts_to_cancel() -> None:
    queued, cancelling = snapshot("queued", 0), snapshot("cancelling", 1)
    client, sent = recording(
        {
            ("POST", "/v1/batches"): httpx.Response(202, json=queued.model_dump(mode="json")),
            ("POST", f"/v1/batches/{queued.id}/cancel"): httpx.Response(
                202, json=cancelling.model_dump(mode="json")
            ),
        }
    )
    batch = client.submit(
        ["a", {"custom_id": "x", "prompt": "b"}], model="m", params={"temperature": 0.5}
    )
    assert batch.cancel().status == "cancelling"
    assert batch.info.status == "cancelling"
    assert json.loads(sent[0].content) == {
        "prompts": ["a", {"prompt": "b", "custom_id": "x"}],
        "model": "m",
        "params": {"temperature": 0.5},
    }
    assert sent[0].headers["content-type"] == "application/json"


def test_mistakes_are_caught_before_anything_is_sent() -> None:
    client, sent = recording({})
    with pytest.raises(TypeError):
        client.submit("one string, not a list")
    with pytest.raises(ValidationError):
        client.submit([])
    with pytest.raises(ValidationError):
        client.submit(["a"], params={"temperature": 9})
    assert sent == []


def test_an_error_without_the_error_body_still_says_its_status() -> None:
    client, _ = recording({("GET", "/v1/batches/b"): httpx.Response(502, text="<html>bad")})
    with pytest.raises(APIError, match="502 http_error: HTTP 502"):
        client.get("b")


def queued_client(
    results: list[ItemResult] | None = None,
) -> tuple[Client, list[httpx.Request]]:
    """A client whose server accepts any batch and streams these results for it."""
    queued = snapshot("queued", 0)
    lines = "".join(item.model_dump_json() + "\n" for item in results or ())
    return recording(
        {
            ("POST", "/v1/batches"): httpx.Response(202, json=queued.model_dump(mode="json")),
            ("GET", f"/v1/batches/{queued.id}/results"): httpx.Response(200, text=lines),
        }
    )


def test_a_string_template_is_one_human_message_filled_from_each_row() -> None:
    client, sent = queued_client()
    rows = [{"custom_id": "r1", "review": "works {fine}"}, {"review": "ok"}]
    client.submit(template="Rate this: {review}", inputs=iter(rows), system="Be brief.")
    assert json.loads(sent[0].content) == {
        "template": {"messages": [["human", "Rate this: {review}"]]},
        "inputs": rows,
        "system": "Be brief.",
        "params": {},
    }


def test_role_pairs_and_a_prompt_template_make_the_same_request() -> None:
    pairs = [("system", "You rate {product} reviews."), ("human", "Review: {review}")]
    rows = [{"product": "lamp", "review": "bright"}]
    from_pairs = batch_request(template=pairs, inputs=rows)
    from_model = batch_request(template=PromptTemplate(messages=pairs), inputs=rows)
    assert from_pairs == from_model
    assert from_pairs.template is not None
    assert from_pairs.template.messages == pairs


def test_messages_and_params_items_are_sent_as_given() -> None:
    client, sent = queued_client()
    messages = [
        {"role": "system", "content": "Classify sentiment."},
        {"role": "user", "content": "I love it"},
        {"role": "assistant", "content": "positive"},
        {"role": "user", "content": "And this?"},
    ]
    item = {"custom_id": "few", "messages": messages, "params": {"temperature": 0}}
    client.submit([item, PromptItem(prompt="plain", params=BatchParams(max_tokens=5))])
    assert json.loads(sent[0].content)["prompts"] == [
        item, {"prompt": "plain", "params": {"max_tokens": 5}},
    ]  # fmt: skip


def test_a_bad_template_or_inputs_is_refused_before_anything_is_sent() -> None:
    client, sent = recording({})
    rows = [{"review": "ok"}]
    with pytest.raises(TypeError, match="template is a string"):
        client.submit(template=42, inputs=rows)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        client.submit(template=[("robot", "Beep {review}")], inputs=rows)
    with pytest.raises(TypeError, match="not one row"):
        client.submit(template="{review}", inputs={"review": "ok"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="with inputs"):
        client.submit(template="{review}")
    with pytest.raises(TypeError, match="not both"):
        client.submit(["a"], template="{review}", inputs=rows)
    with pytest.raises(TypeError, match="needs prompts"):
        client.submit()
    with pytest.raises(ValidationError):
        client.submit(template="{review}", inputs=[])
    with pytest.raises(ValidationError):
        client.submit(template="{review}", inputs=[{"review": ["not", "a", "value"]}])
    assert sent == []


def test_rows_are_input_rows_then_results_in_order() -> None:
    client, _ = queued_client(
        [
            ItemResult(
                index=0, custom_id="0", status="succeeded", output='{"stars": 4}',
                output_json={"stars": 4}, finish_reason="stop",
            ),
            ItemResult(
                index=1, custom_id="1", status="failed",
                error=ErrorInfo(type="invalid_output", message="not JSON"),
            ),
        ]
    )  # fmt: skip
    rows = [{"id": 1, "review": "good"}, {"id": 2, "review": "bad"}]
    batch = client.submit(template="Rate {review}", inputs=rows)
    assert list(batch.rows()) == [
        {
            "id": 1, "review": "good", "output": '{"stars": 4}', "status": "succeeded",
            "error": None, "output_json": {"stars": 4}, "finish_reason": "stop",
        },
        {
            "id": 2, "review": "bad", "output": None, "status": "failed",
            "error": "invalid_output: not JSON", "output_json": None, "finish_reason": None,
        },
    ]  # fmt: skip
    by_id = Batch(client, batch.info)
    assert [list(row)[:2] for row in by_id.rows()] == [["custom_id", "output"]] * 2


def test_rows_refuse_an_input_column_named_like_a_result_column() -> None:
    client, _ = queued_client()
    batch = client.submit(template="Rate {review}", inputs=[{"review": "good", "status": "new"}])
    with pytest.raises(ValueError, match="'status' has the name of a result column"):
        next(batch.rows())


def test_the_progress_line_says_when_the_provider_paces_the_batch() -> None:
    console = Console(record=True, width=200, force_terminal=False)
    bar = BatchProgress(console)
    lines = []
    with bar:
        for wait_s, answered_429 in ((0.0, 0), (1.5, 0), (1.5, 0), (1.5, 3), (1.5, 3)):
            batch = snapshot("in_progress", 1, total=10)
            batch.pacing = Pacing(wait_s=wait_s, provider_429s=answered_429)
            bar.update(batch)
            lines.append(bar._progress.tasks[0].fields["paced"])
    assert lines == [
        "", "paced by the provider's limits", "",
        "paced by the provider's limits, 3 answered 429", "",
    ]  # fmt: skip


def test_the_progress_line_says_what_the_provider_says_of_a_handed_off_batch() -> None:
    console = Console(record=True, width=200, force_terminal=False)
    bar = BatchProgress(console)
    batch = snapshot("in_progress", 0, total=3000)
    batch.mode = "provider_batch"
    batch.provider_batches = [
        ProviderBatch(id=f"batch_{n}", status=status,
                      request_counts=ProviderBatchCounts(total=1500, completed=done, failed=1))
        for n, (status, done) in enumerate((("in_progress", 700), ("validating", 498)))
    ]  # fmt: skip
    with bar:
        bar.update(batch)
    said = bar._progress.tasks[0].fields["paced"]
    assert said == "at the provider: in_progress, validating, 1,200 of 3,000"


async def test_the_clients_read_the_url_and_key_from_the_environment_as_the_cli_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROMPTBATCH_URL", "http://api.example:9000")
    monkeypatch.setenv("PROMPTBATCH_API_KEY", "from-env")
    with Client() as sync:
        async with AsyncClient() as aio:
            for http in (sync.http, aio.http):
                assert str(http.base_url) == "http://api.example:9000"
                assert http.headers["authorization"] == "Bearer from-env"
    with Client("http://given:1", api_key="given-key") as given:
        assert str(given.http.base_url) == "http://given:1"
        assert given.http.headers["authorization"] == "Bearer given-key"
    monkeypatch.delenv("PROMPTBATCH_URL")
    monkeypatch.delenv("PROMPTBATCH_API_KEY")
    with Client() as plain:
        assert str(plain.http.base_url) == "http://127.0.0.1:8000"
        assert "authorization" not in plain.http.headers

"""The client's requests and error handling, against httpx.MockTransport (no server)."""

from __future__ import annotations

import json

import httpx
import pytest
from pydantic import ValidationError

from client import APIError, Client
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

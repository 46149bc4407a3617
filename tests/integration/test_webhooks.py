"""Webhooks end to end: a real API process, real workers, the test Redis, and a receiver on
loopback (allowed by PROMPTBATCH_WEBHOOK_ALLOW_PRIVATE) that records what it is sent."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from standardwebhooks import Webhook

from shared import keys
from tests.helpers import Proc, bearer, wait_until
from tests.servers import Api, start_api

pytestmark = pytest.mark.integration

ALLOW = {"PROMPTBATCH_WEBHOOK_ALLOW_PRIVATE": "true"}
KEY_A, KEY_B = "key-a-5d0e7c2b9f184a63", "key-b-e21f4c8a07b94d15"


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: str
    status: int


class Receiver:
    """An HTTP server on a free loopback port, in threads of its own, that records every POST
    (path, headers in lower case, body, the status it answered). `answers[path]` lists the
    statuses to answer that path's first requests with (then 200); a 3xx says `Location:
    /landing`. A request to a path in `held` waits until `release` before it is answered."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.answers: dict[str, list[int]] = {}
        self.held: set[str] = set()
        self.released = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0"))).decode()
                headers = {name.lower(): value for name, value in self.headers.items()}
                with receiver._lock:
                    queued = receiver.answers.get(self.path)
                    status = queued.pop(0) if queued else 200
                    hold = self.path in receiver.held
                    receiver.received.append(Received(self.path, headers, body, status))
                if hold:
                    receiver.released.wait(60)
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/landing")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def first(self, path: str, n: int) -> Callable[[], list[Received]]:
        """A check for `wait_until`: the first `n` requests to `path`, once there are `n`."""

        def check() -> list[Received]:
            found = self.at(path)
            return found[:n] if len(found) >= n else []

        return check

    def stop(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


@pytest.fixture
def api(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., Api]]:
    started: list[Api] = []

    def start(**env: str) -> Api:
        started.append(start_api(redis_url, tmp_path / f"api{len(started)}.log", **env))
        return started[-1]

    yield start
    for one in started:
        one.proc.stop()


def _add_endpoint(api: Api, url: str, key: str | None = None, **body: Any) -> dict[str, Any]:
    headers = bearer(key) if key else {}
    response = httpx.post(f"{api.url}/v1/webhooks", json={"url": url, **body}, headers=headers)
    assert response.status_code == 201, response.text
    endpoint: dict[str, Any] = response.json()
    return endpoint


def _submit(api: Api, key: str | None = None, **body: Any) -> str:
    headers = bearer(key) if key else {}
    response = httpx.post(f"{api.url}/v1/batches", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _status(api: Api, batch_id: str, key: str | None = None) -> str:
    headers = bearer(key) if key else {}
    return str(httpx.get(f"{api.url}/v1/batches/{batch_id}", headers=headers).json()["status"])


def _verified(secret: str, received: Received) -> dict[str, Any]:
    """The event, its signature checked as a receiver checks it (Standard Webhooks)."""
    assert received.headers["content-type"] == "application/json"
    event: dict[str, Any] = Webhook(secret).verify(received.body, received.headers)
    return event


def _all_delivered(redis_url: str) -> bool:
    """Nothing left on the outbox and no delivery still scheduled."""
    with redis.Redis.from_url(redis_url) as r:
        return int(r.xlen(keys.OUTBOX)) == 0 and int(r.zcard(keys.WEBHOOK_OWNERS)) == 0


def test_a_receiver_gets_batch_completed_signed_and_again_with_the_same_id_after_a_500(
    redis_url: str, api: Callable[..., Api], workers: Callable[..., Proc], receiver: Receiver
) -> None:
    stack = api(**ALLOW)
    workers(**ALLOW)
    receiver.answers["/hook"] = [500]
    endpoint = _add_endpoint(stack, receiver.url("/hook"))
    batch_id = _submit(stack, prompts=["a", "b"])

    first, second = wait_until(
        receiver.first("/hook", 2), what="a delivery and its retry after the 500"
    )
    wait_until(lambda: _all_delivered(redis_url), what="the delivery to be done")
    assert (first.status, second.status) == (500, 200)
    events = [_verified(endpoint["secret"], r) for r in (first, second)]
    assert events[0] == events[1]  # the same event, attempted twice
    event = events[0]
    assert event["type"] == "batch.completed"
    assert event["object"] == "event"
    assert event["data"] == {"id": batch_id}
    assert event["id"].startswith("evt_")
    assert isinstance(event["created_at"], int)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == event["id"]
    assert int(second.headers["webhook-timestamp"]) >= int(first.headers["webhook-timestamp"])
    assert len(receiver.at("/hook")) == 2  # done with after the 2xx: nothing more is sent
    assert _status(stack, batch_id) == "completed"


def test_cancelled_and_expired_batches_are_sent_to_their_own_keys_endpoints_only(
    redis_url: str, api: Callable[..., Api], workers: Callable[..., Proc], receiver: Receiver
) -> None:
    stack = api(PROMPTBATCH_API_KEYS=f"{KEY_A},{KEY_B}", **ALLOW)
    every_a = _add_endpoint(stack, receiver.url("/a"), KEY_A)
    completed_a = _add_endpoint(stack, receiver.url("/a-completed"), KEY_A,
                                events=["batch.completed"])  # fmt: skip
    every_b = _add_endpoint(stack, receiver.url("/b"), KEY_B)

    # No worker runs yet: cancelling the queued batch makes it cancelled at once, and its
    # event waits in the outbox for a worker.
    cancelled = _submit(stack, KEY_A, prompts=["x", "y"])
    assert httpx.post(f"{stack.url}/v1/batches/{cancelled}/cancel",
                      headers=bearer(KEY_A)).json()["status"] == "cancelled"  # fmt: skip
    workers(PROMPTBATCH_OFFLINE_LATENCY_MS="200", **ALLOW)
    # 20 items one at a time at 200 ms each: the 1 s window ends first.
    expired = _submit(stack, KEY_A, prompts=[f"q{i}" for i in range(20)], max_concurrency=1,
                      completion_window=1)  # fmt: skip
    completed_b = _submit(stack, KEY_B, prompts=["z"])

    wait_until(lambda: len(receiver.at("/a")) >= 2 and receiver.at("/b"), timeout_s=60,
               what="the events of both keys")  # fmt: skip
    wait_until(lambda: _all_delivered(redis_url), what="every delivery to be done")
    assert _status(stack, expired, KEY_A) == "expired"
    to_a = {e["data"]["id"]: e["type"] for e in
            (_verified(every_a["secret"], r) for r in receiver.at("/a"))}  # fmt: skip
    assert to_a == {cancelled: "batch.cancelled", expired: "batch.expired"}
    to_b = [_verified(every_b["secret"], r) for r in receiver.at("/b")]
    assert [(e["data"]["id"], e["type"]) for e in to_b] == [(completed_b, "batch.completed")]
    assert receiver.at("/a-completed") == []  # it asked for batch.completed only
    assert completed_a["events"] == ["batch.completed"]


def test_a_delivery_that_keeps_failing_is_given_up_after_the_retry_window(
    redis_url: str, api: Callable[..., Api], workers: Callable[..., Proc], receiver: Receiver
) -> None:
    stack = api(**ALLOW)
    worker = workers(PROMPTBATCH_WEBHOOK_RETRY_S="3", **ALLOW)
    receiver.answers["/down"] = [302] + [500] * 1000  # a redirect first: it is not followed
    endpoint = _add_endpoint(stack, receiver.url("/down"))
    _submit(stack, prompts=["a"])

    wait_until(lambda: "given up" in worker.log(), what="the delivery to be given up")
    attempts = receiver.at("/down")
    assert len(attempts) >= 2
    assert attempts[0].status == 302
    assert receiver.at("/landing") == []
    assert len({r.headers["webhook-id"] for r in attempts}) == 1
    assert _all_delivered(redis_url)
    log = worker.log()
    given_up = next(line for line in log.splitlines() if "given up" in line)
    assert endpoint["id"] in given_up
    assert "batch.completed" in given_up
    assert "HTTP 500" in given_up
    assert endpoint["secret"] not in log
    assert endpoint["secret"].removeprefix("whsec_") not in log
    assert attempts[0].body not in log
    assert receiver.url("/down") not in log


def test_a_url_on_a_private_address_is_not_called_at_delivery(
    redis_url: str, api: Callable[..., Api], workers: Callable[..., Proc], receiver: Receiver
) -> None:
    stack = api(**ALLOW)  # the API allowed it; the worker does not
    worker = workers(PROMPTBATCH_WEBHOOK_RETRY_S="2")
    endpoint = _add_endpoint(stack, receiver.url("/private"))
    _submit(stack, prompts=["a"])

    wait_until(lambda: "given up" in worker.log(), what="the delivery to be given up")
    assert receiver.at("/private") == []
    assert _all_delivered(redis_url)
    refused = [line for line in worker.log().splitlines() if endpoint["id"] in line]
    assert refused
    assert all("refused" in line for line in refused)


def test_an_attempt_a_stopped_worker_had_in_flight_is_made_again_by_another(
    redis_url: str, api: Callable[..., Api], workers: Callable[..., Proc], receiver: Receiver
) -> None:
    stack = api(**ALLOW)
    first = workers(**ALLOW)
    receiver.held.add("/slow")
    endpoint = _add_endpoint(stack, receiver.url("/slow"))
    _submit(stack, prompts=["a"])
    wait_until(lambda: receiver.at("/slow"), what="the first attempt to arrive")

    assert first.stop(signal.SIGTERM) == 0  # while that attempt waits for its answer
    receiver.held.clear()
    workers(**ALLOW)
    attempts = wait_until(
        receiver.first("/slow", 2), what="the attempt made again by the other worker"
    )
    wait_until(lambda: _all_delivered(redis_url), what="the delivery to be done")
    assert len({r.headers["webhook-id"] for r in attempts}) == 1
    assert all(_verified(endpoint["secret"], r)["type"] == "batch.completed" for r in attempts)

"""What the clients send again, and what not: a scripted server behind httpx.MockTransport that
answers each request with the next of its answers (or breaks the connection), recording every
request it was sent. Both clients, one test each way."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Literal

import httpx
import pytest
from tenacity import RetryCallState, Retrying

from promptbatch import APIConnectionError, APIError, AsyncClient, Client
from promptbatch._retry import Backoff
from promptbatch.errors import retry_after
from shared.schemas import Batch
from tests.client.snapshots import SNAPSHOT_ID, snapshot

Mode = Literal["sync", "async"]
MODES: list[Mode] = ["sync", "async"]
#: Short waits between attempts, set as a person would: the constructor option.
BACKOFF_S = 0.001

QUEUED = snapshot("queued", 0)
Answer = httpx.Response | Callable[[httpx.Request], httpx.Response]


def queued(status: int = 202) -> httpx.Response:
    return httpx.Response(status, json=QUEUED.model_dump(mode="json"))


def error(status: int, type_: str, retry_after_s: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after_s} if retry_after_s is not None else {}
    body = {"error": {"type": type_, "message": f"it says {status}", "param": None}}
    return httpx.Response(status, json=body, headers=headers)


def unavailable(retry_after_s: str | None = "0") -> httpx.Response:
    return error(503, "service_unavailable", retry_after_s)


def refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("All connection attempts failed", request=request)


def hung_up(request: httpx.Request) -> httpx.Response:
    raise httpx.RemoteProtocolError("Server disconnected without sending a response.")


def reset(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadError("[Errno 104] Connection reset by peer", request=request)


@dataclass
class ScriptedServer:
    """Answers the requests for each (method, path) with its answers in turn."""

    script: dict[tuple[str, str], list[Answer]]
    sent: list[httpx.Request] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        answer = self.script[(request.method, request.url.path)].pop(0)
        return answer if isinstance(answer, httpx.Response) else answer(request)

    def keys(self) -> list[str | None]:
        """The Idempotency-Key of each submit sent, in order."""
        return [r.headers.get("idempotency-key") for r in self.sent if r.method == "POST"]


class Api:
    """One client of either kind over a ScriptedServer, driven with plain calls."""

    def __init__(self, mode: Mode, server: ScriptedServer, max_retries: int = 4) -> None:
        transport = httpx.MockTransport(server.handle)
        self.mode = mode
        if mode == "sync":
            http = httpx.Client(transport=transport, base_url="http://api")
            self.sync = Client(http=http, max_retries=max_retries, retry_backoff_s=BACKOFF_S)
        else:
            ahttp = httpx.AsyncClient(transport=transport, base_url="http://api")
            self.aio = AsyncClient(http=ahttp, max_retries=max_retries, retry_backoff_s=BACKOFF_S)

    def submit(self, prompts: list[str], idempotency_key: str | None = None) -> Batch:
        if self.mode == "sync":
            return self.sync.submit(prompts, idempotency_key=idempotency_key).info
        return asyncio.run(self.aio.submit(prompts, idempotency_key=idempotency_key)).info

    def get(self, batch_id: str) -> Batch:
        if self.mode == "sync":
            return self.sync.get(batch_id).info
        return asyncio.run(self.aio.get(batch_id)).info

    def cancel(self, batch_id: str) -> Batch:
        if self.mode == "sync":
            return self.sync.get(batch_id).cancel()

        async def cancel() -> Batch:
            return await (await self.aio.get(batch_id)).cancel()

        return asyncio.run(cancel())


SUBMIT = ("POST", "/v1/batches")
READ = ("GET", f"/v1/batches/{SNAPSHOT_ID}")
CANCEL = ("POST", f"/v1/batches/{SNAPSHOT_ID}/cancel")


@pytest.mark.parametrize("mode", MODES)
def test_a_503_is_sent_again_with_the_same_key_and_body(mode: Mode) -> None:
    server = ScriptedServer({SUBMIT: [unavailable("0"), unavailable(None), queued()]})
    batch = Api(mode, server).submit(["a", "b"])

    assert batch.id == QUEUED.id
    keys = server.keys()
    assert len(keys) == 3
    assert len(set(keys)) == 1
    assert keys[0]
    assert len({r.content for r in server.sent}) == 1
    assert json.loads(server.sent[0].content)["prompts"] == ["a", "b"]


@pytest.mark.parametrize("mode", MODES)
def test_broken_connections_are_sent_again_with_the_same_key(mode: Mode) -> None:
    server = ScriptedServer({SUBMIT: [refused, hung_up, reset, queued(200)]})
    batch = Api(mode, server).submit(["a"])

    assert batch.id == QUEUED.id
    keys = server.keys()
    assert len(keys) == 4
    assert len(set(keys)) == 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("status", "type_"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (409, "conflict"),
        (413, "request_too_large"),
        (422, "invalid_request_error"),
        (429, "rate_limited"),
    ],
)
def test_a_4xx_is_not_sent_again(mode: Mode, status: int, type_: str) -> None:
    server = ScriptedServer({SUBMIT: [error(status, type_, "0"), queued()]})
    with pytest.raises(APIError) as raised:
        Api(mode, server).submit(["a"])

    assert (raised.value.status_code, raised.value.type) == (status, type_)
    assert len(server.sent) == 1


@pytest.mark.parametrize("mode", MODES)
def test_other_server_errors_are_not_sent_again(mode: Mode) -> None:
    server = ScriptedServer({SUBMIT: [error(500, "internal_error"), queued()]})
    with pytest.raises(APIError, match="500 internal_error"):
        Api(mode, server).submit(["a"])
    assert len(server.sent) == 1


@pytest.mark.parametrize("mode", MODES)
def test_after_the_last_attempt_its_error_is_raised(mode: Mode) -> None:
    down = ScriptedServer({SUBMIT: [unavailable()] * 3})
    with pytest.raises(APIError) as raised:
        Api(mode, down, max_retries=2).submit(["a"])
    assert raised.value.status_code == 503
    assert len(set(down.keys())) == 1
    assert len(down.sent) == 3

    gone = ScriptedServer({SUBMIT: [refused] * 5})
    with pytest.raises(APIConnectionError, match="cannot reach the promptbatch API at http://api"):
        Api(mode, gone).submit(["a"])
    assert len(gone.sent) == 5  # max_retries=4 by default: five attempts

    once = ScriptedServer({SUBMIT: [hung_up, queued()]})
    with pytest.raises(APIConnectionError):
        Api(mode, once, max_retries=0).submit(["a"])
    assert len(once.sent) == 1


@pytest.mark.parametrize("mode", MODES)
def test_two_submits_send_two_keys_and_a_given_key_is_sent_as_given(mode: Mode) -> None:
    server = ScriptedServer({SUBMIT: [queued(), queued(), unavailable(), queued(200)]})
    api = Api(mode, server)
    api.submit(["a"])
    api.submit(["a"])
    api.submit(["a"], idempotency_key="nightly-2026-11-25")

    first, second, *given = server.keys()
    assert first
    assert second
    assert first != second
    assert given == ["nightly-2026-11-25", "nightly-2026-11-25"]


@pytest.mark.parametrize("mode", MODES)
def test_reads_are_retried_but_a_cancel_is_not(mode: Mode) -> None:
    server = ScriptedServer(
        {
            READ: [unavailable(), refused, queued(200), queued(200)],
            CANCEL: [unavailable(), queued(202)],
        }
    )
    api = Api(mode, server)
    assert api.get(SNAPSHOT_ID).id == SNAPSHOT_ID
    assert len(server.sent) == 3

    with pytest.raises(APIError) as raised:
        api.cancel(SNAPSHOT_ID)
    assert raised.value.status_code == 503
    assert [(r.method, r.url.path) for r in server.sent[3:]] == [READ, CANCEL]


@pytest.mark.parametrize("mode", MODES)
def test_a_read_is_not_retried_on_a_404(mode: Mode) -> None:
    server = ScriptedServer({READ: [error(404, "not_found"), queued(200)]})
    with pytest.raises(APIError, match="404 not_found"):
        Api(mode, server).get(SNAPSHOT_ID)
    assert len(server.sent) == 1


def test_retry_options_must_make_sense() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        Client(max_retries=-1)
    with pytest.raises(ValueError, match="retry_backoff_s"):
        AsyncClient(retry_backoff_s=-0.5)


def test_retry_after_is_read_in_seconds_or_as_a_date() -> None:
    assert retry_after("5") == 5.0
    assert retry_after("1.5") == 1.5
    assert retry_after("-3") == 0.0
    assert retry_after(None) is None
    assert retry_after("") is None
    assert retry_after("soon") is None
    assert retry_after("nan") is None
    later = retry_after(format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True))
    assert later is not None
    assert 3000 < later <= 3600
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def after_failure(attempt: int, exc: BaseException) -> RetryCallState:
    """The state tenacity hands a wait strategy after attempt `attempt` raised `exc`."""
    state = RetryCallState(Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    state.set_exception((type(exc), exc, None))
    return state


def test_the_wait_is_jittered_exponential_and_honours_retry_after_up_to_a_cap() -> None:
    wait = Backoff(0.5)
    dropped = APIConnectionError("cannot reach")
    windows = [max(wait(after_failure(n, dropped)) for _ in range(200)) for n in range(1, 7)]
    for window, top in zip(windows, [0.5, 1, 2, 4, 4, 4], strict=True):
        assert 0 <= window <= top
    assert min(wait(after_failure(1, dropped)) for _ in range(200)) < 0.5  # jittered

    def busy(seconds: float | None) -> APIError:
        return APIError(503, "service_unavailable", "Redis", None, retry_after_s=seconds)

    assert wait(after_failure(1, busy(1.5))) == 1.5
    assert wait(after_failure(1, busy(60))) == 2.0  # capped at 4 steps of the backoff
    assert wait(after_failure(4, busy(0))) <= 4
    assert wait(after_failure(1, busy(None))) <= 0.5

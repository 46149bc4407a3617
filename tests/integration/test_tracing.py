"""LangSmith tracing in a real worker: off whatever LANGSMITH_TRACING says, unless
PROMPTBATCH_ALLOW_TRACING; the tracing endpoint is a receiver of the test's own."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.settings import TRACING_VARS
from tests.conftest import api_client, make_settings
from tests.helpers import Proc
from tests.integration.flows import submit, wait_final

pytestmark = pytest.mark.integration

FAKE_KEY = "lsv2_pt_fake-key-for-the-test"


class _Receiver:
    """A stand-in tracing endpoint: answers every request with `{}`, remembers each one."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        seen = self.requests

        class Handler(BaseHTTPRequestHandler):
            def answer(self) -> None:
                seen.append(f"{self.command} {self.path}")
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = do_PATCH = do_PUT = answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    found = _Receiver()
    yield found
    found.stop()


async def _run_a_batch_and_stop(redis_url: str, worker: Proc) -> None:
    """A batch on the offline model, then SIGTERM: the worker exits, having sent (langsmith
    drains its queue at exit) whatever it was going to send."""
    async with api_client(make_settings(redis_url)) as client:
        batch = await submit(client, prompts=["a secret prompt", "another one"])
        done = await wait_final(client, batch["id"])
    assert done["status"] == "completed"
    assert worker.stop() == 0


def _tracing_env(receiver: _Receiver, **extra: str) -> dict[str, str]:
    """Tracing asked for by LANGSMITH_TRACING (and `extra`), whatever this process's
    environment says of it (empty is unset, to langsmith and langchain_core alike)."""
    return {
        **dict.fromkeys(TRACING_VARS, ""),
        "LANGSMITH_TRACING": "true",
        "LANGSMITH_ENDPOINT": receiver.url,
        "LANGSMITH_API_KEY": FAKE_KEY,
        **extra,
    }


async def test_tracing_allowed_sends_the_runs_to_the_endpoint(
    redis_url: str, workers: Callable[..., Proc], receiver: _Receiver
) -> None:
    """What the test below relies on: a traced batch reaches the endpoint by the time the
    worker has exited."""
    worker = workers(**_tracing_env(receiver, PROMPTBATCH_ALLOW_TRACING="true"))
    await _run_a_batch_and_stop(redis_url, worker)
    assert receiver.requests
    assert "tracing is on (LANGSMITH_TRACING)" in worker.log()


async def test_tracing_asked_for_but_not_allowed_sends_nothing(
    redis_url: str, workers: Callable[..., Proc], receiver: _Receiver
) -> None:
    worker = workers(**_tracing_env(receiver, LANGCHAIN_TRACING_V2="true"))
    await _run_a_batch_and_stop(redis_url, worker)
    assert receiver.requests == []
    log = worker.log()
    refused = [line for line in log.splitlines() if "tracing asked for by" in line]
    assert len(refused) == 1
    assert "LANGCHAIN_TRACING_V2, LANGSMITH_TRACING" in refused[0]
    assert FAKE_KEY not in log

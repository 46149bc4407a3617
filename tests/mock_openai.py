"""An OpenAI-compatible chat-completions server for tests and the offline compose profile.

Behaviour is asked for inside the prompt, so every item of a batch can differ:
- `[[latency=120]]`        answer after 120 ms (else a random latency in --latency-ms MIN MAX)
- `[[status=400]]`         answer that HTTP status with an OpenAI-style error body
- `[[quote]]`              with `status`: the error message quotes the prompt, as some servers do
- `[[fail=429:2]]`         fail the first 2 calls of this exact prompt with 429, then succeed
- `[[retry_after=1]]`      with a 429, ask the client to wait 1 s (else 0); a client that comes
                           back sooner is counted in `early_retries`
- `[[flaky=503:10]]`       fail 10% of calls at random with 503
- `[[hang]]`               never answer (until the client gives up)
- `[[gate=name]]`          wait until `POST /_gates/name` opens the gate
The reply is `mock reply to: <prompt>`; usage counts whitespace-separated words.
`GET /_stats` reports calls, calls in flight, the most in flight at once, answers by status and
early retries; `POST /_reset`.

Run: `python -m tests.mock_openai --port 8001 [--latency-ms 5 200]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

DIRECTIVE = re.compile(r"\[\[(\w+)(?:=([\w:.\-]+))?\]\]")


@dataclass
class MockState:
    latency_ms: tuple[float, float] = (0.0, 0.0)
    calls: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    attempts: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    not_before: dict[str, float] = field(default_factory=dict)
    early_retries: int = 0
    gates: dict[str, asyncio.Event] = field(default_factory=dict)

    def gate(self, name: str) -> asyncio.Event:
        return self.gates.setdefault(name, asyncio.Event())


def _error(status: int, message: str, retry_after: str = "0") -> JSONResponse:
    kind = {400: "invalid_request_error", 429: "rate_limit_exceeded"}.get(status, "server_error")
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    headers = {"retry-after": retry_after} if status == 429 else None
    return JSONResponse(body, status_code=status, headers=headers)


def _completion(model: str, prompt: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    content = f"mock reply to: {prompt}"
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
    completion_tokens = len(content.split())
    return {
        "id": f"chatcmpl-{random.getrandbits(48):x}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


async def _wait(request: Request, event: asyncio.Event) -> bool:
    """Wait for `event`; False if the client went away first (then the call is not in flight)."""
    while not event.is_set():
        if await request.is_disconnected():
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), 0.05)
    return True


def create_app(state: MockState) -> Starlette:
    async def chat(request: Request) -> JSONResponse:
        payload = await request.json()
        messages = payload.get("messages", [])
        prompt = next(
            (str(m["content"]) for m in reversed(messages) if m.get("role") == "user"), ""
        )
        directives = dict(DIRECTIVE.findall(prompt))
        state.calls += 1
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            return await _answer(request, payload, prompt, messages, directives)
        finally:
            state.in_flight -= 1

    async def _answer(
        request: Request,
        payload: dict[str, Any],
        prompt: str,
        messages: list[Any],
        directives: dict[str, str],
    ) -> JSONResponse:
        waits_for = state.gate(directives["gate"]) if "gate" in directives else None
        if "hang" in directives:
            waits_for = asyncio.Event()  # never set
        if waits_for is not None and not await _wait(request, waits_for):
            return _error(499, "the client went away")  # nobody reads this; not counted
        if "latency" in directives:
            delay_ms = float(directives["latency"])
        else:
            delay_ms = random.uniform(*state.latency_ms)
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        state.attempts[prompt] += 1
        if time.monotonic() < state.not_before.get(prompt, 0.0):
            state.early_retries += 1
        if "status" in directives:
            status = int(directives["status"])
            state.statuses[status] += 1
            message = f"mock provider refused this prompt with {status}"
            return _error(status, f"{message}: {prompt}" if "quote" in directives else message)
        if "fail" in directives:
            code, times = directives["fail"].split(":")
            if state.attempts[prompt] <= int(times):
                retry_after = directives.get("retry_after", "0")
                state.not_before[prompt] = time.monotonic() + float(retry_after)
                state.statuses[int(code)] += 1
                return _error(int(code), f"mock provider failed with {code}", retry_after)
        if "flaky" in directives:
            code, percent = directives["flaky"].split(":")
            if random.uniform(0, 100) < float(percent):
                state.statuses[int(code)] += 1
                return _error(int(code), f"mock provider failed with {code} at random")
        state.statuses[200] += 1
        return JSONResponse(_completion(payload.get("model", "mock"), prompt, messages))

    async def stats(_: Request) -> JSONResponse:
        return JSONResponse(
            {
                "calls": state.calls,
                "in_flight": state.in_flight,
                "max_in_flight": state.max_in_flight,
                "statuses": {str(k): v for k, v in state.statuses.items()},
                "early_retries": state.early_retries,
            }
        )

    async def reset(_: Request) -> JSONResponse:
        state.calls = state.max_in_flight = state.early_retries = 0
        state.attempts.clear()
        state.not_before.clear()
        state.statuses.clear()
        return JSONResponse({"ok": True})

    async def open_gate(request: Request) -> JSONResponse:
        state.gate(request.path_params["name"]).set()
        return JSONResponse({"ok": True})

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def models(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "mock", "object": "model"}]})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models),
            Route("/_stats", stats),
            Route("/_reset", reset, methods=["POST"]),
            Route("/_gates/{name}", open_gate, methods=["POST"]),
            Route("/healthz", health),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--latency-ms", type=float, nargs=2, default=(0.0, 0.0))
    args = parser.parse_args()
    state = MockState(latency_ms=(args.latency_ms[0], args.latency_ms[1]))
    uvicorn.run(
        create_app(state),
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=1,  # hung requests never end by themselves
    )


if __name__ == "__main__":
    main()

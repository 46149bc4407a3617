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
- `[[refuse]]`             answer with `refusal` set and no content (finish_reason `stop`)
- `[[filtered]]`           answer empty content with finish_reason `content_filter`
- `[[tool_call]]`          with `tools`: call a tool even though `tool_choice` does not demand it
- `[[not_json]]`           in JSON mode: answer the plain-text reply instead
- `[[wrong_json]]`         in JSON mode: answer `{"unexpected": true}`
- `[[echo_json]]`          in JSON mode: answer the JSON string `"echo: <prompt>"`, directives
                           left out, whatever the schema says
- `[[cut]]`                in JSON mode: cut the JSON to its first half, finish_reason `length`
- `[[cached=5]]`           report 5 cached prompt tokens (at most prompt_tokens; else 0)
- `[[reasoning=7]]`        report 7 reasoning tokens (else 0)
The prompt is the text of the last `user` message (a string, or its `text` parts joined).
The reply is `mock reply to: <prompt>`; usage counts whitespace-separated words (of string
contents and `text` parts). From the request body:
- `max_completion_tokens` / `max_tokens` (the first given): a longer reply is cut to that many
  words, finish_reason `length` (not in JSON mode)
- `response_format` `json_object`: the content is `{"reply": "mock reply to: <prompt>"}`;
  `json_schema`: a value built to validate against the schema (const, enum, anyOf/oneOf, type)
- `tools` with `tool_choice` `"required"` or naming a function (or `[[tool_call]]`): one call
  of that tool (else the first) with arguments built from its parameters, finish_reason
  `tool_calls`
Rate limits, as OpenAI enforces them (each 0 = off; `--rpm N --tpm N --burst-s S`, or at run
time `POST /_limits {"rpm", "tpm", "burst_s", "headers"}`, any subset): one continuous token
bucket per limit, capacity max(1, limit * burst_s / 60), refilled at limit / 60 per second,
starting full (a changed limit starts full again). A call costs 1 request and prompt_tokens +
max_completion_tokens / max_tokens (else the reply's completion_tokens) tokens, checked on
arrival (before latency and gates). If either bucket is short, the call gets an OpenAI-style 429
(`type` `requests` or `tokens`, `retry-after` in whole seconds, `retry-after-ms`) and consumes
nothing; a cost above the whole capacity waits its full refill time. Each chat answer carries
`x-ratelimit-{limit,remaining,reset}-{requests,tokens}` for the limits on (unless `headers` is
false); reset is OpenAI's duration format (`120ms`, `1.5s`, `6m0s`).
`GET /_stats` reports calls, calls in flight, the most in flight at once, answers by status,
early retries, calls refused by the limits (`rate_limited`) and the `limits`; `GET /_requests`
lists the request bodies received (the newest 100,000); `POST /_reset` clears all those and
refills the buckets, but keeps the limits.

OpenAI's Files and Batch API is served too (`tests/mock_batches.py`), Anthropic's Messages API
(`tests/mock_anthropic.py`), and `/v1/embeddings`:
each input's vector is `mock_vector(input, dimensions or 8)` (as floats, or base64 of
little-endian float32s as the OpenAI SDK asks by default), usage counts the inputs' words; an
input with `[[status=400]]` has the whole request refused with that status (as OpenAI refuses
a request for one bad input), and so has any request for more than 3,072 `dimensions`;
`[[latency=N]]` delays it. Its requests are in `/_requests` too.

Run: `python -m tests.mock_openai --port 8001 [--latency-ms 5 200] [--rpm N --tpm N --burst-s S]`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import math
import random
import re
import struct
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests import mock_anthropic
from tests.mock_batches import BatchApi
from tests.mock_batches import routes as batch_routes

DIRECTIVE = re.compile(r"\[\[(\w+)(?:=([\w:.\-]+))?\]\]")
MAX_RECORDED = 100_000
JSON_MODES = ("json_object", "json_schema")
REFUSAL = "mock refuses this request"
EPSILON = 1e-9  # float slack: a client that waits exactly retry-after-ms gets in
Kind = Literal["requests", "tokens"]
ABBREVIATION: dict[Kind, str] = {"requests": "RPM", "tokens": "TPM"}


def _recorded() -> deque[Any]:
    return deque(maxlen=MAX_RECORDED)


def _ms(seconds: float) -> int:
    """Whole milliseconds, rounded up (after float noise is rounded away)."""
    return max(0, math.ceil(round(seconds * 1000, 6)))


def format_duration(seconds: float) -> str:
    """A duration as OpenAI's rate-limit headers write it: `120ms`, `1.5s`, `6m0s`."""
    ms = _ms(seconds)
    if ms < 1000:
        return f"{ms}ms"
    minutes, ms = divmod(ms, 60_000)
    text = f"{ms / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{minutes}m{text}" if minutes else text


@dataclass
class Bucket:
    """A continuous token bucket for a per-minute limit; full until first used."""

    per_minute: int
    burst_s: float
    level: float | None = None  # None: full
    at: float = 0.0

    @property
    def capacity(self) -> float:
        return max(1.0, self.per_minute * self.burst_s / 60)

    @property
    def rate(self) -> float:
        return self.per_minute / 60

    def available(self, now: float) -> float:
        if self.level is None:
            return self.capacity
        return min(self.capacity, self.level + (now - self.at) * self.rate)

    def wait(self, cost: float, now: float) -> float:
        """Seconds until `cost` fits (0: it fits now); a cost above capacity waits its refill."""
        if cost > self.capacity + EPSILON:
            return cost / self.rate
        short = cost - self.available(now)
        return short / self.rate if short > EPSILON else 0.0

    def take(self, cost: float, now: float) -> None:
        self.level = max(0.0, self.available(now) - cost)
        self.at = now

    def remaining(self, now: float) -> int:
        return math.floor(self.available(now) + EPSILON)

    def until_full(self, now: float) -> float:
        return (self.capacity - self.available(now)) / self.rate


@dataclass
class MockState:
    latency_ms: tuple[float, float] = (0.0, 0.0)
    rpm: int = 0
    tpm: int = 0
    burst_s: float = 1.0
    limit_headers: bool = True
    clock: Callable[[], float] = time.monotonic
    buckets: dict[Kind, Bucket] = field(default_factory=dict)
    rate_limited: int = 0
    calls: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    attempts: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    not_before: dict[str, float] = field(default_factory=dict)
    early_retries: int = 0
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    requests: deque[Any] = field(default_factory=_recorded)

    def gate(self, name: str) -> asyncio.Event:
        return self.gates.setdefault(name, asyncio.Event())

    def limit(self, kind: Kind) -> int:
        return self.rpm if kind == "requests" else self.tpm

    def bucket(self, kind: Kind) -> Bucket | None:
        """The bucket of a limit that is on (a new, full one when the limit changed)."""
        limit = self.limit(kind)
        if not limit:
            return None
        current = self.buckets.get(kind)
        if current is None or (current.per_minute, current.burst_s) != (limit, self.burst_s):
            current = self.buckets[kind] = Bucket(limit, self.burst_s)
        return current

    def limits(self) -> dict[str, Any]:
        return {
            "rpm": self.rpm,
            "tpm": self.tpm,
            "burst_s": self.burst_s,
            "headers": self.limit_headers,
        }


def _error(status: int, message: str, retry_after: str = "0") -> JSONResponse:
    kind = {400: "invalid_request_error", 429: "rate_limit_exceeded"}.get(status, "server_error")
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    headers = {"retry-after": retry_after} if status == 429 else None
    return JSONResponse(body, status_code=status, headers=headers)


def _texts(content: Any) -> list[str]:
    """The texts of a message's content: the string itself, or its `text` parts."""
    if content is None:
        return []
    if isinstance(content, list):
        return [
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        ]
    return [str(content)]


def _prompt(messages: list[dict[str, Any]]) -> str:
    user: dict[str, Any] = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    return "".join(_texts(user.get("content")))


def _words(texts: list[str]) -> int:
    return sum(len(text.split()) for text in texts)


def instance(schema: Any) -> Any:
    """A value that validates against the JSON schema `schema` (for the common keywords)."""
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return instance(schema[key][0])
    return _typed_instance(schema)


def _typed_instance(schema: dict[str, Any]) -> Any:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return {name: instance(sub) for name, sub in schema.get("properties", {}).items()}
    if kind == "array":
        count = max(int(schema.get("minItems", 0)), 1 if "items" in schema else 0)
        return [instance(schema.get("items")) for _ in range(count)]
    scalars = {"string": "mock", "integer": 1, "number": 1.5, "boolean": True}
    return scalars.get(kind) if isinstance(kind, str) else None


def _message(content: str | None, **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content, "refusal": None, **extra}


def _named_tool(payload: dict[str, Any]) -> str | None:
    """The function `tool_choice` names, if it names one."""
    choice = payload.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        return str(choice["function"]["name"])
    return None


def _wants_tool(payload: dict[str, Any], directives: dict[str, str]) -> bool:
    demanded = payload.get("tool_choice") == "required" or _named_tool(payload) is not None
    return bool(payload.get("tools")) and (demanded or "tool_call" in directives)


def _tool_call(payload: dict[str, Any]) -> dict[str, Any]:
    tools: list[dict[str, Any]] = [t.get("function", {}) for t in payload["tools"]]
    name = _named_tool(payload) or tools[0].get("name")
    function: dict[str, Any] = next((f for f in tools if f.get("name") == name), {})
    parameters = function.get("parameters")
    arguments = json.dumps({} if parameters is None else instance(parameters))
    call_id = f"call_{random.getrandbits(48):012x}"
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    return _message(None, tool_calls=[call])


def _json_mode(payload: dict[str, Any]) -> str | None:
    response_format = payload.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    return kind if kind in JSON_MODES else None


def _json_content(
    payload: dict[str, Any], mode: str, reply: str, directives: dict[str, str]
) -> str:
    if "not_json" in directives:
        return reply
    if "wrong_json" in directives:
        return json.dumps({"unexpected": True})
    if "echo_json" in directives:
        return json.dumps(
            "echo: " + DIRECTIVE.sub("", reply.removeprefix("mock reply to: ")).strip()
        )
    if mode == "json_object":
        return json.dumps({"reply": reply})
    return json.dumps(instance(payload["response_format"].get("json_schema", {}).get("schema")))


def _max_tokens(payload: dict[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        if payload.get(key) is not None:
            return int(payload[key])
    return None


def _text_reply(payload: dict[str, Any], reply: str) -> tuple[dict[str, Any], str]:
    limit = _max_tokens(payload)
    words = reply.split()
    if limit is not None and len(words) > limit:
        return _message(" ".join(words[:limit])), "length"
    return _message(reply), "stop"


def _reply(
    payload: dict[str, Any], prompt: str, directives: dict[str, str]
) -> tuple[dict[str, Any], str]:
    """The assistant message and its finish_reason."""
    reply = f"mock reply to: {prompt}"
    if "refuse" in directives:
        return _message(None, refusal=REFUSAL), "stop"
    if "filtered" in directives:
        return _message(""), "content_filter"
    if _wants_tool(payload, directives):
        return _tool_call(payload), "tool_calls"
    mode = _json_mode(payload)
    if mode is None:
        return _text_reply(payload, reply)
    content = _json_content(payload, mode, reply, directives)
    if "cut" in directives:
        return _message(content[: len(content) // 2]), "length"
    return _message(content), "stop"


def _said(message: dict[str, Any]) -> list[str]:
    """What the message says, for completion_tokens: content, refusal and tool arguments."""
    calls = message.get("tool_calls") or []
    texts = [message.get("content") or "", message.get("refusal") or ""]
    return texts + [call["function"]["arguments"] for call in calls]


def _prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(_words(_texts(m.get("content"))) for m in messages)


def _usage(
    messages: list[dict[str, Any]], message: dict[str, Any], directives: dict[str, str]
) -> dict[str, Any]:
    prompt_tokens = _prompt_tokens(messages)
    completion_tokens = _words(_said(message))
    cached = min(max(int(directives.get("cached", "0")), 0), prompt_tokens)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": int(directives.get("reasoning", "0"))},
    }


def _completion(payload: dict[str, Any], prompt: str, directives: dict[str, str]) -> dict[str, Any]:
    message, finish_reason = _reply(payload, prompt, directives)
    return {
        "id": f"chatcmpl-{random.getrandbits(48):x}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": payload.get("model", "mock"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": _usage(payload.get("messages", []), message, directives),
    }


def _token_cost(payload: dict[str, Any], prompt: str, directives: dict[str, str]) -> int:
    """What a call costs in TPM: prompt tokens + the most it may answer (else what it answers)."""
    max_out = _max_tokens(payload)
    if max_out is None:
        max_out = _words(_said(_reply(payload, prompt, directives)[0]))
    return _prompt_tokens(payload.get("messages", [])) + max_out


def _limit_headers(state: MockState, now: float) -> dict[str, str]:
    headers: dict[str, str] = {}
    if not state.limit_headers:
        return headers
    for kind in ABBREVIATION:
        bucket = state.bucket(kind)
        if bucket is not None:
            headers[f"x-ratelimit-limit-{kind}"] = str(bucket.per_minute)
            headers[f"x-ratelimit-remaining-{kind}"] = str(bucket.remaining(now))
            headers[f"x-ratelimit-reset-{kind}"] = format_duration(bucket.until_full(now))
    return headers


def _rate_limited(
    state: MockState, kind: Kind, bucket: Bucket, cost: int, wait: float, now: float
) -> JSONResponse:
    limit, remaining = bucket.per_minute, bucket.remaining(now)
    message = (
        f"Rate limit reached for mock on {kind} per min ({ABBREVIATION[kind]}): "
        f"Limit {limit}, Used {max(0, limit - remaining)}, Requested {cost}. "
        f"Please try again in {format_duration(wait)}."
    )
    body = {
        "error": {"message": message, "type": kind, "param": None, "code": "rate_limit_exceeded"}
    }
    wait_ms = _ms(wait)
    headers = {"retry-after": str(math.ceil(wait_ms / 1000)), "retry-after-ms": str(wait_ms)}
    headers.update(_limit_headers(state, now))
    return JSONResponse(body, status_code=429, headers=headers)


def _admit(
    state: MockState, payload: dict[str, Any], prompt: str, directives: dict[str, str]
) -> tuple[JSONResponse | None, dict[str, str]]:
    """(a 429, or None and the rate-limit headers after taking this call's cost)."""
    now = state.clock()
    costs: list[tuple[Kind, Bucket, int]] = []
    for kind in ABBREVIATION:
        bucket = state.bucket(kind)
        if bucket is not None:
            cost = 1 if kind == "requests" else _token_cost(payload, prompt, directives)
            costs.append((kind, bucket, cost))
    waits = [(bucket.wait(cost, now), kind, bucket, cost) for kind, bucket, cost in costs]
    longest = max(waits, key=lambda w: w[0], default=None)  # the first of equal waits
    if longest is not None and longest[0] > 0:
        wait, kind, bucket, cost = longest
        return _rate_limited(state, kind, bucket, cost, wait, now), {}
    for _, bucket, cost in costs:
        bucket.take(cost, now)
    return None, _limit_headers(state, now)


def _set_limits(state: MockState, fields: Any) -> str | None:
    """Apply a `POST /_limits` body; the reason it is invalid (then nothing changes), or None."""
    if not isinstance(fields, dict):
        return "the body must be a JSON object"
    unknown = set(fields) - set(state.limits())
    if unknown:
        return f"unknown fields: {sorted(unknown)}"
    for name in ("rpm", "tpm"):
        value = fields.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"{name} must be an integer >= 0"
    burst_s = fields.get("burst_s", 1.0)
    if isinstance(burst_s, bool) or not isinstance(burst_s, int | float) or burst_s <= 0:
        return "burst_s must be a number > 0"
    if not isinstance(fields.get("headers", True), bool):
        return "headers must be true or false"
    state.rpm = fields.get("rpm", state.rpm)
    state.tpm = fields.get("tpm", state.tpm)
    state.burst_s = float(fields.get("burst_s", state.burst_s))
    state.limit_headers = fields.get("headers", state.limit_headers)
    return None


async def _wait(request: Request, event: asyncio.Event) -> bool:
    """Wait for `event`; False if the client went away first (then the call is not in flight)."""
    while not event.is_set():
        if await request.is_disconnected():
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), 0.05)
    return True


def _line_answer(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A Batch API line's answer: as the chat endpoint answers it, less waiting and failing
    at random (`[[status=N]]` is that answer; the rest a completion)."""
    prompt = _prompt(body.get("messages", []))
    directives = dict(DIRECTIVE.findall(prompt))
    if "status" in directives:
        status = int(directives["status"])
        answer = _error(status, f"mock provider refused this prompt with {status}")
        return status, json.loads(bytes(answer.body))
    return 200, _completion(body, prompt, directives)


#: The longest embedding the mock's model makes (a request for more is a 400).
MOCK_MOST_DIMENSIONS = 3072


def mock_vector(text: str, dimensions: int = 8) -> list[float]:
    """The mock's embedding of `text`: deterministic, and different for different texts."""
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        digest = hashlib.sha256(f"mock-{counter}:{text}".encode()).digest()
        values += [round(byte / 255 - 0.5, 4) for byte in digest]
        counter += 1
    return values[:dimensions]


def _embedding_answer(payload: dict[str, Any]) -> JSONResponse:
    inputs = payload.get("input")
    texts = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts) or not texts:
        return _error(400, "input must be a string or a list of strings (this mock takes text)")
    for text in texts:
        directives = dict(DIRECTIVE.findall(text))
        if "status" in directives:
            status = int(directives["status"])
            return _error(status, f"mock provider refused an input with {status}")
    dimensions = int(payload.get("dimensions") or 8)
    if dimensions > MOCK_MOST_DIMENSIONS:  # as a model refuses a length it lacks: every request
        return _error(400, f"dimensions is at most {MOCK_MOST_DIMENSIONS} for this model")
    data = []
    for index, text in enumerate(texts):
        vector = mock_vector(text, dimensions)
        if payload.get("encoding_format") == "base64":
            packed: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        else:
            packed = vector
        data.append({"object": "embedding", "index": index, "embedding": packed})
    tokens = sum(max(1, len(text.split())) for text in texts)
    return JSONResponse({
        "object": "list", "data": data, "model": payload.get("model", "mock-embedding"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })  # fmt: skip


def create_app(state: MockState) -> Starlette:
    batch_api = BatchApi(answer=_line_answer)

    async def messages(request: Request) -> JSONResponse:
        payload = await mock_anthropic.read(request)
        state.requests.append(payload)
        state.calls += 1
        delay_ms = random.uniform(*state.latency_ms)
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        response = mock_anthropic.answer(payload, state.attempts)
        state.statuses[response.status_code] += 1
        return response

    async def embeddings(request: Request) -> JSONResponse:
        payload = await request.json()
        state.requests.append(payload)
        state.calls += 1
        texts = payload.get("input") if isinstance(payload.get("input"), list) else []
        delays = [
            float(d.get("latency", 0)) for d in (dict(DIRECTIVE.findall(str(t))) for t in texts)
        ]
        delay_ms = max(delays, default=0) or random.uniform(*state.latency_ms)
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        response = _embedding_answer(payload)
        state.statuses[response.status_code] += 1
        return response

    async def chat(request: Request) -> JSONResponse:
        payload = await request.json()
        state.requests.append(payload)
        prompt = _prompt(payload.get("messages", []))
        directives = dict(DIRECTIVE.findall(prompt))
        state.calls += 1
        refused, headers = _admit(state, payload, prompt, directives)
        if refused is not None:
            state.rate_limited += 1
            state.statuses[429] += 1
            return refused
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            response = await _answer(request, payload, prompt, directives)
        finally:
            state.in_flight -= 1
        response.headers.update(headers)
        return response

    async def _answer(
        request: Request,
        payload: dict[str, Any],
        prompt: str,
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
        return JSONResponse(_completion(payload, prompt, directives))

    async def stats(_: Request) -> JSONResponse:
        return JSONResponse(
            {
                "calls": state.calls,
                "in_flight": state.in_flight,
                "max_in_flight": state.max_in_flight,
                "statuses": {str(k): v for k, v in state.statuses.items()},
                "early_retries": state.early_retries,
                "rate_limited": state.rate_limited,
                "limits": state.limits(),
            }
        )

    async def requests(_: Request) -> JSONResponse:
        return JSONResponse({"data": list(state.requests)})

    async def reset(_: Request) -> JSONResponse:
        state.calls = state.max_in_flight = state.early_retries = state.rate_limited = 0
        state.buckets.clear()  # full again; the limits stay
        state.attempts.clear()
        state.not_before.clear()
        state.statuses.clear()
        state.requests.clear()
        batch_api.reset()
        return JSONResponse({"ok": True})

    async def limits(request: Request) -> JSONResponse:
        try:
            fields = await request.json()
        except ValueError:
            fields = None
        invalid = _set_limits(state, fields)
        if invalid is not None:
            return _error(400, f"invalid limits: {invalid}")
        return JSONResponse(state.limits())

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
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/v1/models", models),
            Route("/_stats", stats),
            Route("/_requests", requests),
            Route("/_reset", reset, methods=["POST"]),
            Route("/_limits", limits, methods=["POST"]),
            Route("/_gates/{name}", open_gate, methods=["POST"]),
            Route("/healthz", health),
            *batch_routes(batch_api),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--latency-ms", type=float, nargs=2, default=(0.0, 0.0))
    parser.add_argument("--rpm", type=int, default=0, help="requests per minute (0: no limit)")
    parser.add_argument("--tpm", type=int, default=0, help="tokens per minute (0: no limit)")
    parser.add_argument("--burst-s", type=float, default=1.0, help="bucket size in seconds")
    args = parser.parse_args()
    if args.rpm < 0 or args.tpm < 0 or args.burst_s <= 0:
        parser.error("--rpm and --tpm must be >= 0, --burst-s > 0")
    state = MockState(
        latency_ms=(args.latency_ms[0], args.latency_ms[1]),
        rpm=args.rpm,
        tpm=args.tpm,
        burst_s=args.burst_s,
    )
    uvicorn.run(
        create_app(state),
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=1,  # hung requests never end by themselves
    )


if __name__ == "__main__":
    main()

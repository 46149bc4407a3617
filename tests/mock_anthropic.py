"""Anthropic's Messages API (`POST /v1/messages`), served by the mock provider beside OpenAI's
endpoints, for LangChain's real `ChatAnthropic` over HTTP.

As Anthropic answers: the system prompt is a top-level `system` (a string or text blocks) and
`messages` hold only user and assistant turns; `max_tokens` is required (a 400 without it);
the reply is `mock reply to: <last user text>`, cut to `max_tokens` words with `stop_reason`
`max_tokens` (else `end_turn`); usage counts words of the system prompt and every turn, with
`cache_read_input_tokens` from `[[cached=N]]`. Each answer carries
`anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}` (reset an RFC 3339 time), and
`[[status=N]]` in the last user turn answers that status with Anthropic's error body
(`{"type": "error", "error": {"type", "message"}}`; 529 is `overloaded_error`), `[[fail=N:K]]`
the first K calls of that prompt. Requests are recorded with the OpenAI ones (`/_requests`,
each marked `"api": "messages"`).
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

DIRECTIVE = re.compile(r"\[\[(\w+)(?:=([\w:.\-]+))?\]\]")
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}
#: The limits the mock says it has (it does not enforce them: pacing only reads them).
LIMIT_REQUESTS, LIMIT_TOKENS = 4000, 400_000


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [
            str(b.get("text", ""))
            for b in content
            if isinstance(b, dict) and b.get("type") == "text"
        ]
    return []


def _error(status: int, message: str) -> JSONResponse:
    kind = _ERROR_TYPES.get(status, "api_error")
    body = {"type": "error", "error": {"type": kind, "message": message}}
    headers = {"retry-after": "0"} if status in (429, 529) else None
    return JSONResponse(body, status_code=status, headers=headers)


def _limit_headers() -> dict[str, str]:
    reset = (datetime.now(UTC) + timedelta(seconds=60)).isoformat().replace("+00:00", "Z")
    return {
        "anthropic-ratelimit-requests-limit": str(LIMIT_REQUESTS),
        "anthropic-ratelimit-requests-remaining": str(LIMIT_REQUESTS - 1),
        "anthropic-ratelimit-requests-reset": reset,
        "anthropic-ratelimit-tokens-limit": str(LIMIT_TOKENS),
        "anthropic-ratelimit-tokens-remaining": str(LIMIT_TOKENS - 100),
        "anthropic-ratelimit-tokens-reset": reset,
    }


def answer(payload: dict[str, Any], attempts: Counter[str]) -> JSONResponse:
    """Anthropic's answer to a Messages request (`attempts` counts calls per prompt)."""
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        return _error(400, "messages: at least one message is required")
    if not isinstance(payload.get("max_tokens"), int):
        return _error(400, "max_tokens: Field required")
    if any(m.get("role") not in ("user", "assistant") for m in messages):
        return _error(400, "messages: roles must be user or assistant (system is top-level)")
    last_user: dict[str, Any] = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    prompt = "".join(_texts(last_user.get("content")))
    directives = dict(DIRECTIVE.findall(prompt))
    attempts[prompt] += 1
    if "status" in directives:
        status = int(directives["status"])
        return _error(status, f"mock provider refused this prompt with {status}")
    if "fail" in directives:
        code, times = directives["fail"].split(":")
        if attempts[prompt] <= int(times):
            return _error(int(code), f"mock provider failed with {code}")
    words = f"mock reply to: {prompt}".split()
    stop_reason = "end_turn"
    if len(words) > payload["max_tokens"]:
        words, stop_reason = words[: payload["max_tokens"]], "max_tokens"
    said = _texts(payload.get("system")) + [t for m in messages for t in _texts(m.get("content"))]
    input_tokens = sum(len(t.split()) for t in said)
    cached = min(int(directives.get("cached", "0")), input_tokens)
    body = {
        "id": f"msg_mock{attempts.total()}",
        "type": "message",
        "role": "assistant",
        "model": payload.get("model", "claude-mock"),
        "content": [{"type": "text", "text": " ".join(words)}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens - cached,
            "output_tokens": len(words),
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0,
        },
    }
    return JSONResponse(body, headers=_limit_headers())


async def read(request: Request) -> dict[str, Any]:
    payload: dict[str, Any] = await request.json()
    payload["api"] = "messages"
    payload["headers"] = {
        k: v
        for k, v in request.headers.items()
        if k in ("x-api-key", "authorization", "anthropic-version")
    }
    return payload

"""Sending a request again when that is safe: a submit carries an `Idempotency-Key`, so a repeat
returns the batch the first one made; reads change nothing. Only a broken connection and a 503
(Redis unreachable) are worth another try; any other answer is final."""

from __future__ import annotations

from typing import Any

import httpx
from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_base, wait_random_exponential

from promptbatch.errors import APIConnectionError, APIError

#: Retries after the first try: five attempts in all.
MAX_RETRIES = 4
#: The first retry waits up to this long; each further one up to twice as long as the last.
BACKOFF_S = 0.5
#: The longest window of one wait, in steps of the backoff (0.5, 1, 2, 4 s by default).
MAX_WAIT_STEPS = 8
#: A 503's `Retry-After` is waited out up to this many steps of the backoff (2 s by default), so
#: the default retries wait at most 2 + 2 + 2 + 4 = 10 s in all.
RETRY_AFTER_STEPS = 4
#: The answer worth another try: the API could not reach Redis.
RETRY_STATUS = 503
#: Transport failures worth another try: not connected, the connection broke (while sending or
#: reading), the server closed it before answering, or it answered too slowly.
RETRY_TRANSPORT = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)


def retryable(exc: BaseException) -> bool:
    """Whether what a request raised is worth sending it again (with the same key)."""
    if isinstance(exc, APIError):
        return exc.status_code == RETRY_STATUS
    return isinstance(exc, APIConnectionError) and isinstance(exc.__cause__, RETRY_TRANSPORT)


class Backoff(wait_base):
    """Exponential backoff with full jitter (a random wait up to 0.5, 1, 2, 4 s with the default
    `backoff_s`), no shorter than a 503's `Retry-After` up to `RETRY_AFTER_STEPS` steps."""

    def __init__(self, backoff_s: float) -> None:
        self.jittered = wait_random_exponential(
            multiplier=backoff_s, max=backoff_s * MAX_WAIT_STEPS
        )
        self.retry_after_cap_s = backoff_s * RETRY_AFTER_STEPS

    def __call__(self, retry_state: RetryCallState) -> float:
        wait = self.jittered(retry_state)
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, APIError) and exc.retry_after_s is not None:
            wait = max(wait, min(exc.retry_after_s, self.retry_after_cap_s))
        return wait


def check_options(max_retries: int, backoff_s: float) -> None:
    if max_retries < 0:
        raise ValueError(f"max_retries is 0 or more, not {max_retries}")
    if backoff_s < 0:
        raise ValueError(f"retry_backoff_s is 0 or more, not {backoff_s}")


def _policy(max_retries: int, backoff_s: float) -> dict[str, Any]:
    """After the last attempt, what it raised is raised (APIConnectionError or APIError)."""
    return {
        "stop": stop_after_attempt(max_retries + 1),
        "wait": Backoff(backoff_s),
        "retry": retry_if_exception(retryable),
        "reraise": True,
    }


def retrying(max_retries: int, backoff_s: float) -> Retrying:
    return Retrying(**_policy(max_retries, backoff_s))


def async_retrying(max_retries: int, backoff_s: float) -> AsyncRetrying:
    return AsyncRetrying(**_policy(max_retries, backoff_s))

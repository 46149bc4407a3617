"""The blocking client: `Client(url).submit(prompts)` returns a `Batch` to wait on and read."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from types import TracebackType
from typing import Any, Unpack

import httpx
from rich.console import Console

from promptbatch import _requests as req
from promptbatch import _retry
from promptbatch.display import BatchProgress
from promptbatch.errors import check, reaching
from promptbatch.events import watch
from promptbatch.rows import check_columns, flat_row, input_columns, result_columns
from shared import schemas
from shared.output_lines import OutputLine, output_line
from shared.schemas import BatchCreate, BatchList, ItemResult, RowValue


class Client:
    """A promptbatch API client. Close it when done (or use `with Client(...) as pb:`).

    A submit, and a read, that meets a broken connection or a 503 is sent again up to
    `max_retries` times, waiting a random time up to `retry_backoff_s`, then twice that, and so
    on (a 503's `Retry-After` is honoured, capped); a submit carries one `Idempotency-Key` for
    all its attempts, so a retry never makes a second batch."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        http: httpx.Client | None = None,
        max_retries: int = _retry.MAX_RETRIES,
        retry_backoff_s: float = _retry.BACKOFF_S,
    ) -> None:
        _retry.check_options(max_retries, retry_backoff_s)
        self.http = http or httpx.Client(
            base_url=req.base_url(base_url), headers=req.default_headers(api_key), timeout=timeout
        )
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def submit(
        self,
        prompts: Iterable[req.Prompt] | None = None,
        *,
        template: req.Template | None = None,
        inputs: Iterable[req.Row] | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[req.BatchOptions],
    ) -> Batch:
        """Submit one batch: `prompts` (strings, or `{"custom_id", "prompt" or "messages",
        "params"}`), or a `template` (a human message's text, `(role, text)` pairs or a
        `PromptTemplate`) filled from each row of `inputs`. `options` are `endpoint`, `model`,
        `system`, `params`, `max_concurrency` and `metadata`. `idempotency_key` (default: a
        fresh random one) is sent with every attempt: the same key and body give the same
        batch."""
        request = req.batch_request(prompts, template=template, inputs=inputs, **options)
        return self.create(request, idempotency_key=idempotency_key)

    def create(self, request: BatchCreate, *, idempotency_key: str | None = None) -> Batch:
        """Submit a batch built as the API's own `BatchCreate` body (see `submit`)."""
        headers = req.submit_headers(idempotency_key)
        response = self._send(
            "POST", "/v1/batches", retry=True, content=req.body(request), headers=headers
        )
        info = schemas.Batch.model_validate_json(response.content)
        return Batch(self, info, inputs=request.inputs)

    def get(self, batch_id: str) -> Batch:
        """The batch with this id, as it is now."""
        return Batch(self, self._read(batch_id))

    def retry(self, batch_id: str, *, include: Iterable[str] = ()) -> Batch:
        """Run a final batch's failed items again in place (see `Batch.retry`); returns its
        handle, running again."""
        path = req.batch_path(batch_id, "/retry")
        response = self._send("POST", path, params=req.retry_params(include))
        return Batch(self, schemas.Batch.model_validate_json(response.content))

    def list(self, *, limit: int = 20, after: str | None = None) -> BatchList:
        """Batches, newest first; pass `next_after` as `after` for the next page."""
        query: dict[str, str | int] = {"limit": limit} | ({"after": after} if after else {})
        response = self._send("GET", "/v1/batches", retry=True, params=query)
        return BatchList.model_validate_json(response.content)

    def _send(
        self, method: str, path: str, *, retry: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """One request, checked; with `retry` (safe to repeat: a read, or a submit with its
        key), sent again after a broken connection or a 503 (see `Client`)."""
        if not retry:
            return self._attempt(method, path, **kwargs)
        retrying = _retry.retrying(self.max_retries, self.retry_backoff_s)
        return retrying(self._attempt, method, path, **kwargs)

    def _attempt(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with reaching(self.http.base_url):
            return check(self.http.request(method, path, **kwargs))

    def _read(self, batch_id: str) -> schemas.Batch:
        response = self._send("GET", req.batch_path(batch_id), retry=True)
        return schemas.Batch.model_validate_json(response.content)


class Batch:
    """A submitted batch. `info` is its last snapshot (status, counts, usage)."""

    def __init__(
        self,
        client: Client,
        info: schemas.Batch,
        *,
        inputs: Sequence[Mapping[str, RowValue]] | None = None,
    ) -> None:
        self.client = client
        self.info = info
        #: The rows of a template batch, as submitted (None for a handle from `get`).
        self.inputs = inputs

    def __repr__(self) -> str:
        return f"<Batch {self.id} {self.info.status}>"

    @property
    def id(self) -> str:
        return self.info.id

    def refresh(self) -> schemas.Batch:
        self.info = self.client._read(self.id)
        return self.info

    def wait(
        self, *, progress: bool = False, console: Console | None = None, poll_s: float = req.POLL_S
    ) -> Batch:
        """Block until the batch is final, with a live progress bar when `progress`."""
        bar = BatchProgress(console) if progress else None
        with reaching(self.client.http.base_url), bar or nullcontext():
            for snapshot in watch(self.client.http, self.id, poll_s):
                self.info = snapshot
                if bar is not None:
                    bar.update(snapshot)
        return self

    def results(self) -> Iterator[ItemResult]:
        """Every item in input order, streamed: one line read at a time, never all at once."""
        http = self.client.http
        headers = {"Accept": req.NDJSON}
        with (
            reaching(http.base_url),
            http.stream("GET", req.batch_path(self.id, "/results"), headers=headers) as response,
        ):
            if response.is_error:
                response.read()
                check(response)
            for line in response.iter_lines():
                if line:
                    yield ItemResult.model_validate_json(line)

    def rows(self) -> Iterator[dict[str, Any]]:
        """One flat dict per item, in input order, streamed: its input row's columns (when this
        handle was submitted with `inputs`), else `custom_id`; then `output`, `status`, `error`
        (`"<type>: <message>"`), `output_json` and `finish_reason`; an `/v1/embeddings`
        batch's: `embedding` (a list of floats), `status` and `error`. For `pd.DataFrame(...)`."""
        if self.inputs is not None:
            check_columns(input_columns(self.inputs))
        for item in self.results():
            yield flat_row(item, self.inputs, result_columns(self.info))

    def openai_results(self) -> Iterator[OutputLine]:
        """Finished items as OpenAI Batch output lines (pending items are left out)."""
        for item in self.results():
            if (line := output_line(item, self.info)) is not None:
                yield line

    def retry(self, include: Iterable[str] = ()) -> schemas.Batch:
        """Run this final batch's failed items again in place, and its `cancelled` or
        `expired` ones when `include` names them; succeeded items are kept, never sent again.
        The batch is running again: `wait()` for its new end. An APIError 409 if it is not
        final or has nothing to retry. Not sent again after a broken connection (it may have
        been done): read the batch to see."""
        self.info = self.client.retry(self.id, include=include).info
        return self.info

    def cancel(self) -> schemas.Batch:
        """Ask the batch to stop: no new items start; finished results are kept."""
        response = self.client._send("POST", req.batch_path(self.id, "/cancel"))
        self.info = schemas.Batch.model_validate_json(response.content)
        return self.info

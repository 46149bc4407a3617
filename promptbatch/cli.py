"""The `promptbatch` command line: submit a file of prompts (or of rows to fill a template), watch
it with a live progress bar, and write its results: promptbatch JSONL, OpenAI Batch output, CSV."""

from __future__ import annotations

import csv
import functools
import inspect
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TextIO

import typer
from pydantic import ValidationError
from rich.console import Console

from promptbatch._requests import DEFAULT_URL, batch_request
from promptbatch.errors import APIConnectionError, APIError, PromptbatchError
from promptbatch.inputs import read_batch_file, read_rows
from promptbatch.rows import EMBEDDING_COLUMNS, check_columns, flat_row, input_columns
from promptbatch.sync import Batch, Client
from shared.errors import AppError
from shared.schemas import EMBEDDINGS, BatchCreate
from shared.schemas import Batch as BatchInfo

app = typer.Typer(
    help="Run large LLM prompt batches on a promptbatch server.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Exit status after Ctrl-C, as a shell reports a process stopped by SIGINT.
INTERRUPTED = 130


class Format(StrEnum):
    promptbatch = "promptbatch"
    openai = "openai"
    csv = "csv"


#: A CSV's columns after the input row's (or `custom_id`).
CSV_RESULTS = ("output", "status", "error", "output_json")


@dataclass(frozen=True)
class Target:
    """Where the API is, and how the command was told so (to repeat it in hints)."""

    url: str
    api_key: str | None
    url_given: bool


Output = Annotated[
    Path | None,
    typer.Option(
        "--output", "-o", help="Write results to this file (default: stdout).", dir_okay=False
    ),
]
FormatOption = Annotated[
    Format | None,
    typer.Option(
        "--format",
        help="Results as promptbatch items (JSONL), OpenAI Batch output lines, or CSV: the input "
        "rows' columns (else custom_id), then output, status, error, output_json "
        "\\[default: csv when -o ends in .csv; openai for an OpenAI input file; else promptbatch].",
        show_default=False,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the raw JSON.")]
#: The connection options, taken after the command's name too (`promptbatch list --url ...`).
UrlOption = Annotated[
    str | None,
    typer.Option("--url", help="The promptbatch API (as before the command).", show_default=False),
]
KeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        "--key",
        help="Sent as a bearer key (as before the command).",
        show_default=False,
    ),
]
WaitOption = Annotated[bool, typer.Option("--wait", help="Watch progress, then write results.")]


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[
        str, typer.Option(envvar="PROMPTBATCH_URL", help="The promptbatch API.")
    ] = DEFAULT_URL,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            "--key",
            envvar="PROMPTBATCH_API_KEY",
            help="Sent as a bearer key.",
            show_default=False,
        ),
    ] = None,
) -> None:
    source = ctx.get_parameter_source("url")
    given = source is not None and source.name == "COMMANDLINE"
    ctx.obj = Target(url=url, api_key=api_key, url_given=given)


def _connected(command: Callable[..., None]) -> Callable[..., None]:
    """The command, taking --url and --api-key (--key) after its name too; given there, they
    win over those given before it."""
    signature = inspect.signature(command, eval_str=True)
    keyword = inspect.Parameter.KEYWORD_ONLY
    extra = [
        inspect.Parameter("url", keyword, default=None, annotation=UrlOption),
        inspect.Parameter("api_key", keyword, default=None, annotation=KeyOption),
    ]

    @functools.wraps(command)
    def run(*args: Any, url: str | None = None, api_key: str | None = None, **kwargs: Any) -> None:
        ctx: typer.Context = kwargs["ctx"]
        target = ctx.find_object(Target)
        assert target is not None
        ctx.obj = Target(
            url=url or target.url,
            api_key=api_key or target.api_key,
            url_given=target.url_given or url is not None,
        )
        command(*args, **kwargs)

    run.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), *extra]
    )
    run.__annotations__ = {**command.__annotations__, "url": UrlOption, "api_key": KeyOption}
    return run


@app.command()
@_connected
def submit(
    ctx: typer.Context,
    file: Annotated[
        Path,
        typer.Argument(
            help="One prompt a line; JSONL of {custom_id, prompt or messages, params}; an OpenAI "
            "Batch input file; or rows for --template: a .csv file (a prompt column is the "
            "prompt when there is no --template) or JSONL of objects.",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    model: Annotated[str | None, typer.Option(help="The model (default: the server's).")] = None,
    system: Annotated[str | None, typer.Option(help="A system prompt for every prompt.")] = None,
    template: Annotated[
        str | None,
        typer.Option(
            help="Fill this prompt (one user message) from each row of FILE: {column} is the "
            "row's value, {{ and }} are braces; @PATH reads it from a file. A custom_id column "
            "names the items.",
            show_default=False,
        ),
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Most calls in flight at once for this batch.")
    ] = None,
    wait: WaitOption = False,
    output: Output = None,
    fmt: FormatOption = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            help="Sent as the Idempotency-Key: submitting the same file again with the same key "
            "gives the batch the first submit made \\[default: a fresh random key; either way, "
            "retries after a dropped connection or a 503 send the same one].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Submit a file of prompts, or of rows to fill --template, as one batch; print its id (or,
    with --wait, its results: with -o out.csv, each input row with its output)."""
    _results_need_wait(wait, output, fmt)
    request, default = _read(file, template)
    request = _override(request, model, system, concurrency)
    fmt = fmt or _default_format(output, default)
    if wait and fmt is Format.csv and request.inputs is not None:
        try:
            check_columns(input_columns(request.inputs), CSV_RESULTS)
        except ValueError as exc:
            _fail(f"{file}: {exc}")
    with _session(ctx) as client:
        batch = client.create(request, idempotency_key=idempotency_key)
        count = batch.info.request_counts.total
        if not wait:
            typer.echo(batch.id)
            follow = _command(ctx, "watch", batch.id)
            _note(f"Submitted {batch.id} ({_plural(count, 'prompt')}). Follow it: {follow}")
            return
        intro = f"Submitted {batch.id} ({_plural(count, 'prompt')})."
        _follow(ctx, batch, output, fmt, intro=intro)


@app.command()
@_connected
def watch(
    ctx: typer.Context, batch_id: str, output: Output = None, fmt: FormatOption = None
) -> None:
    """Show a batch's progress until it is final, then write its results."""
    with _session(ctx) as client:
        _follow(ctx, client.get(batch_id), output, fmt or _default_format(output))


@app.command()
@_connected
def status(ctx: typer.Context, batch_id: str, as_json: AsJson = False) -> None:
    """Show a batch's status, counts and usage."""
    with _session(ctx) as client:
        info = client.get(batch_id).info
    if as_json:
        typer.echo(info.model_dump_json(indent=2))
        return
    counts, usage = info.request_counts, info.usage
    typer.echo(f"{info.id}  {info.status}  {info.model} ({info.provider})")
    typer.echo(
        f"  {counts.total - counts.pending}/{counts.total} done: {_counted(info)}, "
        f"{counts.pending} pending"
    )
    typer.echo(f"  tokens: {usage.input_tokens} in, {usage.output_tokens} out")
    if info.error is not None:
        typer.echo(f"  error: {info.error.type}: {info.error.message}")


@app.command()
@_connected
def results(
    ctx: typer.Context, batch_id: str, output: Output = None, fmt: FormatOption = None
) -> None:
    """Write a batch's results in input order (readable while it runs)."""
    with _session(ctx) as client:
        _write(client.get(batch_id), output, fmt or _default_format(output))


@app.command()
@_connected
def cancel(ctx: typer.Context, batch_id: str) -> None:
    """Cancel a batch: no new items start; finished results are kept."""
    with _session(ctx) as client:
        info = client.get(batch_id).cancel()
    typer.echo(f"{info.id}  {info.status}")


@app.command()
@_connected
def retry(
    ctx: typer.Context,
    batch_id: str,
    include: Annotated[
        str | None,
        typer.Option(
            help="Also run these items again, comma-separated: cancelled, expired (failed ones "
            "always are).",
            show_default=False,
        ),
    ] = None,
    wait: WaitOption = False,
    output: Output = None,
    fmt: FormatOption = None,
) -> None:
    """Run a finished batch's failed items again in place (succeeded ones are kept, never sent
    again); print its id and status (or, with --wait, its results)."""
    _results_need_wait(wait, output, fmt)
    named = [name.strip() for name in include.split(",")] if include else []
    with _session(ctx) as client:
        batch = client.retry(batch_id, include=named)
        pending = batch.info.request_counts.pending
        intro = f"Retrying {_plural(pending, 'item')} of {batch.id}."
        if not wait:
            typer.echo(f"{batch.id}  {batch.info.status}")
            _note(f"{intro} Follow it: {_command(ctx, 'watch', batch.id)}")
            return
        _follow(ctx, batch, output, fmt or _default_format(output), intro=intro)


@app.command("list")
@_connected
def list_batches(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, max=100, help="How many, newest first.")] = 20,
    after: Annotated[
        str | None,
        typer.Option(help="Start after this batch id (a page's last).", show_default=False),
    ] = None,
    every: Annotated[bool, typer.Option("--all", help="Every batch, page after page.")] = False,
    as_json: AsJson = False,
) -> None:
    """List batches, newest first, a page at a time: the next page starts --after the last id
    shown (the command for it is printed at the end), or --all pages."""
    with _session(ctx) as client:
        page = client.list(limit=limit, after=after)
        shown = list(page.data)
        while every and page.has_more and page.next_after:
            page = client.list(limit=limit, after=page.next_after)
            shown += page.data
    if as_json:  # with --all, one list of them all
        whole = page.model_copy(update={"data": shown}) if every else page
        typer.echo(whole.model_dump_json(indent=2))
        return
    for info in shown:
        counts = info.request_counts
        done = f"{counts.total - counts.pending}/{counts.total}"
        typer.echo(
            f"{info.id}  {info.status:<11}  {done:>13} done  {counts.failed:>6} failed  "
            f"{info.model}  {info.created_at:%Y-%m-%d %H:%M:%S}"
        )
    if page.has_more and page.next_after:
        more = _command(ctx, "list", f"--limit {limit} --after {page.next_after}")
        _note(f"More: {more} (or --all)")


# -- the parts commands share --------------------------------------------------------------------


def _read(file: Path, template: str | None) -> tuple[BatchCreate, Format]:
    """The file as a batch, and the results format its kind calls for. Rows (with --template,
    or a .csv file) fill a template; anything else is a file of prompts."""
    try:
        if template is None and file.suffix.lower() != ".csv":
            request, kind = read_batch_file(file)
            return request, Format.openai if kind == "openai" else Format.promptbatch
        rows = read_rows(file)
        if template is None and "prompt" not in rows[0]:
            example = next(iter(rows[0]), "column")
            _fail(
                f"{file}: no prompt column; pass --template, as in --template 'Rate: {{{example}}}'"
            )
        text = "{prompt}" if template is None else _template_text(template)
        return batch_request(template=text, inputs=rows), Format.promptbatch
    except AppError as exc:
        _fail(f"{file}: {exc.message}")
    except ValidationError as exc:
        first = exc.errors()[0]
        _fail(f"{file}: {first['msg']} ({'.'.join(map(str, first['loc']))})")


def _template_text(template: str) -> str:
    """--template's text, or the file's that `@PATH` names (its trailing newline dropped)."""
    if template.startswith("@"):
        path = Path(template[1:])
        try:
            template = path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            _fail(f"--template {path}: {reason}")
    if not template.strip():
        _fail("--template is empty")
    return template


def _default_format(output: Path | None, fallback: Format = Format.promptbatch) -> Format:
    return Format.csv if output is not None and output.suffix.lower() == ".csv" else fallback


def _override(
    request: BatchCreate, model: str | None, system: str | None, concurrency: int | None
) -> BatchCreate:
    """Options given on the command line win over what the file says."""
    given = {"model": model, "system": system, "max_concurrency": concurrency}
    return request.model_copy(update={k: v for k, v in given.items() if v is not None})


@contextmanager
def _session(ctx: typer.Context) -> Iterator[Client]:
    """A client for the API; its errors end the command with one line on stderr."""
    target = ctx.find_object(Target)
    assert target is not None
    try:
        with Client(target.url, api_key=target.api_key) as client:
            yield client
    except APIConnectionError as exc:
        _fail(f"{exc} (is it running? set --url or PROMPTBATCH_URL)")
    except APIError as exc:
        hint = " (set --api-key or PROMPTBATCH_API_KEY)" if exc.status_code == 401 else ""
        _fail(f"{exc}{hint}")
    except PromptbatchError as exc:
        _fail(str(exc))


def _follow(
    ctx: typer.Context, batch: Batch, output: Path | None, fmt: Format, intro: str | None = None
) -> None:
    """Watch to the end, then write results; Ctrl-C stops watching, never the batch."""
    # Ctrl-C is this command's own word, even when started with SIGINT ignored (a script's
    # `&`, some CI runners): Python then leaves it ignored.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if intro:
            _note(intro)
        batch.wait(progress=True, console=Console(stderr=True))
        _write(batch, output, fmt)
    except KeyboardInterrupt:
        again = _command(ctx, "watch", batch.id) + (f" -o {output}" if output else "")
        status = _command(ctx, "status", batch.id)
        _note(
            f"Stopped watching; {batch.id} keeps running.\n"
            f"  watch again: {again}\n  its status:  {status}"
        )
        raise typer.Exit(INTERRUPTED) from None
    info = batch.info
    counts = info.request_counts
    where = f"; results in {output}" if output else ""
    _note(f"{info.id} {info.status}: {_counted(info)}{where}")
    if counts.failed and info.status != "failed":
        _note(f"  run the failed ones again: {_command(ctx, 'retry', info.id)}")
    if info.status == "failed":
        _fail(f"batch {info.id} failed: {info.error.message if info.error else 'no reason given'}")
    if info.status == "expired":
        again = _command(ctx, "retry", info.id) + " --include expired"
        _fail(
            f"batch {info.id} expired: its completion window ended with {counts.expired} items "
            f"not run (run them: {again})"
        )


def _counted(info: BatchInfo) -> str:
    """`3 succeeded, 1 failed, 0 cancelled`, and the expired ones when there are any."""
    counts = info.request_counts
    text = f"{counts.succeeded} succeeded, {counts.failed} failed, {counts.cancelled} cancelled"
    return text + (f", {counts.expired} expired" if counts.expired else "")


def _write(batch: Batch, output: Path | None, fmt: Format) -> None:
    """Results in input order, streamed; a file appears whole or not at all."""
    if output is None:
        _write_results(batch, fmt, sys.stdout)
        return
    partial = output.with_name(output.name + ".part")
    try:
        with partial.open("w", encoding="utf-8", newline="") as file:
            _write_results(batch, fmt, file)
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)


def _write_results(batch: Batch, fmt: Format, file: TextIO) -> None:
    if fmt is Format.csv:
        _write_csv(batch, file)
        return
    lines: Iterator[str] = (
        (line.model_dump_json() for line in batch.openai_results())
        if fmt is Format.openai
        else (item.model_dump_json() for item in batch.results())
    )
    for line in lines:
        file.write(line + "\n")


def _write_csv(batch: Batch, file: TextIO) -> None:
    """A header, then each item's input row (else its custom_id) and results; `output_json`
    (and an embeddings batch's `embedding`) as JSON text, empty when there is none."""
    inputs = batch.inputs
    head = input_columns(inputs) if inputs is not None else ["custom_id"]
    results = EMBEDDING_COLUMNS if batch.info.endpoint == EMBEDDINGS else CSV_RESULTS
    writer = csv.DictWriter(file, fieldnames=[*head, *results])
    writer.writeheader()
    for item in batch.results():
        row = flat_row(item, inputs, results)
        for name in ("output_json", "embedding"):
            if row.get(name) is not None:
                row[name] = json.dumps(row[name], ensure_ascii=False)
        writer.writerow(row)


def _command(ctx: typer.Context, name: str, batch_id: str) -> str:
    target = ctx.find_object(Target)
    url = f" --url {target.url}" if target is not None and target.url_given else ""
    return f"promptbatch{url} {name} {batch_id}"


def _plural(count: int, noun: str) -> str:
    """`1 prompt`, `2 prompts`."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _results_need_wait(wait: bool, output: Path | None, fmt: Format | None) -> None:
    """-o and --format say where and how results are written, which happens only with
    --wait: without it they would be ignored, so they are refused."""
    if not wait and (output is not None or fmt is not None):
        given = " and ".join(
            name for name, value in (("-o", output), ("--format", fmt)) if value is not None
        )
        verb = "applies" if " and " not in given else "apply"
        _fail(f"{given} {verb} to the results, written once the batch ends: add --wait")


def _note(message: str) -> None:
    typer.echo(message, err=True)


def _fail(message: str) -> NoReturn:
    typer.echo("error: " + " ".join(message.split()), err=True)
    raise typer.Exit(1)

"""Files of prompts: plain text (one prompt a line), JSONL of `{"custom_id", "prompt"}`, or an
OpenAI Batch input file, told apart by their first non-blank line; and files of a template's rows:
CSV, or JSONL of objects."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from shared.errors import InvalidRequest
from shared.openai_format import batch_from_request_lines, is_request_line, json_lines, line_error
from shared.schemas import BatchCreate, PromptItem, RowValue

InputFormat = Literal["text", "jsonl", "openai"]


def read_batch_file(path: Path) -> tuple[BatchCreate, InputFormat]:
    """The file's prompts as a batch, and which format it was in. InvalidRequest names the line
    (counted from 1) that is wrong."""
    try:
        lines = text_lines(path)
    except UnicodeDecodeError:
        raise InvalidRequest("the file is not UTF-8 text") from None
    kind = sniff(lines)
    if kind == "openai":
        return batch_from_request_lines(lines), kind
    if kind == "jsonl":
        return BatchCreate(prompts=[_item(n, value) for n, value in json_lines(lines)]), kind
    return BatchCreate(prompts=[line for line in lines if line.strip()]), kind


def read_rows(path: Path) -> list[dict[str, RowValue]]:
    """A template's rows: a `.csv` file's (its header names the columns), else a JSONL file of
    objects, one a line. InvalidRequest names the line (counted from 1) that is wrong."""
    try:
        rows = _csv_rows(path) if path.suffix.lower() == ".csv" else _jsonl_rows(path)
    except UnicodeDecodeError:
        raise InvalidRequest("the file is not UTF-8 text") from None
    if not rows:
        raise InvalidRequest("the file has no rows")
    return rows


def _csv_rows(path: Path) -> list[dict[str, RowValue]]:
    # utf-8-sig: UTF-8, with or without the byte-order mark spreadsheets write.
    with path.open(encoding="utf-8-sig", newline="") as file:
        reader = csv.DictReader(file)
        try:
            columns = reader.fieldnames or []
            repeated = sorted({name for name in columns if columns.count(name) > 1})
            if repeated:
                raise InvalidRequest(f"the header names column {', '.join(repeated)} twice")
            rows: list[dict[str, RowValue]] = []
            for row in reader:
                if None in row or None in row.values():
                    more = "more" if None in row else "fewer"
                    raise InvalidRequest(
                        f"Line {reader.line_num} has {more} fields than the header's "
                        f"{len(columns)}.",
                        param=f"line[{reader.line_num}]",
                    )
                rows.append(row)
        except csv.Error as exc:
            raise InvalidRequest(f"Line {reader.line_num}: {exc}.") from None
    return rows


def _jsonl_rows(path: Path) -> list[dict[str, RowValue]]:
    rows: list[dict[str, RowValue]] = []
    for number, value in json_lines(text_lines(path)):
        if not isinstance(value, dict):
            raise InvalidRequest(
                f"Line {number} is not a JSON object (a row: column to value).",
                param=f"line[{number}]",
            )
        for name, cell in value.items():
            if not isinstance(cell, str | int | float | bool | None):
                raise InvalidRequest(
                    f"Line {number}: {name!r} is not a string, number, boolean or null.",
                    param=f"line[{number}].{name}",
                )
        rows.append(value)
    return rows


def text_lines(path: Path) -> list[str]:
    """The file's lines, split at line ends only: `str.splitlines()` also splits at U+2028,
    U+2029 and U+0085, which JSON strings may hold raw. A byte-order mark is dropped."""
    return [line.removesuffix("\r") for line in path.read_text(encoding="utf-8-sig").split("\n")]


def sniff(lines: Sequence[str]) -> InputFormat:
    """JSONL when the first non-blank line is a JSON object; OpenAI's when it is a request."""
    first = next((line for line in lines if line.strip()), None)
    if first is None:
        raise InvalidRequest("the file has no prompts")
    try:
        value = json.loads(first)
    except json.JSONDecodeError:
        return "text"
    if not isinstance(value, dict):
        return "text"
    return "openai" if is_request_line(value) else "jsonl"


def _item(number: int, value: Any) -> PromptItem:
    try:
        return PromptItem.model_validate({"prompt": value} if isinstance(value, str) else value)
    except ValidationError as exc:
        raise line_error(number, exc) from None

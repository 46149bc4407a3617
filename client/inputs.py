"""Files of prompts: plain text (one prompt a line), JSONL of `{"custom_id", "prompt"}`, or an
OpenAI Batch input file, told apart by their first non-blank line."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from shared.errors import InvalidRequest
from shared.openai_format import batch_from_request_lines, is_request_line, json_lines, line_error
from shared.schemas import BatchCreate, PromptItem

InputFormat = Literal["text", "jsonl", "openai"]


def read_batch_file(path: Path) -> tuple[BatchCreate, InputFormat]:
    """The file's prompts as a batch, and which format it was in. InvalidRequest names the line
    (counted from 1) that is wrong."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InvalidRequest("the file is not UTF-8 text") from None
    kind = sniff(lines)
    if kind == "openai":
        return batch_from_request_lines(lines), kind
    if kind == "jsonl":
        return BatchCreate(prompts=[_item(n, value) for n, value in json_lines(lines)]), kind
    return BatchCreate(prompts=[line for line in lines if line.strip()]), kind


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

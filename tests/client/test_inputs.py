"""Files of prompts, told apart by their first non-blank line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.inputs import read_batch_file
from shared.chat import dump_messages
from shared.errors import InvalidRequest
from tests.helpers import prompt_items


def test_plain_text_is_one_prompt_a_line_blank_lines_skipped(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("What is 2+2?\n\n  Where is Seoul?  \r\n{not json either\n")
    batch, kind = read_batch_file(path)
    assert kind == "text"
    assert [p.prompt for p in prompt_items(batch)] == [
        "What is 2+2?",
        "  Where is Seoul?  ",
        "{not json either",
    ]
    assert [p.custom_id for p in prompt_items(batch)] == [None, None, None]


def test_jsonl_of_prompts_keeps_custom_ids(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    rows = [{"custom_id": "q1", "prompt": "one"}, {"prompt": "two"}, "three"]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    batch, kind = read_batch_file(path)
    assert kind == "jsonl"
    assert [(p.custom_id, p.prompt) for p in prompt_items(batch)] == [
        ("q1", "one"), (None, "two"), (None, "three"),
    ]  # fmt: skip


def test_an_openai_batch_file_is_recognised(tmp_path: Path) -> None:
    path = tmp_path / "batch.jsonl"
    line = {
        "custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    }  # fmt: skip
    path.write_text(json.dumps(line) + "\n")
    batch, kind = read_batch_file(path)
    assert kind == "openai"
    (item,) = prompt_items(batch)
    assert (batch.model, item.custom_id, dump_messages(item.messages or [])) == (
        "m", "r1", [{"role": "user", "content": "hi"}],
    )  # fmt: skip


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("\n  \n", "no prompts"),
        ('{"prompt": "one"}\n{"prompt": 2}\n', "Line 2"),
        ('{"prompt": "one"}\n{"prompt": "two", "colour": "red"}\n', "line[2].colour"),
        ('{"prompt": "one"}\nnot json\n', "Line 2 is not valid JSON"),
    ],
    ids=["empty", "wrong-type", "unknown-field", "not-json"],
)
def test_a_bad_file_is_refused_naming_the_line(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text(content)
    with pytest.raises(InvalidRequest, match=expected.replace("[", r"\[").replace("]", r"\]")):
        read_batch_file(path)


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_bytes(b"caf\xe9\n")
    with pytest.raises(InvalidRequest, match="not UTF-8"):
        read_batch_file(path)

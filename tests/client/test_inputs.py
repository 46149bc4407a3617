"""Files of prompts, told apart by their first non-blank line; files of a template's rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from promptbatch.inputs import read_batch_file, read_rows
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


def test_a_csv_file_is_rows_named_by_its_header(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_bytes(
        '\ufeffid,review\r\n1,"fine, ""really""\nyes"\r\n\r\n2,{braces} café\r\n'.encode()
    )
    assert read_rows(path) == [
        {"id": "1", "review": 'fine, "really"\nyes'},
        {"id": "2", "review": "{braces} café"},
    ]


def test_a_jsonl_file_is_rows_of_objects(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    rows = [{"custom_id": "a", "n": 1, "ok": True, "x": None}, {"custom_id": "b", "n": 2.5}]
    path.write_text("\n\n".join(json.dumps(row) for row in rows) + "\n")
    assert read_rows(path) == rows


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("rows.csv", "id,review\n", "no rows"),
        ("rows.csv", "id,review\n1,ok\n2,too,many\n", "Line 3 has more fields"),
        ("rows.csv", 'id,review\n1,ok\n2,"a\nb"\n3\n', "Line 5 has fewer fields"),
        ("rows.csv", "id,id\n1,2\n", "column id twice"),
        ("rows.jsonl", '{"a": "x"}\n["a"]\n', "Line 2 is not a JSON object"),
        ("rows.jsonl", '{"a": "x"}\n{"a": {"b": 1}}\n', "Line 2: 'a' is not a string"),
        ("rows.jsonl", "one prompt a line\n", "Line 1 is not valid JSON"),
    ],
    ids=["empty", "long-row", "short-row", "repeated-column", "not-object", "nested", "text"],
)
def test_a_bad_rows_file_is_refused_naming_the_line(
    tmp_path: Path, name: str, content: str, expected: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InvalidRequest, match=expected):
        read_rows(path)

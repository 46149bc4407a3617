"""`promptbatch submit rows.csv --template ...`: a file of rows fills a template, and the results
come back as CSV, each input row with its output, through a real API process, worker and Redis."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from promptbatch.cli import _template_text
from tests.cli.runner import assert_one_error_line, run_cli
from tests.helpers import Proc, free_port
from worker.llm import OFFLINE_PREFIX

pytestmark = pytest.mark.integration

SUBMITTED = re.compile(r"Submitted (batch_\w+)")
RESULT_COLUMNS = ["output", "status", "error", "output_json"]
#: A cell a careless CSV writer or template would break: a comma, quotes, a newline, braces.
AWKWARD = 'Loved it, "really" - {truly}\nwould buy again. Café {0} }{'


def offline_reply(prompt: str) -> str:
    """What the offline model answers (it joins the words of its reply with single spaces)."""
    return " ".join(f"{OFFLINE_PREFIX}{prompt}".split())


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def test_a_csv_round_trips_through_a_template_row_for_row(
    live_api: Callable[..., str], workers: Callable[..., Proc], tmp_path: Path
) -> None:
    workers()
    url = live_api()
    rows = [{"id": f"r{i}", "review": f"review number {i}"} for i in range(30)]
    rows[7]["review"] = AWKWARD
    write_csv(tmp_path / "rows.csv", rows)

    done = run_cli(
        url, "submit", "rows.csv", "--template", "Rate this: {review}", "--wait", "-o", "out.csv",
        cwd=tmp_path,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    columns, out = read_csv(tmp_path / "out.csv")
    assert columns == ["id", "review", *RESULT_COLUMNS]
    assert [{"id": r["id"], "review": r["review"]} for r in out] == rows
    assert out[7]["review"] == AWKWARD
    assert [r["output"] for r in out] == [offline_reply(f"Rate this: {r['review']}") for r in rows]
    assert [(r["status"], r["error"], r["output_json"]) for r in out] == [
        ("succeeded", "", "")
    ] * 30
    assert list(tmp_path.glob("*.part")) == []


def test_a_template_file_fills_jsonl_rows_and_results_read_back_as_csv_by_custom_id(
    live_api: Callable[..., str], workers: Callable[..., Proc], tmp_path: Path
) -> None:
    workers()
    url = live_api()
    (tmp_path / "prompt.txt").write_text("Summarise {title}: {body}\n", encoding="utf-8")
    rows: list[dict[str, object]] = [
        {"custom_id": f"doc-{i}", "title": f"title {i}", "body": f"body {{{i}}}", "pages": i}
        for i in range(5)
    ]
    write_jsonl(tmp_path / "rows.jsonl", rows)

    done = run_cli(
        url, "submit", "rows.jsonl", "--template", "@prompt.txt", "--system", "Be brief.",
        "--wait", "-o", "out.csv", cwd=tmp_path,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    columns, out = read_csv(tmp_path / "out.csv")
    assert columns == ["custom_id", "title", "body", "pages", *RESULT_COLUMNS]
    assert [r["custom_id"] for r in out] == [f"doc-{i}" for i in range(5)]
    assert [r["pages"] for r in out] == [str(i) for i in range(5)]
    assert [r["output"] for r in out] == [
        f"{OFFLINE_PREFIX}Summarise title {i}: body {{{i}}}" for i in range(5)
    ]
    found = SUBMITTED.search(done.stderr)
    assert found is not None
    batch_id = found.group(1)

    # Without the rows (a batch read by id), the CSV starts with custom_id.
    results = run_cli(url, "results", batch_id, "--format", "csv", cwd=tmp_path)
    assert results.returncode == 0, results.stderr
    header, *lines = list(csv.reader(results.stdout.splitlines()))
    assert header == ["custom_id", *RESULT_COLUMNS]
    assert [line[:3] for line in lines] == [[r["custom_id"], r["output"], "succeeded"] for r in out]
    watched = run_cli(url, "watch", batch_id, "-o", "watched.csv", cwd=tmp_path)
    assert watched.returncode == 0, watched.stderr
    assert (tmp_path / "watched.csv").read_text(encoding="utf-8") == results.stdout


def test_a_csv_prompt_column_is_the_prompt_without_a_template(
    live_api: Callable[..., str], workers: Callable[..., Proc], tmp_path: Path
) -> None:
    workers()
    url = live_api()
    rows = [
        {"custom_id": "a", "prompt": "What is {x}?", "topic": "maths"},
        {"custom_id": "b", "prompt": AWKWARD, "topic": "shopping"},
    ]
    write_csv(tmp_path / "prompts.csv", rows)

    done = run_cli(url, "submit", "prompts.csv", "--wait", "-o", "out.csv", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    columns, out = read_csv(tmp_path / "out.csv")
    assert columns == ["custom_id", "prompt", "topic", *RESULT_COLUMNS]
    assert [{k: r[k] for k in ("custom_id", "prompt", "topic")} for r in out] == rows
    assert [r["output"] for r in out] == [offline_reply(r["prompt"]) for r in rows]
    assert [r["status"] for r in out] == ["succeeded", "succeeded"]


def test_a_csv_without_a_prompt_column_needs_a_template(tmp_path: Path) -> None:
    write_csv(tmp_path / "rows.csv", [{"review": "fine"}])
    url = f"http://127.0.0.1:{free_port()}"  # refused before anything is sent
    done = run_cli(url, "submit", "rows.csv", cwd=tmp_path)
    assert done.returncode == 1
    assert_one_error_line(done, "rows.csv", "no prompt column", "--template", "{review}")


def test_a_row_missing_a_variable_is_one_error_line_naming_the_row(
    live_api: Callable[..., str], tmp_path: Path
) -> None:
    rows: list[dict[str, object]] = [{"review": "good"}, {"review": "bad"}, {"rating": 3}]
    write_jsonl(tmp_path / "rows.jsonl", rows)
    done = run_cli(
        live_api(), "submit", "rows.jsonl", "--template", "Rate this: {review}", "--wait",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1
    # The third row, counted as the user counts the lines of rows.jsonl.
    assert_one_error_line(
        done, "422", "Row 3 (inputs[2]) has no value for review", "param: inputs[2]"
    )


def test_an_input_column_named_like_a_result_column_is_refused_before_submitting(
    tmp_path: Path,
) -> None:
    write_csv(tmp_path / "rows.csv", [{"review": "good", "output": "kept?"}])
    url = f"http://127.0.0.1:{free_port()}"  # nothing is sent: no server needed
    done = run_cli(
        url, "submit", "rows.csv", "--template", "Rate: {review}", "--wait", "-o", "out.csv",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1
    assert_one_error_line(done, "rows.csv", "'output'", "result column", "rename it")
    assert not (tmp_path / "out.csv").exists()


def test_a_bad_rows_file_is_one_error_line_naming_the_line(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("id,review\n1,fine\n2,too,many\n", encoding="utf-8")
    url = f"http://127.0.0.1:{free_port()}"
    done = run_cli(url, "submit", "rows.csv", "--template", "{review}", cwd=tmp_path)
    assert done.returncode == 1
    assert_one_error_line(done, "rows.csv", "Line 3 has more fields than the header's 2")
    write_csv(tmp_path / "good.csv", [{"review": "fine"}])
    missing = run_cli(url, "submit", "good.csv", "--template", "@nope.txt", cwd=tmp_path)
    assert missing.returncode == 1
    assert_one_error_line(missing, "--template nope.txt", "No such file")


def test_a_template_file_loses_its_trailing_newline_only(tmp_path: Path) -> None:
    path = tmp_path / "prompt.txt"
    path.write_text("Rate this review.\n\nReview: {review}\n", encoding="utf-8")
    assert _template_text(f"@{path}") == "Rate this review.\n\nReview: {review}"
    assert _template_text("Inline: {review}\n") == "Inline: {review}\n"

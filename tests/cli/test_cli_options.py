"""The command line's options as a person types them: the connection options after the command's
name too, `list` a page at a time, results options that need --wait, plurals."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli.runner import PROMPTBATCH, assert_one_error_line, run_cli
from tests.helpers import Proc, free_port

pytestmark = pytest.mark.integration


def run_plain(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The command with no PROMPTBATCH_* in its environment: only what is typed counts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTBATCH_")}
    return subprocess.run(
        [PROMPTBATCH, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=110
    )


def test_url_and_key_work_after_the_command_s_name(
    live_api: Callable[..., str], tmp_path: Path
) -> None:
    url = live_api(PROMPTBATCH_API_KEYS="the-key")
    after = run_plain("list", "--url", url, "--key", "the-key", cwd=tmp_path)
    assert after.returncode == 0, after.stderr
    before = run_plain("--url", url, "--api-key", "the-key", "list", cwd=tmp_path)
    assert before.returncode == 0, before.stderr
    # Given after the name, they win over those given before it.
    down = f"http://127.0.0.1:{free_port()}"
    wins = run_plain("--url", down, "status", "batch_nope", "--url", url, "--api-key", "the-key",
                     cwd=tmp_path)  # fmt: skip
    assert_one_error_line(wins, "404", "No batch batch_nope.")
    refused = run_plain("list", "--url", url, "--api-key", "wrong", cwd=tmp_path)
    assert_one_error_line(refused, "401")


def test_list_pages_with_limit_and_after_or_all(
    live_api: Callable[..., str], tmp_path: Path
) -> None:
    url = live_api()
    (tmp_path / "one.txt").write_text("hello\n")
    made = []
    for _ in range(5):
        done = run_cli(url, "submit", "one.txt", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        made.append(done.stdout.strip())
    newest_first = made[::-1]

    first = run_cli(url, "list", "--limit", "2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert [line.split()[0] for line in first.stdout.splitlines()] == newest_first[:2]
    assert f"--after {newest_first[1]}" in first.stderr  # the next page's command
    second = run_cli(url, "list", "--limit", "2", "--after", newest_first[1], cwd=tmp_path)
    assert [line.split()[0] for line in second.stdout.splitlines()] == newest_first[2:4]
    every = run_cli(url, "list", "--limit", "2", "--all", cwd=tmp_path)
    assert [line.split()[0] for line in every.stdout.splitlines()] == newest_first
    assert "--after" not in every.stderr
    pages = run_cli(url, "list", "--limit", "2", "--all", "--json", cwd=tmp_path)
    ids = [batch["id"] for batch in json.loads(pages.stdout)["data"]]
    assert ids == newest_first


@pytest.mark.parametrize(
    ("options", "named"),
    [(["-o", "out.jsonl"], "-o applies"), (["--format", "csv"], "--format applies"),
     (["-o", "out.csv", "--format", "csv"], "-o and --format apply")],
)  # fmt: skip
def test_results_options_without_wait_are_an_error_saying_to_add_it(
    tmp_path: Path, options: list[str], named: str
) -> None:
    (tmp_path / "one.txt").write_text("hello\n")
    url = f"http://127.0.0.1:{free_port()}"  # refused before anything is sent
    done = run_cli(url, "submit", "one.txt", *options, cwd=tmp_path)
    assert_one_error_line(done, named, "add --wait")
    assert not (tmp_path / "out.jsonl").exists()
    retried = run_cli(url, "retry", "batch_x", *options, cwd=tmp_path)
    assert_one_error_line(retried, named, "add --wait")


def test_one_prompt_is_one_prompt(
    live_api: Callable[..., str], workers: Callable[..., Proc], tmp_path: Path
) -> None:
    (tmp_path / "one.txt").write_text("hello\n")
    done = run_cli(live_api(), "submit", "one.txt", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "(1 prompt)" in done.stderr

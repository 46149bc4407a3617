"""Every shell and Python block of the README runs as written, in order, against a live stack
(`make run`'s own script) from a directory with nothing but the venv: as a new user meets them.

A block that cannot run here says why just above it (`<!-- not run: why -->`); the test lists
those, so that none is left out unnoticed. The README's URL (`http://127.0.0.1:8000`) is the
stack's here (its port is a free one), and `PROMPTBATCH_URL` says so to the CLI and the clients,
as a user's shell would; nothing else of a block is changed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import ROOT, Proc, free_port, wait_until, worker_env

pytestmark = pytest.mark.integration

README = ROOT / "README.md"
URL = "http://127.0.0.1:8000"
#: The blocks left out, by the reason the README gives: none needs anything but the stack.
LEFT_OUT = [
    "starts the stack, and the tests, themselves (tests/docs starts make run's script)",
    "needs an Anthropic key (ANTHROPIC_API_KEY) for the API and the workers",
    "needs a real provider with a Batch API (the offline model has none: a 422 naming mode)",
    "starts the stack itself, with other settings",
    "needs a Docker engine (and the third command a real provider key)",
    "takes about 15 minutes (tests/bench runs it at toy sizes)",
]
#: Error types an example's answer must never carry (a 409 `conflict` is one the README shows).
WRONG = ("invalid_request_error", "not_found", "internal_error", "unsupported_media_type",
         "authentication_error", "request_too_large", "service_unavailable")  # fmt: skip
MARK = "::readme-block::"


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, from 1
    language: str
    text: str
    left_out: str | None


def blocks() -> list[Block]:
    found: list[Block] = []
    lines = README.read_text().splitlines()
    n = 0
    while n < len(lines):
        opening = re.fullmatch(r"```(\w*)\s*", lines[n])
        if opening is None:
            n += 1
            continue
        end = next(i for i in range(n + 1, len(lines)) if lines[i].startswith("```"))
        before = next((lines[i] for i in range(n - 1, -1, -1) if lines[i].strip()), "")
        why = re.fullmatch(r"<!-- not run: (.*) -->", before.strip())
        if opening[1] in ("sh", "python"):
            text = "\n".join(lines[n + 1 : end]) + "\n"
            found.append(Block(n + 1, opening[1], text, why[1] if why else None))
        n = end + 1
    return found


def script(run: list[Block], url: str) -> str:
    """One bash script of the blocks, in order; Python ones through the venv's python."""
    parts = ["set -e -o pipefail"]
    for block in run:
        text = block.text.replace(URL, url)
        parts.append(f"echo '{MARK}{block.line}'")
        if block.language == "python":
            parts.append(f".venv/bin/python - <<'README_PYTHON'\n{text}README_PYTHON")
        else:
            parts.append(text)
    return "\n".join(parts) + "\n"


def test_the_readme_marks_every_block_it_leaves_out() -> None:
    assert [b.left_out for b in blocks() if b.left_out] == LEFT_OUT
    assert len([b for b in blocks() if not b.left_out]) >= 10


@pytest.mark.timeout(600)
def test_every_readme_block_runs_as_written_against_make_run(
    tmp_path: Path, redis_url: str
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = worker_env(redis_url) | {
        "PORT": str(port),
        "PROMPTBATCH_DATA_DIR": str(tmp_path / "data"),
        # As the README's webhook example says to start it for a receiver on this machine.
        "PROMPTBATCH_WEBHOOK_ALLOW_PRIVATE": "true",
    }
    stack = Proc([sys.executable, "scripts/run_stack.py"], env, tmp_path / "run.log").start()
    work = tmp_path / "work"
    work.mkdir()
    (work / ".venv").symlink_to(ROOT / ".venv")
    run = [b for b in blocks() if not b.left_out]
    try:
        wait_until(lambda: "promptbatch is up" in stack.log(), 90, "make run to come up")
        user = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTBATCH_")}
        done = subprocess.run(
            ["bash", "-c", script(run, url)],
            cwd=work, env=user | {"PROMPTBATCH_URL": url}, capture_output=True, text=True,
            timeout=500,
        )  # fmt: skip
    finally:
        stack.stop(signal.SIGINT, timeout_s=60)
    outputs = dict(_by_block(done.stdout))
    failed_at = max(outputs, default=None)
    assert done.returncode == 0, (
        f"README block at line {failed_at} failed:\n{done.stderr[-3000:]}\n"
        f"{outputs.get(failed_at, '')[-3000:] if failed_at else ''}"
    )
    assert sorted(outputs) == [b.line for b in run]  # every block ran
    for line, output in outputs.items():
        wrong = [t for t in WRONG if f'"type":"{t}"' in output.replace(" ", "")]
        assert not wrong, f"README block at line {line} got {wrong}:\n{output[-2000:]}"
    # The examples' files are under out/, which git ignores; nothing else was left.
    assert sorted(p.name for p in work.iterdir()) == [".venv", "out"]
    assert "out/" in (ROOT / ".gitignore").read_text().splitlines()
    assert "Traceback" not in stack.log()


def _by_block(stdout: str) -> list[tuple[int, str]]:
    parts = stdout.split(MARK)[1:]
    return [(int(part.split("\n", 1)[0]), part.split("\n", 1)[1] if "\n" in part else "")
            for part in parts]  # fmt: skip

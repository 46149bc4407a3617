"""Running the `promptbatch` command as a person does: a subprocess in a terminal of 120 columns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROMPTBATCH = str(Path(sys.executable).with_name("promptbatch"))


def cli_env(url: str) -> dict[str, str]:
    """A terminal of 120 columns (rich draws the live bar as it would for a person)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTBATCH_")}
    env.pop("NO_COLOR", None)
    env.update(PROMPTBATCH_URL=url, FORCE_COLOR="1", COLUMNS="120")
    return env


def run_cli(url: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROMPTBATCH, *args], env=cli_env(url), cwd=cwd, capture_output=True, text=True,
        timeout=110,
    )  # fmt: skip


def assert_one_error_line(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert done.returncode != 0
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    for piece in expected:
        assert piece in lines[0]

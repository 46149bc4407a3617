"""`make bench` end to end at toy sizes: it runs every scenario against real processes and
writes its table and plot. No time is judged here; speed is `make bench`'s own report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import END, START, Row, Sweep, publish
from tests.helpers import ROOT, worker_env

pytestmark = pytest.mark.integration

FIGURES = ("latency-bound", "client-CPU-bound", "first result", "submit", "peak worker RSS",
           "API RSS rise", "API under load", "offline model", "API event loop held",
           "JSON body", "NDJSON body", "peak API RSS", "Redis memory per item",
           "small behind big", "fleet utilisation")  # fmt: skip


@pytest.mark.timeout(300)
def test_the_smoke_run_writes_the_table_and_the_plot(tmp_path: Path) -> None:
    (tmp_path / "BENCHMARKS.md").write_text("# Benchmarks\n\nWritten by hand, kept.\n")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out-dir", str(tmp_path)],
        cwd=ROOT,
        env=worker_env("unused"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = (tmp_path / "BENCHMARKS.md").read_text()
    assert "Written by hand, kept." in report  # only the results block is rewritten
    assert "Smoke run" in report
    for figure in FIGURES:
        assert figure in report
        assert figure in done.stdout  # the same table is printed
    assert (tmp_path / "bench" / "throughput.png").read_bytes().startswith(b"\x89PNG")


def test_a_new_run_replaces_the_results_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nBefore.\n")
    sweeps = [Sweep("service", [(1, 9.0), (2, 18.0)]), Sweep("direct", [(1, 8.0), (2, 15.0)])]
    for seconds in (1.5, 2.5):
        row = Row(name="figure", unit="s", service=seconds, direct=2.0, target="t", met=True,
                  runs=3)  # fmt: skip
        publish([row], sweeps, 100.0, tmp_path, smoke=False, cpu_ms=2.5)
        path.write_text(path.read_text() + "After.\n")
    text = path.read_text()
    assert text.count(START) == 1
    assert text.count(END) == 1
    assert "| figure | 2.50 s | 2.00 s | 1.25\u00d7 |" in text
    assert "1.50 s" not in text
    assert text.startswith("# Benchmarks\n\nBefore.\n")
    assert text.count("After.") == 2

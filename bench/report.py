"""The benchmark's output: the table (printed and in BENCHMARKS.md) and the throughput plot."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

START = "<!-- bench:results:start (written by make bench; edit outside these markers) -->"
END = "<!-- bench:results:end -->"
PLOT = "bench/throughput.png"


@dataclass
class Row:
    """One figure: the service's median, the direct script's where one applies, the ideal."""

    name: str
    unit: str
    service: float
    target: str
    met: bool
    runs: int
    direct: float | None = None
    ideal: float | None = None
    extra: str = ""

    def cells(self) -> list[str]:
        ratio = f"{self.service / self.direct:.2f}×" if self.direct else ""
        ideal = f"{self.ideal:{_fmt(self.unit)}} {self.unit}" if self.ideal else ""
        direct = f"{self.direct:{_fmt(self.unit)}} {self.unit}" if self.direct else ""
        service = f"{self.service:{_fmt(self.unit)}} {self.unit}"
        if self.extra:
            service += f" ({self.extra})"
        verdict = "met" if self.met else "**missed**"
        return [self.name, service, direct, ratio, ideal, self.target, verdict, str(self.runs)]


def _fmt(unit: str) -> str:
    return ".2f" if unit == "s" else ".0f" if unit == "MB" else ".1f"


@dataclass
class Sweep:
    """Throughput (items/s) at each concurrency, for one way of running the work."""

    label: str
    points: list[tuple[int, float]] = field(default_factory=list)


HEAD = ["figure", "service (median)", "direct abatch (median)", "ratio", "ideal", "target",
        "", "runs"]  # fmt: skip


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def sweep_table(sweeps: list[Sweep], latency_ms: float) -> str:
    concurrencies = [c for c, _ in sweeps[0].points]
    head = ["concurrency", "ideal", *(s.label for s in sweeps)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, c in enumerate(concurrencies):
        cells = [str(c), f"{c / (latency_ms / 1000):.0f}"]
        cells += [f"{s.points[i][1]:.0f}" for s in sweeps]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(sweeps: list[Sweep], latency_ms: float, path: Path, cpu_ms: float | None) -> None:
    """Items/s against concurrency: each sweep, the ideal line and, given the CPU one item
    costs a client process, the most one process can do."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    concurrencies = [c for c, _ in sweeps[0].points]
    ax.plot(concurrencies, [c / (latency_ms / 1000) for c in concurrencies], "k--",
            label=f"ideal: concurrency / {latency_ms:g} ms")  # fmt: skip
    for sweep, style in zip(sweeps, ("o-", "s-", "^-", "d-"), strict=False):
        xs, ys = zip(*sweep.points, strict=True)
        ax.plot(xs, ys, style, label=sweep.label)
    if cpu_ms:
        ax.axhline(1000 / cpu_ms, color="grey", linestyle=":",
                   label=f"one process's CPU limit (1 / {cpu_ms:.2f} ms)")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xticks(concurrencies, labels=[str(c) for c in concurrencies])
    ax.set_yscale("log")
    ax.set_xlabel("max_concurrency")
    ax.set_ylabel("items per second")
    ax.set_title(f"Throughput against concurrency, provider latency {latency_ms:g} ms")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def machine() -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{today}, commit {commit or 'unknown'}, {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), Python {platform.python_version()}; "
        "Redis, the mock provider, the API, the workers, the direct script and the clients "
        "all on this one machine."
    )


def publish(rows: list[Row], sweeps: list[Sweep], latency_ms: float, out_dir: Path,
            *, smoke: bool, cpu_ms: float | None = None) -> None:  # fmt: skip
    """Print the tables; write the plot and the results part of BENCHMARKS.md."""
    results = table(rows)
    sweep = sweep_table(sweeps, latency_ms)
    print(f"\n{results}\n\nitems per second against concurrency at {latency_ms:g} ms:\n{sweep}")
    plot(sweeps, latency_ms, out_dir / PLOT, cpu_ms)
    block = "\n\n".join([
        START,
        f"Run: {machine()}" + (" **Smoke run (toy sizes): not a measurement.**" * smoke),
        results,
        f"Items per second against `max_concurrency` at {latency_ms:g} ms provider latency, "
        f"one run of each side per point (![throughput]({PLOT})):",
        sweep,
        END,
    ])  # fmt: skip
    path = out_dir / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if START in text and END in text:
        head, _, rest = text.partition(START)
        _, _, tail = rest.partition(END)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
    print(f"\nwrote {path} and {out_dir / PLOT}")

"""Embeddings: an `/v1/embeddings` batch on the service against the plain `aembed_documents`
script (`bench/direct_embed.py`), on the same texts and the same mock."""

from __future__ import annotations

import json
import statistics
from typing import TYPE_CHECKING

from bench.measure import run_batch
from bench.report import Row

if TYPE_CHECKING:
    from bench.__main__ import Bench


def texts(count: int) -> list[str]:
    """`count` distinct short documents, the size of a product review or a support ticket."""
    return [
        f"Document {i}: the lamp arrived quickly and lights the whole desk." for i in range(count)
    ]


async def embeddings(bench: Bench, spec: tuple[int, float, int]) -> None:
    count, latency_ms, concurrency = spec
    docs = texts(count)
    payload = json.dumps({
        "endpoint": "/v1/embeddings", "prompts": docs, "max_concurrency": concurrency,
    }).encode()  # fmt: skip
    service: list[float] = []
    direct: list[float] = []
    async with bench.stack.workers(1, latency_ms):
        warm = json.dumps({"endpoint": "/v1/embeddings", "prompts": docs[:10]}).encode()
        await run_batch(bench.http, warm, 0.02)  # the worker's pool connected, as in a service
        for i in range(bench.sizes.repeat):
            for side in ("direct", "service") if i % 2 == 0 else ("service", "direct"):
                if side == "direct":
                    result = await bench.stack.direct_embed(latency_ms, docs)
                    if result["vectors"] != count:
                        raise RuntimeError("embeddings: the direct script lost vectors")
                    direct.append(result["seconds"])
                else:
                    service.append((await run_batch(bench.http, payload, 0.02)).seconds)
            bench.log(f"  embeddings run {i + 1}: direct {direct[-1]:.2f} s, "
                      f"service {service[-1]:.2f} s")  # fmt: skip
    s, d = statistics.median(service), statistics.median(direct)
    bench.rows.append(Row(
        name=f"embeddings: {count:,} inputs, {latency_ms:g} ms a call, concurrency "
             f"{concurrency}, 1 worker, POST to completed",
        unit="s", service=s, direct=d, target="≤ 1× direct", met=s <= d,
        runs=len(service),
        extra=f"{count / s:,.0f} inputs/s against {count / d:,.0f}",
    ))  # fmt: skip

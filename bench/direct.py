"""The baseline: what a user would write instead of the service, a direct `abatch` script.

It builds the very chain a worker builds (same `ChatOpenAI` settings, same HTTP client type) and
runs `chain.abatch(prompts, max_concurrency=...)` against the same mock. Run as a process of its
own, as a user's script is; prints one JSON line: {"seconds", "cpu_s", "failed"}. The clock
starts after imports and client set-up, so the script is timed at its best.

    python -m bench.direct --base-url http://127.0.0.1:8001/v1 --prompts 2000 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import openai

from bench.workload import prompts
from shared.chat import BatchParams
from shared.settings import Settings
from worker.llm import build_chain, build_models


async def run(base_url: str, count: int, concurrency: int) -> dict[str, float]:
    settings = Settings(openai_base_url=base_url, openai_api_key="sk-bench", provider="openai")
    http = openai.DefaultAsyncHttpxClient()
    model = build_models(settings, http)["openai"]
    chain = build_chain(model, settings.default_model, None, BatchParams())
    work = prompts(count)
    began, cpu = time.perf_counter(), time.process_time()
    results = await chain.abatch(
        work, config={"max_concurrency": concurrency}, return_exceptions=True
    )
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    await http.aclose()
    failed = sum(isinstance(r, BaseException) for r in results)
    return {"seconds": seconds, "cpu_s": cpu, "failed": failed}


def main() -> None:
    parser = argparse.ArgumentParser(description="A direct abatch run against an endpoint.")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--prompts", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.base_url, args.prompts, args.concurrency))))


if __name__ == "__main__":
    main()

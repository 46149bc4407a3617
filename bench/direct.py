"""The baseline: the script a user writes instead of running the service.

Nothing of promptbatch is in it: `ChatOpenAI` with the SDK's default HTTP client, and one
`abatch` call with LangChain's own concurrency bound, as LangChain's documentation shows it.
The benchmark runs it as a process of its own, as a user would, with the prompts in a file of
one JSON string per line. The clock runs around the `abatch` call only (after the imports, the
file read and the model's set-up), so the script is timed at its best. It prints one JSON line:
{"seconds", "cpu_s", "failed"}.

    python bench/direct.py --base-url http://127.0.0.1:8001/v1 --prompts prompts.jsonl \
        --concurrency 32
"""

import argparse
import asyncio
import json
import time

from langchain_openai import ChatOpenAI


async def main(base_url: str, prompts: list[str], concurrency: int) -> None:
    model = ChatOpenAI(model="gpt-4o-mini", base_url=base_url, api_key="sk-bench")

    began, cpu = time.perf_counter(), time.process_time()
    replies = await model.abatch(prompts, config={"max_concurrency": concurrency})  # type: ignore[arg-type]
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu

    failed = sum(not reply.content for reply in replies)
    print(json.dumps({"seconds": seconds, "cpu_s": cpu, "failed": failed}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A plain abatch script against an endpoint.")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--prompts", required=True, help="a file of one JSON string per line")
    parser.add_argument("--concurrency", type=int, required=True)
    args = parser.parse_args()
    with open(args.prompts) as lines:
        prompts = [json.loads(line) for line in lines]
    asyncio.run(main(args.base_url, prompts, args.concurrency))

"""The embeddings baseline: the script a user writes instead of running the service.

Nothing of promptbatch is in it: LangChain's `OpenAIEmbeddings` and one `aembed_documents`
call, as LangChain's documentation shows it, with the texts sent as text
(`check_embedding_ctx_length=False`, as for any OpenAI-compatible server: LangChain's own
tokenizing downloads tiktoken's files). The clock runs around the call only. It prints one
JSON line: {"seconds", "cpu_s", "vectors"}.

    python bench/direct_embed.py --base-url http://127.0.0.1:8001/v1 --texts texts.jsonl
"""

import argparse
import asyncio
import json
import time

from langchain_openai import OpenAIEmbeddings
from pydantic import SecretStr


async def main(base_url: str, texts: list[str]) -> None:
    # base_url and api_key are the documented aliases of its fields
    embedder = OpenAIEmbeddings(  # type: ignore[call-arg]
        model="text-embedding-3-small",
        base_url=base_url,
        api_key=SecretStr("sk-bench"),
        check_embedding_ctx_length=False,
    )
    began, cpu = time.perf_counter(), time.process_time()
    vectors = await embedder.aembed_documents(texts)
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    print(json.dumps({"seconds": seconds, "cpu_s": cpu, "vectors": len(vectors)}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A plain aembed_documents script.")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--texts", required=True, help="a file of one JSON string per line")
    args = parser.parse_args()
    with open(args.texts) as lines:
        texts = [json.loads(line) for line in lines]
    asyncio.run(main(args.base_url, texts))

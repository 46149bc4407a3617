"""The prompts every benchmark sends, the same for the service and the direct script."""

from __future__ import annotations

import json
from typing import Any


def prompts(count: int) -> list[str]:
    """`count` distinct short prompts, the size of a typical classification or extraction ask."""
    return [f"Prompt {i}: name one colour of the rainbow and say why." for i in range(count)]


def chat_items(count: int, size: int) -> list[dict[str, Any]]:
    """`count` items of about `size` bytes of JSON each, shaped like an OpenAI Batch line's
    body: a system message, a few-shot turn, the question, and params of their own."""
    filler = "The review goes on about the lamp's colour, weight and price. "
    items = []
    for i in range(count):
        question = f"Review {i}: " + filler * max(1, (size - 330) // len(filler))
        items.append({
            "custom_id": f"review-{i}",
            "messages": [
                {"role": "system", "content": "Classify the sentiment of a product review."},
                {"role": "user", "content": "I love it, works great."},
                {"role": "assistant", "content": "positive"},
                {"role": "user", "content": question},
            ],
            "params": {"temperature": 0, "max_tokens": 8},
        })  # fmt: skip
    return items


def openai_batch_file(count: int, items: list[dict[str, Any]] | None = None) -> bytes:
    """An OpenAI Batch input file of `count` lines (NDJSON), as a user uploads to OpenAI's
    Batch API: each a chat request of one short prompt, or of one of `items` (`chat_items`)."""

    def line(i: int) -> str:
        if items is None:
            request: dict[str, Any] = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"Prompt {i}"}],
            }
            custom_id = f"task-{i}"
        else:
            item = items[i]
            request = {"model": "gpt-4o-mini", "messages": item["messages"], **item["params"]}
            custom_id = item["custom_id"]
        return json.dumps({
            "custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": request,
        })  # fmt: skip

    return "".join(line(i) + "\n" for i in range(count)).encode()

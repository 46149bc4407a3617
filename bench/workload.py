"""The prompts every benchmark sends, the same for the service and the direct script."""

from __future__ import annotations


def prompts(count: int) -> list[str]:
    """`count` distinct short prompts, the size of a typical classification or extraction ask."""
    return [f"Prompt {i}: name one colour of the rainbow and say why." for i in range(count)]

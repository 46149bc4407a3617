"""Results as flat rows, one per item in input order: its input row's columns (or its
`custom_id`), then what came back. `pd.DataFrame(batch.rows())` is the table."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from shared.schemas import EMBEDDINGS, Batch, ItemResult

#: The columns a result adds to its input row.
RESULT_COLUMNS = ("output", "status", "error", "output_json", "finish_reason")
#: The columns an `/v1/embeddings` result adds: its vector (a list of floats) in place of output.
EMBEDDING_COLUMNS = ("embedding", "status", "error")


def result_columns(batch: Batch) -> tuple[str, ...]:
    """The columns `batch`'s results add."""
    return EMBEDDING_COLUMNS if batch.endpoint == EMBEDDINGS else RESULT_COLUMNS


def input_columns(inputs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every column the rows have, in the order first seen."""
    return list(dict.fromkeys(name for row in inputs for name in row))


def check_columns(columns: Iterable[str], results: Sequence[str] = RESULT_COLUMNS) -> None:
    """ValueError when an input column has the name of a result column."""
    taken = [name for name in columns if name in results]
    if taken:
        raise ValueError(
            f"input column {', '.join(map(repr, taken))} has the name of a result column "
            f"({', '.join(results)}); rename it"
        )


def flat_row(
    item: ItemResult,
    inputs: Sequence[Mapping[str, Any]] | None,
    results: Sequence[str] = RESULT_COLUMNS,
) -> dict[str, Any]:
    """One item as a flat dict: its input row (else its custom_id), then the `results` columns."""
    head = dict(inputs[item.index]) if inputs is not None else {"custom_id": item.custom_id}
    error = f"{item.error.type}: {item.error.message}" if item.error is not None else None
    fields = {
        "output": item.output,
        "status": item.status,
        "error": error,
        "output_json": item.output_json,
        "finish_reason": item.finish_reason,
        "embedding": item.embedding,
    }
    return head | {name: fields[name] for name in results}

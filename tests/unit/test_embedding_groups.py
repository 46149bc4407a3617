"""The embeddings worker's pieces: the offline vector, inputs grouped into calls, a call's
usage shared among its inputs."""

from __future__ import annotations

import math

from shared.results import PendingItem
from worker.embeddings import OFFLINE_DIMENSIONS, groups, offline_vector, shared_usage


def _items(*texts: str) -> list[PendingItem]:
    return [PendingItem(n, str(n), text) for n, text in enumerate(texts)]


def test_the_offline_vector_is_a_deterministic_unit_vector_of_the_asked_length() -> None:
    assert offline_vector("a") == offline_vector("a") != offline_vector("b")
    assert len(offline_vector("a")) == OFFLINE_DIMENSIONS
    for size in (1, 3, 100):
        vector = offline_vector("some text", size)
        assert len(vector) == size
        assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, abs_tol=1e-4)


def test_groups_hold_at_most_their_count_and_tokens_in_input_order() -> None:
    items = _items(*(f"text {n}" for n in range(10)))
    found = list(groups(items, 4, 1_000))
    assert [[i.index for i in g] for g in found] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    long = _items("x" * 400, "y" * 400, "z" * 40, "w" * 400)  # 100, 100, 10, 100 tokens
    assert [[i.index for i in g] for g in groups(long, 100, 150)] == [[0], [1, 2], [3]]
    assert [[i.index for i in g] for g in groups(_items("x" * 4000), 10, 5)] == [[0]]


def test_a_calls_usage_is_shared_by_length_and_adds_up() -> None:
    items = _items("a" * 10, "b" * 30, "c" * 1)
    shares = shared_usage(41, items)
    assert sum(u.input_tokens for u in shares) == 41
    assert shares[1].input_tokens > shares[0].input_tokens >= shares[2].input_tokens
    assert all(u.output_tokens == 0 and u.total_tokens == u.input_tokens for u in shares)
    assert sum(u.input_tokens for u in shared_usage(2, items)) == 2

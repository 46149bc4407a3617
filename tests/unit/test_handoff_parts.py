"""A chunk's request lines split into provider batches within the provider's bytes."""

from __future__ import annotations

from worker.handoff import plan_parts


def test_lines_are_split_into_parts_none_past_the_bytes_in_order() -> None:
    sizes = [(10, 400), (11, 400), (12, 300), (13, 500), (14, 100)]
    assert plan_parts(sizes, 1000) == [(10, 11), (12, 14)]
    assert plan_parts(sizes, 500) == [(10, 10), (11, 11), (12, 12), (13, 13), (14, 14)]
    assert plan_parts(sizes, 10_000) == [(10, 14)]


def test_a_line_past_the_bytes_alone_is_a_part_of_its_own_and_none_is_empty() -> None:
    assert plan_parts([(0, 50), (1, 5000), (2, 50)], 1000) == [(0, 0), (1, 1), (2, 2)]
    assert plan_parts([], 1000) == []

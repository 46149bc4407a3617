"""Results pages filtered by item status and custom id (the dashboard's items filter), against
a real server: a page holds only matching items, in input order, and the look is bounded."""

from __future__ import annotations

from shared.results import SCAN_MOST, ItemMatch, ItemOutcome, PendingItem
from shared.schemas import ErrorInfo
from shared.store import BatchStore
from tests.store.conftest import stored

BROKEN = ErrorInfo(type="provider_error", message="upstream said no")


def _named(index: int) -> PendingItem:
    return PendingItem(index, f"Review-{index}", f"prompt {index}")


async def _mixed(store: BatchStore, n: int) -> str:
    """A batch of `n` items named `Review-<i>`: every third failed, every third succeeded
    (with an output that says "failed" to fool a careless filter), the rest pending."""
    spec = await stored(store, n, items=[(f"Review-{i}", f"prompt {i}") for i in range(n)])
    done = []
    for i in range(n):
        if i % 3 == 0:
            done.append((_named(i), ItemOutcome(status="failed", error=BROKEN)))
        elif i % 3 == 1:
            done.append((_named(i), ItemOutcome(status="succeeded", output='"status":"failed"')))
    for start in range(0, len(done), 500):
        await store.record_many(spec, done[start : start + 500])
    return spec.id


async def test_a_status_filter_shows_exactly_that_status_in_input_order(store: BatchStore) -> None:
    batch_id = await _mixed(store, 30)
    failed = await store.results_page(batch_id, after=None, limit=100, match=ItemMatch("failed"))
    assert [i.index for i in failed.data] == list(range(0, 30, 3))
    assert all(i.error == BROKEN for i in failed.data)
    assert not failed.has_more
    pending = await store.results_page(batch_id, after=None, limit=100, match=ItemMatch("pending"))
    assert [i.index for i in pending.data] == list(range(2, 30, 3))
    ok = await store.results_page(batch_id, after=None, limit=100, match=ItemMatch("succeeded"))
    assert [i.output for i in ok.data] == ['"status":"failed"'] * 10


async def test_a_filtered_page_stops_at_its_limit_and_goes_on_from_its_cursor(
    store: BatchStore,
) -> None:
    batch_id = await _mixed(store, 30)
    match = ItemMatch("failed")
    first = await store.results_page(batch_id, after=None, limit=4, match=match)
    assert [i.index for i in first.data] == [0, 3, 6, 9]
    assert first.has_more
    assert first.next_after == 9
    rest = await store.results_page(batch_id, after=first.next_after, limit=100, match=match)
    assert [i.index for i in rest.data] == [12, 15, 18, 21, 24, 27]


async def test_a_custom_id_search_ignores_case_and_combines_with_status(store: BatchStore) -> None:
    batch_id = await _mixed(store, 30)
    found = await store.results_page(
        batch_id, after=None, limit=100, match=ItemMatch(custom_id="review-1")
    )
    assert [i.custom_id for i in found.data] == ["Review-1"] + [
        f"Review-{i}" for i in range(10, 20)
    ]
    both = await store.results_page(
        batch_id, after=None, limit=100, match=ItemMatch("failed", "review-1")
    )
    assert [i.index for i in both.data] == [12, 15, 18]


async def test_a_filtered_page_looks_through_a_bounded_stretch(store: BatchStore) -> None:
    n = SCAN_MOST + 1500
    spec = await stored(store, n)
    late = PendingItem(n - 1, str(n - 1), "p")
    await store.record(spec, late, ItemOutcome(status="failed", error=BROKEN))
    match = ItemMatch("failed")
    first = await store.results_page(spec.id, after=None, limit=10, match=match)
    assert first.data == []  # nothing among the first SCAN_MOST items: an empty page, more after
    assert first.has_more
    assert first.next_after == SCAN_MOST - 1
    rest = await store.results_page(spec.id, after=first.next_after, limit=10, match=match)
    assert [i.index for i in rest.data] == [n - 1]
    assert not rest.has_more

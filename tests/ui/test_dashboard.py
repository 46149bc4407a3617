"""The dashboard as a person uses it, in Chromium: find a batch and watch it progress, cancel
it, filter its failed items, retry them, submit a batch by typing prompts; another key sees
none of it; a model's HTML is shown as text. Every test also fails on a console error."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from playwright.sync_api import Dialog, Locator, Page, expect

from tests.helpers import MockProvider
from tests.ui.conftest import Console, Stack


def _accept(dialog: Dialog) -> None:
    dialog.accept()


def _row(page: Page, batch_id: str) -> Locator:
    return page.locator(f'[data-batch-id="{batch_id}"]')


def test_the_list_shows_a_batch_and_its_progress_live(
    page: Page, stack: Callable[..., Stack], mock: MockProvider
) -> None:
    api = stack()
    prompts = [f"quick {i}" for i in range(3)] + [f"held {i} [[gate=list]]" for i in range(2)]
    batch = api.submit(prompts=prompts, metadata={"name": "nightly eval"}, max_concurrency=5)
    page.goto(f"{api.url}/ui")
    row = _row(page, batch["id"])
    expect(row).to_contain_text("nightly eval")
    expect(row.locator("[data-field=total]")).to_have_text("5")
    expect(row.locator("[data-field=succeeded]")).to_have_text("3")
    expect(row.locator("[data-field=status]")).to_have_text("in_progress")
    mock.open_gate("list")
    # no reload: the row catches up by itself
    expect(row.locator("[data-field=succeeded]")).to_have_text("5")
    expect(row.locator("[data-field=status]")).to_have_text("completed")
    # the batch's page: its chart is drawn from the events stream's items alone
    page.goto(f"{api.url}/ui/batches/{batch['id']}")
    expect(page.locator("figure.chart figcaption")).to_contain_text("average")
    page.go_back()
    # a batch submitted while the page is open appears at the top
    later = api.submit(prompts=["one more"])
    expect(page.locator("tbody tr").first).to_have_attribute("data-batch-id", later["id"])
    # the filter keeps only batches of a status
    page.select_option("select[name=batch_status]", "failed")
    expect(page.locator("[data-batch-id]")).to_have_count(0)
    page.select_option("select[name=batch_status]", "completed")
    expect(_row(page, batch["id"])).to_be_visible()
    # the row's link opens the batch's own page
    _row(page, batch["id"]).locator("a").first.click()
    expect(page).to_have_url(re.compile(f"/ui/batches/{batch['id']}$"))
    expect(page.locator("[data-field=status]")).to_have_text("completed")


def test_cancel_from_the_page(page: Page, stack: Callable[..., Stack]) -> None:
    api = stack()
    batch = api.submit(prompts=[f"wait {i} [[gate=never]]" for i in range(4)], max_concurrency=2)
    page.goto(f"{api.url}/ui/batches/{batch['id']}")
    expect(page.locator("[data-field=status]")).to_have_text(re.compile("queued|in_progress"))
    questions: list[str] = []

    def answer(dialog: Dialog) -> None:
        questions.append(dialog.message)
        dialog.accept()

    page.once("dialog", answer)
    page.click("[data-action=cancel]")
    expect(page.locator("[data-field=status]")).to_have_text(re.compile("cancelling|cancelled"))
    assert questions
    assert "Cancel" in questions[0]
    assert api.batch(batch["id"])["status"] in ("cancelling", "cancelled")


def test_failed_items_filter_then_retry_makes_them_succeed(
    page: Page, stack: Callable[..., Stack]
) -> None:
    api = stack()
    prompts = [f"fine {i}" for i in range(6)]
    prompts[1] = "flaky one [[fail=500:1]]"
    prompts[4] = "flaky four [[fail=500:1]]"
    batch = api.submit(prompts=prompts)
    page.goto(f"{api.url}/ui/batches/{batch['id']}")
    expect(page.locator("[data-field=status]")).to_have_text("completed")
    expect(page.locator("[data-field=failed]")).to_have_text("2")
    page.select_option("select[name=status]", "failed")
    rows = page.locator("[data-item-index]")
    expect(rows).to_have_count(2)
    assert [rows.nth(i).get_attribute("data-item-index") for i in range(2)] == ["1", "4"]
    for i in range(2):  # the provider's own message, as it said it
        expect(rows.nth(i).locator("[data-col=error]")).to_contain_text("500")
    page.once("dialog", _accept)
    page.click("[data-action=retry]")
    expect(page.locator("[data-field=failed]")).to_have_text("0")
    expect(page.locator("[data-field=succeeded]")).to_have_text("6")
    expect(page.locator("[data-field=status]")).to_have_text("completed")
    page.select_option("select[name=status]", "succeeded")
    expect(rows).to_have_count(6)
    expect(page.locator('[data-item-index="4"] [data-col=output]')).to_contain_text(
        "mock reply to: flaky four"
    )
    assert api.batch(batch["id"])["request_counts"]["failed"] == 0


def test_a_batch_submitted_from_the_textarea(page: Page, stack: Callable[..., Stack]) -> None:
    api = stack()
    page.goto(f"{api.url}/ui")
    page.click("[data-action=new-batch]")
    page.fill("textarea[name=prompts]", "first question\n\nsecond question\nthird question\n")
    page.fill("input[name=max_tokens]", "50")
    page.locator("form.new-batch [type=submit]").click()
    page.wait_for_url(re.compile(r"/ui/batches/batch_[0-9a-f]{32}$"))
    batch_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("[data-field=total]")).to_have_text("3")
    expect(page.locator("[data-field=status]")).to_have_text("completed")
    expect(page.locator('[data-item-index="2"] [data-col=output]')).to_contain_text(
        "mock reply to: third question"
    )
    assert api.batch(batch_id)["request_counts"]["succeeded"] == 3


def test_another_key_sees_none_of_a_keys_batches(
    page: Page, stack: Callable[..., Stack], console: Console
) -> None:
    console.expected.append("status of 404")  # the API's answer for another key's batch
    api = stack(PROMPTBATCH_API_KEYS="key-alpha,key-beta")
    batch = api.submit("key-alpha", prompts=["alpha's secret question"])
    page.goto(f"{api.url}/ui")
    page.fill("input[name=api_key]", "key-beta")
    page.keyboard.press("Enter")
    expect(page.get_by_text("No batches yet.")).to_be_visible()
    expect(page.locator("[data-batch-id]")).to_have_count(0)
    page.goto(f"{api.url}/ui/batches/{batch['id']}")  # the same tab keeps its key
    expect(page.get_by_role("heading", name="No such batch")).to_be_visible()
    assert "key-beta" not in page.url
    assert page.context.cookies() == []
    assert page.evaluate("sessionStorage.getItem('promptbatch.api_key')") == "key-beta"
    # the owner's key shows it (a new tab asks again: sessionStorage is the tab's)
    other = page.context.browser.new_page()  # type: ignore[union-attr]
    try:
        other.goto(f"{api.url}/ui")
        other.fill("input[name=api_key]", "key-alpha")
        other.keyboard.press("Enter")
        expect(_row(other, batch["id"])).to_be_visible()
    finally:
        other.close()


def test_a_reply_of_html_is_shown_as_text_and_runs_nothing(
    page: Page, stack: Callable[..., Stack]
) -> None:
    api = stack()
    evil = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
    batch = api.submit(
        prompts=[{"custom_id": "<b>bold</b>", "prompt": evil}],
        metadata={"name": "<img src=y onerror=window.__pwned=3>"},
    )
    page.goto(f"{api.url}/ui")
    expect(_row(page, batch["id"])).to_contain_text("<img src=y onerror=window.__pwned=3>")
    page.goto(f"{api.url}/ui/batches/{batch['id']}")
    output = page.locator('[data-item-index="0"] [data-col=output]')
    expect(output).to_contain_text(f"mock reply to: {evil}")
    expect(page.locator('[data-item-index="0"]')).to_contain_text("<b>bold</b>")
    assert page.locator("main img, main script, main b").count() == 0
    assert page.evaluate("window.__pwned") is None


def test_the_first_paint_of_a_thousand_batches_is_quick(
    page: Page, stack: Callable[..., Stack]
) -> None:
    """1,000 batches stored: the list's first rows are on screen within a second, from the
    navigation's start (page, modules, the API's first page)."""
    api = stack()
    for _ in range(1000):
        api.submit(prompts=["x"])
    began = time.perf_counter()
    page.goto(f"{api.url}/ui")
    expect(page.locator("[data-batch-id]").first).to_be_visible()
    shown = time.perf_counter() - began
    assert page.locator("[data-batch-id]").count() == 100  # a page of the API
    print(f"first row of 1,000 batches shown in {shown:.3f} s")
    assert shown < 1, shown  # 0.3 s on this machine


def test_at_phone_width_nothing_overflows_and_the_keyboard_reaches_every_control(
    page: Page, stack: Callable[..., Stack]
) -> None:
    api = stack()
    batch = api.submit(prompts=["a long prompt " * 30], metadata={"name": "phone"})
    page.set_viewport_size({"width": 390, "height": 844})
    overflow = "document.documentElement.scrollWidth - window.innerWidth"
    for path in ("/ui", f"/ui/batches/{batch['id']}"):
        page.goto(f"{api.url}{path}")
        expect(page.locator("[data-field=status]").first).to_have_text("completed")
        assert page.evaluate(overflow) <= 0, path  # wide tables scroll inside their box
    page.goto(f"{api.url}/ui")
    # keyboard only: Tab to "New batch", open it, and every control has a label
    for _ in range(12):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.dataset.action") == "new-batch":
            break
    assert page.evaluate("document.activeElement.dataset.action") == "new-batch"
    page.keyboard.press("Enter")
    for label in ("Prompts, one a line", "Or a file", "Template over the CSV's columns", "Model",
                  "Max concurrency", "Temperature", "Max tokens", "System prompt"):  # fmt: skip
        expect(page.get_by_label(label, exact=True)).to_be_visible()
    expect(page.get_by_label("Status", exact=True)).to_be_visible()


def test_a_batch_from_an_uploaded_csv_with_a_template_and_from_an_openai_batch_file(
    page: Page, stack: Callable[..., Stack]
) -> None:
    api = stack()
    csv = b'custom_id,review\nr1,"Great, really ""great"""\nr2,Broke at once\n'
    page.goto(f"{api.url}/ui")
    page.click("[data-action=new-batch]")
    page.set_input_files(
        "input[name=file]", {"name": "rows.csv", "mimeType": "text/csv", "buffer": csv}
    )
    page.fill("textarea[name=template]", "Review: {review}")
    page.locator("form.new-batch [type=submit]").click()
    page.wait_for_url(re.compile(r"/ui/batches/batch_[0-9a-f]{32}$"))
    expect(page.locator("[data-field=status]")).to_have_text("completed")
    first = page.locator('[data-item-index="0"]')
    expect(first).to_contain_text("r1")
    expect(first.locator("[data-col=output]")).to_have_text(
        'mock reply to: Review: Great, really "great"'
    )

    lines = b"".join(
        b'{"custom_id": "t%d", "method": "POST", "url": "/v1/chat/completions", "body": '
        b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "line %d"}]}}\n'
        % (i, i)
        for i in range(3)
    )
    page.goto(f"{api.url}/ui")
    page.click("[data-action=new-batch]")
    page.set_input_files(
        "input[name=file]",
        {"name": "batch.jsonl", "mimeType": "application/jsonl", "buffer": lines},
    )
    page.locator("form.new-batch [type=submit]").click()
    page.wait_for_url(re.compile(r"/ui/batches/batch_[0-9a-f]{32}$"))
    expect(page.locator("[data-field=total]")).to_have_text("3")
    expect(page.locator("[data-field=status]")).to_have_text("completed")
    expect(page.locator('[data-item-index="2"]')).to_contain_text("t2")
    expect(page.locator('[data-item-index="2"] [data-col=output]')).to_have_text(
        "mock reply to: line 2"
    )


#: A stream as sse-starlette writes it (CRLF line ends), cut into pieces at every awkward
#: place: between "\r" and "\n", inside a field name, between the two blank-line bytes.
_SSE_PIECES = [
    "event: batch\r",
    "\nid: 1-0\r\nda",
    'ta: {"status": "in_progress"}\r\n\r',
    "\n: ping\r\n\r\nevent: items\r",
    '\nid: 2-0\r\ndata: {"data": [{"index": 0, "finished_at_ms": 5}]}\r\n\r\n',
]


def test_the_event_stream_reader_keeps_events_whole_however_the_bytes_arrive(
    page: Page, stack: Callable[..., Stack]
) -> None:
    api = stack()
    page.goto(f"{api.url}/ui")
    read = page.evaluate(
        """async (pieces) => {
            const { events } = await import("/ui/static/api.js");
            window.fetch = async () => new Response(new ReadableStream({
                start(controller) {
                    for (const piece of pieces) controller.enqueue(new TextEncoder().encode(piece));
                    controller.close();
                },
            }), { status: 200, headers: { "Content-Type": "text/event-stream" } });
            const seen = [];
            for await (const message of events("batch_x")) seen.push(message);
            return seen;
        }""",
        _SSE_PIECES,
    )
    assert read == [
        {"event": "batch", "id": "1-0", "data": {"status": "in_progress"}},
        {"event": "items", "id": "2-0", "data": {"data": [{"index": 0, "finished_at_ms": 5}]}},
    ]

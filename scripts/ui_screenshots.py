"""The README's dashboard screenshots (docs/ui-*.png), from a stack of real processes: a Redis
server, the API, a worker on the mock provider, and Debian's Chromium driven by Playwright.

    .venv/bin/python scripts/ui_screenshots.py     # needs the dev extras and `chromium`
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import httpx
from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import MockProvider, RedisServer, start_worker  # noqa: E402
from tests.servers import start_api  # noqa: E402
from tests.ui.conftest import CHROMIUM_ARGS, chromium_path  # noqa: E402

REVIEWS = [
    "Arrived quickly and works as described.",
    "The lid cracked after a week.",
    "Good value, though the manual is thin.",
    "Stopped charging on day two.",
]


def main() -> None:
    out = ROOT / "docs"
    out.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        redis = RedisServer(work)
        mock = MockProvider(work, latency_ms=40)
        provider = {"OPENAI_BASE_URL": f"{mock.url}/v1", "OPENAI_API_KEY": "sk-demo"}
        api = start_api(redis.url, work / "api.log", **provider)
        worker = start_worker(redis.url, work / "worker.log", **provider,
                              PROMPTBATCH_MAX_RETRIES="0")  # fmt: skip
        try:
            with httpx.Client(base_url=api.url, timeout=30) as http:
                _submit(http, "product reviews", [f"Classify: {r}" for r in REVIEWS * 10])
                failing = [f"Summarise ticket {i}" for i in range(40)]
                failing[3] = failing[17] = "Summarise ticket [[status=400]]"
                shown = _submit(http, "support tickets", failing)
                _submit(http, "translations", [f"Translate {i} [[gate=demo]]" for i in range(30)])
            _shoot(api.url, shown, out)
        finally:
            mock.open_gate("demo")
            worker.stop()
            api.proc.stop()
            mock.stop()
            redis.stop()


def _submit(http: httpx.Client, name: str, prompts: list[str]) -> str:
    response = http.post("/v1/batches", json={
        "prompts": prompts, "metadata": {"name": name}, "max_concurrency": 8,
    })  # fmt: skip
    response.raise_for_status()
    return str(response.json()["id"])


def _shoot(url: str, batch_id: str, out: Path) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1360, "height": 900})
        page.goto(f"{url}/ui/batches/{batch_id}")
        expect(page.locator("[data-field=status]")).to_have_text("completed", timeout=120_000)
        page.wait_for_timeout(500)  # the chart's last point
        page.screenshot(path=out / "ui-batch.png")
        page.goto(f"{url}/ui")
        expect(page.locator("[data-batch-id]")).to_have_count(3)
        page.wait_for_timeout(3500)  # the health tiles' second sample gives the rates
        page.screenshot(path=out / "ui-batches.png")
        page.click("[data-action=new-batch]")
        page.fill("textarea[name=prompts]", "What are some colors of the rainbow?\nWhere is Seoul?")
        page.fill("input[name=max_tokens]", "256")
        page.locator("section[aria-label='New batch']").screenshot(path=out / "ui-new-batch.png")
        browser.close()
    for name in ("ui-batches", "ui-batch", "ui-new-batch"):
        print(out / f"{name}.png")


if __name__ == "__main__":
    main()

"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against a real API
process, real arq workers and the mock provider. `.ci/run` installs Chromium with apt."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from tests.helpers import MockProvider, Proc
from tests.live import live_api  # noqa: F401 (a fixture)

#: What Chromium needs here: no sandbox as root, and no calls home (this machine has no
#: internet: each would be refused, and logged).
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def chromium_path() -> str:
    found = os.environ.get("PROMPTBATCH_CHROMIUM") or shutil.which("chromium")
    if not found:
        raise AssertionError(
            "The browser tests need Chromium: `apt-get install chromium` (as `.ci/run` does), "
            "or set PROMPTBATCH_CHROMIUM to a Chromium binary."
        )
    return found


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """One Chromium for this package's tests. Package-scoped, not session-scoped: Playwright's
    sync API keeps an event loop running while it is open, and the async tests collected
    after this package could not start theirs."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@dataclass
class Console:
    """What the page said on its console, and the errors it threw."""

    errors: list[str] = field(default_factory=list)
    #: Errors a test brings about on purpose (Chromium logs every 4xx a page's fetch gets).
    expected: list[str] = field(default_factory=list)

    def message(self, message: ConsoleMessage) -> None:
        if message.type == "error" and not any(text in message.text for text in self.expected):
            self.errors.append(message.text)


@pytest.fixture
def console() -> Console:
    return Console()


@pytest.fixture
def page(
    browser: Browser,
    console: Console,
    live_api: Callable[..., str],  # noqa: F811
    workers: Callable[..., Proc],
) -> Iterator[Page]:
    """A new tab (its own sessionStorage) at 1360x900. The test fails if the page logged an
    error or threw one. (It asks for the API's and the workers' fixtures only so that it is
    closed before they stop them: a page still polling a stopped API logs errors.)"""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    tab = context.new_page()
    tab.on("console", console.message)
    tab.on("pageerror", lambda error: console.errors.append(f"uncaught: {error}"))
    tab.set_default_timeout(20_000)
    yield tab
    context.close()
    assert console.errors == [], console.errors


@dataclass
class Stack:
    """The API (a real process), real workers on the mock provider, and a client of the API."""

    url: str
    http: httpx.Client

    def submit(self, key: str | None = None, **body: Any) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = self.http.post("/v1/batches", json=body, headers=headers)
        assert response.status_code == 202, response.text
        batch: dict[str, Any] = response.json()
        return batch

    def batch(self, batch_id: str, key: str | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = self.http.get(f"/v1/batches/{batch_id}", headers=headers)
        response.raise_for_status()
        found: dict[str, Any] = response.json()
        return found


@pytest.fixture
def stack(
    live_api: Callable[..., str],  # noqa: F811
    workers: Callable[..., Proc],
    mock: MockProvider,
) -> Iterator[Callable[..., Stack]]:
    """Start the API (with `api_env`) and a worker on the mock provider (no retries of a
    provider error: an item the mock fails once fails, and a retry of it succeeds)."""
    clients: list[httpx.Client] = []

    def start(**api_env: str) -> Stack:
        provider = {"OPENAI_BASE_URL": f"{mock.url}/v1", "OPENAI_API_KEY": "sk-test"}
        url = live_api(**provider, **api_env)
        workers(**provider, PROMPTBATCH_MAX_RETRIES="0", **api_env)
        http = httpx.Client(base_url=url, timeout=30)
        clients.append(http)
        return Stack(url, http)

    yield start
    for http in clients:
        http.close()

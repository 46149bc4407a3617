"""The dashboard's pages as the API serves them: a strict CSP, every asset from the API
itself, no inline script, and the shell saying whether the API asks for a key. (The pages
at work, in a browser: tests/ui.)"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx
import pytest

from tests.conftest import api_client, make_settings


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0
        self.inline_styles = 0
        self.metas: dict[str, str] = {}
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script":
            self._in_script = True
            if not found.get("src"):
                self.inline_scripts += 1
        if "style" in found or tag == "style":
            self.inline_styles += 1
        if any(name.startswith("on") for name in found):
            self.inline_scripts += 1
        if tag == "meta" and found.get("name"):
            self.metas[str(found["name"])] = str(found.get("content"))
        for name in ("src", "href"):
            if found.get(name) and tag != "a":
                self.urls.append(str(found[name]))


def _imports(js: str) -> list[str]:
    return re.findall(r"""^import .* from "(\./[\w.]+)";$""", js, re.MULTILINE)


@pytest.mark.parametrize("path", ["/ui", "/ui/batches/batch_" + "0" * 32])
async def test_a_page_loads_only_the_apis_own_assets_under_a_strict_csp(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'self';" in csp
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    page = _Page()
    page.feed(response.text)
    assert page.inline_scripts == 0
    assert page.inline_styles == 0
    assets = [u for u in page.urls if not u.startswith("data:")]
    assert "/ui/static/app.js" in assets
    seen: set[str] = set()
    while assets:  # the page's assets, and the modules they import
        url = assets.pop()
        if url in seen:
            continue
        seen.add(url)
        assert url.startswith("/ui/static/"), f"{path} loads {url} from outside the API"
        fetched = await client.get(url)
        assert fetched.status_code == 200, url
        assert fetched.headers["cache-control"] == "no-cache", url  # never an old module
        assert fetched.headers["x-content-type-options"] == "nosniff", url
        if url.endswith(".js"):
            assert "javascript" in fetched.headers["content-type"]
            assert "innerHTML" not in fetched.text, url  # text goes in as text
            assets += ["/ui/static/" + module[2:] for module in _imports(fetched.text)]
    assert {"/ui/static/batch.js", "/ui/static/form.js", "/ui/static/style.css"} <= seen


async def test_the_shell_says_whether_the_api_asks_for_a_key(
    client: httpx.AsyncClient, redis_url: str
) -> None:
    page = _Page()
    page.feed((await client.get("/ui")).text)
    assert page.metas["promptbatch-auth"] == "none"
    settings = make_settings(redis_url, api_keys="k1,k2")
    async with api_client(settings) as keyed:
        response = await keyed.get("/ui")  # the shell holds no data: no key needed for it
        assert response.status_code == 200
        page = _Page()
        page.feed(response.text)
        assert page.metas["promptbatch-auth"] == "required"
        assert "k1" not in response.text
        assert (await keyed.get("/v1/batches")).status_code == 401


async def test_results_filter_by_status_and_custom_id_over_http(client: httpx.AsyncClient) -> None:
    batch = (await client.post("/v1/batches", json={"prompts": ["a", "b"]})).json()
    url = f"/v1/batches/{batch['id']}/results"
    pending = (await client.get(url, params={"status": "pending"})).json()
    assert [item["index"] for item in pending["data"]] == [0, 1]
    assert (await client.get(url, params={"status": "failed"})).json()["data"] == []
    named = (await client.get(url, params={"custom_id": "1"})).json()
    assert [item["custom_id"] for item in named["data"]] == ["1"]
    wrong = await client.get(url, params={"status": "exploded"})
    assert wrong.status_code == 422
    assert wrong.json()["error"]["param"] == "status"

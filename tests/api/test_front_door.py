"""The front door: `/` leads to the dashboard, the docs load nothing from outside the API, and a
body of a type the API does not read is a 415 naming the types it does."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx
import pytest
from redis.asyncio import Redis


class _Assets(HTMLParser):
    """Every URL a page loads: scripts, styles, icons, images."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        for name in ("src", "href"):
            if found.get(name) and (tag != "a"):
                self.urls.append(str(found[name]))


async def test_the_root_redirects_to_the_dashboard(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 307
    assert response.headers["location"] == "/ui"


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_docs_load_every_asset_from_the_api_itself(
    client: httpx.AsyncClient, page: str
) -> None:
    html = await client.get(page)
    assert html.status_code == 200
    parser = _Assets()
    parser.feed(html.text)
    # The page's script too: Swagger UI is told where the OpenAPI document is.
    inline = re.findall(r"""url: ['"]([^'"]+)['"]|spec-url=['"]([^'"]+)['"]""", html.text)
    urls = parser.urls + [u for pair in inline for u in pair if u]
    assert any(u.endswith(".js") for u in urls), urls
    assert "/openapi.json" in urls
    for url in urls:
        assert url.startswith("/"), f"{page} loads {url} from outside the API"
        fetched = await client.get(url)
        assert fetched.status_code == 200, url
        assert len(fetched.content) > 0, url


async def test_the_readiness_probe_documents_its_503(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    assert "503" in doc["paths"]["/readyz"]["get"]["responses"]


@pytest.mark.parametrize(
    ("path", "accepted"),
    [
        ("/v1/batches", "application/json or application/x-ndjson"),
        ("/v1/webhooks", "application/json"),
    ],
)
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
async def test_a_body_of_another_type_is_a_415_naming_the_accepted_ones(
    client: httpx.AsyncClient, redis_url: str, path: str, accepted: str, content_type: str
) -> None:
    # JSON in the body, as a user who forgot the header sends it: still not read as JSON.
    body = b'{"prompts": ["hello"], "url": "https://example.com/hook"}'
    response = await client.post(path, content=body, headers={"Content-Type": content_type})
    assert response.status_code == 415, response.text
    error = response.json()["error"]
    assert error["type"] == "unsupported_media_type"
    assert content_type in error["message"]
    assert accepted in error["message"]
    async with Redis.from_url(redis_url) as redis:
        assert [k async for k in redis.scan_iter("pb:*")] == []  # nothing stored


async def test_a_json_body_without_a_content_type_is_read_as_json(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/v1/batches", content=b'{"prompts": ["hello"]}', headers={"Content-Type": ""}
    )
    assert response.status_code == 202, response.text

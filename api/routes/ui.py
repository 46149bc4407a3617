"""The dashboard (`/ui`): static pages, a client of the public `/v1` API like the CLI. Its
HTML, JS modules and CSS are in `api/ui/`; they load nothing from another origin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

from api.deps import SettingsDep

UI_DIR = Path(__file__).resolve().parent.parent / "ui"

#: Scripts, styles and connections from the API's own origin only; no inline script or
#: style, no plugin, no framing. `img-src data:` is the empty favicon.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
#: The page's shell, read once at import. `{auth}` says whether the API asks for a key, so
#: that the page asks for one before its first call rather than after a 401.
_SHELL = (UI_DIR / "index.html").read_text(encoding="utf-8")

router = APIRouter(include_in_schema=False)


class _Static(StaticFiles):
    """The page's modules and styles, checked with the server on each use (`no-cache`, by
    their ETag): after an upgrade a tab never mixes old modules with new ones."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


static = _Static(directory=UI_DIR / "static")


def _page(settings: SettingsDep) -> HTMLResponse:
    auth = "required" if settings.api_key_list else "none"
    return HTMLResponse(_SHELL.replace("{auth}", auth), headers=HEADERS)


@router.get("/")
async def front_door() -> RedirectResponse:
    """The API's front door: the dashboard."""
    return RedirectResponse("/ui", status_code=307)


@router.get("/ui")
async def batches_page(settings: SettingsDep) -> HTMLResponse:
    """The batches, newest first, with the service's health and the new-batch form."""
    return _page(settings)


@router.get("/ui/batches/{batch_id}")
async def batch_page(batch_id: str, settings: SettingsDep) -> HTMLResponse:
    """One batch: counts, progress, items and actions (the page reads `batch_id` from its
    own address, and says so when there is no such batch)."""
    return _page(settings)

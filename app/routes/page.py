"""The browser page at `GET /` and its few static files (docs/browser.md).

Plain HTML, CSS and JavaScript in app/static/, no build step and nothing fetched from another origin: the Content
Security Policy below allows this origin only, so a page that reached for a CDN or a web font would break in the
end-to-end test, not only on a machine without a network. A router cannot mount StaticFiles, so each file has an
explicit route; the names are a fixed list, so no request path ever reaches the file system.

Only HTTP GET here: the FunASR WebSocket protocol is served at `/` too, on the websocket scope.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from app.errors import HTTPError

STATIC = Path(__file__).resolve().parent.parent / "static"

# Every static file the page uses, with its media type. index.html is served at `/` only.
FILES: dict[str, str] = {
    "app.js": "text/javascript; charset=utf-8",
    "pcm-worklet.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

HEADERS = {
    # The files change with the package; a browser revalidates instead of running yesterday's script.
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
}

router = APIRouter(tags=["page"], include_in_schema=False)


def _read(name: str) -> bytes:
    # Read on every request (a few kB): an edited file is served at once, without a restart.
    return (STATIC / name).read_bytes()


@router.get("/", response_class=HTMLResponse)
async def index() -> HTMLResponse:
    """The page: microphone or file in, live transcript out over the REST API and its event stream."""
    return HTMLResponse(_read("index.html"), headers=HEADERS)


@router.get("/static/{name}")
async def static_file(name: str) -> Response:
    media_type = FILES.get(name)
    if media_type is None:
        raise HTTPError(404, "not_found", f"no static file {name!r}")
    return Response(_read(name), media_type=media_type, headers=HEADERS)

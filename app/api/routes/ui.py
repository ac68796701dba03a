"""The web dashboard (static HTML, CSS and JS from app/ui) and the metrics summary it polls.

The page files hold no data, so they are served without a key; every number on the page
comes from the API, called with the key the user types in (kept in sessionStorage). The files
are read once at import from a fixed folder and looked up by exact name, so a request path
can never reach another file. A strict Content-Security-Policy forbids inline and foreign
scripts: even a label that slipped past the page's escaping could not run as code.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, Response

from app.api.auth import require
from app.api.deps import MetricsDep
from app.errors import SwitchyardError
from app.runtime.metrics_summary import MetricsSummary

router = APIRouter(tags=["dashboard"])
_ANY = [Depends(require("any"))]
_HEALTH: list[str | Enum] = ["health"]  # listed with the health routes in /docs

_PAGE_METHODS = ["GET", "HEAD"]

UI_DIR = Path(__file__).resolve().parents[2] / "ui"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Revalidate on every load: after an upgrade the page must not mix old and new scripts.
    "Cache-Control": "no-cache",
}


def _read_static() -> dict[str, tuple[bytes, str]]:
    folder = UI_DIR / "static"
    return {
        path.name: (path.read_bytes(), _TYPES[path.suffix])
        for path in sorted(folder.iterdir())
        if path.is_file() and path.suffix in _TYPES
    }


_INDEX = (UI_DIR / "index.html").read_bytes()
_STATIC = _read_static()


def _page() -> Response:
    return Response(_INDEX, media_type=_TYPES[".html"], headers=_HEADERS)


@router.api_route("/", methods=_PAGE_METHODS, response_class=HTMLResponse, include_in_schema=False)
async def root() -> Response:
    """The dashboard."""
    return _page()


@router.api_route(
    "/ui", methods=_PAGE_METHODS, response_class=HTMLResponse, include_in_schema=False
)
@router.api_route(
    "/ui/", methods=_PAGE_METHODS, response_class=HTMLResponse, include_in_schema=False
)
async def dashboard() -> Response:
    """The dashboard, under its own path for proxies that route /ui."""
    return _page()


@router.api_route(
    "/ui/static/{filename}", methods=_PAGE_METHODS, response_class=Response, include_in_schema=False
)
async def static_file(filename: str) -> Response:
    """One of the page's scripts or style sheets, by exact name."""
    found = _STATIC.get(filename)
    if found is None:
        raise SwitchyardError(404, "not_found", f"no dashboard file {filename!r}", param="path")
    body, media_type = found
    return Response(body, media_type=media_type, headers=_HEADERS)


@router.get("/v1/metrics/summary", response_model=MetricsSummary, dependencies=_ANY, tags=_HEALTH)
async def metrics_summary(metrics: MetricsDep) -> MetricsSummary:
    """Requests/s and latency percentiles over the last minute, totals, resident bytes per tier.

    Rates and percentiles compare with the reading of about a minute ago (readings are taken
    when this is called, at most one a second); the first call covers the whole uptime.
    """
    return metrics.summary()

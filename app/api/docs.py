"""`/docs`: Swagger UI served from the app itself, with no request to any other host.

FastAPI's default page loads Swagger UI from a CDN, so it is blank where this service runs: on
machines without internet. The assets are swagger-ui-dist (npm, Apache-2.0) checked in under
`app/api/static/swagger-ui/` with its licence; the page references only this app's URLs, and
the online validator badge (which would call validator.swagger.io) is off. ReDoc, also
CDN-only, is not served.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(__file__).parent / "static" / "swagger-ui"
ASSETS_URL = "/docs/assets"


def install_docs(app: FastAPI) -> None:
    """Serve `/docs` and its assets; the app must be built with `docs_url=None`."""
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="swagger-ui-assets")

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        # Behind a proxy that strips a prefix, root_path keeps every URL on this app.
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} API",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},
        )

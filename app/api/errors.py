"""Render every failure in API.md's one error shape, and never leak a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import SwitchyardError

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
    415: "unsupported_media_type", 422: "invalid_request", 429: "overloaded",
}


def error_response(exc: SwitchyardError) -> JSONResponse:
    """The JSON response for a SwitchyardError."""
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Map domain errors, schema errors, routing errors and bugs to the one shape."""

    @app.exception_handler(SwitchyardError)
    async def _domain(_request: Request, exc: SwitchyardError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _schema(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        return error_response(SwitchyardError(422, "invalid_request", message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        err = SwitchyardError(exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {}))
        return error_response(err)

    @app.exception_handler(Exception)
    async def _bug(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(
            SwitchyardError(500, "internal_error", f"internal error: {type(exc).__name__}")
        )

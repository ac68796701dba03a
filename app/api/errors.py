"""Render every failure in API.md's one error shape, and never leak a traceback."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.errors import SwitchyardError

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "overloaded",
}


class ErrorDetail(BaseModel):
    """What went wrong: a stable snake_case code, a message, and the offending field."""

    code: str
    message: str
    param: str | None = None


class ErrorBody(BaseModel):
    """API.md's one error shape."""

    error: ErrorDetail


# Documented on every operation (create_app passes it to FastAPI), so the OpenAPI promises what
# the handlers below send: any 4xx or 5xx in the error shape (FastAPI's default 422 schema,
# `{"detail": [...]}`, is never sent and so is not documented).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorBody, "description": "the caller's mistake (API.md's error shape)"},
    "5XX": {"model": ErrorBody, "description": "unavailable, timed out, or a bug"},
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
        if first.get("type") == "json_invalid":
            loc = []  # its loc is a character offset, not a field
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        return error_response(SwitchyardError(422, "invalid_request", message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # A limit (app.api.limits.LimitExceeded) names its own code.
        code = getattr(exc, "code", None) or _HTTP_CODES.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the methods of the first route matching the path; a path
            # served by several routes (GET and POST /v1/adapters) must list them all.
            headers["Allow"] = ", ".join(_allowed_methods(request))
        err = SwitchyardError(exc.status_code, code, str(exc.detail), headers=headers)
        return error_response(err)

    @app.exception_handler(Exception)
    async def _bug(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(
            SwitchyardError(500, "internal_error", f"internal error: {type(exc).__name__}")
        )


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this request's path."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        route_methods = getattr(route, "methods", None)
        if match is not Match.NONE and route_methods:
            methods |= set(route_methods)
    return sorted(methods)

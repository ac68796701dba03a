"""Every route's JSON body and query string pass `app.untrusted` before FastAPI sees them.

FastAPI parses a JSON body with plain `json.loads`, which accepts what the service cannot hold
(`"\\ud800"`, nesting past any recursive code's stack, `NaN`) and reports a decode error with a
character offset as its `param`. `UntrustedRoute` (FastAPI's "custom APIRoute class" pattern;
`install_untrusted` makes every route of the app one, whichever router added it) parses the
body once through
`app.untrusted.load_json` and leaves the result where `Request.json()` caches it, so FastAPI
validates the checked tree and never parses the body itself. A refusal is in the error shape
(400 `invalid_text` for text that is not text; 422 `invalid_request` for a body that is not a
JSON document: malformed, NaN, repeated keys, nested too deep), its `param` names the field or
is null for the body as a whole, and it comes before any dependency or endpoint runs, so
nothing is stored first.
"""

from __future__ import annotations

import email.message
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from app.errors import SwitchyardError
from app.untrusted import check_text, load_json

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
_BODY = "body"


class UntrustedRoute(APIRoute):
    """An APIRoute whose request text and JSON go through `app.untrusted` first."""

    def get_route_handler(self) -> Handler:
        """FastAPI's handler, behind `check_request`."""
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            await check_request(request)
            return await handler(request)

        return checked


def install_untrusted(app: FastAPI) -> int:
    """Make every APIRoute of `app`, in every included router, an UntrustedRoute.

    One call in `create_app`, so a router added later is covered without remembering a
    `route_class` argument. FastAPI builds an included route's handler from the route's
    `get_route_handler` when the route is first matched, so this runs before any request.
    UntrustedRoute adds no state, so changing the class of a built APIRoute is safe. Returns
    how many routes were changed.
    """
    changed = 0
    pending: list[BaseRoute] = list(app.router.routes)
    while pending:
        route = pending.pop()
        nested = getattr(route, "original_router", None)  # an included router
        if nested is not None:
            pending.extend(nested.routes)
        elif isinstance(route, APIRoute) and not isinstance(route, UntrustedRoute):
            route.__class__ = UntrustedRoute
            changed += 1
    return changed


async def check_request(request: Request) -> None:
    """Refuse a request whose query, path or JSON body holds what is not text or nests too deep.

    The parsed body is kept on the request (Starlette's `Request.json()` cache), so the route
    validates exactly what was checked.
    """
    for key, value in request.query_params.multi_items():
        check_text(key, param=key)
        check_text(value, param=key)
    for key, value in request.path_params.items():
        if isinstance(value, str):
            check_text(value, param=key)
    if not is_json(request.headers.get("content-type")):
        return
    body = await request.body()
    if not body:
        return
    try:
        request._json = load_json(
            body, what="the request body", param=_BODY, reject_duplicate_keys=True
        )
    except SwitchyardError as exc:
        exc.param = field_of(exc.param)
        if exc.code == "invalid_json":
            # A body that is not a JSON document stays what FastAPI made it: 422 invalid_request
            # (API.md's "422 schema"), now with line and column and no offset as its param.
            exc.status, exc.code = 422, "invalid_request"
        raise


def is_json(content_type: str | None) -> bool:
    """Whether FastAPI might parse a body of this content type as JSON.

    No content type counts: FastAPI without strict content types (older releases, or
    `strict_content_type=False`) parses such a body as JSON, and checking a body that a strict
    FastAPI would refuse anyway costs nothing.
    """
    if not content_type:
        return True
    if content_type == "application/json":
        return True  # what nearly every client sends: no header parsing on the serving path
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


def field_of(param: str | None) -> str | None:
    """`body.inputs[0]` -> `inputs[0]`; the body as a whole -> None (no field to name)."""
    if param is None or param == _BODY:
        return None
    for prefix in (_BODY + ".", _BODY):
        if param.startswith(prefix):
            return param.removeprefix(prefix) or None
    return param

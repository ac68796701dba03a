"""Every route's JSON body and query string pass `app.untrusted` before FastAPI sees them.

FastAPI parses a JSON body with plain `json.loads`, which accepts what the service cannot hold
(`"\\ud800"`, nesting past any recursive code's stack, `NaN`) and reports a decode error with a
character offset as its `param`. `UntrustedRoute` (the "custom APIRoute class" pattern: every
router is built with `route_class=UntrustedRoute`) parses the body once through
`app.untrusted.load_json` and leaves the result where `Request.json()` caches it, so FastAPI
validates the checked tree and never parses the body itself. A refusal is a 400 in the error
shape whose `param` names the field (or is null for the body as a whole), raised before any
dependency or endpoint runs, so nothing is stored first.
"""

from __future__ import annotations

import email.message
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

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
        raise


def is_json(content_type: str | None) -> bool:
    """Whether FastAPI would parse a body of this content type as JSON."""
    if not content_type:
        return False
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

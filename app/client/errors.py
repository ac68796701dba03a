"""Exceptions of `app.client`: one per HTTP status family, each carrying API.md's error body."""

from __future__ import annotations

from typing import Any

import httpx


class SwitchyardClientError(Exception):
    """Base of everything the client raises."""


class APIConnectionError(SwitchyardClientError):
    """The service could not be reached, or the connection broke before an answer came."""


class APITimeoutError(APIConnectionError):
    """No answer within the client's timeout."""


class ResponseFormatError(SwitchyardClientError):
    """The service answered with a body that is not what the API promises."""


class SwitchyardAPIError(SwitchyardClientError):
    """An error answer: `status`, and the API's `code`, `message` and `param`.

    `retry_after` is the server's Retry-After in seconds when it sent one (429 and 503);
    `body` is the whole error object, with any fields beyond the three (a dataset's bad rows
    under `details`, say).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        retry_after: float | None = None,
        body: dict[str, Any] | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.retry_after = retry_after
        self.body = body or {"code": code, "message": message, "param": param}
        self.response = response


class BadRequestError(SwitchyardAPIError):
    """400: bad input the caller must fix."""


class AuthenticationError(SwitchyardAPIError):
    """401: no key, or an unknown one."""


class PermissionDeniedError(SwitchyardAPIError):
    """403: the key lacks the scope or the adapter."""


class NotFoundError(SwitchyardAPIError):
    """404: no such adapter, dataset, job or route."""


class ConflictError(SwitchyardAPIError):
    """409: the request conflicts with the current state (a finished job, another base)."""


class PayloadTooLargeError(SwitchyardAPIError):
    """413: a body, upload or input list over a limit."""


class UnprocessableEntityError(SwitchyardAPIError):
    """422: the body does not have the schema's shape."""


class RateLimitError(SwitchyardAPIError):
    """429: overloaded; retried by the client (bounded) before it is raised."""


class ServerError(SwitchyardAPIError):
    """5xx: the service failed, or is not ready."""


class ServiceUnavailableError(ServerError):
    """503: loading, draining or a corrupted adapter; retried by the client when transient."""


_BY_STATUS: dict[int, type[SwitchyardAPIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def error_class(status: int) -> type[SwitchyardAPIError]:
    """The exception type for an HTTP status."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else SwitchyardAPIError


def api_error(response: httpx.Response, *, retry_after: float | None = None) -> SwitchyardAPIError:
    """The exception for an error response, from API.md's `{"error": {...}}` body when it has
    one (a proxy's HTML page, say, becomes code `http_<status>` with the text as message)."""
    detail: Any = None
    try:
        detail = response.json().get("error")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, dict) and isinstance(detail.get("code"), str):
        code = detail["code"]
        message = str(detail.get("message") or code)
        param = detail.get("param") if isinstance(detail.get("param"), str) else None
    else:
        code = f"http_{response.status_code}"
        message = response.text[:500] or response.reason_phrase or code
        param = None
    cls = error_class(response.status_code)
    return cls(
        response.status_code,
        code,
        message,
        param=param,
        retry_after=retry_after,
        body=detail if isinstance(detail, dict) else None,
        response=response,
    )

"""The one error type every layer raises; `api/errors.py` turns it into API.md's JSON shape."""

from __future__ import annotations


class SwitchyardError(Exception):
    """A failure the caller can act on: an HTTP status, a stable code, a message and the field.

    Domain code (registry, runtime, training) raises these directly so that the message that
    names the value and the limit reaches the user unchanged.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}

    def to_dict(self) -> dict[str, dict[str, str | None]]:
        """The body of API.md's error shape."""
        return {"error": {"code": self.code, "message": self.message, "param": self.param}}


def bad_request(code: str, message: str, *, param: str | None = None) -> SwitchyardError:
    """A 400 for input the caller must fix."""
    return SwitchyardError(400, code, message, param=param)


def not_found(code: str, message: str, *, param: str | None = None) -> SwitchyardError:
    """A 404 for a named thing that does not exist."""
    return SwitchyardError(404, code, message, param=param)

"""Bearer API keys with scopes, optionally limited to a set of adapters.

Keys come from Settings and are kept only as SHA-256 digests; a presented key is hashed and
compared against every digest with `hmac.compare_digest`, so neither the key nor its
position in the table leaks through timing. With no keys configured every caller is an
admin, which Settings allows only on a loopback address.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request

from app.config import SCOPES, Settings
from app.errors import SwitchyardError

# What each scope may do; `admin` may do everything.
SCOPE_HELP = {
    "predict": "inference, listing adapters and service info",
    "train": "datasets and training jobs",
    "manage": "upload, download, delete and pin adapters",
    "admin": "everything",
    "any": "any valid key",
}


@dataclass(frozen=True)
class Principal:
    """Who is calling: their scopes and, if limited, the adapters they may touch."""

    scopes: frozenset[str]
    adapters: frozenset[str] | None = None  # None: every adapter

    def has(self, scope: str) -> bool:
        """`any` is met by every valid key; `admin` meets every scope."""
        return scope == "any" or "admin" in self.scopes or scope in self.scopes

    def check_adapter(self, name: str) -> None:
        """403 unless this key may use adapter `name`."""
        if self.adapters is not None and name not in self.adapters:
            raise SwitchyardError(
                403,
                "adapter_forbidden",
                f"this API key may not use adapter {name!r}",
                param="adapter",
            )


ANONYMOUS_ADMIN = Principal(frozenset({"admin"}))


@dataclass(frozen=True)
class _Key:
    digest: bytes
    principal: Principal


class KeyRing:
    """The configured keys, as digests."""

    def __init__(self, settings: Settings) -> None:
        self._keys = [_parse(raw, spec) for raw, spec in settings.api_keys.items()]

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller's principal; 401 without a valid bearer key when keys are configured."""
        if not self._keys:
            return ANONYMOUS_ADMIN
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise SwitchyardError(
                401,
                "missing_api_key",
                "send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        digest = hashlib.sha256(token.strip().encode()).digest()
        found: Principal | None = None
        for key in self._keys:  # no early exit: every key costs the same
            if hmac.compare_digest(digest, key.digest):
                found = key.principal
        if found is None:
            raise SwitchyardError(
                401,
                "invalid_api_key",
                "the API key is not valid",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return found


def _parse(raw: str, spec: object) -> _Key:
    if raw.startswith("sha256:"):
        hexdigest = raw.removeprefix("sha256:")
        if len(hexdigest) != 64:
            raise ValueError("an api_keys entry 'sha256:<hex>' needs 64 hex digits")
        digest = bytes.fromhex(hexdigest)
    else:
        digest = hashlib.sha256(raw.encode()).digest()
    adapters = None
    scopes = spec
    if isinstance(spec, dict):
        scopes = spec.get("scopes", [])
        adapters = frozenset(spec["adapters"]) if spec.get("adapters") is not None else None
    if not isinstance(scopes, list) or not scopes or set(scopes) - set(SCOPES):
        raise ValueError(f"api key scopes {scopes!r} must be a non-empty subset of {SCOPES}")
    return _Key(digest, Principal(frozenset(scopes), adapters))


def require(scope: str) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency: the caller's principal, 403 unless it holds `scope`. Async although it
    never waits, so that FastAPI calls it on the loop instead of in its thread pool."""

    async def dependency(request: Request) -> Principal:
        principal: Principal = request.app.state.keys.authenticate(
            request.headers.get("authorization")
        )
        if not principal.has(scope):
            raise SwitchyardError(
                403,
                "insufficient_scope",
                f"this API key lacks scope {scope!r} ({SCOPE_HELP[scope]})",
            )
        name = request.path_params.get("name")
        if name is not None:
            principal.check_adapter(str(name))
        request.state.principal = principal
        return principal

    dependency.__name__ = f"require_{scope}"
    return dependency

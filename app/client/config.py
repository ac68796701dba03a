"""Where the client finds the service and its key when the caller does not say."""

from __future__ import annotations

import os

from app.client._transport import DEFAULT_URL

URL_ENV = "SWITCHYARD_URL"
KEY_ENV = "SWITCHYARD_KEY"


def resolve_url(base_url: str | None) -> str:
    """`base_url`, else `$SWITCHYARD_URL`, else the local default; without a trailing slash."""
    return (base_url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")


def resolve_key(api_key: str | None) -> str | None:
    """`api_key`, else `$SWITCHYARD_KEY`, else none (a service without keys)."""
    return api_key or os.environ.get(KEY_ENV) or None

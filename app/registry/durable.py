"""Durable-write helpers of the store: full-disk errors as 507s, synced folders, timestamps.

Kept apart from `store` so that the dataset upload path reports a full disk the same way.
"""

from __future__ import annotations

import errno
import json
import os
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from app.errors import SwitchyardError

_FULL = (errno.ENOSPC, errno.EDQUOT)


def storage_full(exc: OSError, what: str) -> SwitchyardError | None:
    """The 507 for a write that ran out of space or quota; None for any other OSError.

    The message names what was being written, never a path (paths are the operator's).
    """
    if exc.errno not in _FULL:
        return None
    return SwitchyardError(
        507,
        "insufficient_storage",
        f"no space left to store {what} ({os.strerror(exc.errno or errno.ENOSPC)}); "
        "nothing was stored: free space on the store's volume, then retry",
    )


def _raise_if_full(exc: OSError, what: str) -> None:
    full = storage_full(exc, what)
    if full is not None:
        raise full from exc


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def _mkdir(path: Path) -> None:
    with suppress(FileExistsError):
        os.mkdir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def now_iso() -> str:
    """UTC timestamp used in metadata."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

"""Typed records of stored adapters: which version (`AdapterRef`) and what it is (`AdapterMeta`).

The store keeps `switchyard.json` as it always has (a JSON object, same keys); these records
are how the rest of the code reads it, so a key is spelled once, here.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, ValidationError

from app.errors import SwitchyardError


class AdapterRef(NamedTuple):
    """One stored version of an adapter.

    A named tuple, so that it is immutable, hashable (the cache's key) and unpacks as
    `name, version` where a plain pair did before.
    """

    name: str
    version: int


class AdapterMeta(BaseModel):
    """`switchyard.json` of one version, with the name and number it is stored under.

    Keys the code does not read (metrics, lineage details, base fingerprint, ...) are kept as
    extras, so nothing is lost when a record goes back to JSON.
    """

    model_config = ConfigDict(frozen=True, extra="allow")
    name: str
    version: int
    task: str
    labels: list[str] = []
    method: str | None = None
    rank: int = 0
    created_at: str | None = None
    lineage: dict[str, Any] | None = None

    @property
    def ref(self) -> AdapterRef:
        """The version this metadata describes."""
        return AdapterRef(self.name, self.version)

    @classmethod
    def parse(cls, raw: dict[str, Any], *, name: str, version: int) -> AdapterMeta:
        """The record of a stored version; 503 `adapter_corrupted` when a key is missing or
        of the wrong type (the file was edited or damaged on disk)."""
        try:
            return cls.model_validate({**raw, "name": name, "version": version})
        except ValidationError as exc:
            fields = sorted({".".join(str(p) for p in e["loc"]) for e in exc.errors()})
            raise SwitchyardError(
                503,
                "adapter_corrupted",
                f"metadata of {name!r} v{version} has missing or invalid {', '.join(fields)}",
            ) from exc

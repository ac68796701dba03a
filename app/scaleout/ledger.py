"""The store's hook for replicas that share it: numbers and rows from a shared catalog."""

from __future__ import annotations

from typing import Any, Protocol


class VersionLedger(Protocol):
    """Where replicas sharing the store draw version numbers and record versions
    (`app.scaleout.versions.DatabaseVersions`); a store without one counts by itself."""

    def allocate(self, name: str, floor: int) -> int:
        """A number for a new version of `name`, above `floor` and never given before."""

    def recorded(self, name: str, version: int, meta: dict[str, Any]) -> None:
        """A version is whole in the store (a failure here discards it)."""

    def removed(self, name: str, versions: list[int]) -> None:
        """Versions are about to leave the store (a failure here keeps them)."""

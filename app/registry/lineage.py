"""Parents and children among stored adapters: a stack's LoRA holds its parent's (issue 17).

A version trained with `base_adapter` records `lineage.parent` = {adapter, version}. Deleting a
parent version that children were built on would leave them naming weights that no longer
exist (their own files still serve: the parent is folded in), so it is refused with a 409
naming them, unless the caller asks to cascade, which deletes the children (all their
versions, and their own children) first.

Children are found by reading every version's metadata: deletes are rare and the catalog is
the store's folders, so there is no index to keep in step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.errors import SwitchyardError
from app.registry.catalog import Registry, Residency
from app.registry.store import AdapterStore, check_name

_SHOWN = 10  # children named in a 409


@dataclass(frozen=True)
class Deleted:
    """What a delete removed: the adapter's versions, and (cascade) each child's."""

    versions: list[int]
    children: dict[str, list[int]] = field(default_factory=dict)

    def as_json(self, name: str) -> dict[str, Any]:
        """The DELETE response body; `deleted_children` only when a cascade removed some."""
        body: dict[str, Any] = {"name": name, "deleted_versions": self.versions}
        if self.children:
            kids = sorted(self.children.items())
            body["deleted_children"] = [{"name": n, "deleted_versions": v} for n, v in kids]
        return body


def parent_of(meta: dict[str, Any]) -> tuple[str, int] | None:
    """The (adapter, version) a version's lineage names as its parent, if any."""
    lineage = meta.get("lineage")
    parent = lineage.get("parent") if isinstance(lineage, dict) else None
    if not isinstance(parent, dict):
        return None
    name, version = parent.get("adapter"), parent.get("version")
    return (name, version) if isinstance(name, str) and isinstance(version, int) else None


def children(store: AdapterStore, name: str, versions: list[int]) -> dict[str, list[int]]:
    """Versions of other adapters (and later versions of `name` itself) built on one of
    `versions` of `name`: child name -> its versions, ascending."""
    found: dict[str, list[int]] = {}
    for other in store.names():
        for version in store.versions(other):
            if other == name and version in versions:
                continue  # going anyway
            try:
                parent = parent_of(store.read_meta(other, version))
            except SwitchyardError:
                continue  # deleted meanwhile, or unreadable: it fails on its own requests
            if parent is not None and parent[0] == name and parent[1] in versions:
                found.setdefault(other, []).append(version)
    return found


def delete(
    registry: Registry,
    name: str,
    version: int | None,
    *,
    residency: Residency,
    cascade: bool = False,
) -> Deleted:
    """Delete one version or all of `name`; 409 naming the children built on them unless
    `cascade`, which deletes those children (all their versions) first."""
    store = registry.store
    with store.name_lock(check_name(name)):
        if version is not None:
            versions = [store.resolve(name, version)]
        else:
            versions = store.versions(name) or [store.resolve(name)]  # 404
        kids = children(store, name, versions)
        if kids and not cascade:
            raise _has_children(name, versions, kids)
        removed: dict[str, list[int]] = {}
        for child in kids:
            if child != name:
                below = delete(registry, child, None, residency=residency, cascade=True)
                removed.update({child: below.versions, **below.children})
        # A later version of `name` stacked on the one deleted goes too: the whole name.
        gone = registry.delete(name, None if name in kids else version, residency=residency)
    return Deleted(versions=gone, children=removed)


def _has_children(name: str, versions: list[int], kids: dict[str, list[int]]) -> SwitchyardError:
    listed = ", ".join(
        f"{child!r} v{', v'.join(map(str, vs))}" for child, vs in sorted(kids.items())[:_SHOWN]
    )
    more = f" and {len(kids) - _SHOWN} more" if len(kids) > _SHOWN else ""
    shown = ", ".join(f"v{v}" for v in versions)
    return SwitchyardError(
        409,
        "adapter_has_children",
        f"adapter {name!r} {shown} is the base_adapter of {listed}{more}; delete those "
        "first, or pass ?cascade=true to delete them (all their versions) with it",
        param="name",
    )

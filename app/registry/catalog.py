"""The registry: what adapters exist, their metadata, and the one door into the store.

Uploads and trained adapters both come in through `register`, which parses and checks the
files against the base before the store sees a byte; the runtime reads them back through
`load_weights`, which runs the same checks so a file corrupted on disk fails only its own
requests.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

from app.base import FrozenBase
from app.config import Settings
from app.errors import SwitchyardError, bad_request
from app.methods import shown_method
from app.registry.durable import now_iso
from app.registry.records import AdapterMeta, AdapterRef
from app.registry.store import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterStore,
    check_name,
)
from app.registry.validate import parse_json_object, parse_safetensors, too_large
from app.registry.weights import AdapterWeights, build_weights

# Parsed version records kept by `Registry.meta` (each a few hundred bytes).
_META_CACHE_SIZE = 4096


class Residency(Protocol):
    """What the registry needs of the runtime's cache (`AdapterCache` is one)."""

    def retire(self, name: str, versions: list[int], hide: Callable[[], object]) -> None:
        """Run `hide` with no load in progress, then forget `versions` of `name`."""

    def set_pinned(self, name: str, pinned: bool) -> None:
        """Pin or unpin the resident versions of `name`."""

    def warm(self, name: str, version: int) -> None:
        """Load a version onto the device (a pin keeps it there)."""


class Registry:
    """Named, versioned adapters for one base, backed by an `AdapterStore`."""

    def __init__(self, store: AdapterStore, base: FrozenBase, settings: Settings) -> None:
        self.store = store
        self.base = base
        self.settings = settings
        self._metas: dict[AdapterRef, AdapterMeta] = {}

    # ---------------------------------------------------------------- writing
    def register(
        self,
        name: str,
        *,
        config_bytes: bytes,
        weights_bytes: bytes,
        task: str,
        labels: list[str],
        meta: dict[str, Any] | None = None,
    ) -> int:
        """Check an adapter against the base, then store it as the next version (its number)."""
        stored = self.register_version(
            name,
            config_bytes=config_bytes,
            weights_bytes=weights_bytes,
            task=task,
            labels=labels,
            meta=meta,
        )
        return int(stored["version"])

    def register_version(
        self,
        name: str,
        *,
        config_bytes: bytes,
        weights_bytes: bytes,
        task: str,
        labels: list[str],
        meta: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """`register`, returning the stored metadata: a 201 must not re-read a version that a
        concurrent DELETE may already have removed."""
        check_name(name)
        # The one door for uploads (form field or switchyard.json) and trained adapters alike.
        parse_labels(json.dumps(labels))
        size = len(config_bytes) + len(weights_bytes)
        if size > self.settings.max_upload_bytes:
            raise too_large("adapter", size, self.settings.max_upload_bytes, "file")
        meta = dict(meta or {})
        self._check_fingerprint(meta.get("base_fingerprint"))
        config = parse_json_object(config_bytes, what=CONFIG_FILE, param=CONFIG_FILE)
        tensors = parse_safetensors(weights_bytes)
        weights = build_weights(
            config, tensors, self.base, task=task, labels=labels, max_rank=self.settings.max_rank
        )
        meta.update(
            task=task,
            labels=labels,
            method=shown_method(config, weights.method),
            rank=weights.rank,
            base_model=self.base.name,
            base_fingerprint=self.base.fingerprint,
            created_at=now_iso(),
        )
        meta.setdefault("lineage", {"source": "upload"})
        meta.setdefault("metrics", {})
        files = {CONFIG_FILE: _with_base_path(config, self.base), WEIGHTS_FILE: weights_bytes}
        version = self.store.write_version(name, files, meta)
        # As read_meta would give it back (the store writes JSON with default=str).
        stored: dict[str, Any] = json.loads(
            json.dumps({**meta, "name": name, "version": version}, default=str)
        )
        return stored

    def _check_fingerprint(self, fingerprint: object) -> None:
        """409 when the metadata names another base than the one this service runs."""
        if not self.base.accepts(fingerprint):
            raise SwitchyardError(
                409,
                "base_mismatch",
                f"adapter was made for base {str(fingerprint)[:23]}..., this service runs "
                f"{self.base.fingerprint[:23]}...",
                param="base_fingerprint",
            )

    # ---------------------------------------------------------------- reading
    def load_weights(self, name: str, version: int) -> AdapterWeights:
        """Read and re-check a stored version for the runtime.

        A version deleted before (or while) it is read is a 404, not corruption: the request
        that resolved it before the DELETE simply came too late.
        """
        self.store.resolve(name, version)
        meta = AdapterMeta.parse(self.store.read_meta(name, version), name=name, version=version)
        config_bytes = self.store.read_file(name, version, CONFIG_FILE)
        weights_bytes = self.store.read_file(name, version, WEIGHTS_FILE)
        try:
            config = parse_json_object(config_bytes, what=CONFIG_FILE, param=CONFIG_FILE)
            return build_weights(
                config,
                parse_safetensors(weights_bytes),
                self.base,
                task=meta.task,
                labels=list(meta.labels),
                max_rank=max(self.settings.max_rank, meta.rank),
            )
        except SwitchyardError as exc:
            if exc.status >= 500:
                raise
            raise SwitchyardError(
                503,
                "adapter_corrupted",
                f"stored adapter {name!r} v{version} no longer loads: {exc.message}",
                param="name",
            ) from exc

    def summary(self, name: str) -> dict[str, Any]:
        """One line of the adapter list: the latest version's metadata."""
        version = self.store.resolve(name)
        meta = self.store.read_meta(name, version)
        return {
            "name": name,
            "latest_version": version,
            "method": meta.get("method"),
            "task": meta.get("task"),
            "labels": meta.get("labels", []),
            "size_bytes": self.store.size_bytes(name, version),
            "created_at": meta.get("created_at"),
            "pinned": self.store.is_pinned(name),
        }

    def details(self, name: str) -> dict[str, Any]:
        """All versions with their metadata."""
        versions = []
        for version in self.store.versions(name):
            try:
                meta = self.store.read_meta(name, version)
                meta["size_bytes"] = self.store.size_bytes(name, version)
            except SwitchyardError as exc:
                if exc.status != 404:
                    raise
                continue  # deleted while we read the others
            versions.append(meta)
        if not versions:
            self.store.resolve(name)  # raises the 404
        return {**self.summary(name), "versions": versions}

    # ---------------------------------------------------------------- store and cache
    def delete(self, name: str, version: int | None, *, residency: Residency) -> list[int]:
        """Delete one version or all; returns the versions removed.

        Under the name's lock, so concurrent deletes serialise: exactly one gets the versions,
        the others a 404. The files leave sight inside `residency.retire`, which no load can
        interleave with; batches holding a copy keep it until they release it.
        """
        check_name(name)
        with self.store.name_lock(name):
            if version is not None:
                versions = [self.store.resolve(name, version)]
            else:
                versions = self.store.versions(name) or [self.store.resolve(name)]  # 404
            residency.retire(name, versions, lambda: self.store.hide(name, version))
            self.store.purge(name)
        return versions

    def set_pinned(self, name: str, pinned: bool, *, residency: Residency) -> int:
        """Pin (and load) or unpin the latest version; returns it. 404 when there is none."""
        check_name(name)
        with self.store.name_lock(name):
            version = self.store.resolve(name)
            self.store.set_pinned(name, pinned)
            residency.set_pinned(name, pinned)
            if pinned:
                residency.warm(name, version)
        return version

    def names(self) -> list[str]:
        """Adapter names with at least one whole version, sorted."""
        return self.store.names()

    def archive(self, name: str, version: int | None = None) -> tuple[int, bytes]:
        """A version (latest when None) and its PEFT folder as a zip."""
        resolved = self.store.resolve(check_name(name), version)
        return resolved, self.store.zip_version(name, resolved)

    def meta(self, name: str, version: int | None = None) -> AdapterMeta:
        """switchyard.json of a version (latest when None), with its name and number.

        Every predict asks, on the event loop: the version list is read each time (another
        process may have stored a newer one), but a version's record is written once and its
        number never reused, so the parsed record is kept (bounded) instead of read again.
        """
        resolved = self.store.resolve(name, version)
        key = AdapterRef(name, resolved)
        cached = self._metas.get(key)
        if cached is None:
            raw = self.store.read_meta(name, resolved)
            cached = AdapterMeta.parse(raw, name=name, version=resolved)
            if len(self._metas) >= _META_CACHE_SIZE:
                self._metas.pop(next(iter(self._metas)), None)  # the oldest entry
            self._metas[key] = cached
        return cached


def _with_base_path(config: dict[str, Any], base: FrozenBase) -> bytes:
    # PEFT records where the base came from; point it at this service's base so that a download
    # names the model it belongs to rather than whatever path the uploader had.
    config = {**config, "base_model_name_or_path": str(base.path)}
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def parse_labels(raw: str | None) -> list[str]:
    """The `labels` form field: a JSON list of strings in head order."""
    if raw is None or raw == "":
        return []
    try:
        labels = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise bad_request("invalid_labels", f"labels is not JSON: {exc}", param="labels") from exc
    if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
        raise bad_request("invalid_labels", "labels must be a JSON list of strings", param="labels")
    if len(set(labels)) != len(labels):
        raise bad_request("invalid_labels", "labels repeat a name", param="labels")
    return labels

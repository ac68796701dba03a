"""The adapter store on disk: `<root>/<name>/<version>/` folders, written atomically.

The store is the source of truth (DESIGN.md decision 5). A new version is written into a
temporary folder beside its final place, fsynced, then renamed: a crash leaves either nothing
or a whole version, and `sweep()` at start-up removes the temporary leftovers.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

from app.errors import SwitchyardError, bad_request, not_found

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
META_FILE = "switchyard.json"
PINNED_FILE = "pinned"
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"


def check_name(name: str) -> str:
    """Names are plain ASCII: no traversal, no look-alike letters, no hidden folders."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or not name.isascii():
        raise bad_request(
            "invalid_name",
            f"adapter name {name!r} does not match ^[a-z0-9][a-z0-9_-]{{0,63}}$",
            param="name",
        )
    return name


class AdapterStore:
    """Versioned adapter folders under one root; every write is whole or absent."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        # Version numbers are chosen under this lock so two uploads never take the same one.
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- reading
    def names(self) -> list[str]:
        """Adapter names with at least one whole version, sorted."""
        out = []
        for entry in self.root.iterdir():
            is_folder = entry.is_dir() and not entry.is_symlink()
            if is_folder and NAME_PATTERN.fullmatch(entry.name) and self.versions(entry.name):
                out.append(entry.name)
        return sorted(out)

    def versions(self, name: str) -> list[int]:
        """Whole versions of `name`, ascending; an unknown name has none."""
        folder = self.root / check_name(name)
        if not folder.is_dir() or folder.is_symlink():
            return []
        return sorted(
            int(p.name)
            for p in folder.iterdir()
            if p.name.isdigit() and p.is_dir() and not p.is_symlink()
        )

    def resolve(self, name: str, version: int | None = None) -> int:
        """The given version if it exists, else the latest; 404 when there is none."""
        versions = self.versions(name)
        if not versions:
            raise not_found("adapter_not_found", f"no adapter named {name!r}", param="name")
        if version is None:
            return versions[-1]
        if version not in versions:
            raise not_found(
                "version_not_found",
                f"adapter {name!r} has no version {version} (versions: {versions})",
                param="version",
            )
        return version

    def version_dir(self, name: str, version: int) -> Path:
        """The folder of a whole version; never outside the root."""
        path = self.root / check_name(name) / str(int(version))
        if path.is_symlink() or not path.resolve().is_relative_to(self.root):
            raise SwitchyardError(500, "store_corrupted", f"{path} escapes the store")
        return path

    def read_meta(self, name: str, version: int) -> dict[str, Any]:
        """switchyard.json of a version."""
        path = self.version_dir(name, version) / META_FILE
        try:
            meta: dict[str, Any] = json.loads(path.read_text())
            return meta
        except (OSError, ValueError) as exc:
            raise SwitchyardError(
                503, "adapter_corrupted", f"metadata of {name!r} v{version} is unreadable: {exc}"
            ) from exc

    def read_file(self, name: str, version: int, filename: str) -> bytes:
        """One file of a version, as bytes."""
        path = self.version_dir(name, version) / filename
        try:
            return path.read_bytes()
        except OSError as exc:
            raise SwitchyardError(
                503, "adapter_corrupted", f"{filename} of {name!r} v{version} is unreadable: {exc}"
            ) from exc

    def size_bytes(self, name: str, version: int) -> int:
        folder = self.version_dir(name, version)
        return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())

    def is_pinned(self, name: str) -> bool:
        return (self.root / check_name(name) / PINNED_FILE).is_file()

    def set_pinned(self, name: str, pinned: bool) -> None:
        marker = self.root / check_name(name) / PINNED_FILE
        if pinned:
            marker.touch()
        else:
            marker.unlink(missing_ok=True)

    # ---------------------------------------------------------------- writing
    def write_version(self, name: str, files: dict[str, bytes], meta: dict[str, Any]) -> int:
        """Write a new version atomically and return its number."""
        folder = self.root / check_name(name)
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            # versions() ignores a linked folder; writing through it would land outside the root.
            # A 409, not a 5xx: the name is taken by something that is not an adapter folder.
            raise SwitchyardError(
                409,
                "store_corrupted",
                f"the store entry of {name!r} is a link or a file, not an adapter folder; "
                "refusing to write through it",
                param="name",
            )
        folder.mkdir(exist_ok=True)
        tmp = folder / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            with self._lock:
                existing = self.versions(name)
                version = (existing[-1] if existing else 0) + 1
                while os.path.lexists(folder / str(version)):
                    version += 1  # a stray link or file with that number: never replace it
                meta = {**meta, "name": name, "version": version}
                for filename, data in {**files, META_FILE: _json_bytes(meta)}.items():
                    _write_synced(tmp / filename, data)
                _fsync_dir(tmp)
                os.rename(tmp, folder / str(version))
                _fsync_dir(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("stored adapter %s v%d", name, version)
        return version

    def delete(self, name: str, version: int | None = None) -> list[int]:
        """Remove one version or all; returns the versions removed."""
        versions = [self.resolve(name, version)] if version is not None else self.versions(name)
        if not versions:
            raise not_found("adapter_not_found", f"no adapter named {name!r}", param="name")
        folder = self.root / name
        for v in versions:
            # Rename first so a reader never sees a half-deleted version.
            trash = folder / f"{_TRASH_PREFIX}{v}-{uuid.uuid4().hex}"
            os.rename(folder / str(v), trash)
            shutil.rmtree(trash, ignore_errors=True)
        if not self.versions(name):
            shutil.rmtree(folder, ignore_errors=True)
        return versions

    def zip_version(self, name: str, version: int) -> bytes:
        """The PEFT folder of a version as a zip (flat: the files at the top)."""
        folder = self.version_dir(name, version)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(folder.iterdir()):
                if path.is_file() and not path.is_symlink():
                    archive.write(path, arcname=path.name)
        return buffer.getvalue()

    def sweep(self) -> list[str]:
        """Remove leftovers of interrupted writes and deletes; returns what was removed.

        Version folders (`<name>/.tmp-*`, `.trash-*`) and files (`_datasets/.tmp-*-<id>.jsonl`)
        alike; a link is removed, never followed.
        """
        leftovers = []
        for folder in self.root.iterdir():
            if not folder.is_dir() or folder.is_symlink():
                continue
            if folder.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
                leftovers.append(folder)
                continue
            prefixes = (_TMP_PREFIX, _TRASH_PREFIX)
            leftovers += [c for c in folder.iterdir() if c.name.startswith(prefixes)]
        removed = []
        for path in leftovers:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)  # rmtree refuses files and links: it left them
            if os.path.lexists(path):
                log.error("could not remove leftover of an interrupted write: %s", path)
            else:
                log.warning("removed leftover of an interrupted write: %s", path)
                removed.append(str(path))
        return removed


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def now_iso() -> str:
    """UTC timestamp used in metadata."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

"""The adapter store on disk: `<root>/<name>/<version>/` folders, written atomically.

The store is the source of truth (DESIGN.md decision 5). A new version is written into a
temporary folder beside its final place, fsynced, then renamed: a crash leaves either nothing
or a whole version, and `sweep()` at start-up removes the temporary leftovers.

Version numbers are never reused: `<root>/.high-water/<name>` keeps the highest number a name
ever had, so it survives deleting every version and restarts. A client pinned to `?version=3`
gets those weights or a 404, never another upload's. Writes, deletes and pins of one name
take that name's lock; the disk filling up is a 507, never a half-written version.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import threading
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.errors import SwitchyardError, bad_request, not_found
from app.registry.durable import (
    _fsync_dir,
    _json_bytes,
    _mkdir,
    _raise_if_full,
)

if TYPE_CHECKING:
    from app.scaleout.ledger import VersionLedger

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
META_FILE = "switchyard.json"
PINNED_FILE = "pinned"
HIGH_WATER_DIR = ".high-water"
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_LEFTOVER = (_TMP_PREFIX, _TRASH_PREFIX)  # what interrupted writes and deletes leave


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

    def __init__(self, root: Path, ledger: VersionLedger | None = None) -> None:
        self.ledger = ledger
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, threading.RLock] = {}
        self._locks_guard = threading.Lock()

    @contextmanager
    def name_lock(self, name: str) -> Iterator[None]:
        """Serialise writes, deletes and pins of one name (re-entrant; readers take none)."""
        with self._locks_guard:
            lock = self._locks.setdefault(check_name(name), threading.RLock())
        with lock:
            yield

    # ---------------------------------------------------------------- reading
    def names(self) -> list[str]:
        """Adapter names with at least one whole version, sorted."""
        folders = [e.name for e in self.root.iterdir() if e.is_dir() and not e.is_symlink()]
        return sorted(n for n in folders if NAME_PATTERN.fullmatch(n) and self.versions(n))

    def versions(self, name: str) -> list[int]:
        """Whole versions of `name`, ascending; an unknown name has none."""
        folder = self.root / check_name(name)
        # Read on every predict: one lstat and one directory read (scandir's entry types need
        # no stat per version), links refused as before.
        try:
            if folder.is_symlink():
                return []
            with os.scandir(folder) as entries:
                found = [
                    int(e.name)
                    for e in entries
                    if e.name.isdigit() and e.is_dir(follow_symlinks=False)
                ]
        except (FileNotFoundError, NotADirectoryError):
            return []  # unknown, or its last version was deleted meanwhile
        return sorted(found)

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

    def high_water(self, name: str) -> int:
        """The highest version `name` ever had (0 for a new name); the next one is above it."""
        existing = self.versions(name)
        return max(self._read_mark(name), existing[-1] if existing else 0)

    def version_dir(self, name: str, version: int) -> Path:
        """The folder of a whole version; never outside the root."""
        path = self.root / check_name(name) / str(int(version))
        if path.is_symlink() or not path.resolve().is_relative_to(self.root):
            raise SwitchyardError(
                500, "store_corrupted", f"{name!r} v{version} is a link out of the store"
            )
        return path

    def read_meta(self, name: str, version: int) -> dict[str, Any]:
        """switchyard.json of a version."""
        raw = self.read_file(name, version, META_FILE)
        try:
            meta = json.loads(raw)
        except ValueError as exc:
            raise SwitchyardError(
                503, "adapter_corrupted", f"metadata of {name!r} v{version} is unreadable: {exc}"
            ) from exc
        if not isinstance(meta, dict):
            raise SwitchyardError(
                503, "adapter_corrupted", f"metadata of {name!r} v{version} is not an object"
            )
        return meta

    def read_file(self, name: str, version: int, filename: str) -> bytes:
        """One file of a version, as bytes; 404 when the version was deleted meanwhile."""
        path = self.version_dir(name, version) / filename
        try:
            return path.read_bytes()
        except OSError as exc:
            raise self._unreadable(name, version, filename, exc) from exc

    def size_bytes(self, name: str, version: int) -> int:
        """Bytes of a version's files."""
        folder = self.version_dir(name, version)
        try:
            return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        except OSError as exc:
            raise self._unreadable(name, version, "its folder", exc) from exc

    def _unreadable(self, name: str, version: int, what: str, exc: OSError) -> SwitchyardError:
        # A file missing because a DELETE won the race is a 404, not corruption.
        if isinstance(exc, FileNotFoundError):
            self.resolve(name, version)  # raises the 404 when the version is gone
        reason = exc.strerror or type(exc).__name__  # str(exc) would carry the path
        return SwitchyardError(
            503, "adapter_corrupted", f"{what} of {name!r} v{version} is unreadable: {reason}"
        )

    def is_pinned(self, name: str) -> bool:
        """Whether `name` is pinned (its marker lives with its versions)."""
        return (self.root / check_name(name) / PINNED_FILE).is_file()

    def set_pinned(self, name: str, pinned: bool) -> None:
        """Pin or unpin an existing adapter; 404 when it has no versions."""
        with self.name_lock(name):
            self.resolve(name)
            marker = self.root / name / PINNED_FILE
            try:
                if pinned:
                    marker.touch()
                else:
                    marker.unlink(missing_ok=True)
            except OSError as exc:
                _raise_if_full(exc, f"the pin of {name!r}")
                raise

    # ---------------------------------------------------------------- writing
    def write_version(self, name: str, files: dict[str, bytes], meta: dict[str, Any]) -> int:
        """Write a new version atomically and return its number (507 when the disk is full)."""
        folder = self.root / check_name(name)
        with self.name_lock(name):
            if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
                # versions() ignores a linked folder; writing through it would land outside the
                # root. A 409: the name is taken by something that is not an adapter folder.
                raise SwitchyardError(
                    409,
                    "store_corrupted",
                    f"the store entry of {name!r} is a link or a file, not an adapter folder; "
                    "refusing to write through it",
                    param="name",
                )
            try:
                version = self._write_locked(name, files, meta)
            except OSError as exc:
                _raise_if_full(exc, f"adapter {name!r}")
                raise
        log.info("stored adapter %s v%d", name, version)
        return version

    def _write_locked(self, name: str, files: dict[str, bytes], meta: dict[str, Any]) -> int:
        folder = self.root / name
        _mkdir(folder)
        tmp = folder / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        final: Path | None = None
        try:
            os.mkdir(tmp)
            version = self._allocate(name, self.high_water(name))
            while os.path.lexists(folder / str(version)):
                # A stray link or file with that number: never replace it.
                version = self._allocate(name, version)
            meta = {**meta, "name": name, "version": version}
            for filename, data in {**files, META_FILE: _json_bytes(meta)}.items():
                _write_synced(tmp / filename, data)
            _fsync_dir(tmp)
            # The mark goes first: a crash after it burns the number, never lets it be reused.
            self._write_mark(name, version)
            os.rename(tmp, folder / str(version))
            final = folder / str(version)
            _fsync_dir(folder)
            if self.ledger is not None:
                self.ledger.recorded(name, version, meta)
        except BaseException:
            if final is not None:
                # Renamed but not durable: a failed request must not leave a version behind.
                self._discard(final)
            shutil.rmtree(tmp, ignore_errors=True)
            with suppress(OSError):
                folder.rmdir()  # the folder of a name that never got a version (if empty)
            raise
        return version

    def _allocate(self, name: str, floor: int) -> int:
        return floor + 1 if self.ledger is None else self.ledger.allocate(name, floor)

    def _read_mark(self, name: str) -> int:
        path = self.root / HIGH_WATER_DIR / name
        try:
            return int(path.read_text(encoding="ascii").strip())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            # Guessing low could hand out a number a client already knows: refuse instead.
            raise SwitchyardError(
                503,
                "store_corrupted",
                f"the version high-water mark of {name!r} is unreadable; "
                f"restore {HIGH_WATER_DIR}/{name} in the store",
            ) from exc

    def _write_mark(self, name: str, version: int) -> None:
        marks = self.root / HIGH_WATER_DIR
        if marks.is_symlink():
            raise SwitchyardError(503, "store_corrupted", f"{HIGH_WATER_DIR} is a link")
        _mkdir(marks)
        tmp = marks / f"{_TMP_PREFIX}{uuid.uuid4().hex}-{name}"
        try:
            _write_synced(tmp, f"{version}\n".encode())
            os.replace(tmp, marks / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(marks)

    def _discard(self, path: Path) -> None:
        trash = path.with_name(f"{_TRASH_PREFIX}{path.name}-{uuid.uuid4().hex}")
        try:
            os.rename(path, trash)
        except OSError:
            log.exception("could not move %s out of the way", path)
            return
        shutil.rmtree(trash, ignore_errors=True)

    def hide(self, name: str, version: int | None = None) -> list[int]:
        """Take one version or all out of sight (atomic renames); `purge` frees the space.

        Callers hold `name_lock(name)`; a version a reader was loading is gone as a whole.
        """
        with self.name_lock(name):
            versions = [self.resolve(name, version)] if version is not None else self.versions(name)
            if not versions:
                raise not_found("adapter_not_found", f"no adapter named {name!r}", param="name")
            if self.ledger is not None:
                self.ledger.removed(name, versions)
            folder = self.root / name
            for v in versions:
                os.rename(folder / str(v), folder / f"{_TRASH_PREFIX}{v}-{uuid.uuid4().hex}")
            return versions

    def purge(self, name: str) -> None:
        """Remove what `hide` put aside, and the folder of a name with no version left."""
        with self.name_lock(name):
            folder = self.root / name
            if not folder.is_dir() or folder.is_symlink():
                return
            if not self.versions(name):
                shutil.rmtree(folder, ignore_errors=True)  # the pin goes; the mark stays
                return
            for child in folder.iterdir():
                if child.name.startswith(_TRASH_PREFIX) and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)

    def delete(self, name: str, version: int | None = None) -> list[int]:
        """Remove one version or all; returns the versions removed (404 when none).

        Concurrent deletes of a name serialise: one gets the versions, the others a 404.
        """
        with self.name_lock(name):
            versions = self.hide(name, version)
            self.purge(name)
        return versions

    def zip_version(self, name: str, version: int) -> bytes:
        """The PEFT folder of a version as a zip (flat: the files at the top)."""
        folder = self.version_dir(name, version)
        buffer = io.BytesIO()
        try:
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
                for path in sorted(folder.iterdir()):
                    if path.is_file() and not path.is_symlink():
                        archive.write(path, arcname=path.name)
        except OSError as exc:
            raise self._unreadable(name, version, "a file", exc) from exc
        return buffer.getvalue()

    def sweep(self) -> list[str]:
        """Remove leftovers of interrupted writes and deletes; returns what was removed.

        Version folders (`<name>/.tmp-*`, `.trash-*`) and files (`_datasets/.tmp-*-<id>.jsonl`,
        `.high-water/.tmp-*`) alike; a link is removed, never followed.
        """
        leftovers: list[Path] = []
        for folder in self.root.iterdir():
            if folder.is_dir() and not folder.is_symlink():
                own = [folder] if folder.name.startswith(_LEFTOVER) else list(folder.iterdir())
                leftovers += [p for p in own if p.name.startswith(_LEFTOVER)]
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


def _write_synced(path: Path, data: bytes) -> None:
    # os-level calls throughout, so a full disk surfaces here (write or fsync), not at close.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)

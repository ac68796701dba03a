"""Disk full while writing a version: a 507 `insufficient_storage`, and nothing partial stays.

Every OS call `write_version` makes (mkdir, open, write, fsync, rename, replace) fails in
turn with ENOSPC, k = 1..N; after each the store holds exactly what it held before (no
temporary folder, no version), the high-water mark is never below a number handed out, and
the next write succeeds with a number never used before. A real tiny tmpfs runs the same
check where the test may mount one (root); elsewhere it is skipped.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.errors import SwitchyardError
from app.registry import store as store_module
from app.registry.store import CONFIG_FILE, META_FILE, WEIGHTS_FILE, AdapterStore
from tests.conftest import peft_adapter, upload

FILES = {CONFIG_FILE: b'{"peft_type": "LORA"}', WEIGHTS_FILE: b"\x00" * 4096}
WRITE_CALLS = ("mkdir", "open", "write", "fsync", "rename", "replace")
MARK = ".high-water/sst2"


class FaultyOs:
    """The `os` module as the store sees it, with ENOSPC at the k-th write-side call."""

    def __init__(self, fail_at: int, code: int = errno.ENOSPC) -> None:
        self.fail_at = fail_at
        self.code = code
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        real = getattr(os, name)
        if name not in WRITE_CALLS:
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            if len(self.calls) == self.fail_at:
                # The OS puts the path in the error, as a real full disk would.
                raise OSError(self.code, os.strerror(self.code), str(args[0]))
            return real(*args, **kwargs)

        return call


def _tree(root: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            out[rel] = path.read_bytes() if path.is_file() else None
    return out


def _fresh(root: Path, scenario: str) -> AdapterStore:
    """`existing`: v1 stored, v2 deleted (mark 2); `new`: a name the store never saw."""
    store = AdapterStore(root)
    if scenario == "existing":
        store.write_version("sst2", FILES, {})
        store.write_version("sst2", FILES, {})
        store.delete("sst2", 2)
    return store


def _write_with(store: AdapterStore, faults: FaultyOs, monkeypatch: pytest.MonkeyPatch) -> int:
    with monkeypatch.context() as patch:
        patch.setattr(store_module, "os", faults)
        return store.write_version("sst2", FILES, {"task": "classification"})


@pytest.mark.parametrize("scenario", ["existing", "new"])
def test_enospc_at_every_write_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scenario: str
) -> None:
    counting = FaultyOs(fail_at=0)
    clean_version = _write_with(_fresh(tmp_path / "count", scenario), counting, monkeypatch)
    steps = len(counting.calls)
    assert set(counting.calls) == set(WRITE_CALLS) and steps >= 15, counting.calls
    used = {1, 2} if scenario == "existing" else set()
    assert clean_version == max(used, default=0) + 1
    for k in range(1, steps + 1):
        root = tmp_path / f"{scenario}-{k}"
        store = _fresh(root, scenario)
        before = _tree(root)
        faults = FaultyOs(fail_at=k)
        with pytest.raises(SwitchyardError) as info:
            _write_with(store, faults, monkeypatch)
        step = f"step {k} ({faults.calls[k - 1]})"
        assert (info.value.status, info.value.code) == (507, "insufficient_storage"), step
        assert str(root) not in info.value.message and "/" not in info.value.message, step
        assert isinstance(info.value.__cause__, OSError), step
        after = _tree(root)
        leftovers = [p for p in after if ".tmp-" in p or ".trash-" in p]
        assert leftovers == [], step
        # Only the mark (and, for a new name, its empty folders) may differ: a number may be
        # burned by a failed write, never handed out twice.
        changed = {
            p
            for p in set(before) | set(after)
            if (p in before) != (p in after) or before.get(p) != after.get(p)
        }
        assert changed <= {MARK, ".high-water"}, (step, changed)
        assert store.versions("sst2") == sorted(used - {2}), step
        mark = store.high_water("sst2")
        assert mark >= max(used, default=0), step
        version = store.write_version("sst2", FILES, {})
        assert version == mark + 1 and version not in used, step
        assert store.read_meta("sst2", version)["version"] == version
        assert store.sweep() == [], step


def test_quota_exceeded_is_the_same_507(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _fresh(tmp_path / "store", "existing")
    with pytest.raises(SwitchyardError) as info:
        _write_with(store, FaultyOs(fail_at=5, code=errno.EDQUOT), monkeypatch)
    assert (info.value.status, info.value.code) == (507, "insufficient_storage")


def test_other_os_errors_are_not_disguised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _fresh(tmp_path / "store", "existing")
    before = _tree(store.root)
    with pytest.raises(OSError) as info:
        _write_with(store, FaultyOs(fail_at=5, code=errno.EIO), monkeypatch)
    assert info.value.errno == errno.EIO
    assert _tree(store.root) == before


def test_upload_on_a_full_disk_is_507_in_the_error_shape(
    client: TestClient, tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = peft_adapter(tiny_bert_dir, r=2, out=tmp_path / "adapter")
    store = client.app.state.registry.store  # type: ignore[attr-defined]
    monkeypatch.setattr(store_module, "os", FaultyOs(fail_at=4))
    response: Any = upload(client, "full", files, labels=["a", "b"])
    assert response.status_code == 507, response.text
    body = response.json()
    assert set(body["error"]) == {"code", "message", "param"}
    assert body["error"]["code"] == "insufficient_storage"
    assert str(store.root) not in body["error"]["message"]
    monkeypatch.undo()
    assert client.get("/v1/adapters").json()["data"] == []
    assert not (store.root / "full").exists()
    ok: Any = upload(client, "full", files, labels=["a", "b"])
    assert ok.status_code == 201 and ok.json()["version"] >= 1


# ---------------------------------------------------------------- a real full filesystem
@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, where this test may mount one (root, mount allowed)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode(errors='replace')}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _whole(store: AdapterStore) -> Callable[[int], bool]:
    def check(version: int) -> bool:
        folder = store.version_dir("sst2", version)
        return sorted(p.name for p in folder.iterdir()) == sorted([*FILES, META_FILE])

    return check


def test_a_real_full_tmpfs(tiny_tmpfs: Path) -> None:
    store = AdapterStore(tiny_tmpfs / "store")
    big = {**FILES, WEIGHTS_FILE: b"\x01" * 40_000}
    stored: list[int] = []
    with pytest.raises(SwitchyardError) as info:
        for _ in range(50):
            stored.append(store.write_version("sst2", big, {}))
    assert (info.value.status, info.value.code) == (507, "insufficient_storage")
    assert stored and store.versions("sst2") == stored
    assert all(map(_whole(store), stored))
    assert not [p for p in _tree(store.root) if ".tmp-" in p or ".trash-" in p]
    for version in stored[:2]:
        store.delete("sst2", version)  # room again
    again = store.write_version("sst2", big, {})
    assert again > max(stored)

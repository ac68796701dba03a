"""The adapter store on disk: atomic versions, deletes, leftovers, names, symlinks, zips."""

from __future__ import annotations

import io
import os
import threading
import zipfile
from pathlib import Path

import pytest

from app.errors import SwitchyardError
from app.registry import store as store_module
from app.registry.store import (
    CONFIG_FILE,
    META_FILE,
    WEIGHTS_FILE,
    AdapterStore,
    check_name,
)

FILES = {CONFIG_FILE: b'{"peft_type": "LORA"}', WEIGHTS_FILE: b"\x00" * 64}


@pytest.fixture
def store(tmp_path: Path) -> AdapterStore:
    return AdapterStore(tmp_path / "store")


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root (without following links), with file bytes."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            out[rel] = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    return out


# ---------------------------------------------------------------- names
@pytest.mark.parametrize(
    "name",
    ["a", "0", "sst2", "a-b_c", "9lives", "x" * 64],
    ids=["one-letter", "digit", "plain", "dash-underscore", "leading-digit", "64-chars"],
)
def test_valid_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "../x",
        "..",
        ".",
        "a/b",
        "a/../../b",
        "/etc",
        "A",
        "Sst2",
        "sst2\u0430",
        "\u0430bc",
        "\uff53st2",
        "x" * 65,
        "-abc",
        "_abc",
        ".hidden",
        "abc\n",
        "ab c",
        "a\x00b",
        "a.b",
        "a\\b",
    ],
    ids=[
        "empty",
        "dotdot-slash",
        "dotdot",
        "dot",
        "slash",
        "nested-traversal",
        "absolute",
        "upper",
        "mixed-case",
        "cyrillic-a-suffix",
        "cyrillic-a-prefix",
        "fullwidth-s",
        "65-chars",
        "leading-dash",
        "leading-underscore",
        "hidden",
        "newline",
        "space",
        "nul",
        "dot-inside",
        "backslash",
    ],
)
def test_invalid_names(store: AdapterStore, name: str) -> None:
    with pytest.raises(SwitchyardError) as info:
        check_name(name)
    assert (info.value.status, info.value.code, info.value.param) == (400, "invalid_name", "name")
    with pytest.raises(SwitchyardError):
        store.write_version(name, FILES, {})
    assert _tree(store.root) == {}


# ---------------------------------------------------------------- versions
def test_versions_are_numbered_and_whole(store: AdapterStore) -> None:
    assert store.write_version("sst2", FILES, {"task": "classification"}) == 1
    assert store.write_version("sst2", {**FILES, WEIGHTS_FILE: b"\x01" * 64}, {}) == 2
    assert store.versions("sst2") == [1, 2]
    assert store.names() == ["sst2"]
    assert store.resolve("sst2") == 2
    assert store.resolve("sst2", 1) == 1
    meta = store.read_meta("sst2", 1)
    assert meta == {"task": "classification", "name": "sst2", "version": 1}
    assert store.read_file("sst2", 2, WEIGHTS_FILE) == b"\x01" * 64
    assert sorted(p.name for p in (store.root / "sst2" / "1").iterdir()) == sorted(
        [CONFIG_FILE, WEIGHTS_FILE, META_FILE]
    )
    # nothing temporary is left beside the versions
    assert sorted(p.name for p in (store.root / "sst2").iterdir()) == ["1", "2"]


def test_concurrent_writes_take_distinct_versions(store: AdapterStore) -> None:
    got: list[int] = []
    lock = threading.Lock()

    def write() -> None:
        version = store.write_version("busy", FILES, {})
        with lock:
            got.append(version)

    threads = [threading.Thread(target=write) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(got) == list(range(1, 9))
    assert store.versions("busy") == list(range(1, 9))


def test_failed_write_leaves_nothing(store: AdapterStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.write_version("sst2", FILES, {})
    before = _tree(store.root)
    calls = {"n": 0}
    real = store_module._write_synced

    def flaky(path: Path, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        real(path, data)

    monkeypatch.setattr(store_module, "_write_synced", flaky)
    with pytest.raises(OSError, match="disk full"):
        store.write_version("sst2", FILES, {})
    assert _tree(store.root) == before
    assert store.versions("sst2") == [1]


def test_unknown_versions_are_404(store: AdapterStore) -> None:
    with pytest.raises(SwitchyardError) as info:
        store.resolve("ghost")
    assert (info.value.status, info.value.code) == (404, "adapter_not_found")
    store.write_version("sst2", FILES, {})
    with pytest.raises(SwitchyardError) as info:
        store.resolve("sst2", 7)
    assert (info.value.status, info.value.code, info.value.param) == (
        404,
        "version_not_found",
        "version",
    )


# ---------------------------------------------------------------- delete
def test_delete_one_version(store: AdapterStore) -> None:
    for _ in range(3):
        store.write_version("sst2", FILES, {})
    assert store.delete("sst2", 2) == [2]
    assert store.versions("sst2") == [1, 3]
    assert store.write_version("sst2", FILES, {}) == 4
    assert sorted(p.name for p in (store.root / "sst2").iterdir()) == ["1", "3", "4"]


def test_delete_all_versions(store: AdapterStore) -> None:
    store.write_version("sst2", FILES, {})
    store.write_version("sst2", FILES, {})
    store.write_version("keep", FILES, {})
    store.set_pinned("sst2", True)
    assert store.delete("sst2") == [1, 2]
    assert not (store.root / "sst2").exists()
    assert store.names() == ["keep"]
    with pytest.raises(SwitchyardError) as info:
        store.delete("sst2")
    assert info.value.code == "adapter_not_found"
    with pytest.raises(SwitchyardError) as info:
        store.delete("keep", 5)
    assert info.value.code == "version_not_found"
    assert store.versions("keep") == [1]


# ---------------------------------------------------------------- sweep
def test_sweep_removes_interrupted_writes(store: AdapterStore) -> None:
    store.write_version("sst2", FILES, {})
    leftovers = [
        store.root / ".tmp-0123",
        store.root / ".trash-9",
        store.root / "sst2" / ".tmp-abc",
        store.root / "sst2" / ".trash-2-def",
    ]
    for folder in leftovers:
        folder.mkdir()
        (folder / WEIGHTS_FILE).write_bytes(b"half")
    assert store.versions("sst2") == [1]
    removed = store.sweep()
    assert sorted(removed) == sorted(str(p) for p in leftovers)
    assert not any(p.exists() for p in leftovers)
    assert store.versions("sst2") == [1]
    assert store.read_file("sst2", 1, WEIGHTS_FILE) == FILES[WEIGHTS_FILE]
    assert store.sweep() == []


def test_sweep_removes_leftover_files_and_links(store: AdapterStore, tmp_path: Path) -> None:
    """A dataset write killed before its rename leaves a file; shutil.rmtree silently keeps
    files and links, so the sweep must unlink them (the link, never its target)."""
    datasets = store.root / "_datasets"
    datasets.mkdir()
    half = datasets / ".tmp-0123abcd-ds_1.jsonl"
    half.write_text('{"text": "a", "lab')
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep me")
    link = datasets / ".tmp-link"
    link.symlink_to(outside)
    assert sorted(store.sweep()) == sorted([str(half), str(link)])
    assert not half.exists() and not os.path.lexists(link)
    assert outside.read_bytes() == b"keep me"
    assert store.sweep() == []


def test_sweep_does_not_follow_symlinks(store: AdapterStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / ".tmp-precious").mkdir(parents=True)
    (outside / ".tmp-precious" / "data").write_bytes(b"keep me")
    (store.root / "linked").symlink_to(outside, target_is_directory=True)
    store.sweep()
    assert (outside / ".tmp-precious" / "data").read_bytes() == b"keep me"


# ---------------------------------------------------------------- symlinks
def test_symlinked_version_is_ignored_and_refused(store: AdapterStore, tmp_path: Path) -> None:
    store.write_version("sst2", FILES, {})
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / META_FILE).write_text('{"task": "classification"}')
    (store.root / "sst2" / "2").symlink_to(outside, target_is_directory=True)
    assert store.versions("sst2") == [1]
    assert store.resolve("sst2") == 1
    with pytest.raises(SwitchyardError) as info:
        store.version_dir("sst2", 2)
    assert info.value.code == "store_corrupted"
    with pytest.raises(SwitchyardError):
        store.read_meta("sst2", 2)
    # a new version never replaces nor writes through the stray link: it takes the next number
    assert store.write_version("sst2", FILES, {}) == 3
    assert store.versions("sst2") == [1, 3]
    assert sorted(p.name for p in outside.iterdir()) == [META_FILE]


def test_symlinked_adapter_folder_is_ignored_and_refused(
    store: AdapterStore, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    (outside / "1").mkdir(parents=True)
    (outside / "1" / META_FILE).write_text("{}")
    (store.root / "evil").symlink_to(outside, target_is_directory=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    (store.root / "hollow").symlink_to(empty, target_is_directory=True)
    assert store.names() == []
    assert store.versions("evil") == []
    with pytest.raises(SwitchyardError):
        store.resolve("evil")
    for name in ("evil", "hollow"):
        with pytest.raises(SwitchyardError) as info:
            store.write_version(name, FILES, {})
        assert info.value.code == "store_corrupted"
    # nothing was written outside the store through the links
    assert _tree(outside) == {"1": None, f"1/{META_FILE}": b"{}"}
    assert _tree(empty) == {}


# ---------------------------------------------------------------- zip
def test_zip_holds_the_peft_files(store: AdapterStore, tmp_path: Path) -> None:
    store.write_version("sst2", FILES, {"task": "classification"})
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for download")
    (store.root / "sst2" / "1" / "leak").symlink_to(secret)
    with zipfile.ZipFile(io.BytesIO(store.zip_version("sst2", 1))) as archive:
        assert sorted(archive.namelist()) == sorted([CONFIG_FILE, WEIGHTS_FILE, META_FILE])
        for name, data in FILES.items():
            assert archive.read(name) == data
        assert archive.read(META_FILE) == store.read_file("sst2", 1, META_FILE)


# ---------------------------------------------------------------- version numbers are never reused
def test_numbers_survive_deleting_every_version_and_a_restart(store: AdapterStore) -> None:
    """Regression (issue 13 item 8): deleting every version restarted the count at 1."""
    for _ in range(3):
        store.write_version("sst2", FILES, {})
    store.delete("sst2", 3)
    assert store.write_version("sst2", FILES, {}) == 4  # the deleted latest is not renumbered
    assert store.delete("sst2") == [1, 2, 4]
    assert store.names() == [] and store.high_water("sst2") == 4
    assert store.write_version("sst2", FILES, {}) == 5
    store.delete("sst2")
    restarted = AdapterStore(store.root)
    assert restarted.write_version("sst2", FILES, {}) == 6
    assert restarted.write_version("other", FILES, {}) == 1  # marks are per name
    assert (store.root / ".high-water" / "sst2").read_text() == "6\n"


def test_an_old_store_without_marks_counts_from_its_versions(store: AdapterStore) -> None:
    store.write_version("sst2", FILES, {})
    store.write_version("sst2", FILES, {})
    (store.root / ".high-water" / "sst2").unlink()
    assert store.high_water("sst2") == 2
    assert store.write_version("sst2", FILES, {}) == 3


def test_an_unreadable_mark_refuses_to_guess(store: AdapterStore) -> None:
    store.write_version("sst2", FILES, {})
    (store.root / ".high-water" / "sst2").write_text("not a number")
    with pytest.raises(SwitchyardError) as info:
        store.write_version("sst2", FILES, {})
    assert (info.value.status, info.value.code) == (503, "store_corrupted")
    assert str(store.root) not in info.value.message
    assert store.versions("sst2") == [1]
    assert not [p for p in (store.root / "sst2").iterdir() if p.name.startswith(".tmp-")]


def test_sweep_removes_an_interrupted_mark(store: AdapterStore) -> None:
    store.write_version("sst2", FILES, {})
    half = store.root / ".high-water" / ".tmp-abc-sst2"
    half.write_text("9")
    assert store.sweep() == [str(half)]
    assert store.high_water("sst2") == 1


# ---------------------------------------------------------------- races
def test_concurrent_deletes_one_wins_the_others_404(store: AdapterStore) -> None:
    """Regression (issue 13 item 6): three DELETEs of one name gave two 500s."""
    for _ in range(3):
        store.write_version("sst2", FILES, {})
    barrier = threading.Barrier(6)
    results: list[list[int] | str] = []

    def delete() -> None:
        barrier.wait()
        try:
            results.append(store.delete("sst2"))
        except SwitchyardError as exc:
            results.append(f"{exc.status} {exc.code}")

    threads = [threading.Thread(target=delete) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(map(str, results)) == ["404 adapter_not_found"] * 5 + ["[1, 2, 3]"]
    assert not (store.root / "sst2").exists()


def test_uploads_racing_deletes_never_lose_or_reuse(store: AdapterStore) -> None:
    seen: list[int] = []
    errors: list[BaseException] = []

    def upload() -> None:
        for _ in range(10):
            seen.append(store.write_version("sst2", FILES, {}))

    def delete() -> None:
        for _ in range(10):
            try:
                store.delete("sst2")
            except SwitchyardError as exc:
                if exc.status != 404:
                    errors.append(exc)

    threads = [threading.Thread(target=f) for f in (upload, upload, delete)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(seen) == list(range(1, 21))  # twenty writes, twenty distinct numbers
    assert store.high_water("sst2") == 20
    assert store.sweep() == []


def test_reading_a_deleted_version_is_404_without_paths(store: AdapterStore) -> None:
    store.write_version("sst2", FILES, {})
    store.write_version("sst2", FILES, {})
    store.delete("sst2", 1)
    for read in (
        lambda: store.read_meta("sst2", 1),
        lambda: store.read_file("sst2", 1, WEIGHTS_FILE),
        lambda: store.size_bytes("sst2", 1),
        lambda: store.zip_version("sst2", 1),
    ):
        with pytest.raises(SwitchyardError) as info:
            read()
        assert (info.value.status, info.value.code) == (404, "version_not_found")
    (store.root / "sst2" / "2" / CONFIG_FILE).unlink()  # really missing from a whole version
    with pytest.raises(SwitchyardError) as info:
        store.read_file("sst2", 2, CONFIG_FILE)
    assert (info.value.status, info.value.code) == (503, "adapter_corrupted")
    assert str(store.root) not in info.value.message


def test_pinning_a_deleted_adapter_is_404(store: AdapterStore) -> None:
    with pytest.raises(SwitchyardError) as info:
        store.set_pinned("ghost", True)
    assert info.value.status == 404
    assert not (store.root / "ghost").exists()

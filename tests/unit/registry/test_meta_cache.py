"""`Registry.meta` on the predict path: a version's record is read from disk once, while the
version list is read every time, so versions stored or deleted by another process are seen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.base import FrozenBase
from app.config import Settings
from app.errors import SwitchyardError
from app.registry.catalog import Registry
from app.registry.store import CONFIG_FILE, WEIGHTS_FILE, AdapterStore

FILES = {CONFIG_FILE: b'{"peft_type": "LORA"}', WEIGHTS_FILE: b"\x00" * 64}


@pytest.fixture
def registry(tiny_base: FrozenBase, settings: Settings) -> Registry:
    return Registry(AdapterStore(settings.store), tiny_base, settings)


def test_a_versions_record_is_read_once(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.store.write_version("a", FILES, {"task": "classification", "labels": ["x", "y"]})
    reads: list[tuple[str, int]] = []
    read = registry.store.read_meta

    def counted(name: str, version: int) -> dict[str, Any]:
        reads.append((name, version))
        return read(name, version)

    monkeypatch.setattr(registry.store, "read_meta", counted)
    for _ in range(5):
        meta = registry.meta("a")
        assert (meta.version, meta.task, meta.labels) == (1, "classification", ["x", "y"])
    assert reads == [("a", 1)]


def test_versions_from_another_process_are_seen_at_once(
    registry: Registry, settings: Settings
) -> None:
    registry.store.write_version("a", FILES, {"task": "classification"})
    assert registry.meta("a").version == 1
    other = AdapterStore(settings.store)  # another replica on the same store
    other.write_version("a", FILES, {"task": "regression"})
    latest = registry.meta("a")
    assert (latest.version, latest.task) == (2, "regression")
    other.delete("a", 2)
    assert registry.meta("a").version == 1
    with pytest.raises(SwitchyardError) as info:
        registry.meta("a", 2)  # cached, but deleted: the listing decides
    assert info.value.code == "version_not_found"
    other.delete("a")
    with pytest.raises(SwitchyardError) as info:
        registry.meta("a")
    assert info.value.code == "adapter_not_found"


def test_a_linked_name_folder_is_not_an_adapter(registry: Registry, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "1").mkdir(parents=True)
    (registry.store.root / "linked").symlink_to(outside, target_is_directory=True)
    assert registry.store.versions("linked") == []
    with pytest.raises(SwitchyardError) as info:
        registry.meta("linked")
    assert info.value.code == "adapter_not_found"

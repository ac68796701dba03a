"""Version numbers from the shared catalog: replicas (separate stores, separate engines, even
separate processes) writing one name at once never collide, numbers are never reused, and the
catalog's rows follow the store's versions."""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.db import Database
from app.errors import SwitchyardError
from app.registry.store import AdapterStore
from app.scaleout.versions import DatabaseVersions, shared_ledger
from tests.unit.scaleout.pgtools import catalog_url, fresh_schema, needs_pg, pg_url

FILES = {"adapter_config.json": b"{}", "adapter_model.safetensors": b"weights"}
REPLICAS, UPLOADS_EACH = 3, 6


def _replica(root: Path, url: str) -> tuple[AdapterStore, Database]:
    """A store and an engine of their own, as a second process would have."""
    db = Database(url)
    return AdapterStore(root, ledger=DatabaseVersions(db)), db


def test_replicas_writing_one_name_at_once_get_distinct_numbers(
    catalog: Database, tmp_path: Path
) -> None:
    root = tmp_path / "store"
    replicas = [_replica(root, catalog.url) for _ in range(REPLICAS)]
    start = threading.Barrier(REPLICAS * UPLOADS_EACH)

    def upload(store: AdapterStore, index: int) -> int:
        start.wait()
        return store.write_version("shared", FILES, {"task": "classification", "n": index})

    with ThreadPoolExecutor(REPLICAS * UPLOADS_EACH) as pool:
        futures = [
            pool.submit(upload, store, i) for i, (store, _) in enumerate(replicas * UPLOADS_EACH)
        ]
        numbers = sorted(f.result() for f in futures)
    total = REPLICAS * UPLOADS_EACH
    assert numbers == list(range(1, total + 1))
    assert AdapterStore(root).versions("shared") == numbers
    entries = DatabaseVersions(catalog).entries("shared")
    assert [e.version for e in entries] == numbers
    assert all(e.meta["version"] == e.version and e.meta["name"] == "shared" for e in entries)
    for _, db in replicas:
        db.dispose()


def test_numbers_are_never_reused_after_every_version_is_deleted(
    catalog: Database, tmp_path: Path
) -> None:
    ledger = DatabaseVersions(catalog)
    store = AdapterStore(tmp_path / "store", ledger=ledger)
    assert [store.write_version("a", FILES, {}) for _ in range(2)] == [1, 2]
    assert store.delete("a") == [1, 2]
    assert ledger.entries("a") == []
    # Another replica's store never saw the name: the catalog still knows its numbers.
    other = AdapterStore(tmp_path / "other", ledger=ledger)
    assert other.write_version("a", FILES, {}) == 3
    assert [e.version for e in ledger.entries()] == [3]


def test_a_store_from_before_the_catalog_keeps_counting_and_is_reconciled(
    catalog: Database, tmp_path: Path
) -> None:
    plain = AdapterStore(tmp_path / "store")
    for _ in range(3):
        plain.write_version("old", FILES, {"task": "classification"})
    plain.delete("old", 2)
    ledger = DatabaseVersions(catalog)
    shared = AdapterStore(tmp_path / "store", ledger=ledger)
    assert ledger.reconcile(shared) == (2, 0)
    assert [e.version for e in ledger.entries("old")] == [1, 3]
    assert shared.write_version("old", FILES, {}) == 4
    assert shared.write_version("new", FILES, {}) == 1
    plain.delete("old", 4)  # behind the catalog's back: the next start drops its row
    assert ledger.reconcile(shared) == (0, 1)
    assert [(e.name, e.version) for e in ledger.entries()] == [("new", 1), ("old", 1), ("old", 3)]


def test_an_unreachable_catalog_stores_nothing_and_deletes_nothing(tmp_path: Path) -> None:
    down = Database("postgresql://postgres@127.0.0.1:9/test", busy_timeout_s=1)
    store = AdapterStore(tmp_path / "store", ledger=DatabaseVersions(down))
    with pytest.raises(SwitchyardError) as caught:
        store.write_version("a", FILES, {})
    assert caught.value.status == 503 and caught.value.code == "database_unavailable"
    assert store.versions("a") == [] and store.sweep() == []
    AdapterStore(tmp_path / "store").write_version("a", FILES, {})
    with pytest.raises(SwitchyardError) as caught:
        store.delete("a")
    assert caught.value.status == 503
    assert store.versions("a") == [1]
    down.dispose()


def test_a_failed_row_discards_the_renamed_version(catalog: Database, tmp_path: Path) -> None:
    ledger = DatabaseVersions(catalog)
    store = AdapterStore(tmp_path / "store", ledger=ledger)
    store.write_version("a", FILES, {})
    # The row of v1 exists: recording a v1 again fails on the primary key, after the rename.
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        ledger.recorded("a", 1, {})
    catalog_rows = ledger.entries("a")
    assert [e.version for e in catalog_rows] == [1]

    class Refusing(DatabaseVersions):
        def recorded(self, name: str, version: int, meta: dict[str, object]) -> None:
            raise SwitchyardError(503, "database_unavailable", f"no row for {name} v{version}")

    refusing = AdapterStore(tmp_path / "store", ledger=Refusing(catalog))
    with pytest.raises(SwitchyardError):
        refusing.write_version("a", FILES, {})
    assert store.versions("a") == [1]  # v2 was renamed into place, then discarded whole
    assert store.write_version("a", FILES, {}) == 3  # and its number is burnt


def test_sqlite_keeps_the_store_counting_by_itself(tmp_path: Path) -> None:
    with catalog_url("sqlite", str(tmp_path)) as url:
        db = Database(url)
        assert shared_ledger(db) is None
        db.dispose()


def _upload_in_a_process(root: str, url: str, count: int, out: multiprocessing.Queue) -> None:
    store = AdapterStore(Path(root), ledger=DatabaseVersions(Database(url)))
    out.put([store.write_version("proc", FILES, {}) for _ in range(count)])


@needs_pg
def test_processes_uploading_one_name_on_postgresql_never_collide(tmp_path: Path) -> None:
    with fresh_schema() as schema:
        url = pg_url(schema)
        db = Database(url)
        db.migrate()
        assert isinstance(shared_ledger(db), DatabaseVersions)
        context = multiprocessing.get_context("spawn")
        out: multiprocessing.Queue = context.Queue()
        workers = [
            context.Process(
                target=_upload_in_a_process, args=(str(tmp_path / "store"), url, 5, out)
            )
            for _ in range(2)
        ]
        for worker in workers:
            worker.start()
        numbers = sorted(out.get(timeout=120) + out.get(timeout=120))
        for worker in workers:
            worker.join(timeout=30)
            assert worker.exitcode == 0
        assert numbers == list(range(1, 11))
        assert AdapterStore(tmp_path / "store").versions("proc") == numbers
        db.dispose()

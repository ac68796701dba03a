"""Version numbers and adapter rows from the shared catalog database.

Replicas share the store's folder but not its per-process name locks, so the store's own
high-water file cannot keep two replicas from picking the same number. Here every number
comes from one atomic upsert on `adapter_versions` (a row lock on PostgreSQL, the database
lock on SQLite): two uploads of one name at once get two numbers, and a number is never given
twice, even after every version was deleted. The store's high-water mark is the floor, so a
store that predates the shared catalog keeps counting from where it was.

`adapter_catalog` holds each version's metadata for every replica to list; the store's files
stay the source of truth (DESIGN.md decision 5) and `reconcile` brings the rows back in line
with them at start, after a crash between a rename and its row.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db import AdapterRow, AdapterVersionMark, Database, DatabaseUnavailable
from app.errors import SwitchyardError
from app.registry.store import AdapterStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CatalogEntry:
    """One adapter version as the shared catalog lists it."""

    name: str
    version: int
    meta: dict[str, Any]


class DatabaseVersions:
    """The store's `VersionLedger` on the catalog database (any replica, any backend)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def allocate(self, name: str, floor: int) -> int:
        """The next number of `name`: above every number it was given and above `floor`."""
        with self.db.session() as session:
            number = session.execute(_upsert(session, name, floor)).scalar_one()
        if number <= floor:
            raise SwitchyardError(
                500,
                "store_corrupted",
                f"the catalog gave {name!r} version {number}, not above the store's {floor}",
            )
        return int(number)

    def recorded(self, name: str, version: int, meta: dict[str, Any]) -> None:
        """Add the row of a version that is now whole in the store."""
        # As switchyard.json holds it (written with default=str): plain JSON in the column.
        plain = json.loads(json.dumps(meta, default=str))
        with self.db.session() as session:
            session.add(AdapterRow(name=name, version=version, meta=plain))

    def removed(self, name: str, versions: list[int]) -> None:
        """Drop the rows of versions leaving the store."""
        with self.db.session() as session:
            session.execute(
                delete(AdapterRow).where(AdapterRow.name == name, AdapterRow.version.in_(versions))
            )

    def entries(self, name: str | None = None) -> list[CatalogEntry]:
        """The catalog's rows (of one name, or all), by name then version."""
        query = select(AdapterRow).order_by(AdapterRow.name, AdapterRow.version)
        if name is not None:
            query = query.where(AdapterRow.name == name)
        with self.db.session() as session:
            rows = session.scalars(query).all()
            return [CatalogEntry(name=r.name, version=r.version, meta=dict(r.meta)) for r in rows]

    def reconcile(self, store: AdapterStore) -> tuple[int, int]:
        """Make the rows match the store's whole versions; returns (added, dropped)."""
        on_disk = {(n, v) for n in store.names() for v in store.versions(n)}
        listed = {(e.name, e.version) for e in self.entries()}
        for name, version in sorted(on_disk - listed):
            self.allocate(name, version - 1)  # the mark covers numbers made before the catalog
            self.recorded(name, version, store.read_meta(name, version))
        stale: dict[str, list[int]] = {}
        for name, version in listed - on_disk:
            stale.setdefault(name, []).append(version)
        for name, versions in stale.items():
            self.removed(name, versions)
        added, dropped = len(on_disk - listed), len(listed - on_disk)
        if added or dropped:
            log.warning(
                "catalog rows reconciled with the store: %d added, %d dropped", added, dropped
            )
        return added, dropped


def _upsert(session: Session, name: str, floor: int) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        insert: Any = postgresql.insert(AdapterVersionMark)
        highest: Any = func.greatest
    elif dialect == "sqlite":
        insert, highest = sqlite.insert(AdapterVersionMark), func.max
    else:
        raise SwitchyardError(
            500,
            "unsupported_database",
            f"version numbers need PostgreSQL or SQLite, not {dialect!r}",
        )
    statement = insert.values(name=name, high_water=floor + 1)
    bumped = highest(AdapterVersionMark.high_water + 1, statement.excluded.high_water)
    return statement.on_conflict_do_update(
        index_elements=[AdapterVersionMark.name], set_={"high_water": bumped}
    ).returning(AdapterVersionMark.high_water)


def shared_ledger(db: Database) -> DatabaseVersions | None:
    """The ledger for a catalog replicas share (any server database); None for SQLite, where
    one process owns the store and its own high-water mark already suffices."""
    if db.engine.dialect.name == "sqlite":
        return None
    return DatabaseVersions(db)


def reconcile_quietly(ledger: DatabaseVersions, store: AdapterStore) -> None:
    """`reconcile` at start; a catalog that is down then only delays it to the next start
    (serving needs no rows: the store's files are the truth)."""
    try:
        ledger.reconcile(store)
    except DatabaseUnavailable as exc:
        log.warning("catalog unavailable at start (%s): rows reconciled later", exc.__cause__)

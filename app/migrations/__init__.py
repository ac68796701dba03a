"""Alembic migrations of the catalog database, applied at every start (SQLite and PostgreSQL).

The scripts live inside the package so that a wheel or an editable install carries them. A
catalog made before migrations existed (tables from `create_all`, no `alembic_version`) is
stamped at the baseline first, then upgraded like any other. On PostgreSQL the upgrade holds
an advisory lock, so replicas starting together migrate one after another, not at once.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, inspect, text

log = logging.getLogger(__name__)

BASELINE = "0001"
HEAD = "head"
# Any fixed number: every Switchyard replica takes the same lock around its upgrade.
_PG_LOCK_KEY = 0x5317C4
_PRE_ALEMBIC_TABLE = "training_jobs"
# Alembic's `context` and `op` are module-level proxies: two engines migrating in one process
# at once (tests, several Database objects) would swap them under each other.
_ALEMBIC_LOCK = threading.Lock()


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at these scripts; `connection` is the one env.py uses."""
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = HEAD) -> None:
    """Bring the catalog at `engine` to `revision` (the newest by default), in one transaction."""
    with _ALEMBIC_LOCK, engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        config = alembic_config(connection)
        if _made_by_create_all(connection):
            log.warning("catalog predates migrations: stamping it at revision %s", BASELINE)
            command.stamp(config, BASELINE)
        command.upgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the catalog is at; None for a catalog Alembic never touched."""
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _made_by_create_all(connection: Connection) -> bool:
    tables = set(inspect(connection).get_table_names())
    return _PRE_ALEMBIC_TABLE in tables and "alembic_version" not in tables

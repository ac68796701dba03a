"""Alembic's entry point: runs the scripts on the connection `app.migrations.upgrade` opened.

Only online mode on a given connection: the service migrates its own engine (SQLite in memory
included), never a URL from an ini file.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from app.db import Model


def _run(connection: Connection) -> None:
    # render_as_batch: SQLite alters a table by copying it, which later scripts may need.
    context.configure(
        connection=connection,
        target_metadata=Model.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


_connection = context.config.attributes.get("connection")
if _connection is None:
    raise RuntimeError(
        "app.migrations runs only on a connection given by app.migrations.upgrade; "
        "got none in config.attributes['connection']"
    )
_run(_connection)

"""What replicas sharing one catalog need: version numbers, adapter rows, training leases.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Add adapter_versions, adapter_catalog and job_leases."""
    op.create_table(
        "adapter_versions",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("high_water", sa.Integer(), nullable=False),
    )
    op.create_table(
        "adapter_catalog",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("name", "version", name="pk_adapter_catalog"),
    )
    op.create_table(
        "job_leases",
        sa.Column(
            "job_id",
            sa.String(64),
            sa.ForeignKey("training_jobs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("node", sa.String(256), nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("heartbeat_at", _TS, nullable=False),
    )
    op.create_index("ix_job_leases_node", "job_leases", ["node"])
    op.create_index("ix_job_leases_expires_at", "job_leases", ["expires_at"])


def downgrade() -> None:
    """Drop the three tables; the baseline's are untouched."""
    op.drop_table("job_leases")
    op.drop_table("adapter_catalog")
    op.drop_table("adapter_versions")

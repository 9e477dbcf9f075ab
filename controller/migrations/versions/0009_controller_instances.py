"""Several controllers on one PostgreSQL: ``controllerinstance`` (each running process and when
it last said it was alive) and ``device.controller_id`` (which of them holds the device's
control stream), so that a process that dies is noticed and only its devices go offline.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 12:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "controllerinstance",
        sa.Column("id", sa.String(length=64), primary_key=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("database", sa.String(length=16), nullable=False, server_default=""),
    )
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.add_column(sa.Column("controller_id", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_device_controller_id", ["controller_id"])


def downgrade() -> None:
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.drop_index("ix_device_controller_id")
        batch_op.drop_column("controller_id")
    op.drop_table("controllerinstance")

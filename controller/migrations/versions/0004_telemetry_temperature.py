"""telemetryaggregate.temperature_c_max: the hottest sensor of each one-minute window (the
dashboard's per-device temperature chart).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 07:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("telemetryaggregate", schema=None) as batch_op:
        batch_op.add_column(sa.Column("temperature_c_max", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("telemetryaggregate", schema=None) as batch_op:
        batch_op.drop_column("temperature_c_max")

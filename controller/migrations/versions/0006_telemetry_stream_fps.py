"""telemetryaggregate.stream_fps_mean: frames/s of the device's video pipelines per one-minute
window (the dashboard's stream chart).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 07:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("telemetryaggregate", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stream_fps_mean", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("telemetryaggregate", schema=None) as batch_op:
        batch_op.drop_column("stream_fps_mean")

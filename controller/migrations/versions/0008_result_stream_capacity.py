"""result.stream_capacity / stream_fps: the benchmark's stream scenario (the most live streams of
the reference clip a device kept at the clip's rate), stored with the device's other measurements
for the loop's stream goals (controller/loop/goals.py).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 12:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("result", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stream_capacity", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("stream_fps", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("result", schema=None) as batch_op:
        batch_op.drop_column("stream_fps")
        batch_op.drop_column("stream_capacity")

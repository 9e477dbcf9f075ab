"""An index on ``result.command_id``: the rollout engine looks up the reports of a wave's
commands, and a resent report is matched by its command, on every tick and report; without it
each look-up scans every result the fleet ever sent.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 13:05:00
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("result", schema=None) as batch_op:
        batch_op.create_index("ix_result_command_id", ["command_id"])


def downgrade() -> None:
    with op.batch_alter_table("result", schema=None) as batch_op:
        batch_op.drop_index("ix_result_command_id")

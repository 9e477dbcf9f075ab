"""Indexes for the rollout engine's per-pass reads of a rollout's deployments.

The engine reads, on every pass, the deployments in flight (``rollout_id`` and ``state``), the
pending ones of the current wave when it starts (``rollout_id``, ``state``, ``wave``), and the
per-state counts of the current wave (``rollout_id``, ``wave``, ``state``). With only the index
on ``rollout_id`` each of these reads every deployment of the rollout: 10,000 rows a pass at
10,000 devices.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 19:20:00
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployment", schema=None) as batch_op:
        batch_op.create_index("ix_deployment_rollout_state_wave", ["rollout_id", "state", "wave"])
        batch_op.create_index("ix_deployment_rollout_wave_state", ["rollout_id", "wave", "state"])


def downgrade() -> None:
    with op.batch_alter_table("deployment", schema=None) as batch_op:
        batch_op.drop_index("ix_deployment_rollout_wave_state")
        batch_op.drop_index("ix_deployment_rollout_state_wave")

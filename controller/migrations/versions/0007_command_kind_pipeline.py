"""commandkind gains ``pipeline``: the controller configures the devices' video pipelines
(fleet.Pipeline, docs/stream.md). PostgreSQL holds the enum as a type and needs the new value;
SQLite stores the names as text, so there is nothing to change there.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 08:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # inside the migration's transaction (PostgreSQL 12+); the value is usable once it commits
        op.execute("ALTER TYPE commandkind ADD VALUE IF NOT EXISTS 'pipeline'")


def downgrade() -> None:
    # PostgreSQL cannot drop an enum value; commands of kind pipeline stay readable as rows.
    pass

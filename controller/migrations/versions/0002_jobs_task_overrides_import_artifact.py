"""jobs: task, overrides, import_artifact (trainer.jobs.run_action(task, action, spec, overrides))

Existing rows get the defaults (server_default), so the upgrade works on a populated table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 05:02:58.316859
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "task",
                sqlmodel.sql.sqltypes.AutoString(length=50),
                nullable=False,
                server_default="classification",
            )
        )
        batch_op.add_column(sa.Column("overrides", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.add_column(
            sa.Column("import_artifact", sa.Boolean(), nullable=False, server_default=sa.true())
        )


def downgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_column("import_artifact")
        batch_op.drop_column("overrides")
        batch_op.drop_column("task")

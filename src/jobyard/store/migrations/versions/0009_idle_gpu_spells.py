"""idle_gpu_spells: idle_gpu_timeout's clock per job (since when its GPUs have been idle, and
what was done about it), so that a server restart does not start it again; deleted with the job

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "idle_gpu_spells",
        sa.Column("job_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("since", sa.Float(), nullable=True),
        sa.Column("acted", sa.Boolean(), nullable=False),
        sa.Column("unmeasured", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id"),
    )


def downgrade() -> None:
    op.drop_table("idle_gpu_spells")

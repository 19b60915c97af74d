"""jobs: index (state, id) so a state filter pages in id order without a sort

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_jobs_state_id", "jobs", ["state", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_jobs_state_id", table_name="jobs")

"""jobs: index (owner, state, id): a user's own jobs in a state (the common "my running jobs")
are counted and paged without reading everyone's jobs in that state

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_jobs_owner_state_id", "jobs", ["owner", "state", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_jobs_owner_state_id", table_name="jobs")

"""Where a job's last attempt computed (liftplace.environment: processor model, threads, device, library
versions), as its worker reported it: two processors give one seed different FIDs.

Plain ADD/DROP COLUMN, not batch mode: on SQLite a batch operation copies the table, which would drop the
triggers 0008 put on `jobs`. Jobs that ended before this revision have none (NULL).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("environment", sa.JSON(), nullable=True))


def downgrade() -> None:
    # The same facts stay in each job's MLflow run (liftplace.env.* tags) and in its job.log.
    op.drop_column("jobs", "environment")

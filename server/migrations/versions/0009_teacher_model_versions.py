"""Teachers as MLflow model versions (cluster mode, LIFTPLACE_STORAGE=mlflow): each teacher's version in MLflow's
model registry and the sha256 digest of its files (worker.teacher_store).

Plain ADD/DROP COLUMN, not batch mode: on SQLite a batch operation copies the table, which would drop the
triggers 0008 put on `teachers` (SQLite 3.35 and later drop a column in place).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("teachers", sa.Column("model_version", sa.String(length=32), nullable=True))
    op.add_column("teachers", sa.Column("model_digest", sa.String(length=64), nullable=True))


def downgrade() -> None:
    # Nothing is lost that the registry does not hold: the versions stay in MLflow, tagged with their digest.
    op.drop_column("teachers", "model_digest")
    op.drop_column("teachers", "model_version")

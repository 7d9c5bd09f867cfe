"""Jobs may prune their student from another teacher than the one they distil from.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Batch mode: SQLite cannot add a foreign key to an existing table in place.
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("student_teacher_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_student_teacher_id"), ["student_teacher_id"], unique=False)
        batch_op.create_foreign_key(batch_op.f("fk_jobs_student_teacher_id_teachers"), "teachers",
                                    ["student_teacher_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_jobs_student_teacher_id_teachers"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_jobs_student_teacher_id"))
        batch_op.drop_column("student_teacher_id")

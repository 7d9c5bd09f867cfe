"""Study axes: a study sweeps options (grid search); a cell is (teacher, method, axis values).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

EMPTY = sa.text("'{}'")  # no axes: every study and cell stored before this revision


def upgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("axes", sa.JSON(), server_default=EMPTY, nullable=False))
    with op.batch_alter_table("study_cells", schema=None) as batch_op:
        batch_op.add_column(sa.Column("axes", sa.String(length=1000), server_default=EMPTY, nullable=False))
        batch_op.drop_constraint("uq_study_cells_cell", type_="unique")
        batch_op.create_unique_constraint("uq_study_cells_cell", ["study_id", "teacher", "method", "axes"])


def downgrade() -> None:
    # A study with axes has several cells per (teacher, method): they are derived data, recomputed from the
    # jobs when they end again, so the extra ones are dropped rather than merged.
    conn = op.get_bind()
    conn.execute(sa.text("DELETE FROM study_cells WHERE axes <> '{}'"))
    with op.batch_alter_table("study_cells", schema=None) as batch_op:
        batch_op.drop_constraint("uq_study_cells_cell", type_="unique")
        batch_op.create_unique_constraint("uq_study_cells_cell", ["study_id", "teacher", "method"])
        batch_op.drop_column("axes")
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_column("axes")

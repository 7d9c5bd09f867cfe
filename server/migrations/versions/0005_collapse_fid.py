"""A study's own collapse threshold; FeatKD's hook set kept for the jobs stored before it was an option.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# The FeatKD methods (liftplace.methods at this revision) and the hook set every job before it trained with.
FEATKD_METHODS = ("outkd+featkd", "lift+featkd", "lift+place+featkd")
FORMER_FEATKD_LAYERS = "blocks"


def _keep_former_featkd_layers() -> None:
    """A job stored before `featkd_layers` existed trained FeatKD on whole blocks; a retry must resume with
    them (a checkpoint refuses another hook set), not with the new default."""
    conn = op.get_bind()
    jobs = sa.table("jobs", sa.column("id", sa.Integer), sa.column("method", sa.String), sa.column("options", sa.JSON))
    rows = conn.execute(sa.select(jobs.c.id, jobs.c.options).where(jobs.c.method.in_(FEATKD_METHODS))).all()
    for job_id, options in rows:
        if isinstance(options, dict) and "featkd_layers" not in options:
            conn.execute(jobs.update().where(jobs.c.id == job_id).values(
                options={**options, "featkd_layers": FORMER_FEATKD_LAYERS}))


def upgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("collapse_fid", sa.Float(), nullable=True))
    _keep_former_featkd_layers()


def downgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_column("collapse_fid")

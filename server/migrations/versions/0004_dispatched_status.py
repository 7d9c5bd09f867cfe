"""A job status between queued and running: "dispatched" (handed to the executor, not yet started).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# The statuses as of this revision (the models' list may grow later; a migration must not follow it).
WITH_DISPATCHED = ("queued", "dispatched", "running", "succeeded", "failed", "diverged", "cancelled")
WITHOUT_DISPATCHED = ("queued", "running", "succeeded", "failed", "diverged", "cancelled")


def _status_check(statuses: tuple[str, ...]) -> None:
    # Batch mode: SQLite cannot change a CHECK constraint in place (the table is copied).
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint("status", type_="check")  # ck_jobs_status by the naming convention
        batch_op.create_check_constraint("status", f"status IN ({', '.join(repr(s) for s in statuses)})")


def upgrade() -> None:
    _status_check(WITH_DISPATCHED)


def downgrade() -> None:
    # A dispatched job had not started: before this revision such a job counted as running.
    op.execute("UPDATE jobs SET status = 'running' WHERE status = 'dispatched'")
    _status_check(WITHOUT_DISPATCHED)

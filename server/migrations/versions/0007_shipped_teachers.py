"""A teacher source "shipped": a teacher shipped with liftplace (liftplace/shipped/), registered by name.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# The sources as of this revision (the models' list may grow later; a migration must not follow it).
WITH_SHIPPED = ("local", "preset", "pruned", "shipped")
WITHOUT_SHIPPED = ("local", "preset", "pruned")


def _source_check(sources: tuple[str, ...]) -> None:
    # Batch mode: SQLite cannot change a CHECK constraint in place (the table is copied).
    with op.batch_alter_table("teachers", schema=None) as batch_op:
        batch_op.drop_constraint("source", type_="check")  # ck_teachers_source by the naming convention
        batch_op.create_check_constraint("source", f"source IN ({', '.join(repr(s) for s in sources)})")


def upgrade() -> None:
    _source_check(WITH_SHIPPED)


def downgrade() -> None:
    # Before this revision a shipped teacher has no equivalent (a local teacher's folder is under the
    # teachers root, a shipped one's is in the installed package): refuse rather than break its jobs.
    count = op.get_bind().exec_driver_sql("SELECT COUNT(*) FROM teachers WHERE source = 'shipped'").scalar()
    if count:
        raise RuntimeError(f"downgrade below 0006: {count} shipped teacher(s) are registered, which the older "
                           "schema cannot hold")
    _source_check(WITHOUT_SHIPPED)

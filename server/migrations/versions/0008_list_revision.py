"""The revision of what a page of jobs shows: a counter the database bumps on every write to the tables
a page reads (jobs, teachers, datasets, studies), so that a server can cache encoded pages by revision.

Triggers, not the application, bump it: a write from any process or host (the dispatcher, another API
replica, the CLI, a SQL console) changes the revision in the same transaction as the rows.

- SQLite: row triggers (its only kind) add 1 to shard 0. SQLite has one writer at a time, so one row
  costs no concurrency.
- PostgreSQL: a deferred constraint trigger adds 1, once per transaction, to the shard of the
  writer's backend (pid mod SHARDS). Deferred to the commit, the counter's row lock is the last lock
  a transaction takes, so it cannot close a cycle of waits (an immediate trigger would lock the
  counter mid-transaction: two writers of several jobs could deadlock). Shards let concurrent
  writers commit side by side instead of queueing on one row. The revision is the sum of the shards:
  every committed writing transaction adds at least 1 to it, and snapshots see committed
  transactions in one order, so two reads of the same sum saw the same writes.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SHARDS = 8  # PostgreSQL: counter rows, so that writers of different backends rarely wait on one another
TABLES = ("jobs", "teachers", "datasets", "studies")  # every table a page of jobs reads
EVENTS = ("insert", "update", "delete")

PG_FUNCTION = f"""
CREATE FUNCTION liftplace_revise() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- once per transaction: the flag is transaction-local (set_config(..., true))
    IF current_setting('liftplace.revised', true) IS DISTINCT FROM 'on' THEN
        UPDATE revisions SET value = value + 1 WHERE shard = pg_backend_pid() % {SHARDS};
        PERFORM set_config('liftplace.revised', 'on', true);
    END IF;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "revisions",
        sa.Column("shard", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("shard", name=op.f("pk_revisions")),
    )
    op.execute(sa.text("INSERT INTO revisions (shard, value) VALUES "
                       + ", ".join(f"({shard}, 0)" for shard in range(SHARDS))))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(sa.text(PG_FUNCTION))
        for table in TABLES:
            op.execute(sa.text(f"CREATE CONSTRAINT TRIGGER revise_on_{table} AFTER INSERT OR UPDATE OR DELETE "
                               f"ON {table} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
                               f"EXECUTE FUNCTION liftplace_revise()"))
            # TRUNCATE fires no row trigger: a statement trigger covers it
            op.execute(sa.text(f"CREATE TRIGGER revise_on_truncate_{table} AFTER TRUNCATE ON {table} "
                               f"FOR EACH STATEMENT EXECUTE FUNCTION liftplace_revise()"))
        return
    for table in TABLES:
        for event in EVENTS:
            op.execute(sa.text(f"CREATE TRIGGER revise_on_{event}_{table} AFTER {event.upper()} ON {table} "
                               f"BEGIN UPDATE revisions SET value = value + 1 WHERE shard = 0; END"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in TABLES:
            op.execute(sa.text(f"DROP TRIGGER revise_on_{table} ON {table}"))
            op.execute(sa.text(f"DROP TRIGGER revise_on_truncate_{table} ON {table}"))
        op.execute(sa.text("DROP FUNCTION liftplace_revise()"))
    else:
        for table in TABLES:
            for event in EVENTS:
                op.execute(sa.text(f"DROP TRIGGER revise_on_{event}_{table}"))
    op.drop_table("revisions")

"""Server-side fences, so a worker's commit is one Postgres round trip.

A worker sends its whole commit (the epoch fence, the snapshot writes, the
processed-message records) as one statement (entities/store/sql_commit.py).
Checks that used to run in the worker between statements now run in the server
and abort the statement:

- ``entities_fence_epoch(partition, epoch)`` takes the partition row FOR SHARE
  (a claim by another worker waits for this commit, and this commit waits for
  a claim in progress) and raises SQLSTATE EN001 unless the partition is still
  at ``epoch``; a NULL epoch (a writer that owns no partition) checks nothing;
- ``entities_fence_rows(written, expected)`` raises SQLSTATE EN002 unless a
  version-fenced write changed every row it was meant to.

SQLite keeps the checks in the worker: nothing to do there.

Revision ID: 0003_commit_fences
Revises: 0002_binary_id_order
Create Date: 2026-11-21
"""

from __future__ import annotations

from alembic import op

revision = "0003_commit_fences"
down_revision = "0002_binary_id_order"
branch_labels = None
depends_on = None

FENCE_EPOCH = """
CREATE OR REPLACE FUNCTION entities_fence_epoch(p integer, e bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    current bigint;
BEGIN
    IF e IS NULL THEN
        RETURN;
    END IF;
    SELECT epoch INTO current FROM entity_partitions WHERE partition = p FOR SHARE;
    IF current IS DISTINCT FROM e THEN
        RAISE EXCEPTION 'partition % is now at epoch %; this owner holds epoch % and may no '
            'longer commit', p, current, e
            USING ERRCODE = 'EN001';
    END IF;
END
$$
"""

FENCE_ROWS = """
CREATE OR REPLACE FUNCTION entities_fence_rows(written bigint, expected bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF written <> expected THEN
        RAISE EXCEPTION '% of % entities of this batch no longer had the version it was '
            'written against; a concurrent writer changed them', expected - written, expected
            USING ERRCODE = 'EN002';
    END IF;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(FENCE_EPOCH)
    op.execute(FENCE_ROWS)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP FUNCTION IF EXISTS entities_fence_rows(bigint, bigint)")
    op.execute("DROP FUNCTION IF EXISTS entities_fence_epoch(integer, bigint)")

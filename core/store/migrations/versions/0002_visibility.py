"""Visibility: datasets, models, jobs and indexes become ``private`` or ``team`` (see ``core.users``).

Every existing row becomes ``private`` through the server default, which is what it was in effect before; its
``owner`` column is left as it is (``local`` for rows written before users existed). The column is added with
``ALTER TABLE ... ADD COLUMN`` (a batch operation SQLite runs in place: a constant default and NOT NULL need no table
rebuild), so upgrading a large store copies nothing.

Revision ID: 0002_visibility
Revises: 0001_baseline
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_visibility"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None

TABLES = ("datasets", "models", "jobs", "indexes")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("visibility", sa.String, nullable=False, server_default="private"))


def downgrade() -> None:
    """Drop the column in place (``recreate="never"``: SQLite >= 3.35 drops a plain column itself).

    A batch rebuild would drop and recreate ``datasets``, and with foreign keys on, dropping it deletes every row
    that cascades from it (items, concepts, indexes); ALTER TABLE ... DROP COLUMN touches nothing else.
    """
    for table in TABLES:
        with op.batch_alter_table(table, recreate="never") as batch:
            batch.drop_column("visibility")

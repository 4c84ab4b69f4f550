"""Users: everyone the studio has seen sign in (or act through the command line), with a role an admin set.

``role`` is NULL until an admin changes it: the role then comes from the settings (``admins``, ``default_role``);
users first seen through the command line are stored as ``member``.

Revision ID: 0003_users
Revises: 0002_visibility
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_users"
down_revision = "0002_visibility"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("name", sa.String, primary_key=True),
        sa.Column("role", sa.String),
        sa.Column("first_seen", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("seen_via", sa.String, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("users")

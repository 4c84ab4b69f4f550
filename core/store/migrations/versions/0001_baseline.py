"""Baseline: the schema every data directory had before migrations existed (the studio's first release).

Written out in full rather than imported from ``core.store.schema``: a revision is frozen history and must create the
same tables however the schema module changes later. Tables, column order, constraints and index names match what
``metadata.create_all`` made from that schema, so a database it made and one this revision makes are the same (the
frozen DDL in ``tests/test_migrations.py`` checks it). Databases made by ``create_all`` have no ``alembic_version``
table; ``core.store.migrate`` stamps them at this revision instead of running it.

Revision ID: 0001_baseline
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("owner", sa.String, nullable=False),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("source", sa.String),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.UniqueConstraint("owner", "name"),
    )
    op.create_table(
        "blobs",
        sa.Column("hash", sa.String, primary_key=True),
        sa.Column("ext", sa.String, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("grayscale", sa.Boolean, nullable=False),
        sa.Column("nbytes", sa.Integer, nullable=False),
    )
    op.create_table(
        "epoch_metrics",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run", sa.String, nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.UniqueConstraint("run", "epoch"),
    )
    op.create_index("ix_epoch_metrics_run", "epoch_metrics", ["run"])
    op.create_table(
        "items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("blob", sa.String, sa.ForeignKey("blobs.hash"), nullable=False),
        sa.Column("source_path", sa.String),
        sa.Column("split", sa.String, nullable=False),
        sa.Column("video", sa.String),
        sa.Column("video_time", sa.Float),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_items_blob", "items", ["blob"])
    op.create_index("ix_items_dataset_id", "items", ["dataset_id"])
    op.create_index("ix_items_dataset_split", "items", ["dataset_id", "split"])
    op.create_table(
        "concepts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String, nullable=False),
        sa.UniqueConstraint("dataset_id", "name"),
    )
    op.create_index("ix_concepts_dataset_id", "concepts", ["dataset_id"])
    op.create_table(
        "import_reports",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("report", sa.JSON, nullable=False),
    )
    op.create_index("ix_import_reports_dataset_id", "import_reports", ["dataset_id"])
    op.create_table(
        "models",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("owner", sa.String, nullable=False),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("template", sa.String, nullable=False),
        sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id", ondelete="SET NULL")),
        sa.Column("dataset_version", sa.Integer),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("concepts", sa.JSON, nullable=False),
        sa.Column("preprocess", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON),
        sa.Column("path", sa.String, nullable=False),
        sa.Column("train_seconds", sa.Float),
        sa.Column("run", sa.String),
        sa.Column("base_model_id", sa.Integer),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("owner", "name"),
    )
    op.create_table(
        "indexes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("owner", sa.String, nullable=False),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("dataset_version", sa.Integer),
        sa.Column("model", sa.String, nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("index_type", sa.String, nullable=False),
        sa.Column("params", sa.JSON),
        sa.Column("path", sa.String, nullable=False),
        sa.Column("build_seconds", sa.Float),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("owner", "name"),
    )
    op.create_table(
        "labels",
        sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("concept_id", sa.Integer, sa.ForeignKey("concepts.id", ondelete="CASCADE"), primary_key=True),
    )
    op.create_index("ix_labels_concept", "labels", ["concept_id", "item_id"])
    op.create_table(
        "boxes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id", ondelete="CASCADE"), nullable=False),
        sa.Column("concept_id", sa.Integer, sa.ForeignKey("concepts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("x", sa.Float, nullable=False),
        sa.Column("y", sa.Float, nullable=False),
        sa.Column("w", sa.Float, nullable=False),
        sa.Column("h", sa.Float, nullable=False),
    )
    op.create_index("ix_boxes_item_id", "boxes", ["item_id"])
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("owner", sa.String, nullable=False),
        sa.Column("type", sa.String, nullable=False),
        sa.Column("state", sa.String, nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id", ondelete="SET NULL")),
        sa.Column("index_id", sa.Integer),
        sa.Column("pid", sa.Integer),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("progress", sa.JSON),
        sa.Column("error", sa.String),
        sa.Column("traceback", sa.Text),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("finished_at", sa.Float),
        sa.Column("heartbeat_at", sa.Float),
        sa.Column("parent_id", sa.Integer),
        sa.Column("resume", sa.Boolean, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("claim", sa.String),
        sa.Column("host", sa.String),
        sa.Column("slot", sa.Integer),
        sa.Column("result", sa.JSON),
        sa.Column("history", sa.JSON),
        sa.Column("series", sa.JSON),
    )
    op.create_index("ix_jobs_state", "jobs", ["state"])


def downgrade() -> None:
    """Drop every table, children before parents so foreign keys never point at a missing table."""
    for table in ("jobs", "boxes", "labels", "indexes", "models", "import_reports", "concepts", "items",
                  "epoch_metrics", "blobs", "datasets"):
        op.drop_table(table)

"""Every table of the studio, in one place. Times are UNIX seconds (float); JSON columns hold dicts or lists."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# --- datasets (owned by core.store.datasets) ---
datasets = sa.Table(
    "datasets", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("owner", sa.String, nullable=False),
    sa.Column("visibility", sa.String, nullable=False, server_default="private"),  # private | team (core.users)
    sa.Column("name", sa.String, nullable=False),
    sa.Column("version", sa.Integer, nullable=False, default=1),  # bumped whenever content changes
    sa.Column("source", sa.String),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.UniqueConstraint("owner", "name"),
)

# One row per stored file: content-addressed by sha256 of the decoded, oriented, RGB image as stored.
blobs = sa.Table(
    "blobs", metadata,
    sa.Column("hash", sa.String, primary_key=True),
    sa.Column("ext", sa.String, nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("grayscale", sa.Boolean, nullable=False, default=False),
    sa.Column("nbytes", sa.Integer, nullable=False),
)

items = sa.Table(
    "items", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("blob", sa.String, sa.ForeignKey("blobs.hash"), nullable=False),
    sa.Column("source_path", sa.String),  # path inside the source (archive member, folder-relative path)
    sa.Column("split", sa.String, nullable=False, default="train"),  # train | val | test
    sa.Column("video", sa.String),  # source video for frames
    sa.Column("video_time", sa.Float),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index("ix_items_dataset_split", "dataset_id", "split"),
    sa.Index("ix_items_blob", "blob"),  # is a blob still used (deletes)
)

concepts = sa.Table(
    "concepts", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("name", sa.String, nullable=False),
    sa.UniqueConstraint("dataset_id", "name"),
)

labels = sa.Table(
    "labels", metadata,
    sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("concept_id", sa.Integer, sa.ForeignKey("concepts.id", ondelete="CASCADE"), primary_key=True),
    sa.Index("ix_labels_concept", "concept_id", "item_id"),  # images per concept, filter by concept
)

boxes = sa.Table(
    "boxes", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("concept_id", sa.Integer, sa.ForeignKey("concepts.id", ondelete="CASCADE"), nullable=False),
    sa.Column("x", sa.Float, nullable=False),  # left, pixels of the stored image
    sa.Column("y", sa.Float, nullable=False),  # top
    sa.Column("w", sa.Float, nullable=False),
    sa.Column("h", sa.Float, nullable=False),
)

import_reports = sa.Table(
    "import_reports", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("report", sa.JSON, nullable=False),
)

# --- models (owned by core.store.models) ---
models = sa.Table(
    "models", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("owner", sa.String, nullable=False),
    sa.Column("visibility", sa.String, nullable=False, server_default="private"),  # private | team (core.users)
    sa.Column("name", sa.String, nullable=False),
    sa.Column("kind", sa.String, nullable=False),  # classifier | embedder | detector
    sa.Column("template", sa.String, nullable=False),
    sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id", ondelete="SET NULL")),
    sa.Column("dataset_version", sa.Integer),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("concepts", sa.JSON, nullable=False),  # ordered list of concept names = output order
    sa.Column("preprocess", sa.JSON, nullable=False),
    sa.Column("metrics", sa.JSON),  # final metrics
    sa.Column("path", sa.String, nullable=False),  # folder with weights and checkpoints
    sa.Column("train_seconds", sa.Float),
    sa.Column("run", sa.String),  # the training run whose per-epoch metrics are in epoch_metrics
    sa.Column("base_model_id", sa.Integer),  # the frozen base (a trained embedder) of a transfer classifier, if any
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("owner", "name"),
)

epoch_metrics = sa.Table(
    "epoch_metrics", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("run", sa.String, nullable=False, index=True),  # the training run id (job id as text, or a model folder)
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.UniqueConstraint("run", "epoch"),
)

# --- jobs (owned by core.store.jobs) ---
jobs = sa.Table(
    "jobs", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("owner", sa.String, nullable=False),
    sa.Column("visibility", sa.String, nullable=False, server_default="private"),  # private | team (core.users)
    sa.Column("type", sa.String, nullable=False, default="train"),  # train | index
    sa.Column("state", sa.String, nullable=False, index=True),
    # queued | starting | running | succeeded | failed | cancelled | interrupted
    sa.Column("config", sa.JSON, nullable=False),
    sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id", ondelete="SET NULL")),
    sa.Column("index_id", sa.Integer),
    sa.Column("pid", sa.Integer),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("progress", sa.JSON),
    sa.Column("error", sa.String),
    sa.Column("traceback", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("heartbeat_at", sa.Float),
    sa.Column("parent_id", sa.Integer),  # the job an "Extend" started from
    sa.Column("resume", sa.Boolean, nullable=False, default=False),  # next run continues from the checkpoint
    sa.Column("attempts", sa.Integer, nullable=False, default=0),  # worker starts so far
    sa.Column("claim", sa.String),  # token of the pump that moved it from queued to starting
    sa.Column("host", sa.String),  # machine the worker runs on (pid checks are only valid there)
    sa.Column("slot", sa.Integer),  # GPU slot given to the worker (CUDA_VISIBLE_DEVICES), 0 on CPU
    sa.Column("result", sa.JSON),  # the runner's result (model_id or index_id, final metrics)
    sa.Column("history", sa.JSON),  # per-epoch metrics seen by the worker, one entry per epoch
    sa.Column("series", sa.JSON),  # downsampled per-step points (epoch as float, loss, lr) for live curves
)

# --- visual search indexes (owned by core.store.indexes) ---
indexes = sa.Table(
    "indexes", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("owner", sa.String, nullable=False),
    sa.Column("visibility", sa.String, nullable=False, server_default="private"),  # private | team (core.users)
    sa.Column("name", sa.String, nullable=False),
    sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False),
    sa.Column("dataset_version", sa.Integer),
    sa.Column("model", sa.String, nullable=False),  # "general" or "model:<id>"
    sa.Column("dim", sa.Integer, nullable=False),
    sa.Column("count", sa.Integer, nullable=False, default=0),
    sa.Column("index_type", sa.String, nullable=False),
    sa.Column("params", sa.JSON),
    sa.Column("path", sa.String, nullable=False),
    sa.Column("build_seconds", sa.Float),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("owner", "name"),
)

# --- users (owned by core.store.users) ---
users = sa.Table(
    "users", metadata,
    sa.Column("name", sa.String, primary_key=True),  # an email or login, as the sign-in gave it
    sa.Column("role", sa.String),  # admin | member | viewer set by an admin; NULL: from the settings
    sa.Column("first_seen", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
    sa.Column("seen_via", sa.String, nullable=False),  # oidc | proxy | single | cli
)

# --- API keys (owned by core.store.keys)
api_keys = sa.Table(
    "api_keys", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("owner", sa.String, nullable=False),
    sa.Column("name", sa.String, nullable=False),
    sa.Column("key_hash", sa.String, nullable=False, unique=True),  # sha256 hex of the key; the key is never stored
    sa.Column("prefix", sa.String, nullable=False),  # the key's first characters, to recognise it in a list
    sa.Column("scopes", sa.JSON, nullable=False),  # [] : everything the owner may do; else of predict, search, read
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("last_used_at", sa.Float),
    sa.Column("revoked_at", sa.Float),  # revoked keys stay listed (who had one, until when); never accepted again
    sa.Index("ix_api_keys_owner", "owner"),
)

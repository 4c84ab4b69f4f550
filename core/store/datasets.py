"""Every dataset query: datasets, blobs, items, concepts, labels, boxes, splits and import reports.

Images are content-addressed files under ``paths.subdir("blobs")`` (sha256 of the stored bytes), thumbnails under
``paths.subdir("thumbs")``; a blob is stored once however many items and datasets use it. When the last item using it
goes its row goes in the same transaction, and its files after the commit, by the collector
(``core.store.integrity.collect``), which checks again under the write lock that no row refers to them: an import
that committed a use of the same image meanwhile keeps it. A dataset's ``version`` is bumped whenever its content
changes (items, labels, boxes, splits).
Written in SQLAlchemy Core only, so a PostgreSQL backend needs no change here.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from core import paths
from core.errors import UserError
from core.fsutil import fsync_dir
from core.records import DatasetRow, DatasetSummary
from core.store import access
from core.store.engine import inserted_id, now, read, transaction
from core.store.schema import blobs, boxes, concepts, datasets, import_reports, indexes, items, labels
from core.users import NotFound, User, as_user

SPLITS = ("train", "val", "test")
_BATCH = 500  # rows per executemany and per IN (...) list: well under SQLite's 32,766 bound parameters
log = logging.getLogger(__name__)


def blob_file(digest: str, ext: str) -> Path:
    """The stored image file of a blob (absolute)."""
    return paths.subdir("blobs") / digest[:2] / f"{digest}.{ext}"


def thumb_file(digest: str) -> Path:
    """The thumbnail of a blob (absolute): JPEG, longer side 128 px."""
    return paths.subdir("thumbs") / digest[:2] / f"{digest}.jpg"


def clean_label(name: str, where: str) -> str:
    """A concept name with surrounding whitespace removed; empty or whitespace-only names are refused."""
    if not isinstance(name, str):
        raise UserError(f"{where}: a label is not text; labels must be text")
    cleaned = name.strip()
    if not cleaned:
        raise UserError(f"{where}: a label name is empty or only whitespace; every label needs a name")
    return cleaned


def _chunks(seq: Sequence[Any], size: int = _BATCH) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


# ------------------------------------------------------------------------------------------------ datasets

def _dataset_row(row: Any) -> DatasetRow:
    return cast(DatasetRow, dict(row._mapping))


def _summaries(conn: Connection, rows: Sequence[Any]) -> list[DatasetSummary]:
    """Dataset rows with their item count, split counts and images per concept: three grouped queries for any number
    of datasets (four queries a dataset before: 21 round trips for the Datasets page of five, which a database server
    makes visible; ``bench/bench_store.py``)."""
    out = [_dataset_row(r) for r in rows]
    splits: dict[int, dict[str, int]] = {d["id"]: {s: 0 for s in SPLITS} for d in out}
    names: dict[int, dict[int, str]] = {d["id"]: {} for d in out}
    labelled: dict[int, int] = {}
    for chunk in _chunks(list(splits)):
        for dataset_id, split, n in conn.execute(sa.select(items.c.dataset_id, items.c.split, sa.func.count())
                                                 .where(items.c.dataset_id.in_(chunk))
                                                 .group_by(items.c.dataset_id, items.c.split)):
            splits[dataset_id][split] = n
        in_chunk = concepts.c.dataset_id.in_(chunk)
        for dataset_id, concept_id, name in conn.execute(sa.select(concepts.c.dataset_id, concepts.c.id,
                                                                   concepts.c.name).where(in_chunk)):
            names[dataset_id][concept_id] = name
        labelled.update(conn.execute(sa.select(labels.c.concept_id, sa.func.count())
                                     .join(items, items.c.id == labels.c.item_id)
                                     .where(items.c.dataset_id.in_(chunk)).group_by(labels.c.concept_id)).all())
    return [{**d, "items": sum(splits[d["id"]].values()), "splits": splits[d["id"]],
             "concepts": {name: labelled.get(cid, 0)
                          for cid, name in sorted(names[d["id"]].items(), key=lambda kv: kv[1])}}
            for d in out]


def _summary(conn: Connection, row: Any) -> DatasetSummary:
    return _summaries(conn, [row])[0]


def find_dataset(owner: str, name: str) -> DatasetRow | None:
    """``owner``'s own dataset row called ``name`` (id, owner, visibility, name, version, ...), or None."""
    with read() as conn:
        row = conn.execute(sa.select(datasets).where(datasets.c.owner == owner, datasets.c.name == name)).first()
        return _dataset_row(row) if row else None


def get_dataset(user: User | str, ref: str | int) -> DatasetSummary:
    """The dataset ``ref`` (a name, ``owner/name`` or an id) that ``user`` sees, with its item count, split counts
    and images per concept. One it may not see answers like a missing one: NotFound listing the visible names."""
    with read() as conn:
        row = access.lookup(conn, datasets, user, ref)
        if row is None:
            names = access.visible_names(conn, datasets, user)
            listed = ", ".join(names) if names else "none yet; import one first"
            raise NotFound(f"Unknown dataset {ref!r}; datasets: {listed}")
        return _summary(conn, row)


def get_dataset_by_id(dataset_id: int) -> DatasetSummary:
    """:func:`get_dataset` by id, whoever owns it (for the services and the training process, not for a user)."""
    with read() as conn:
        row = conn.execute(sa.select(datasets).where(datasets.c.id == dataset_id)).first()
        if row is None:
            raise NotFound(f"Unknown dataset id {dataset_id}")
        return _summary(conn, row)


def dataset_names(user: User | str) -> list[str]:
    """The dataset names ``user`` sees, sorted: own ones plain, others' team datasets as ``owner/name``."""
    with read() as conn:
        return access.visible_names(conn, datasets, user)


def list_datasets(user: User | str) -> list[DatasetSummary]:
    """The datasets ``user`` sees (own first, then the team's), each with id, owner, visibility, name, version,
    items, splits, concepts (counts)."""
    user = as_user(user)
    with read() as conn:
        rows = conn.execute(sa.select(datasets).where(access.visible(datasets, user))
                            .order_by(datasets.c.owner != user.name, datasets.c.owner, datasets.c.name)).all()
        return _summaries(conn, rows)


def set_visibility(dataset_id: int, visibility: str) -> None:
    with transaction() as conn:
        conn.execute(datasets.update().where(datasets.c.id == dataset_id).values(visibility=visibility))


def delete_dataset(dataset_id: int) -> None:
    """Delete a dataset, its items, labels, boxes, reports and search indexes; blobs no other dataset uses, the
    indexes' folders and the dataset's caches are removed too."""
    from core import disk
    from core.store import integrity

    with transaction() as conn:
        index_paths = list(conn.execute(sa.select(indexes.c.path).where(indexes.c.dataset_id == dataset_id)).scalars())
        conn.execute(indexes.delete().where(indexes.c.dataset_id == dataset_id))
        hashes = set(conn.execute(sa.select(items.c.blob).where(items.c.dataset_id == dataset_id)).scalars())
        ids = list(conn.execute(sa.select(items.c.id).where(items.c.dataset_id == dataset_id)).scalars())
        for chunk in _chunks(ids):
            conn.execute(labels.delete().where(labels.c.item_id.in_(chunk)))
            conn.execute(boxes.delete().where(boxes.c.item_id.in_(chunk)))
        conn.execute(items.delete().where(items.c.dataset_id == dataset_id))
        conn.execute(concepts.delete().where(concepts.c.dataset_id == dataset_id))
        conn.execute(import_reports.delete().where(import_reports.c.dataset_id == dataset_id))
        conn.execute(datasets.delete().where(datasets.c.id == dataset_id))
        gone = _drop_unused_blobs(conn, hashes)
    integrity.collect(gone)
    for path in index_paths:
        disk.remove_index_folder(path)
    disk.remove_dataset_caches(dataset_id)


def item_dataset(item_id: int) -> DatasetRow | None:
    """The row (id, owner, visibility, name, version, ...) of the dataset an item belongs to, without its counts (an
    access check per thumbnail needs no summary), or None when there is no such item."""
    with read() as conn:
        row = conn.execute(sa.select(datasets).join(items, items.c.dataset_id == datasets.c.id)
                           .where(items.c.id == int(item_id))).first()
    return _dataset_row(row) if row else None


def _bump(conn: Connection, dataset_id: int) -> int:
    conn.execute(datasets.update().where(datasets.c.id == dataset_id)
                 .values(version=datasets.c.version + 1, updated_at=now()))
    return conn.execute(sa.select(datasets.c.version).where(datasets.c.id == dataset_id)).scalar_one()


def _drop_unused_blobs(conn: Connection, hashes: set[str]) -> list[str]:
    """Delete blob rows no item uses any more; return their hashes (their files go after the commit: collect)."""
    if not hashes:
        return []
    used: set[str] = set()
    for chunk in _chunks(sorted(hashes)):
        used.update(conn.execute(sa.select(items.c.blob).where(items.c.blob.in_(chunk)).distinct()).scalars())
    unused = sorted(hashes - used)
    for chunk in _chunks(unused):
        conn.execute(blobs.delete().where(blobs.c.hash.in_(chunk)))
    return unused


# ------------------------------------------------------------------------------------------------ records

def _rows_for_items(conn: Connection, query, item_col, order: tuple, item_ids: Sequence[int] | None) -> list:
    """Run ``query`` for every item of the dataset, or only for ``item_ids`` (in chunks under SQLite's variable cap)."""
    if item_ids is None:
        return list(conn.execute(query.order_by(*order)).all())
    rows: list = []
    for chunk in _chunks(list(item_ids)):
        rows += conn.execute(query.where(item_col.in_(chunk)).order_by(*order)).all()
    return rows


def _labels_by_item(conn: Connection, dataset_id: int, item_ids: Sequence[int] | None = None) -> dict[int, list[str]]:
    q = (sa.select(labels.c.item_id, concepts.c.name).join(concepts, concepts.c.id == labels.c.concept_id)
         .where(concepts.c.dataset_id == dataset_id))
    out: dict[int, list[str]] = defaultdict(list)
    for item_id, name in _rows_for_items(conn, q, labels.c.item_id, (labels.c.item_id, concepts.c.name), item_ids):
        out[item_id].append(name)
    return out


def _boxes_by_item(conn: Connection, dataset_id: int, item_ids: Sequence[int] | None = None) -> dict[int, list[dict]]:
    q = (sa.select(boxes.c.item_id, concepts.c.name, boxes.c.x, boxes.c.y, boxes.c.w, boxes.c.h)
         .join(concepts, concepts.c.id == boxes.c.concept_id).where(concepts.c.dataset_id == dataset_id))
    out: dict[int, list[dict]] = defaultdict(list)
    for item_id, name, x, y, w, h in _rows_for_items(conn, q, boxes.c.item_id, (boxes.c.item_id, boxes.c.id), item_ids):
        out[item_id].append({"concept": name, "x": x, "y": y, "w": w, "h": h})
    return out


def dataset_records(dataset_id: int, split: str | None = None) -> list[dict[str, Any]]:
    """Every item of a dataset (optionally one split), ordered by item_id.

    Each record: item_id, path (absolute stored image: RGB, EXIF-oriented), labels (sorted names), split,
    boxes ([{"concept", "x", "y", "w", "h"}] in stored-image pixels), width, height, source_path.
    """
    if split is not None and split not in SPLITS:
        raise UserError(f"Unknown split {split!r}; splits are {', '.join(SPLITS)}")
    with read() as conn:
        q = (sa.select(items.c.id, items.c.split, items.c.source_path, items.c.blob, blobs.c.ext, blobs.c.width,
                       blobs.c.height)
             .join(blobs, blobs.c.hash == items.c.blob).where(items.c.dataset_id == dataset_id).order_by(items.c.id))
        if split is not None:
            q = q.where(items.c.split == split)
        rows = conn.execute(q).all()
        labs = _labels_by_item(conn, dataset_id)
        bxs = _boxes_by_item(conn, dataset_id)
    root = paths.subdir("blobs")
    return [{"item_id": r.id, "path": str(root / r.blob[:2] / f"{r.blob}.{r.ext}"), "labels": labs.get(r.id, []),
             "split": r.split, "boxes": bxs.get(r.id, []), "width": r.width, "height": r.height,
             "source_path": r.source_path} for r in rows]


def dataset_concepts(dataset_id: int) -> list[str]:
    """The dataset's concept names, sorted (concepts with no labelled item left are dropped on every change)."""
    with read() as conn:
        return list(conn.execute(sa.select(concepts.c.name).where(concepts.c.dataset_id == dataset_id)
                                 .order_by(concepts.c.name)).scalars())


def eval_split(dataset_id: int) -> str:
    """The held-out split evaluation uses: "test" when the dataset has one, else "val"."""
    with read() as conn:
        n = conn.execute(sa.select(sa.func.count()).where(items.c.dataset_id == dataset_id,
                                                          items.c.split == "test")).scalar_one()
    return "test" if n else "val"


def _split_counts(conn: Connection, dataset_id: int) -> dict[str, int]:
    rows = conn.execute(sa.select(items.c.split, sa.func.count()).where(items.c.dataset_id == dataset_id)
                        .group_by(items.c.split)).all()
    counts = {s: 0 for s in SPLITS}
    counts.update({s: n for s, n in rows})
    return counts


def _concept_counts(conn: Connection, dataset_id: int, split: str | None = None) -> dict[str, int]:
    names = dict(conn.execute(sa.select(concepts.c.id, concepts.c.name).where(concepts.c.dataset_id == dataset_id))
                 .all())
    q = (sa.select(labels.c.concept_id, sa.func.count()).join(items, items.c.id == labels.c.item_id)
         .where(items.c.dataset_id == dataset_id).group_by(labels.c.concept_id))
    if split is not None:
        q = q.where(items.c.split == split)
    counts: dict[int, int] = dict(conn.execute(q).all())
    return {name: counts.get(cid, 0) for cid, name in sorted(names.items(), key=lambda kv: kv[1])}


def concept_counts(dataset_id: int, split: str | None = None) -> dict[str, int]:
    """Labelled images per concept (optionally in one split)."""
    with read() as conn:
        return _concept_counts(conn, dataset_id, split)


def split_counts(dataset_id: int) -> dict[str, int]:
    """Items per split: {"train": n, "val": n, "test": n}."""
    with read() as conn:
        return _split_counts(conn, dataset_id)


def owner_hashes(owner: str) -> set[str]:
    """The content hashes of every item in ``owner``'s datasets."""
    with read() as conn:
        return set(conn.execute(sa.select(items.c.blob).join(datasets, datasets.c.id == items.c.dataset_id)
                                .where(datasets.c.owner == owner)).scalars())


def dataset_hashes(dataset_id: int) -> set[str]:
    """The content hashes of a dataset's items (to find re-imported duplicates)."""
    with read() as conn:
        return set(conn.execute(sa.select(items.c.blob).where(items.c.dataset_id == dataset_id)).scalars())


# ------------------------------------------------------------------------------------------------ browsing

def _filtered(dataset_id: int, concept: str | None, split: str | None):
    cond = [items.c.dataset_id == dataset_id]
    if split:
        cond.append(items.c.split == split)
    if concept:
        sub = (sa.select(labels.c.item_id).join(concepts, concepts.c.id == labels.c.concept_id)
               .where(concepts.c.dataset_id == dataset_id, concepts.c.name == concept))
        cond.append(items.c.id.in_(sub))
    return cond


def count_items(dataset_id: int, concept: str | None = None, split: str | None = None) -> int:
    """How many items match the filter (for paging)."""
    with read() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(items)
                            .where(*_filtered(dataset_id, concept, split))).scalar_one()


def find_items(dataset_id: int, concept: str | None = None, split: str | None = None, offset: int = 0,
               limit: int = 100) -> list[dict[str, Any]]:
    """One page of items (id order) with labels, split, thumbnail and image paths: what a grid shows."""
    with read() as conn:
        rows = conn.execute(
            sa.select(items.c.id, items.c.split, items.c.source_path, items.c.blob, blobs.c.ext, blobs.c.width,
                      blobs.c.height).join(blobs, blobs.c.hash == items.c.blob)
            .where(*_filtered(dataset_id, concept, split)).order_by(items.c.id).offset(offset).limit(limit)).all()
        labs = _labels_by_item(conn, dataset_id, [r.id for r in rows])
    blobs_root, thumbs_root = str(paths.subdir("blobs")), str(paths.subdir("thumbs"))
    return [{"item_id": r.id, "split": r.split, "source_path": r.source_path, "labels": labs.get(r.id, []),
             "thumb": f"{thumbs_root}/{r.blob[:2]}/{r.blob}.jpg", "path": f"{blobs_root}/{r.blob[:2]}/{r.blob}.{r.ext}",
             "width": r.width, "height": r.height} for r in rows]


def get_item(item_id: int) -> dict[str, Any]:
    """One item: dataset_id, path, thumb, labels, boxes, split, size, source path, video and time."""
    with read() as conn:
        r = conn.execute(sa.select(items, blobs.c.ext, blobs.c.width, blobs.c.height, blobs.c.grayscale)
                         .join(blobs, blobs.c.hash == items.c.blob).where(items.c.id == item_id)).first()
        if r is None:
            raise NotFound(f"Unknown item id {item_id}")
        labs = _labels_by_item(conn, r.dataset_id, [item_id])
        bxs = _boxes_by_item(conn, r.dataset_id, [item_id])
    return {"item_id": r.id, "dataset_id": r.dataset_id, "split": r.split, "source_path": r.source_path,
            "path": str(blob_file(r.blob, r.ext)), "thumb": str(thumb_file(r.blob)), "hash": r.blob,
            "labels": labs.get(item_id, []), "boxes": bxs.get(item_id, []), "width": r.width, "height": r.height,
            "grayscale": bool(r.grayscale), "video": r.video, "video_time": r.video_time}


def thumbnail_path(item_id: int) -> str:
    """The thumbnail file of an item (absolute str; JPEG, longer side 128 px)."""
    with read() as conn:
        digest = conn.execute(sa.select(items.c.blob).where(items.c.id == item_id)).scalar_one_or_none()
    if digest is None:
        raise NotFound(f"Unknown item id {item_id}")
    return str(thumb_file(digest))


# ------------------------------------------------------------------------------------------------ editing

def _concept_ids(conn: Connection, dataset_id: int, names: Iterable[str]) -> dict[str, int]:
    """Ids of the named concepts, created where missing."""
    names = sorted(set(names))
    existing = {n: i for i, n in conn.execute(sa.select(concepts.c.id, concepts.c.name)
                                              .where(concepts.c.dataset_id == dataset_id)).all()}
    missing = [n for n in names if n not in existing]
    for chunk in _chunks(missing):
        conn.execute(concepts.insert(), [{"dataset_id": dataset_id, "name": n} for n in chunk])
    if missing:
        existing = {n: i for i, n in conn.execute(sa.select(concepts.c.id, concepts.c.name)
                                                  .where(concepts.c.dataset_id == dataset_id)).all()}
    return {n: existing[n] for n in names}


def _drop_empty_concepts(conn: Connection, dataset_id: int) -> None:
    used = sa.union(sa.select(labels.c.concept_id), sa.select(boxes.c.concept_id)).subquery()
    conn.execute(concepts.delete().where(concepts.c.dataset_id == dataset_id,
                                         concepts.c.id.not_in(sa.select(used.c.concept_id))))


def set_item_labels(item_id: int, new_labels: list[str]) -> int:
    """Replace an item's labels (boxes of removed concepts go too); bumps the dataset version, returns it."""
    cleaned = sorted({clean_label(n, f"item {item_id}") for n in new_labels})
    with transaction() as conn:
        dataset_id = conn.execute(sa.select(items.c.dataset_id).where(items.c.id == item_id)).scalar_one_or_none()
        if dataset_id is None:
            raise NotFound(f"Unknown item id {item_id}")
        ids = _concept_ids(conn, dataset_id, cleaned)
        conn.execute(labels.delete().where(labels.c.item_id == item_id))
        if ids:
            conn.execute(labels.insert(), [{"item_id": item_id, "concept_id": i} for i in ids.values()])
        conn.execute(boxes.delete().where(boxes.c.item_id == item_id, boxes.c.concept_id.not_in(list(ids.values()))))
        _drop_empty_concepts(conn, dataset_id)
        return _bump(conn, dataset_id)


def set_labels_of_items(dataset_id: int, assignment: dict[int, list[str]]) -> int:
    """Replace the labels of several items of one dataset ({item_id: [names]}) in one transaction (boxes of removed
    concepts go too); bumps the version once, returns it. UserError naming the items that are not in the dataset."""
    cleaned = {int(i): sorted({clean_label(n, f"item {i}") for n in names}) for i, names in assignment.items()}
    with transaction() as conn:
        for chunk in _chunks(sorted(cleaned)):
            found = set(conn.execute(sa.select(items.c.id).where(items.c.dataset_id == dataset_id,
                                                                  items.c.id.in_(chunk))).scalars())
            if len(found) != len(chunk):
                raise UserError(f"Items {sorted(set(chunk) - found)[:5]} are not in dataset {dataset_id}")
        ids = _concept_ids(conn, dataset_id, sorted({n for names in cleaned.values() for n in names}))
        for item_id, names in cleaned.items():
            keep = [ids[n] for n in names]
            conn.execute(labels.delete().where(labels.c.item_id == item_id))
            if keep:
                conn.execute(labels.insert(), [{"item_id": item_id, "concept_id": c} for c in keep])
            conn.execute(boxes.delete().where(boxes.c.item_id == item_id, boxes.c.concept_id.not_in(keep)))
        _drop_empty_concepts(conn, dataset_id)
        return _bump(conn, dataset_id)


def rename_concept(dataset_id: int, old: str, new: str) -> int:
    """Rename a concept; renaming onto an existing concept merges the two. Bumps the version, returns it."""
    new = clean_label(new, "new concept name")
    with transaction() as conn:
        ids = {n: i for i, n in conn.execute(sa.select(concepts.c.id, concepts.c.name)
                                             .where(concepts.c.dataset_id == dataset_id)).all()}
        if old not in ids:
            raise UserError(f"Unknown concept {old!r}; concepts: {', '.join(sorted(ids)) or 'none'}")
        if new == old:
            return conn.execute(sa.select(datasets.c.version).where(datasets.c.id == dataset_id)).scalar_one()
        if new not in ids:
            conn.execute(concepts.update().where(concepts.c.id == ids[old]).values(name=new))
        else:
            keep, gone = ids[new], ids[old]
            already = sa.select(labels.c.item_id).where(labels.c.concept_id == keep)
            conn.execute(labels.update().where(labels.c.concept_id == gone, labels.c.item_id.not_in(already))
                         .values(concept_id=keep))
            conn.execute(labels.delete().where(labels.c.concept_id == gone))
            conn.execute(boxes.update().where(boxes.c.concept_id == gone).values(concept_id=keep))
            conn.execute(concepts.delete().where(concepts.c.id == gone))
        return _bump(conn, dataset_id)


def delete_items(dataset_id: int, item_ids: Sequence[int]) -> int:
    """Delete items of a dataset (their blobs too when nothing else uses them); bumps the version, returns it."""
    from core.store import integrity

    item_ids = sorted(set(int(i) for i in item_ids))
    with transaction() as conn:
        hashes: set[str] = set()
        for chunk in _chunks(item_ids):
            found = conn.execute(sa.select(items.c.id, items.c.blob)
                                 .where(items.c.dataset_id == dataset_id, items.c.id.in_(chunk))).all()
            if len(found) != len(chunk):
                missing = sorted(set(chunk) - {r.id for r in found})
                raise UserError(f"Items {missing[:5]} are not in dataset {dataset_id}")
            hashes.update(r.blob for r in found)
            conn.execute(labels.delete().where(labels.c.item_id.in_(chunk)))
            conn.execute(boxes.delete().where(boxes.c.item_id.in_(chunk)))
            conn.execute(items.delete().where(items.c.id.in_(chunk)))
        _drop_empty_concepts(conn, dataset_id)
        gone = _drop_unused_blobs(conn, hashes)
        version = _bump(conn, dataset_id)
    integrity.collect(gone)
    return version


def set_splits(dataset_id: int, assignment: dict[int, str]) -> int:
    """Set the split of items ({item_id: "train"|"val"|"test"}); bumps the version when anything moved."""
    bad = {s for s in assignment.values() if s not in SPLITS}
    if bad:
        raise UserError(f"Unknown split {sorted(bad)[0]!r}; splits are {', '.join(SPLITS)}")
    by_split: dict[str, list[int]] = defaultdict(list)
    for item_id, split in assignment.items():
        by_split[split].append(int(item_id))
    with transaction() as conn:
        changed = 0
        for split, ids in by_split.items():
            for chunk in _chunks(ids):
                changed += conn.execute(items.update().where(items.c.dataset_id == dataset_id, items.c.id.in_(chunk),
                                                             items.c.split != split).values(split=split)).rowcount
        if changed:
            return _bump(conn, dataset_id)
        return conn.execute(sa.select(datasets.c.version).where(datasets.c.id == dataset_id)).scalar_one()


def latest_report(dataset_id: int) -> dict[str, Any] | None:
    """The last import report of a dataset, or None."""
    with read() as conn:
        return conn.execute(sa.select(import_reports.c.report).where(import_reports.c.dataset_id == dataset_id)
                            .order_by(import_reports.c.id.desc()).limit(1)).scalar_one_or_none()


def item_videos(dataset_id: int) -> dict[int, str]:
    """{item_id: source video} for the items that are video frames."""
    with read() as conn:
        return dict(conn.execute(sa.select(items.c.id, items.c.video)
                                 .where(items.c.dataset_id == dataset_id, items.c.video.is_not(None))).all())


def blob_stats(dataset_id: int) -> list[dict[str, Any]]:
    """Per item: hash, width, height, grayscale, nbytes (for the health report of a stored dataset)."""
    with read() as conn:
        rows = conn.execute(sa.select(items.c.id, blobs.c.hash, blobs.c.width, blobs.c.height, blobs.c.grayscale,
                                      blobs.c.nbytes).join(blobs, blobs.c.hash == items.c.blob)
                            .where(items.c.dataset_id == dataset_id).order_by(items.c.id)).all()
    return [dict(r._mapping) for r in rows]


# ------------------------------------------------------------------------------------------------ import commit

def _insert_ignore(conn: Connection, table: sa.Table, rows: list[dict]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING on SQLite and PostgreSQL."""
    if not rows:
        return
    name = conn.dialect.name
    stmt: sa.Executable
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(table).on_conflict_do_nothing()
    elif name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt = pg_insert(table).on_conflict_do_nothing()
    else:  # pragma: no cover - other backends: check first (racy, but correct alone)
        keys = set(conn.execute(sa.select(table.c.hash).where(table.c.hash.in_([r["hash"] for r in rows]))).scalars())
        rows = [r for r in rows if r["hash"] not in keys]
        if rows:
            conn.execute(table.insert(), rows)
        return
    for chunk in _chunks(rows):
        conn.execute(stmt, list(chunk))


def commit_import(owner: str, name: str, source: str, records: list[dict[str, Any]], staged_blobs: Path,
                  staged_thumbs: Path, report: dict[str, Any]) -> tuple[int, int]:
    """Store an import in one transaction: dataset (created, or a new version of an existing one), blobs, items,
    concepts, labels, boxes and the report; staged files move into the store inside it, and the folders that received
    them are fsynced before the commit (the files themselves were fsynced when staged).

    The staging area holds a copy (or a hard link) of every image the records use, also those the store had when they
    were decoded: one deleted meanwhile is put back here, under the write lock, so no item commits without its file.
    On any failure the transaction rolls back and the collector removes the files it moved in that no row uses.
    ``records``: dicts with hash, ext, width, height, grayscale, nbytes, source_path, split, labels, boxes, video,
    video_time. Returns (dataset_id, version).
    """
    moved: list[Path] = []
    try:
        with transaction() as conn:
            t = now()
            row = conn.execute(sa.select(datasets.c.id, datasets.c.version)
                               .where(datasets.c.owner == owner, datasets.c.name == name)).first()
            if row is None:
                dataset_id = inserted_id(conn.execute(datasets.insert().values(
                    owner=owner, name=name, version=1, source=source, created_at=t, updated_at=t)))
                version = 1
            else:
                dataset_id = row.id
                version = _bump(conn, dataset_id)
            seen: dict[str, dict] = {}
            for r in records:
                seen.setdefault(r["hash"], {k: r[k] for k in ("hash", "ext", "width", "height", "grayscale",
                                                               "nbytes")})
            _insert_ignore(conn, blobs, list(seen.values()))
            names = {n for r in records for n in r["labels"]} | {b["concept"] for r in records for b in r["boxes"]}
            cids = _concept_ids(conn, dataset_id, names)
            label_rows: list[dict] = []
            box_rows: list[dict] = []
            for chunk in _chunks(records):
                ids = conn.execute(items.insert().returning(items.c.id, sort_by_parameter_order=True),
                                   [{"dataset_id": dataset_id, "blob": r["hash"], "source_path": r["source_path"],
                                     "split": r["split"], "video": r.get("video"), "video_time": r.get("video_time"),
                                     "created_at": t} for r in chunk]).scalars().all()
                for item_id, r in zip(ids, chunk):
                    label_rows += [{"item_id": item_id, "concept_id": cids[n]} for n in sorted(set(r["labels"]))]
                    box_rows += [{"item_id": item_id, "concept_id": cids[b["concept"]], "x": b["x"], "y": b["y"],
                                  "w": b["w"], "h": b["h"]} for b in r["boxes"]]
            for chunk in _chunks(label_rows):
                conn.execute(labels.insert(), list(chunk))
            for chunk in _chunks(box_rows):
                conn.execute(boxes.insert(), list(chunk))
            report = dict(report, dataset=name, version=version)
            conn.execute(import_reports.insert().values(dataset_id=dataset_id, version=version, created_at=t,
                                                        report=report))
            _move_tree(staged_blobs, paths.subdir("blobs"), moved)
            _move_tree(staged_thumbs, paths.subdir("thumbs"), moved)
            for folder in sorted({str(p.parent) for p in moved} | {str(paths.subdir("blobs")),
                                                                   str(paths.subdir("thumbs"))}):
                fsync_dir(folder)  # the renames are durable before the commit that publishes them
    except sa.exc.IntegrityError as exc:
        _take_back(moved)
        if "datasets" in str(exc.orig) or "owner" in str(exc.orig):
            raise UserError(f"A dataset named {name!r} was created by another import meanwhile; import again to "
                            "add these images to it") from None
        raise
    except BaseException:
        _take_back(moved)
        raise
    return dataset_id, version


def _take_back(moved: list[Path]) -> None:
    """After a failed commit: remove the files it moved in, those no row refers to (another import may have committed a
    use of one since the rollback). Left to the next collection when even that fails (the store unreachable)."""
    from core.store import integrity

    try:
        integrity.collect({p.name.split(".", 1)[0] for p in moved})
    except Exception as exc:  # noqa: BLE001 - the import's own error is what the user must see
        log.warning("could not remove the files of a failed import (%s); the collector will: %s", exc, len(moved))


def _move_tree(src: Path, dest: Path, moved: list[Path]) -> None:
    """Move the staged fan-out folders of ``src`` into ``dest``; append every file moved to ``moved`` as it goes, so
    a failure half-way still knows what to take back. Runs inside the commit's write transaction.

    A fan-out folder missing from the store moves in one rename (the common case for a new store); otherwise its
    files move one by one, skipping those the store has already. Plain ``os`` calls: this runs for every image.
    """
    if not src.is_dir():
        return
    for sub in os.scandir(src):
        target_dir = os.path.join(dest, sub.name)
        if not os.path.exists(target_dir):
            names = os.listdir(sub.path)
            try:
                os.rename(sub.path, target_dir)
            except OSError:  # created meanwhile by another import: move file by file below
                pass
            else:
                moved.extend(Path(target_dir, n) for n in names)
                continue
        os.makedirs(target_dir, exist_ok=True)
        for f in os.scandir(sub.path):
            target = os.path.join(target_dir, f.name)
            if os.path.exists(target):
                continue
            os.replace(f.path, target)
            moved.append(Path(target))

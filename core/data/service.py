"""The datasets service: what pages, the command line and the API may read and change of stored datasets.

Every function takes the acting user first. A dataset is named by ``dataset``: a name, ``owner/name`` or an id. A
dataset (or item) the user may not see answers exactly like a missing one (:class:`~core.users.NotFound`, same
message); one the user sees but does not own (a team dataset of someone else) may be read and used, and any change
is refused (:class:`~core.users.NotAllowed`). Importing lives in ``core.data.importer``, exporting in
``core.data.export``; both follow the same rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from core.errors import UserError
from core.records import DatasetRow, DatasetSummary
from core.store import datasets as store
from core.users import NotFound, User, as_user, can_see, check_visibility, require_owner

SPLITS = store.SPLITS


def _label(ds: DatasetRow) -> str:
    return f"Dataset {ds['name']!r}"


def get_dataset(user: User | str, dataset: str | int) -> DatasetSummary:
    """The dataset with owner, visibility, version, item, split and per-concept counts."""
    return store.get_dataset(user, dataset)


def _owned(user: User | str, dataset: str | int) -> DatasetSummary:
    ds = store.get_dataset(user, dataset)
    require_owner(user, ds, _label(ds))
    return ds


def list_datasets(user: User | str) -> list[DatasetSummary]:
    """The datasets the user sees: own ones, then the team's, with their counts."""
    return store.list_datasets(user)


def dataset_names(user: User | str) -> list[str]:
    """The names to offer in a picker: own datasets plain, the team's as ``owner/name``."""
    return store.dataset_names(user)


def dataset_concepts(user: User | str, dataset: str | int) -> list[str]:
    return store.dataset_concepts(get_dataset(user, dataset)["id"])


def concept_counts(user: User | str, dataset: str | int, split: str | None = None) -> dict[str, int]:
    return store.concept_counts(get_dataset(user, dataset)["id"], split)


def dataset_records(user: User | str, dataset: str | int, split: str | None = None) -> list[dict[str, Any]]:
    """Every item (path, labels, boxes, split, size) of a dataset the user sees, optionally of one split."""
    return store.dataset_records(get_dataset(user, dataset)["id"], split)


def count_items(user: User | str, dataset: str | int, concept: str | None = None, split: str | None = None) -> int:
    return store.count_items(get_dataset(user, dataset)["id"], concept, split)


def find_items(user: User | str, dataset: str | int, concept: str | None = None, split: str | None = None,
               offset: int = 0, limit: int = 100) -> list[dict[str, Any]]:
    """One page of a dataset's items for a grid (labels, split, thumbnail and image paths)."""
    return store.find_items(get_dataset(user, dataset)["id"], concept, split, offset=offset, limit=limit)


def latest_report(user: User | str, dataset: str | int) -> dict[str, Any] | None:
    """The dataset's last import (health) report."""
    return store.latest_report(get_dataset(user, dataset)["id"])


def _item_dataset(user: User | str, item_id: int) -> DatasetRow:
    """The dataset row of an item the user sees; NotFound (as for a missing item) otherwise."""
    try:
        item_id = int(item_id)
    except (TypeError, ValueError):
        raise NotFound(f"Unknown item id {item_id}") from None
    ds = store.item_dataset(item_id)
    if ds is None or not can_see(user, ds):
        raise NotFound(f"Unknown item id {item_id}")
    return ds


def item_visible(user: User | str, item_id: int) -> bool:
    """Whether the user may see this item (its dataset is theirs, the team's, or they are an admin)."""
    try:
        _item_dataset(user, item_id)
    except NotFound:
        return False
    return True


def get_item(user: User | str, item_id: int) -> dict[str, Any]:
    """One item: dataset_id, path, thumb, labels, boxes, split, size, source path, video and time."""
    _item_dataset(user, item_id)
    return store.get_item(int(item_id))


def thumbnail_path(user: User | str, item_id: int) -> str:
    """The item's thumbnail file (JPEG, longer side 128 px)."""
    _item_dataset(user, item_id)
    return store.thumbnail_path(int(item_id))


def set_item_labels(user: User | str, item_id: int, labels: list[str]) -> int:
    """Replace an item's labels (owner only); returns the dataset's new version."""
    ds = _item_dataset(user, item_id)
    require_owner(user, ds, _label(ds))
    return store.set_item_labels(int(item_id), labels)


def relabel_items(user: User | str, dataset: str | int, assignment: Mapping[int, Sequence[str]]) -> int:
    """Replace the labels of several items of the user's dataset at once ({item_id: [concept names]}): one new
    version, returned. Items of another dataset are refused (UserError naming them); nothing changes then."""
    ds = _owned(user, dataset)
    try:
        cleaned = {int(i): [str(n) for n in names] for i, names in assignment.items()
                   if not isinstance(names, (str, bytes))}
    except (TypeError, ValueError):
        cleaned = {}
    if len(cleaned) != len(assignment):
        raise UserError("relabel: give item ids (whole numbers), each with a list of concept names")
    if not cleaned:
        return ds["version"]
    return store.set_labels_of_items(ds["id"], cleaned)


def rename_concept(user: User | str, dataset: str | int, old: str, new: str) -> int:
    """Rename (or merge, onto an existing name) a concept of the user's dataset; returns the new version."""
    return store.rename_concept(_owned(user, dataset)["id"], old, new)


def delete_items(user: User | str, dataset: str | int, item_ids: Sequence[int]) -> int:
    """Delete items of the user's dataset; returns the new version."""
    return store.delete_items(_owned(user, dataset)["id"], item_ids)


def delete_dataset(user: User | str, dataset: str | int) -> None:
    """Delete the user's dataset with its items (images no other dataset uses go too)."""
    store.delete_dataset(_owned(user, dataset)["id"])


def share_dataset(user: User | str, dataset: str | int, visibility: str) -> DatasetSummary:
    """Make the user's dataset ``team`` (everyone sees and uses it, read-only) or ``private`` again."""
    ds = _owned(user, dataset)
    store.set_visibility(ds["id"], check_visibility(visibility))
    return store.get_dataset_by_id(ds["id"])


def display_name(user: User | str, ds: Mapping[str, Any]) -> str:
    """How a picker names a dataset for this user: plain when theirs, ``owner/name`` otherwise."""
    return ds["name"] if ds["owner"] == as_user(user).name else f"{ds['owner']}/{ds['name']}"

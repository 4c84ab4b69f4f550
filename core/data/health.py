"""The health report of an import: what came in, what was skipped and why, and what needs attention."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

MIN_TRAINING_INPUTS = 1000  # the spec: "for most applications you'll need at least 1000 training inputs"
NEAR_EMPTY = 5  # a concept with fewer labelled images than this cannot be learnt or evaluated well
TRANSFER_TEMPLATE = "Studio_EfficientNetLite0_Transfer"
SIZE_BINS = ((0, 64), (64, 128), (128, 224), (224, 512), (512, 1024), (1024, None))


def _bin_name(lo: int, hi: int | None) -> str:
    return f"{lo}+ px" if hi is None else f"{lo}-{hi - 1} px"


def health_report(records: Sequence[dict[str, Any]], skipped: Sequence[dict[str, str]],
                  duplicates: Sequence[dict[str, Any]], source: str, fmt: str, seconds: float,
                  new_bytes: int) -> dict[str, Any]:
    """Summarise an import. ``records`` are the stored items (labels, split, width, height, grayscale, nbytes)."""
    concepts = Counter(label for r in records for label in r["labels"])
    splits = Counter(r["split"] for r in records)
    per_split = {s: dict(sorted(Counter(label for r in records if r["split"] == s for label in r["labels"]).items()))
                 for s in ("train", "val", "test")}
    widths = [r["width"] for r in records]
    heights = [r["height"] for r in records]
    short: Counter[str] = Counter()
    for w, h in zip(widths, heights):
        for lo, hi in SIZE_BINS:
            if min(w, h) >= lo and (hi is None or min(w, h) < hi):
                short[_bin_name(lo, hi)] += 1
    gray = sum(1 for r in records if r["grayscale"])
    unlabeled = sum(1 for r in records if not r["labels"])
    n_train = splits.get("train", 0)
    near_empty = sorted(c for c, n in concepts.items() if n < NEAR_EMPTY)
    warnings: list[str] = []
    if n_train < MIN_TRAINING_INPUTS:
        warnings.append(f"Only {n_train:,} training images: deep templates trained from scratch need at least "
                        f"{MIN_TRAINING_INPUTS:,} (the specification's guidance). Start with the transfer template "
                        f"{TRANSFER_TEMPLATE}, which learns well from a few images per concept.")
    if near_empty:
        warnings.append(f"{len(near_empty)} concept(s) have fewer than {NEAR_EMPTY} images: "
                        f"{', '.join(near_empty[:10])}{' ...' if len(near_empty) > 10 else ''}")
    if len(concepts) == 1:
        warnings.append("Only one concept: a classifier needs at least two.")
    no_val = sorted(c for c in concepts if not per_split["val"].get(c) and not per_split["test"].get(c))
    if no_val and (splits.get("val") or splits.get("test")):
        warnings.append(f"{len(no_val)} concept(s) have no held-out image to evaluate on: {', '.join(no_val[:10])}")
    if unlabeled:
        warnings.append(f"{unlabeled:,} image(s) have no label.")
    if duplicates:
        warnings.append(f"{sum(d['extra'] for d in duplicates):,} duplicate file(s) were stored once.")
    if skipped:
        warnings.append(f"{len(skipped):,} file(s) skipped; see the list for why.")

    def stats(values: list[int]) -> dict[str, float | int | None]:
        if not values:
            return {"min": None, "median": None, "max": None}
        return {"min": min(values), "median": statistics.median(values), "max": max(values)}

    return {
        "source": source,
        "format": fmt,
        "items": len(records),
        "concepts": dict(sorted(concepts.items())),
        "splits": {s: splits.get(s, 0) for s in ("train", "val", "test")},
        "concepts_per_split": per_split,
        "sizes": {"width": stats(widths), "height": stats(heights),
                  "short_side": {_bin_name(lo, hi): short.get(_bin_name(lo, hi), 0) for lo, hi in SIZE_BINS}},
        "color": {"grayscale": gray, "colour": len(records) - gray},
        "duplicates": sum(d["extra"] for d in duplicates),
        "duplicate_groups": list(duplicates[:200]),
        "near_empty": near_empty,
        "unlabeled": unlabeled,
        "skipped": list(skipped),
        "warnings": warnings,
        "seconds": round(seconds, 3),
        "stored_bytes": sum(r["nbytes"] for r in records),
        "new_bytes": new_bytes,
    }

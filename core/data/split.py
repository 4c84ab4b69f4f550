"""Stratified, reproducible train/validation splits."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence


def stratified_split(keys: Sequence[str], labels: Sequence[Sequence[str]], val_fraction: float, seed: int = 0,
                     groups: Sequence[str | None] | None = None) -> list[str]:
    """Assign "train" or "val" to each item, per concept, so every concept keeps about ``val_fraction`` in val.

    Items are stratified by their rarest label (multi-label items count where they are scarcest); items of one
    group (frames of one video) stay together, so near-identical frames never straddle the split. The result
    depends only on the keys, labels, fraction and seed, not on the order items arrive in. A concept with at least
    two units keeps at least one in train (a concept that is one video is split by
    frame) and, when the fraction is above 0, at least one in val.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(keys)
    freq = Counter(label for labs in labels for label in set(labs))
    groups = groups or [None] * n
    units: dict[str, list[int]] = defaultdict(list)
    for i in range(n):
        group = groups[i]
        units[group if group is not None else f"item:{keys[i]}"].append(i)
    strata: dict[str, list[str]] = defaultdict(list)
    for unit, indices in units.items():
        labs = {label for j in indices for label in labels[j]}
        stratum = min(labs, key=lambda c: (freq[c], c)) if labs else ""
        strata[stratum].append(unit)
    out = ["train"] * n
    rng = random.Random(seed)
    for stratum in sorted(strata):
        members = sorted(strata[stratum])
        if len(members) == 1 and len(units[members[0]]) > 1:  # one video alone: split its frames instead
            whole = members[0]
            members = [f"{whole}#{j}" for j in units[whole]]
            for frame, j in zip(members, units[whole]):
                units[frame] = [j]
        rng.shuffle(members)
        if val_fraction <= 0 or len(members) < 2:
            continue
        n_val = min(len(members) - 1, max(1, round(len(members) * val_fraction)))
        for chosen in members[:n_val]:
            for j in units[chosen]:
                out[j] = "val"
    return out

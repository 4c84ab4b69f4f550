"""Networks and indexes loaded in memory: the one cache of every process (the API, the Streamlit app, a job worker).

Loading a network (safetensors, then building it) takes a second or more and an index holds its vectors in memory,
so each is loaded once per process and shared by every request, session and thread. Entries are keyed by a *slot*
(which model or index: its folder) and a *stamp* (its files' modification times and sizes): a retrained, re-imported,
synced or rebuilt model or index has a new stamp, so the next call loads it again and the old copy is dropped.
Together they stay under the setting ``loaded_max_bytes``: the least recently used are dropped first, and the entry
just asked for always stays (a single network larger than the budget still serves).

What this hands out is shared: callers never mutate it. Concurrent first calls for one slot load it once (a lock per
slot); loads of different slots run side by side. Networks are placed on the inference device
(``core.device.inference_device``: the GPU when there is one).

Access checks are not made here: the services (``core.evaluation.service.load_model``,
``core.search.embed.load_embedder``, ``core.search.service.open_index``) resolve a row the acting user may see, then
ask for it here.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import settings
from core.errors import NotQuick


@dataclass
class _Entry:
    stamp: Hashable
    value: Any
    nbytes: int


_entries: OrderedDict[Hashable, _Entry] = OrderedDict()  # slot -> entry, least recently used first
_lock = threading.Lock()
_slot_locks: dict[Hashable, threading.Lock] = {}
_stats = {"hits": 0, "loads": 0, "evictions": 0}


def get(slot: Hashable, stamp: Hashable, load: Callable[[], Any], size: Callable[[Any], int],
        quick: bool = False) -> Any:
    """The value loaded for ``slot`` at ``stamp``: cached, or ``load()``-ed (once, however many threads ask) and kept
    while the total of ``size(value)`` over every entry stays within ``loaded_max_bytes``. ``quick``: the cached value
    or ``NotQuick``, never a load."""
    with _lock:
        entry = _entries.get(slot)
        if entry is not None and entry.stamp == stamp:
            _entries.move_to_end(slot)
            _stats["hits"] += 1
            return entry.value
        if quick:
            raise NotQuick(f"{slot!r} is not loaded")
        slot_lock = _slot_locks.setdefault(slot, threading.Lock())
    with slot_lock:
        with _lock:  # another thread may have loaded it while this one waited
            entry = _entries.get(slot)
            if entry is not None and entry.stamp == stamp:
                _entries.move_to_end(slot)
                _stats["hits"] += 1
                return entry.value
            if entry is not None:  # changed on disk: drop the old copy before loading the new one
                del _entries[slot]
        value = load()
        nbytes = int(size(value))
        with _lock:
            _entries[slot] = _Entry(stamp, value, nbytes)
            _entries.move_to_end(slot)
            _stats["loads"] += 1
            _evict(keep=slot)
        return value


def _evict(keep: Hashable) -> None:
    budget = int(settings.get("loaded_max_bytes"))
    total = sum(e.nbytes for e in _entries.values())
    for slot in list(_entries):
        if total <= budget:
            break
        if slot == keep:
            continue
        total -= _entries.pop(slot).nbytes
        _stats["evictions"] += 1


def drop(slot: Hashable) -> None:
    """Forget ``slot`` (a deleted model or index)."""
    with _lock:
        _entries.pop(slot, None)


def clear() -> None:
    """Forget everything (tests; a process that changes data directory)."""
    with _lock:
        _entries.clear()


def stats() -> dict[str, Any]:
    """What is loaded: entries (slot, bytes) least recently used first, their total, the budget, hits, loads and
    evictions so far."""
    with _lock:
        entries = [{"slot": repr(s), "bytes": e.nbytes} for s, e in _entries.items()]
        counts = dict(_stats)
    return {"entries": entries, "bytes": sum(e["bytes"] for e in entries),
            "budget_bytes": int(settings.get("loaded_max_bytes")), **counts}


# ------------------------------------------------------------------------------------------------ what is cached


def files_stamp(folder: str | Path, names: tuple[str, ...] | None = None) -> tuple:
    """(name, mtime_ns, size) of ``names`` in ``folder`` (every file in it when None): changes when one is replaced."""
    folder = Path(folder)
    out: list[tuple[str, int | None, int | None]] = []
    try:
        files = [folder / n for n in names] if names is not None else sorted(p for p in folder.iterdir() if p.is_file())
    except FileNotFoundError:
        return ()
    for f in files:
        try:
            st = f.stat()
            out.append((f.name, st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            out.append((f.name, None, None))
    return tuple(out)


def network_bytes(loaded: Any) -> int:
    """Bytes of a LoadedModel's parameters and buffers (what it holds in memory between calls)."""
    net = getattr(loaded, "net", None)
    if net is None:
        return 0
    tensors = list(net.parameters()) + list(net.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def model_dir(folder: str | Path, weights: str = "weights.safetensors") -> Any:
    """The LoadedModel saved in ``folder`` (``core.models.io.load_model_dir``) on the inference device, reloaded when
    its weights or configuration change."""
    from core.device import inference_device
    from core.models.io import CONFIG_FILE, load_model_dir

    folder = Path(folder).resolve()
    return get(("model", str(folder)), files_stamp(folder, (weights, CONFIG_FILE)),
               lambda: load_model_dir(folder, device=inference_device()), network_bytes)

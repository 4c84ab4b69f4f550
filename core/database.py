"""The store's database as the operator handles it (``python -m core store ...``): moving it to PostgreSQL.

The command line reaches stored data only through modules outside ``core.store`` (``tests/test_access.py`` keeps it
so); this is that module for the operator's store commands. The work is ``core.store.copy``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def copy_store(to: str, progress: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Copy the store's rows into the empty PostgreSQL database ``to``, checked by counts; see
    :func:`core.store.copy.copy_store` for what it returns and refuses."""
    from core.store import copy

    return copy.copy_store(to, progress=progress)

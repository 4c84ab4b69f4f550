"""The HTTP API (``python -m core serve``): predict, embed, search, models, indexes and jobs under ``/v1``, for
programs that hold an API key. ``core.api.app`` builds the FastAPI application; :func:`serve` runs it on uvicorn."""

from __future__ import annotations

from core.api.app import create_app

__all__ = ["create_app", "serve"]


def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the API on uvicorn in this process (one process: loaded networks and indexes are cached in it). Freed
    memory is kept for reuse in one heap (``core.device.keep_freed_memory``): networks run on the server's threads."""
    import uvicorn

    from core.device import keep_freed_memory

    keep_freed_memory(one_arena=True)  # before uvicorn starts any thread

    uvicorn.run(create_app(), host=host, port=port, log_level="info", proxy_headers=True, server_header=False)

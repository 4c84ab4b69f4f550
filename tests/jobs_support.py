"""Shared pieces of the job tests: a tiny dataset, small training configurations, waiting on the store, cleanup.

Jobs here are real: real worker processes (``python -m core worker ID``) train the EfficientNet-Lite0 transfer
template on a Caltech-101 slice at 32 px with random weights and a frozen backbone (features cached once), so a step
takes milliseconds and ``num_items_per_epoch`` sets how long an epoch lasts.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from core.store import jobs as store

TEMPLATE = "Studio_EfficientNetLite0_Transfer"


def train_config(epochs: int = 2, items: int = 40, dataset: str = "tiny", **extra) -> dict:
    """A training configuration: ``items`` images per epoch in batches of 4 (``items / 4`` steps per epoch); the head
    trains by SGD step by step (``tune_head`` off: a fitted head would be one epoch without steps)."""
    params = {"image_size": 32, "batch_size": 4, "num_epochs": epochs, "pretrained_weights": "None",
              "num_items_per_epoch": items, "lrate": 0.01, "tune_head": False}
    return {"dataset": dataset, "kind": "classifier", "template": TEMPLATE, "params": params, **extra}


def import_tiny(src: Path, name: str = "tiny") -> str:
    from core.data.importer import import_dataset

    import_dataset("local", src, name)
    return name


def wait_store(job_id: int, until, timeout: float = 120.0, poll: float = 0.1) -> dict:
    """Poll the store only (no pumping, so nothing here moves the queue) until ``until(job)`` is true."""
    deadline = time.monotonic() + timeout
    while True:
        job = store.get_job(job_id)
        if until(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s: {job['progress']}")
        time.sleep(poll)


def in_epoch(epoch: int, step: int = 1):
    """A condition: the job is running and has reached ``step`` of ``epoch``."""
    def cond(job: dict) -> bool:
        p = job["progress"] or {}
        return job["state"] == "running" and ((p.get("epoch") or 0), (p.get("step") or 0)) >= (epoch, step)
    return cond


def cleanup() -> None:
    """Leave no worker behind: cancel what is queued, kill what runs (whole process groups)."""
    from core.jobs import local

    for job in store.list_jobs(states=("queued",)):
        store.cancel_queued(job["id"])
    for job in store.list_jobs(states=store.ACTIVE):
        local.kill(job["pid"], job["id"], term_wait_s=0.5)
        store.mark_dead(job["id"], None, "test cleanup")


def sigkill(job: dict) -> None:
    """Kill a worker's process group outright, as the OOM killer or a power cut would."""
    os.killpg(job["pid"], signal.SIGKILL)


@pytest.fixture
def tiny(small_folder, monkeypatch):
    """A three-class dataset "tiny"; heartbeats every 0.3 s; one job at a time; every worker gone after the test."""
    monkeypatch.setenv("DEEPTRAIN_HEARTBEAT_S", "0.3")
    monkeypatch.setenv("DEEPTRAIN_MAX_JOBS", "1")
    import_tiny(small_folder)
    yield "tiny"
    cleanup()

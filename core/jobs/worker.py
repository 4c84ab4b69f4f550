"""The worker process: ``python -m core worker JOB_ID`` runs one job and reports to the store.

The training loop only touches memory: ``on_step`` keeps the latest progress in a dict, and a heartbeat thread writes
it with the heartbeat every ``DEEPTRAIN_HEARTBEAT_S`` seconds (one small UPDATE), reading back the cancel flag, so a
page polling the store costs the loop nothing and ``should_stop`` is a plain attribute read. When the job ends the
worker starts the next queued job before it exits, so the queue moves on whoever is watching. Never imports Streamlit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
import traceback as tb
from pathlib import Path
from typing import Any, cast

from core.errors import UserError
from core.jobs import local
from core.records import JobProgress, JobRow, MemoryUse, SeriesPoint, StepProgress
from core.store import jobs as store

try:  # the training engine's no-op base, when present; the worker only needs the same method names
    from core.training.callbacks import Callbacks as _Base
except ImportError:  # pragma: no cover - the engine is part of the project; this keeps index jobs independent
    _Base = object  # type: ignore[misc,assignment]

MAX_SERIES = 400  # live-curve points kept per job; older points are thinned two to one past this


def _memory_mb() -> MemoryUse:
    """Resident memory of this process and, when CUDA is in use, the GPU memory allocated and reserved."""
    out: MemoryUse = {}
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        out["rss_mb"] = round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        import resource

        out["rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    cuda = getattr(sys.modules.get("torch"), "cuda", None)  # only if the run imported torch (maybe half-way)
    try:
        if cuda is not None and cuda.is_initialized():
            out["gpu_allocated_mb"] = round(cuda.memory_allocated() / 2**20, 1)
            out["gpu_reserved_mb"] = round(cuda.memory_reserved() / 2**20, 1)
    except (AttributeError, RuntimeError):
        pass
    return out


class JobCallbacks(_Base):
    """Callbacks of one job: progress and curves in memory, flushed by ``flush()`` (the heartbeat thread)."""

    def __init__(self, job: JobRow, device: str) -> None:
        self.job_id = int(job["id"])
        self.device = device
        params = (job.get("config") or {}).get("params") or {}
        self.num_epochs = int(params.get("num_epochs") or 0) or (None if job.get("type") == "train" else 1)
        self.cancel = bool(job.get("cancel_requested"))
        self.series: list[SeriesPoint] = [list(p) for p in (job.get("series") or [])]
        self.progress: JobProgress = JobProgress(**(job.get("progress") or {}))
        self._running = False
        self._dirty = True
        self._lock = threading.Lock()

    # -- training engine hooks (called between steps, from the training thread) --

    def on_start(self, info: dict) -> None:
        with self._lock:
            if info.get("epochs"):
                self.num_epochs = int(info["epochs"])
            self.progress.update({
                "phase": "training", "num_epochs": self.num_epochs, "items": info.get("items"),
                "steps_per_epoch": info.get("steps_per_epoch"), "start_epoch": info.get("start_epoch"),
                "device": self.device or info.get("device"), "numerics": info.get("numerics"),
            })
            self._dirty = True
        self._set_running()
        self.log(f"started: {info.get('kind', '')} {info.get('template', '')} on {info.get('items', '?')} images, "
                 f"{self.num_epochs} epochs of {info.get('steps_per_epoch', '?')} steps, {info.get('device', '')}"
                 + (f" ({info['numerics']})" if info.get("numerics") else ""))

    def on_step(self, p: StepProgress) -> None:
        epoch, step, spe = int(p.get("epoch", 1)), int(p.get("step", 0)), int(p.get("steps_per_epoch") or 1)
        if epoch < 1:  # before the first epoch (caching backbone features): progress of that phase only
            with self._lock:
                self.progress.update({"phase": p.get("phase") or "preparing", "epoch": 0, "step": step,
                                      "steps_per_epoch": spe, "fraction": 0.0, "updated_at": time.time()})
                self._dirty = True
            return
        x = (epoch - 1) + min(step, spe) / spe  # epochs done, as a float: the x of the live curves
        with self._lock:
            scalars = {k: v for k, v in p.items() if isinstance(v, (int, float, str)) or v is None}
            self.progress.update(cast(JobProgress, scalars))  # the step's fields are JobProgress's too
            self.progress["fraction"] = min(1.0, x / self.num_epochs) if self.num_epochs else None
            self.progress["num_epochs"] = self.num_epochs
            self.progress["updated_at"] = time.time()
            last_x = self.series[-1][0] if self.series else None
            if last_x is not None and last_x >= x:  # resumed: the curve continues from the checkpoint
                self.series = [pt for pt in self.series if pt[0] is not None and pt[0] < x]
            self.series.append([round(x, 4), _num(p.get("loss")), _num(p.get("lr"))])
            if len(self.series) > MAX_SERIES:
                self.series = self.series[::2] + ([self.series[-1]] if len(self.series) % 2 == 0 else [])
            self._dirty = True
        if not self._running:
            self._set_running()

    def on_epoch(self, epoch: int, metrics: dict) -> None:
        clean = {k: v if isinstance(v, int) else _num(v) if isinstance(v, float) or hasattr(v, "item") else v
                 for k, v in metrics.items()}
        store.add_history(self.job_id, int(epoch), clean)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in clean.items() if isinstance(v, (int, float)))
        self.log(f"epoch {epoch}: {shown}")

    def should_stop(self) -> bool:
        return self.cancel

    def log(self, line: str) -> None:
        print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {line}", flush=True)

    # -- the heartbeat thread --

    def flush(self) -> None:
        """Write the heartbeat, and the progress and curve when they changed; pick up a cancel request."""
        with self._lock:
            self.progress["memory"] = _memory_mb()
            self.progress["device"] = self.progress.get("device") or self.device
            progress = JobProgress(**self.progress)
            series = [list(p) for p in self.series] if self._dirty else None
            self._dirty = False
        if store.beat(self.job_id, progress, series):
            if not self.cancel:
                self.log("cancel requested: stopping after this step and saving a checkpoint")
            self.cancel = True

    def _set_running(self) -> None:
        self._running = True
        store.mark_running(self.job_id)


def _num(v) -> float | None:
    if v is None:
        return None
    if hasattr(v, "item"):
        v = v.item()
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f and abs(f) != float("inf") else None


class _Heartbeat(threading.Thread):
    def __init__(self, cb: JobCallbacks, interval: float) -> None:
        super().__init__(name=f"heartbeat-{cb.job_id}", daemon=True)
        self.cb, self.interval = cb, interval
        self.done = threading.Event()

    def run(self) -> None:
        failures = 0
        while not self.done.wait(self.interval):
            try:
                self.cb.flush()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - a busy database must not kill training; say so once in a while
                failures += 1
                if failures in (1, 10, 100):
                    self.cb.log(f"heartbeat could not be written ({type(exc).__name__}: {exc}); retrying")


def _plain_reason(exc: BaseException) -> str:
    """The sentence shown at the top of a failed job."""
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "The machine ran out of memory; try a smaller batch size or image size."
    text = str(exc)
    if "out of memory" in text.lower():
        return f"The GPU ran out of memory ({text.splitlines()[0]}); try a smaller batch size or image size."
    return f"The job stopped on an unexpected error: {type(exc).__name__}: {text}"


def run(job_id: int, inline: bool = False) -> int:
    """Run job ``job_id`` in this process (it was claimed by a pump); returns the process exit code.

    ``inline`` (job_backend "inline"): the process that queued the job runs it, so its priority, threads and memory
    settings stay as they are, and what the job prints goes to its log as a worker's output does."""
    if inline:
        with open(local.log_path(int(job_id)), "a", buffering=1) as log, \
                contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            return _run(int(job_id), inline=True)
    return _run(int(job_id), inline=False)


def _run(job_id: int, inline: bool) -> int:
    from core.jobs import pump, runners

    pid, host = os.getpid(), local.host()
    if not store.take(job_id, pid, host):
        job = store.get_job(job_id)
        if job["state"] == "starting" and job["cancel_requested"]:
            store.finish(job_id, "cancelled", error="Cancelled before it started.")
        print(f"job {job_id} is {job['state']}; nothing to run", flush=True)
        pump()
        return 0
    job = store.get_job(job_id)
    from core.device import enter_worker, keep_freed_memory

    if inline:
        where = "inline (job_backend)"
    else:
        keep_freed_memory()  # this process trains or embeds: reuse freed buffers instead of faulting in new pages
        niceness, threads = enter_worker()  # the web server goes first and keeps a core
        where = f"niceness {niceness}, {threads} CPU thread(s)"
    cb = JobCallbacks(job, device="")
    cb.log(f"worker {pid} on {host}: {job['type']} job {job_id}, attempt {job['attempts']}"
           + (" (resuming)" if job["resume"] else "") + f"; {where}")
    beat = _Heartbeat(cb, local.heartbeat_s())
    beat.start()
    state, result, error, trace = "failed", None, None, None
    try:
        from core.device import device_info

        cb.device = device_info().label
        config = runners.validate(job["type"], job["owner"], job["config"])
        if job["type"] == "train":
            config.setdefault("run", str(job_id))  # the key of this job's per-epoch metrics in the models store
        run_dir = local.run_dir(job_id)
        if job["parent_id"] and job["resume"] and not any(run_dir.iterdir()):  # Extend: start from the parent's
            shutil.copytree(local.run_dir(job["parent_id"]), run_dir, dirs_exist_ok=True)
            if job["type"] == "train":  # the new model's per-epoch record starts with the parent's epochs
                from core.store import models as mstore

                for m in mstore.get_epoch_metrics(str(job["parent_id"])):
                    mstore.add_epoch_metrics(str(job_id), m["epoch"], {k: v for k, v in m.items() if k != "epoch"})
        resume = bool(job["resume"]) and any(run_dir.iterdir())
        result = runners.get(job["type"])(config, run_dir, cb, resume)
        if result.get("stopped"):
            state = "cancelled"
            error = "Cancelled; the last checkpoint is kept and Resume continues from it."
        else:
            state = "succeeded"
    except BaseException as exc:  # noqa: BLE001 - every failure, even SystemExit, ends the job with its reason
        error, trace = _plain_reason(exc), tb.format_exc()
        cb.log(f"failed: {error}")
        print(trace, flush=True)
        if isinstance(exc, KeyboardInterrupt):
            state, error = "interrupted", "The worker was interrupted; Resume continues from the last checkpoint."
    finally:
        beat.done.set()
        beat.join(timeout=5)
        try:
            cb.flush()
        except Exception:  # noqa: BLE001 - the final state below matters more than the last progress write
            pass
    _free_gpu_memory()  # the next job may start on this GPU as soon as this one is marked finished
    if state == "succeeded":
        cb.progress["fraction"] = 1.0
        store.beat(job_id, cb.progress, None)
    store.finish(job_id, state, result=_jsonable(result) if result else None, error=error, traceback=trace)
    cb.log(f"job {job_id} {state}")
    pump()
    return 0 if state in ("succeeded", "cancelled") else 1


def _free_gpu_memory() -> None:
    import gc

    gc.collect()
    cuda = getattr(sys.modules.get("torch"), "cuda", None)
    try:
        if cuda is not None and cuda.is_initialized():
            cuda.empty_cache()
    except (AttributeError, RuntimeError):
        pass


def _jsonable(result: dict) -> dict:
    out: dict[str, Any] = {}
    for k, v in result.items():
        if isinstance(v, dict):
            out[k] = _jsonable(v)
        elif isinstance(v, (str, bool, int)) or v is None:
            out[k] = v
        elif isinstance(v, float) or hasattr(v, "item"):
            out[k] = _num(v)
        elif isinstance(v, (list, tuple)):
            out[k] = [_num(x) if isinstance(x, float) else x for x in v]
        else:
            out[k] = str(v)
    return out

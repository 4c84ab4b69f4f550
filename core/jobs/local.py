"""The local backend: each job is its own OS process on this machine, in a session of its own.

``start_new_session=True`` puts the worker in a new session and process group, so it outlives the Streamlit script
run, the browser tab and a restart of the Streamlit server, and so that killing its group also ends its data-loader
children. Its settings (core.settings, read at each call): ``max_jobs``, ``heartbeat_s``, ``stale_s`` (a few
heartbeats on a busy machine) and ``cancel_grace_s``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from core import device, paths, settings

_children: dict[int, subprocess.Popen] = {}  # workers started by this process, polled so they never stay zombies


def heartbeat_s() -> float:
    return settings.get("heartbeat_s")


def stale_s() -> float:
    return settings.get("stale_s")


def cancel_grace_s() -> float:
    return settings.get("cancel_grace_s")


def _visible_gpus() -> list[str] | None:
    """The entries of CUDA_VISIBLE_DEVICES (ids or UUIDs), or None when it is not set."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]


def gpu_for_slot(slot: int) -> str:
    """The CUDA_VISIBLE_DEVICES value for the worker in queue slot ``slot``: one GPU of those this server may use (the
    slot-th entry of its own CUDA_VISIBLE_DEVICES when that is set, else GPU number ``slot``)."""
    visible = _visible_gpus()
    return visible[slot % len(visible)] if visible else str(slot)


def gpu_count() -> int:
    """GPUs on this machine, without importing torch (pages stay light): the driver's list, else torch if loaded."""
    visible = _visible_gpus()
    if visible is not None:
        return len(visible)
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir():
        return len(list(gpus.iterdir()))
    torch = sys.modules.get("torch")
    if torch is not None:
        return int(torch.cuda.device_count())
    return 0


JOB_BACKENDS = ("process", "inline")


def inline() -> bool:
    """Whether jobs run inline (setting ``job_backend``): to the end in the process that pumps the queue."""
    backend = settings.get("job_backend").lower()
    if backend not in JOB_BACKENDS:
        from core.errors import UserError

        raise UserError(f"job_backend must be one of {', '.join(JOB_BACKENDS)}, got {backend!r}")
    return backend == "inline"


def max_jobs() -> int:
    """Jobs allowed to run at once: the setting ``max_jobs``, else (0) one per GPU, else one."""
    return settings.get("max_jobs") or max(1, gpu_count())


def host() -> str:
    return socket.gethostname()


def job_dir(job_id: int) -> Path:
    """The job's folder: ``log.txt`` and ``run/`` (the checkpoints the runner writes)."""
    path = paths.subdir("jobs") / str(int(job_id))
    path.mkdir(parents=True, exist_ok=True)
    return path


def log_path(job_id: int) -> Path:
    return job_dir(job_id) / "log.txt"


def run_dir(job_id: int) -> Path:
    path = job_dir(job_id) / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def launch(job_id: int, slot: int = 0) -> int:
    """Start ``python -m core worker JOB_ID`` in a new session; its output goes to the job's log. Returns the pid."""
    env = os.environ.copy()
    env["DEEPTRAIN_HOME"] = str(paths.home())
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(paths.PROJECT_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    if gpu_count() > 1:
        env["CUDA_VISIBLE_DEVICES"] = gpu_for_slot(slot)
    env = device.worker_env(env)  # lower priority and a thread cap: the web server keeps a core
    with open(log_path(job_id), "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "core", "worker", str(int(job_id))],
            cwd=str(paths.PROJECT_ROOT), env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )
    _children[proc.pid] = proc
    return proc.pid


def reap_children() -> None:
    """Collect the exit status of finished workers this process started (no zombies left in the app's server)."""
    for pid, proc in list(_children.items()):
        if proc.poll() is not None:
            _children.pop(pid, None)


def _is_worker(pid: int, job_id: int) -> bool:
    """Whether ``pid`` is a live worker process of this job (guards against a recycled pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
            return False
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return b"worker" in cmd and str(int(job_id)).encode() in cmd
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    except OSError:
        pass
    try:  # no /proc (not Linux): signal 0 only tells the pid exists
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def alive(pid: int | None, job_id: int) -> bool:
    """Whether the worker ``pid`` of ``job_id`` still runs on this machine."""
    if not pid:
        return False
    if pid == os.getpid():  # an inline job (job_backend "inline") runs in this very process
        return True
    proc = _children.get(pid)
    if proc is not None and proc.poll() is not None:
        _children.pop(pid, None)
        return False
    return _is_worker(pid, job_id)


def kill(pid: int | None, job_id: int, term_wait_s: float = 3.0) -> None:
    """Stop a worker's whole process group: SIGTERM, then SIGKILL if it is still there after ``term_wait_s``."""
    if pid is None or not alive(pid, job_id):
        return
    for sig, wait in ((signal.SIGTERM, term_wait_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        if sig == signal.SIGTERM:  # a stopped (SIGSTOP) worker only acts on SIGTERM once continued
            try:
                os.killpg(pid, signal.SIGCONT)
            except OSError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not alive(pid, job_id):
                return
            time.sleep(0.05)

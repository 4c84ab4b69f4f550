"""Which device training runs on, and how it is set up (CUDA with bf16 and channels_last, else all CPU cores)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cuda" or "cpu"
    name: str
    memory_gb: float | None
    count: int
    note: str

    @property
    def label(self) -> str:
        if self.kind == "cuda":
            return f"GPU: {self.name} ({self.memory_gb:.0f} GiB)" + (f" x{self.count}" if self.count > 1 else "")
        return f"CPU: {self.name}"


def device_info() -> DeviceInfo:
    """Describe the device training will use. Imports torch lazily so pages stay light."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        bf16 = cuda_bf16()
        return DeviceInfo(
            kind="cuda",
            name=props.name,
            memory_gb=props.total_memory / 2**30,
            count=torch.cuda.device_count(),
            note="bf16 autocast, channels_last, cuDNN benchmark" if bf16 else "fp32, channels_last, cuDNN benchmark",
        )
    cores = os.cpu_count() or 1
    return DeviceInfo(
        kind="cpu",
        name=f"{cores} cores",
        memory_gb=None,
        count=0,
        note=(
            "No GPU found: training runs on the CPU with all cores (channels_last, fp32). "
            "Transfer templates (EfficientNet-Lite0) train in minutes; deep templates from scratch are slow."
        ),
    )


# channels_last on the CPU only from this image size: at 32-64 px oneDNN's layout reorders cost more than the faster
# convolutions save (measured here); from 96 px it is 1.2-1.4x for training and 1.3-1.4x for inference.
CPU_CHANNELS_LAST_MIN_SIZE = 96


def cuda_bf16() -> bool:
    """Whether the GPU computes in bf16 natively (compute capability 8.0 and later: A100, H100...). Older cards
    (V100, T4) can hold bf16 tensors, which ``torch.cuda.is_bf16_supported()`` counts by default, but emulate the
    arithmetic; they train in fp32."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def channels_last_for(device, image_size: int, detector: bool = False) -> bool:
    """Whether a network on ``device`` (a torch.device) at ``image_size`` runs in channels_last memory format: on
    CUDA always, on the CPU from CPU_CHANNELS_LAST_MIN_SIZE; never for detectors (images of varying sizes)."""
    return not detector and (device.type == "cuda" or int(image_size) >= CPU_CHANNELS_LAST_MIN_SIZE)


def keep_freed_memory(one_arena: bool = False) -> bool:
    """Make glibc's malloc keep freed memory for reuse in this process instead of handing it back to the kernel.

    A training step frees and allocates the same large activation buffers every step. By default glibc serves blocks
    above its mmap threshold with fresh mapped pages and unmaps them on free, so the kernel faults in and zeroes
    them again each step: 20,000-30,000 page faults per step for resnet50 at batch 32 and 128 px on this 2-core CPU,
    none once the threshold is raised. Process-wide and one-way (resident memory stays at the peak the process
    reached), so only processes that train or embed call it: the job worker, foreground training and the HTTP API,
    never the app.

    ``one_arena``: every thread allocates from the main heap too (call it before the threads start). glibc gives
    other threads arenas of their own, whose big blocks are mapped and unmapped whatever the threshold: the API runs
    networks on its thread pool, where a 16-image Lite0 pass took 250 ms with 85,000 page faults, and 174 ms with
    none in one arena (the main thread's 172 ms). Returns whether it applied (False where the C library is not
    glibc)."""
    import ctypes
    import ctypes.util

    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8  # glibc's mallopt parameters (malloc.h)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if one_arena and not mallopt(m_arena_max, 1):
        return False
    # blocks below 1 GiB come from the heap; freed heap memory is never trimmed back to the kernel
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def torch_device():
    """The ``torch.device`` to train on, with the CPU's thread count set to ``cpu_threads()``."""
    import torch

    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # fixed input shapes; detectors turn it off (core.training.engine)
        return torch.device("cuda")
    torch.set_num_threads(cpu_threads())
    return torch.device("cpu")


WORKER_ENV = "DEEPTRAIN_WORKER"  # set in a job worker's environment: its CPU work is capped at worker_threads()
_THREAD_ENVS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def worker_threads() -> int:
    """CPU threads one job worker uses: the setting ``worker_threads``, or with 0 all cores but one (at least one),
    so that the web server keeps a core for pages and searches while a job trains."""
    from core import settings

    n = int(settings.get("worker_threads"))
    return n if n > 0 else max(1, (os.cpu_count() or 1) - 1)


def cpu_threads() -> int:
    """Threads this process may use for CPU work (torch, decoding pools, FAISS): ``worker_threads()`` in a job
    worker, all cores elsewhere (foreground training from the command line, the app's own searches)."""
    return worker_threads() if os.environ.get(WORKER_ENV) else (os.cpu_count() or 1)


def worker_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a new job worker process: marked as a worker, with OpenMP/MKL pools sized to ``worker_threads()``
    before any library starts them."""
    n = str(worker_threads())
    return {**env, WORKER_ENV: "1", **{k: n for k in _THREAD_ENVS}}


def enter_worker() -> tuple[int, int]:
    """Lower this process to the niceness ``worker_nice`` (never raise it) and cap torch's threads at
    ``worker_threads()``. Returns (niceness, threads)."""
    import torch

    from core import settings

    os.environ[WORKER_ENV] = "1"
    target, current = int(settings.get("worker_nice")), os.nice(0)
    if target > current:
        current = os.nice(target - current)
    n = worker_threads()
    torch.set_num_threads(n)
    return current, n


def worker_priority_text() -> str:
    """How job workers share the CPU with the web server, for the Jobs page."""
    from core import settings

    cores = os.cpu_count() or 1
    return (f"Workers run at niceness {int(settings.get('worker_nice'))} with {worker_threads()} of {cores} CPU "
            "thread(s), so pages and searches stay responsive while a job trains (settings worker_nice, "
            "worker_threads).")


def inference_device():
    """The ``torch.device`` loaded models predict and embed on (``core.loaded``): the GPU when there is one (in a job
    worker, the one its slot was given), else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

"""core.device: the device description, and the process setting that spares training steps fresh page faults."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# In a fresh interpreter: allocate and free a 64 MiB tensor (filled, so its pages are touched) 10 times, counting the
# minor page faults of the loop, before and after keep_freed_memory().
_FAULTS = """
import json, resource, sys
import torch
sys.path.insert(0, sys.argv[1])
from core.device import keep_freed_memory

def faults():
    torch.ones(1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        torch.ones(16 * 2**20).sum()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

plain = faults()
applied = keep_freed_memory()
print(json.dumps({"applied": applied, "plain": plain, "kept": faults(), "again": faults()}))
"""


def test_keep_freed_memory_reuses_freed_buffers_instead_of_faulting_in_new_pages():
    out = subprocess.run([sys.executable, "-c", _FAULTS, str(ROOT)], capture_output=True, text=True, timeout=120,
                         check=True)
    r = json.loads(out.stdout)
    assert r["applied"] is True  # glibc (Linux): the setting took
    assert r["plain"] > 10 * 10_000  # by default each 64 MiB block is a fresh mapping: ~16k faults each time
    assert r["again"] < r["plain"] / 20  # kept in the heap: the same pages serve every later block


# The same loop on a thread of its own, as the API runs networks, in an interpreter that first called
# keep_freed_memory(one_arena=True) (argv[2] "one") or nothing ("plain").
_THREAD_FAULTS = _FAULTS.split("plain = faults()")[0] + """
import threading
if sys.argv[2] == "one":
    assert keep_freed_memory(one_arena=True)
counts = []
for _ in range(3):
    t = threading.Thread(target=lambda: counts.append(faults()))
    t.start()
    t.join()
print(json.dumps(counts))
"""


def test_one_arena_spares_the_threads_that_run_networks_their_page_faults_too():
    def counts(how: str) -> list[int]:
        out = subprocess.run([sys.executable, "-c", _THREAD_FAULTS, str(ROOT), how], capture_output=True, text=True,
                             timeout=120, check=True)
        return json.loads(out.stdout)

    plain, one = counts("plain"), counts("one")
    assert min(plain) > 10 * 10_000  # a thread's own arena maps and unmaps each 64 MiB block: ~16k faults each time
    # In the main heap, kept: freed blocks serve most later ones. How many of a later thread's ten blocks still land
    # in new pages depends on the heap's layout (1 and 3 of 10 seen: 16,385 and 49,153 faults); a thread's own arena
    # faults in all ten every time.
    assert sum(one[1:]) < sum(plain[1:]) / 2


def test_device_info_on_this_machine_names_the_device_and_what_training_uses():
    from core.device import device_info, torch_device

    info = device_info()
    device = torch_device()
    assert info.kind == device.type
    assert info.label.startswith("GPU: " if info.kind == "cuda" else "CPU: ")
    assert info.note


# A job worker's start, in a fresh interpreter launched with the environment core.jobs.local gives workers.
_WORKER = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
import torch
from core.device import cpu_threads, enter_worker
nice, threads = enter_worker()
stat = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
print(json.dumps({"nice": nice, "threads": threads, "torch": torch.get_num_threads(), "cpu_threads": cpu_threads(),
                  "proc_nice": int(stat[16]), "omp": os.environ.get("OMP_NUM_THREADS")}))
"""


def test_a_worker_runs_niced_with_its_thread_cap(tmp_path):
    import os

    from core.device import worker_env

    env = {**os.environ, "DEEPTRAIN_HOME": str(tmp_path), "DEEPTRAIN_WORKER_NICE": "7", "DEEPTRAIN_WORKER_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _WORKER, str(ROOT)], env=worker_env(env), capture_output=True,
                         text=True, timeout=120, check=True).stdout
    got = json.loads(out)
    assert got == {"nice": 7, "threads": 1, "torch": 1, "cpu_threads": 1, "proc_nice": 7, "omp": "1"}


def test_worker_threads_default_leaves_the_server_a_core(monkeypatch, tmp_path):
    import os

    from core import device

    monkeypatch.setenv("DEEPTRAIN_HOME", str(tmp_path))
    monkeypatch.delenv("DEEPTRAIN_WORKER_THREADS", raising=False)
    monkeypatch.delenv(device.WORKER_ENV, raising=False)
    cores = os.cpu_count() or 1
    assert device.worker_threads() == max(1, cores - 1)
    assert device.cpu_threads() == cores  # outside a worker: all cores
    monkeypatch.setenv(device.WORKER_ENV, "1")
    assert device.cpu_threads() == max(1, cores - 1)
    assert "niceness 10" in device.worker_priority_text() and "worker_threads" in device.worker_priority_text()

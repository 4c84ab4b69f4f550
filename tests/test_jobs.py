"""Background jobs with real worker processes: success, kill and resume, cancel, the queue, restart, tampering."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from core import jobs
from core.errors import UserError, ValidationError
from core.jobs import local
from core.store import jobs as store
from core.store import models as mstore
from tests.conftest import ROOT
from tests.jobs_support import in_epoch, sigkill, tiny, train_config, wait_store  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


def test_inline_backend_runs_each_job_to_its_end_in_the_process_that_queued_it(tiny, monkeypatch):
    """job_backend "inline" (huey's immediate mode): submit returns once the job has run here, with the same records a
    worker process leaves (state, model, per-epoch metrics, log); a second job queued behind it runs too."""
    monkeypatch.setenv("DEEPTRAIN_JOB_BACKEND", "inline")
    first = jobs.submit("local", "train", train_config(epochs=1, items=8))
    st = jobs.status("local", first)
    assert st["state"] == "succeeded", st["error"]
    row = store.get_job(first)
    assert row["pid"] == os.getpid()
    assert [m["epoch"] for m in mstore.get_epoch_metrics(str(first))] == [1]
    log = local.log_path(first).read_text()
    assert "inline (job_backend)" in log and f"job {first} succeeded" in log
    second = jobs.submit("local", "train", train_config(epochs=1, items=8))
    assert jobs.status("local", second)["state"] == "succeeded" and jobs.reap() == []
    monkeypatch.setenv("DEEPTRAIN_JOB_BACKEND", "thread")
    with pytest.raises(UserError, match="job_backend must be one of process, inline, got 'thread'"):
        jobs.submit("local", "train", train_config(epochs=1, items=8))
    assert sorted(j["id"] for j in store.list_jobs()) == [first, second]  # nothing queued by the refused submit


def test_job_runs_to_success_and_stores_its_model(tiny, capsys):
    from core.cli import main

    argv = ["train", "--dataset", "tiny", "--kind", "classifier", "--template", "Studio_EfficientNetLite0_Transfer",
            "--name", "tiny-model", "--wait", "--json"]
    for key, value in train_config(epochs=2, items=40)["params"].items():
        argv += ["--set", f"{key}={value}"]
    assert main(argv) == 0  # queued as a background job, followed to its end with a progress bar
    out = capsys.readouterr()
    st = json.loads(out.out)
    assert st["state"] == "succeeded", st["error"]
    assert "100%" in out.err  # the progress bar reached the end
    job_id = st["id"]
    model = mstore.get_model_by_id(st["model_id"])
    assert model["name"] == "tiny-model" and model["template"] == "Studio_EfficientNetLite0_Transfer"
    assert [m["epoch"] for m in st["metrics"]] == [1, 2]
    assert [m["epoch"] for m in mstore.get_epoch_metrics(str(job_id))] == [1, 2]
    assert st["progress"]["fraction"] == 1.0 and st["progress"]["device"].startswith(("CPU", "GPU"))
    # the worker yielded to the web server: niceness worker_nice (10), all cores but one
    threads = max(1, (os.cpu_count() or 1) - 1)
    assert f"niceness 10, {threads} CPU thread(s)" in local.log_path(job_id).read_text()
    # the model's train time is its job's wall time, split into the epochs and what came before them
    from core.evaluation import service as models_service

    spent = models_service.train_time("local", st["model_id"])
    job_row = store.get_job(job_id)
    assert spent["wall_seconds"] == pytest.approx(job_row["finished_at"] - job_row["started_at"])
    assert 0 < spent["epochs_seconds"] <= spent["wall_seconds"]
    assert spent["before_seconds"] == pytest.approx(spent["wall_seconds"] - spent["epochs_seconds"])
    assert "(its job's wall time)" in spent["text"] and "in 2 epoch(s)" in spent["text"]
    row = next(r for r in models_service.registry_rows("local") if r["id"] == st["model_id"])
    assert row["train time"] == models_service._duration(spent["wall_seconds"])
    series = jobs.metrics("local", job_id)["series"]
    assert series and series[-1][0] == pytest.approx(2.0) and all(len(p) == 3 for p in series)
    deadline = time.monotonic() + 30
    while local.alive(st["pid"], job_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not local.alive(st["pid"], job_id)  # the worker exited after reporting
    assert f"job {job_id} succeeded" in jobs.logs("local", job_id)

    assert main(["jobs", "show", str(job_id), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "succeeded" and shown["model_id"] == model["id"] and len(shown["metrics"]) == 2
    assert shown["error"] is None and shown["progress"]["epoch"] == 2
    assert main(["jobs", "--json"]) == 0
    assert [j["id"] for j in json.loads(capsys.readouterr().out)] == [job_id]
    assert main(["jobs", "logs", str(job_id), "--tail", "3"]) == 0
    assert "succeeded" in capsys.readouterr().out
    assert main(["jobs", "resume", str(job_id)]) == 2  # a finished job is extended, not resumed
    assert "Extend" in capsys.readouterr().err

    ext = jobs.extend("local", job_id, 1)  # a new job continues the checkpoint for one more epoch: a new model
    st2 = jobs.wait("local", ext, timeout=180)
    assert st2["state"] == "succeeded", st2["error"]
    assert st2["parent_id"] == job_id and st2["model_id"] not in (None, model["id"])
    assert [m["epoch"] for m in st2["metrics"]] == [1, 2, 3]
    assert [m["epoch"] for m in mstore.get_epoch_metrics(str(ext))] == [1, 2, 3]
    assert "resuming after epoch 2" in jobs.logs("local", ext)
    assert mstore.get_model_by_id(st2["model_id"])["name"] == "tiny-model-ext"


def test_sigkill_mid_epoch_gives_interrupted_then_resume_repeats_no_epoch(tiny):
    job_id = jobs.submit("local", "train", train_config(epochs=2, items=4000))
    job = wait_store(job_id, in_epoch(2, 20), timeout=180)  # epoch 1 done and checkpointed, epoch 2 under way
    sigkill(job)
    t0 = time.monotonic()
    while (st := jobs.status("local", job_id))["state"] == "running" and time.monotonic() - t0 < 30:
        time.sleep(0.1)
    # the pid is gone: marked by the next look at the queue, without waiting for the heartbeat to go stale
    assert time.monotonic() - t0 < local.stale_s()
    assert st["state"] == "interrupted" and "Resume" in st["error"]
    assert [m["epoch"] for m in st["metrics"]] == [1]

    assert jobs.resume("local", job_id) == job_id
    st = jobs.wait("local", job_id, timeout=180)
    assert st["state"] == "succeeded", st["error"]
    assert st["attempts"] == 2
    assert [m["epoch"] for m in st["metrics"]] == [1, 2]
    assert [m["epoch"] for m in mstore.get_epoch_metrics(str(job_id))] == [1, 2]
    xs = [p[0] for p in jobs.metrics("local", job_id)["series"]]
    assert xs == sorted(xs) and len(xs) == len(set(xs))  # the curve continues from the checkpoint, no overlap
    assert "resuming after epoch 1" in jobs.logs("local", job_id)


def test_cancel_while_queued_and_while_running(tiny):
    running = jobs.submit("local", "train", train_config(epochs=3, items=4000))
    waiting = jobs.submit("local", "train", train_config(epochs=1, items=40))
    assert store.get_job(waiting)["state"] == "queued"  # one slot: the second waits
    st = jobs.cancel("local", waiting)
    assert st["state"] == "cancelled" and store.get_job(waiting)["attempts"] == 0

    job = wait_store(running, in_epoch(1, 20), timeout=180)
    st = jobs.cancel("local", running, wait_s=60)  # stops between steps and saves a checkpoint
    assert st["state"] == "cancelled" and "checkpoint" in st["error"]
    assert not local.alive(job["pid"], running)
    assert (local.run_dir(running) / "checkpoints" / "last.json").is_file()
    assert store.get_job(waiting)["state"] == "cancelled"  # a cancelled queued job never starts


def test_cancel_kills_a_worker_that_does_not_stop_in_time(tiny):
    job_id = jobs.submit("local", "train", train_config(epochs=2, items=4000))
    job = wait_store(job_id, in_epoch(1, 5), timeout=180)
    os.kill(job["pid"], 19)  # SIGSTOP: the worker can no longer answer, as if stuck inside a long step
    st = jobs.cancel("local", job_id, wait_s=1.0)
    assert st["state"] == "cancelled" and "killed" in st["error"]
    assert not local.alive(job["pid"], job_id)
    assert jobs.status("local", job_id)["state"] == "cancelled"  # and it stays so


def _submit_in_new_process(config: dict, barrier_file: str | None = None) -> subprocess.Popen:
    """Another app process that queues a job, prints its id and exits (its worker lives on)."""
    code = (
        "import json, os, sys, time\n"
        "from core import jobs\n"
        f"bf = {barrier_file!r}\n"
        "while bf and not os.path.exists(bf): time.sleep(0.005)\n"
        f"print(jobs.submit('local', 'train', json.loads({json.dumps(json.dumps(config))})))\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_two_concurrent_submits_with_one_slot_one_waits_both_finish(tiny, tmp_path):
    go = tmp_path / "go"
    procs = [_submit_in_new_process(train_config(epochs=1, items=40), str(go)) for _ in range(2)]
    go.touch()  # both processes submit at the same moment
    ids = sorted(int(p.communicate(timeout=120)[0].strip()) for p in procs)
    assert all(p.returncode == 0 for p in procs)
    assert len(set(ids)) == 2
    first, second = ids
    states = {store.get_job(first)["state"], store.get_job(second)["state"]}
    assert "queued" in states and states & {"starting", "running"}, states
    # nobody pumps from here on: the finishing worker starts the queued job itself
    done = [wait_store(i, lambda j: j["state"] in store.TERMINAL, timeout=240) for i in ids]
    assert [j["state"] for j in done] == ["succeeded", "succeeded"], [j["error"] for j in done]
    a, b = sorted(done, key=lambda j: j["started_at"])
    assert b["started_at"] >= a["finished_at"]  # never both at once
    assert a["model_id"] != b["model_id"]


def test_job_keeps_running_after_the_submitting_process_exits(tiny):
    proc = _submit_in_new_process(train_config(epochs=2, items=1000))
    job_id = int(proc.communicate(timeout=120)[0].strip())
    assert proc.returncode == 0  # the process that queued the job (an app server) is gone
    job = wait_store(job_id, in_epoch(1, 5), timeout=180)
    assert job["pid"] not in local._children  # not ours: this process re-attaches through the store only
    listed = {j["id"]: j for j in jobs.list_jobs("local", team=True)}
    assert listed[job_id]["state"] == "running"
    st = jobs.wait("local", job_id, timeout=180)
    assert st["state"] == "succeeded", st["error"]
    assert [m["epoch"] for m in st["metrics"]] == [1, 2]


def test_submit_refuses_bad_configuration_naming_the_field(tiny):
    bad = train_config()
    bad["params"]["batch_size"] = 100000
    with pytest.raises(ValidationError, match="batch_size"):
        jobs.submit("local", "train", bad)
    with pytest.raises(UserError, match="nope"):
        jobs.submit("local", "train", train_config(dataset="nope"))
    with pytest.raises(UserError, match="Unknown job type"):
        jobs.submit("local", "paint", {})
    with pytest.raises(UserError, match="early_stopping_patience"):
        jobs.submit("local", "train", train_config(options={"early_stopping_patience": -2}))
    with pytest.raises(UserError, match="unknown.*turbo"):
        jobs.submit("local", "train", train_config(options={"turbo": True}))
    assert store.list_jobs() == []  # nothing queued


def test_tampered_configuration_in_the_store_fails_with_a_clear_message(tiny):
    tampered = train_config(epochs=1, items=40)
    tampered["params"]["image_size"] = 33  # off the 16-pixel grid: the UI and submit would refuse it
    job_id = store.insert_job("local", "train", tampered)  # written straight into the store
    jobs.pump()
    job = wait_store(job_id, lambda j: j["state"] in store.TERMINAL, timeout=120)
    assert job["state"] == "failed"
    assert "image_size" in job["error"] and "33" in job["error"] and "Traceback" not in job["error"]
    assert "ValidationError" in job["traceback"]
    assert job["model_id"] is None
    with pytest.raises(ValidationError, match="image_size"):
        jobs.resume("local", job_id)  # resume validates again


def test_each_queue_slot_gets_one_of_the_servers_own_gpus(monkeypatch):
    """With CUDA_VISIBLE_DEVICES set for the server, slot k's worker sees its k-th entry (ids or UUIDs) alone; unset,
    it sees GPU number k."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, GPU-5f1c,-1")
    assert local.gpu_count() == 2
    assert [local.gpu_for_slot(k) for k in (0, 1)] == ["2", "GPU-5f1c"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert local.gpu_for_slot(1) == "1"

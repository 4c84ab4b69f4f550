"""Background jobs: a queue in the store, each job its own worker process, cancel and resume that always work.

The interface (``submit``, ``status``, ``progress``, ``cancel``, ``resume``, ``extend``, ``list_jobs``, ``logs``)
hides the backend: today the local one (``core.jobs.local``: a process per job on this machine); a distributed
backend would replace ``pump`` and the process checks without touching the pages. Every state lives in the store, so
the app re-attaches to running jobs after a restart simply by reading it.

The queue moves on whoever is watching: a finishing worker starts the next queued job, and every call to
``list_jobs``/``status``/``queue_summary`` "pumps" the queue (marks dead workers interrupted, starts queued jobs while
fewer than ``local.max_jobs()`` run).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable

from core import paths, settings
from core.errors import UserError, ValidationError
from core.jobs import local, runners
from core.models import GENERAL
from core.records import JobCurves, JobListing, JobProgress, JobRow, JobStatus, JobSummary, QueueSummary
from core.store import jobs as store
from core.store.jobs import ACTIVE, RESUMABLE, STATES, TERMINAL
from core.users import User, as_user, can_change, can_see, check_visibility, require_owner, require_role

__all__ = [
    "ACTIVE",
    "RESUMABLE",
    "STATES",
    "TERMINAL",
    "cancel",
    "describe",
    "extend",
    "list_jobs",
    "logs",
    "metrics",
    "progress",
    "pump",
    "queue_summary",
    "resume",
    "share_job",
    "status",
    "submit",
    "wait",
]

DEAD_MESSAGE = ("The worker process stopped unexpectedly (killed, out of memory or the machine restarted); "
                "Resume continues from the last completed epoch.")


def describe(job: JobRow) -> str:
    """What a job does, in a few words: ``classifier Clarifai_InceptionV2 on birds -> my-model``."""
    cfg = job.get("config") or {}
    if job.get("type") == "train":
        text = f"{cfg.get('kind', '?')} {cfg.get('template', '?')} on {cfg.get('dataset', '?')}"
        return text + (f" -> {cfg['name']}" if cfg.get("name") else "")
    if job.get("type") == "index":
        return f"index of {cfg.get('dataset', '?')} with {cfg.get('model', GENERAL)} model"
    if job.get("type") == "map":
        return f"UMAP map of {cfg.get('dataset', '?')} with {cfg.get('model', GENERAL)} model"
    if job.get("type") == "quality":
        return f"quality check of {cfg.get('dataset', '?')} with {cfg.get('model', GENERAL)} model"
    return str(job.get("type"))


def submit(user: User | str, job_type: str, config: dict, *, parent_id: int | None = None) -> int:
    """Check ``config`` and queue a job of ``user``'s; returns its id at once. Raises UserError naming a bad field."""
    user = as_user(user)
    require_role(user, "member", "starting a job")
    owner = user.name
    limit = settings.get("max_queued_jobs")
    waiting = sum(n for state, n in store.count_by_state(owner).items() if state in ("queued", *ACTIVE))
    if waiting >= limit:
        raise UserError(f"You have {waiting} jobs queued or running, the most one user may have (max_queued_jobs = "
                        f"{limit}); wait for one to finish, or cancel one")
    config = runners.validate(job_type, owner, copy.deepcopy(config))
    local.inline()  # a job_backend setting that is not one of its values is refused before anything is queued
    job_id = store.insert_job(owner, job_type, config, parent_id=parent_id)
    local.job_dir(job_id)
    pump()
    return job_id


# ---------------------------------------------------------------- the queue


def reap() -> list[int]:
    """Mark active jobs whose worker is gone as interrupted (cancelled if a cancel was asked); return their ids."""
    local.reap_children()
    here, stale, t = local.host(), local.stale_s(), time.time()
    dead: list[int] = []
    for job in store.list_jobs(states=ACTIVE):
        hb = job["heartbeat_at"] or 0.0
        if job["pid"] is None:  # claimed, never launched (the pump died in between): back to the queue
            if t - hb > stale:
                store.unclaim(job["id"], hb)
            continue
        if job["host"] == here:  # on this machine the process table decides
            if not local.alive(job["pid"], job["id"]) and store.mark_dead(job["id"], None, DEAD_MESSAGE):
                dead.append(job["id"])
        elif t - hb > stale and store.mark_dead(job["id"], hb, DEAD_MESSAGE):  # elsewhere: the heartbeat decides
            dead.append(job["id"])
    return dead


def pump() -> list[int]:
    """Reap dead workers, then start queued jobs while there is a free slot; returns the ids started."""
    reap()
    started: list[int] = []
    if not store.count_by_state().get("queued"):
        return started
    while True:
        job = store.claim_next(local.max_jobs(), max(local.gpu_count(), 1))
        if job is None:
            return started
        if local.inline():  # job_backend "inline": run it here, to the end, before the caller goes on
            from core.jobs import worker

            store.set_launched(job["id"], os.getpid(), local.host())
            started.append(job["id"])
            worker.run(job["id"], inline=True)
            continue
        try:
            pid = local.launch(job["id"], job.get("slot") or 0)
        except OSError as exc:
            store.finish(job["id"], "failed", error=f"The worker process could not be started: {exc}")
            continue
        store.set_launched(job["id"], pid, local.host())
        started.append(job["id"])


# ---------------------------------------------------------------- reading


def _job(user: User | str, job_id: int) -> JobRow:
    """The job ``user`` sees; one it may not see answers exactly like a missing one."""
    job = store.get_job(job_id)
    if not can_see(user, job):
        raise store.not_found(job_id)
    return job


def _own_job(user: User | str, job_id: int) -> JobRow:
    job = _job(user, job_id)
    require_owner(user, job, f"Job {job['id']}")
    return job


def _progress_of(job: JobRow) -> JobProgress:
    p = JobProgress(**(job["progress"] or {}))
    params = (job.get("config") or {}).get("params") or {}
    p.setdefault("num_epochs", params.get("num_epochs"))
    if job["state"] == "succeeded":
        p["fraction"] = 1.0
    p["state"] = job["state"]
    beat = job["heartbeat_at"]
    p["heartbeat_age_s"] = round(time.time() - beat, 1) if beat else None
    return p


def _summary(job: JobRow) -> JobSummary:
    p = job["progress"] or {}
    return {
        "id": job["id"], "owner": job["owner"], "visibility": job["visibility"], "type": job["type"],
        "state": job["state"], "what": describe(job),
        "created_at": job["created_at"], "started_at": job["started_at"], "finished_at": job["finished_at"],
        "epoch": p.get("epoch"), "num_epochs": p.get("num_epochs") or ((job["config"] or {}).get("params") or {})
        .get("num_epochs"), "fraction": 1.0 if job["state"] == "succeeded" else p.get("fraction"),
        "eta_s": p.get("eta_s"), "error": job["error"], "model_id": job["model_id"], "index_id": job["index_id"],
        "parent_id": job["parent_id"], "attempts": job["attempts"],
    }


def status(user: User | str, job_id: int) -> JobStatus:
    """Everything about one job except its step curve: state, what, progress, metrics per epoch, error, result."""
    pump()
    job = _job(user, job_id)
    return {
        **_summary(job), "config": job["config"], "progress": _progress_of(job), "metrics": job["history"] or [],
        "traceback": job["traceback"] if can_change(user, job) else None,  # server paths: its owner and admins
        "result": job["result"], "cancel_requested": job["cancel_requested"],
        "pid": job["pid"], "host": job["host"], "log_path": str(local.log_path(job["id"])),
        "position": store.queue_positions().get(job["id"]) if job["state"] == "queued" else None,
    }


def progress(user: User | str, job_id: int) -> JobProgress:
    """The latest progress (epoch, step, images/s, ETA, loss, lr, fraction, device, memory); no pumping."""
    return _progress_of(_job(user, job_id))


def metrics(user: User | str, job_id: int) -> JobCurves:
    """Curves so far: ``history`` (one dict per epoch) and ``series`` ([epochs_done, loss, lr] points per step)."""
    job = _job(user, job_id)
    return {"history": job["history"] or [], "series": job["series"] or []}


def list_jobs(user: User | str, team: bool = False, limit: int | None = None) -> list[JobListing]:
    """The user's jobs, newest first, after pumping the queue; with ``team`` also the jobs others shared with the
    team (an admin's ``team`` view is every job)."""
    pump()
    positions = store.queue_positions()
    return [{**_summary(j), "position": positions.get(j["id"])}
            for j in store.list_jobs(user, team=team, limit=limit)]


def queue_summary(user: User | str) -> QueueSummary:
    """The queue at a glance for the home page: counts by state over the whole server (the queue is shared: they
    say how long a new job waits), how many run and wait, the running jobs the user sees (``active``: id, owner,
    what, epoch, fraction, ETA) and the concurrency limit."""
    pump()
    counts = {s: 0 for s in STATES}
    counts.update(store.count_by_state())
    running = [j for j in store.list_jobs(None, states=ACTIVE)]
    active = [_summary(j) for j in running if can_see(user, j)]
    return {"counts": counts, "running": len(running), "queued": counts["queued"], "active": active,
            "max_jobs": local.max_jobs()}


def logs(user: User | str, job_id: int, tail: int = 200) -> str:
    """The last ``tail`` lines of the job's log (worker output, progress lines, tracebacks)."""
    _job(user, job_id)
    path = local.log_path(job_id)
    if not path.is_file():
        return ""
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        chunk, data = 8192, b""
        while size > 0 and data.count(b"\n") <= tail:
            step = min(chunk, size)
            size -= step
            fh.seek(size)
            data = fh.read(step) + data
            chunk *= 2
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-tail:])


def wait(user: User | str, job_id: int, timeout: float | None = None, poll: float = 0.5,
         on_progress: Callable[[JobStatus], None] | None = None) -> JobStatus:
    """Block until the job reaches a final state (pumping meanwhile); returns its status. UserError on timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        st = status(user, job_id)
        if on_progress is not None:
            on_progress(st)
        if st["state"] in TERMINAL:
            return st
        if deadline is not None and time.monotonic() > deadline:
            raise UserError(f"Job {job_id} is still {st['state']} after {timeout:.0f} s")
        time.sleep(poll)


# ---------------------------------------------------------------- acting


def cancel(user: User | str, job_id: int, wait_s: float | None = None) -> JobStatus:
    """Cancel a job: a queued one at once; a running one is asked to stop between steps and save a checkpoint, and
    killed (its whole process group) if it has not stopped within ``wait_s`` (``DEEPTRAIN_CANCEL_GRACE_S``). Never
    returns with the job still shown as running. Returns its status."""
    job = _own_job(user, job_id)
    if job["state"] == "queued" and store.cancel_queued(job_id):
        return status(user, job_id)
    job = store.get_job(job_id)
    if job["state"] not in ACTIVE:
        return status(user, job_id)
    store.request_cancel(job_id)
    grace = local.cancel_grace_s() if wait_s is None else wait_s
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        reap()
        if store.get_job(job_id)["state"] not in ACTIVE:
            _wait_exit(job, 5.0)  # it saved and reported; let it exit (and free its memory) before returning
            return status(user, job_id)
        time.sleep(0.1)
    job = store.get_job(job_id)
    if job["pid"] and job["host"] == local.host():
        local.kill(job["pid"], job_id)
    store.finish(job_id, "cancelled", error=(
        f"Cancelled; the worker did not stop within {grace:.0f} s and was killed. "
        "Resume continues from the last completed epoch."))
    return status(user, job_id)


def _wait_exit(job: JobRow, timeout: float) -> None:
    pid = store.get_job(job["id"])["pid"] or job["pid"]
    if not pid:
        return
    deadline = time.monotonic() + timeout
    while local.alive(pid, job["id"]) and time.monotonic() < deadline:
        time.sleep(0.05)


def resume(user: User | str, job_id: int) -> int:
    """Queue an interrupted, cancelled or failed job again; it continues from its last checkpoint. Returns its id."""
    job = _own_job(user, job_id)
    if job["state"] not in RESUMABLE:
        hint = " Use Extend to train it for more epochs." if job["state"] == "succeeded" else ""
        raise UserError(f"Job {job_id} is {job['state']}: only interrupted, cancelled or failed jobs can be "
                        f"resumed.{hint}")
    runners.validate(job["type"], job["owner"], copy.deepcopy(job["config"]))
    if not store.requeue(job_id, resume=True):
        raise UserError(f"Job {job_id} changed state meanwhile; look at it again")
    pump()
    return job_id


def extend(user: User | str, job_id: int, extra_epochs: int) -> int:
    """A new training job that continues a finished one's checkpoint for ``extra_epochs`` more epochs; its id."""
    job = _own_job(user, job_id)
    if job["type"] != "train":
        raise UserError(f"Job {job_id} is a {job['type']} job; only training jobs can be extended")
    if job["state"] in ("queued", *ACTIVE):
        raise UserError(f"Job {job_id} is {job['state']}; extend it once it has finished")
    try:
        extra = int(extra_epochs)
    except (TypeError, ValueError):
        raise ValidationError(f"extra epochs must be a whole number, got {extra_epochs!r}") from None
    if extra < 1:
        raise ValidationError(f"extra epochs must be at least 1, got {extra}")
    src = local.run_dir(job_id)
    if not any(src.iterdir()):
        raise UserError(f"Job {job_id} left no checkpoint to continue from; start a new job instead")
    config = copy.deepcopy(job["config"])
    params = config.setdefault("params", {})
    done = max([int(h["epoch"]) for h in job["history"] or []] + [0])
    params["num_epochs"] = max(int(params.get("num_epochs") or 0), done) + extra
    if config.get("name"):
        from core.store.models import unique_name

        config["name"] = unique_name(job["owner"], f"{config['name']}-ext")
    config = runners.validate("train", job["owner"], config)
    # the worker copies the parent's checkpoint into its own run folder before it starts (no race with a pump)
    new_id = store.insert_job(job["owner"], "train", config, parent_id=job_id, resume=True,
                              history=job["history"] or [], series=job["series"] or [])
    pump()
    return new_id


def share_job(user: User | str, job_id: int, visibility: str) -> JobStatus:
    """Make the user's job ``team`` (everyone sees its progress, curves and log, read-only) or ``private`` again."""
    _own_job(user, job_id)
    store.set_visibility(job_id, check_visibility(visibility))
    return status(user, job_id)


def jobs_root() -> str:
    """Where job folders live (for the UI's facts)."""
    return str(paths.subdir("jobs"))

"""Every query on the jobs table: the queue, atomic claims, heartbeats, progress and final states.

A job moves through explicit states: queued -> starting -> running -> succeeded | failed | cancelled | interrupted;
interrupted, cancelled and failed jobs can be queued again (resume). Every transition is one conditional UPDATE
(``WHERE state IN (...)``), so a worker finishing and a user cancelling at the same moment can never both win, and
the claim that moves a job from queued to starting is a single UPDATE statement under the store's write lock
(``core.store.engine``: SQLite's, or PostgreSQL's advisory lock), so two pumps in two processes never start the same
job nor pass the limit of concurrent jobs. A worker's heartbeat and progress take only their job's row lock
(``transaction(lock="rows")``): on PostgreSQL they never wait behind another writer's commit, and every transition
above still re-checks the row's state in its own UPDATE.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from core.records import JobProgress, JobRow, SeriesPoint
from core.store import access
from core.store.engine import engine, inserted_id, now, transaction
from core.store.schema import jobs
from core.users import NotFound, User, as_user

ACTIVE = ("starting", "running")
TERMINAL = ("succeeded", "failed", "cancelled", "interrupted")
RESUMABLE = ("interrupted", "cancelled", "failed")
STATES = ("queued", *ACTIVE, *TERMINAL)


def _row(row: Any) -> JobRow:
    d = dict(row._mapping)
    d["cancel_requested"] = bool(d.get("cancel_requested"))
    d["resume"] = bool(d.get("resume"))
    return cast(JobRow, d)


def insert_job(owner: str, job_type: str, config: dict, *, parent_id: int | None = None, resume: bool = False,
               history: list[dict[str, Any]] | None = None, series: list[SeriesPoint] | None = None) -> int:
    """Queue a new job and return its id (the autoincrement key: distinct for concurrent submits)."""
    with transaction() as conn:
        res = conn.execute(
            jobs.insert().values(
                owner=owner, type=job_type, state="queued", config=config, cancel_requested=False,
                created_at=now(), parent_id=parent_id, resume=resume, attempts=0, history=history or [],
                series=series or [],
            )
        )
        return inserted_id(res)


def not_found(job_id: Any) -> NotFound:
    """The one answer for a job id that does not exist or that the asker may not see."""
    return NotFound(f"No job with id {job_id}; `python -m core jobs` lists the jobs.")


def get_job(job_id: int) -> JobRow:
    """One job as a dict, whoever owns it; an unknown id is NotFound."""
    try:
        job_id = int(job_id)
    except (TypeError, ValueError):
        raise not_found(job_id) from None
    with engine().connect() as conn:
        row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
    if row is None:
        raise not_found(job_id)
    return _row(row)


def list_jobs(user: User | str | None = None, states: Iterable[str] | None = None, limit: int | None = None,
              team: bool = False) -> list[JobRow]:
    """Jobs, newest first: ``user``'s own (with ``team``, also those ``user`` sees: the team's, every job for an
    admin; every job with user None), optionally in some states."""
    q = sa.select(jobs).order_by(jobs.c.id.desc())
    if user is not None:
        q = q.where(access.visible(jobs, user) if team else jobs.c.owner == as_user(user).name)
    if states is not None:
        q = q.where(jobs.c.state.in_(list(states)))
    if limit:
        q = q.limit(limit)
    with engine().connect() as conn:
        return [_row(r) for r in conn.execute(q)]


def set_visibility(job_id: int, visibility: str) -> None:
    with transaction() as conn:
        conn.execute(jobs.update().where(jobs.c.id == int(job_id)).values(visibility=visibility))


def count_by_state(owner: str | None = None) -> dict[str, int]:
    q = sa.select(jobs.c.state, sa.func.count()).group_by(jobs.c.state)
    if owner is not None:
        q = q.where(jobs.c.owner == owner)
    with engine().connect() as conn:
        return {state: int(n) for state, n in conn.execute(q)}


_AFTER_NOW = 1e12  # a "started at" later than any real time: an owner given a turn in the plan waits for the others


def _queue_order(conn: Connection) -> list[int]:
    """The queued jobs in the order they will start: round-robin across owners, so one user's ten queued jobs do not
    keep another user's single job waiting behind them.

    Each next job is the oldest queued job of the owner with the fewest active jobs, ties going to the owner whose
    last job started longest ago (never: first), then to the owner whose oldest queued job is oldest.
    """
    queued = conn.execute(sa.select(jobs.c.id, jobs.c.owner).where(jobs.c.state == "queued").order_by(jobs.c.id))
    waiting: dict[str, list[int]] = {}
    for job_id, owner in queued:
        waiting.setdefault(owner, []).append(job_id)
    if not waiting:
        return []
    active: dict[str, int] = dict(conn.execute(sa.select(jobs.c.owner, sa.func.count())
                                               .where(jobs.c.state.in_(ACTIVE)).group_by(jobs.c.owner)).all())
    started = dict(conn.execute(sa.select(jobs.c.owner, sa.func.max(jobs.c.started_at))
                                .where(jobs.c.owner.in_(list(waiting))).group_by(jobs.c.owner)).all())
    order: list[int] = []
    turn = {o: (active.get(o, 0), started.get(o) or float("-inf")) for o in waiting}
    for step in range(sum(len(v) for v in waiting.values())):
        owner = min(waiting, key=lambda o: (*turn[o], waiting[o][0]))
        order.append(waiting[owner].pop(0))
        turn[owner] = (turn[owner][0], _AFTER_NOW + step)  # this owner just had a turn: the others go first
        if not waiting[owner]:
            del waiting[owner]
    return order


def queue_positions() -> dict[int, int]:
    """{job id: position (1 = starts next)} for every queued job."""
    with engine().connect() as conn:
        return {job_id: i + 1 for i, job_id in enumerate(_queue_order(conn))}


def claim_next(max_active: int, slots: int) -> JobRow | None:
    """Move the next queued job (:func:`_queue_order`) to ``starting`` if fewer than ``max_active`` jobs are active;
    return it or None.

    The pick is read and claimed in one transaction; the UPDATE re-checks that the job is still queued and that
    fewer than ``max_active`` jobs are active, so two pumps never start one job twice nor exceed the limit. The GPU
    slot (smallest free one below ``slots``) is chosen in the same transaction, while the write lock is held.
    """
    token = uuid.uuid4().hex
    t = now()
    active = sa.select(sa.func.count()).select_from(jobs).where(jobs.c.state.in_(ACTIVE)).scalar_subquery()
    with transaction() as conn:
        order = _queue_order(conn)
        if not order:
            return None
        res = conn.execute(
            jobs.update()
            .where(jobs.c.id == order[0], jobs.c.state == "queued", active < max_active)
            .values(state="starting", claim=token, attempts=jobs.c.attempts + 1, heartbeat_at=t, pid=None,
                    started_at=sa.func.coalesce(jobs.c.started_at, t), finished_at=None)
        )
        if res.rowcount != 1:
            return None
        row = conn.execute(sa.select(jobs).where(jobs.c.claim == token)).one()
        used = {r[0] for r in conn.execute(
            sa.select(jobs.c.slot).where(jobs.c.state.in_(ACTIVE), jobs.c.id != row.id, jobs.c.slot.is_not(None)))}
        slot = next((s for s in range(max(slots, 1)) if s not in used), 0)
        conn.execute(jobs.update().where(jobs.c.id == row.id).values(slot=slot))
    job = _row(row)
    job["slot"] = slot
    return job


def set_launched(job_id: int, pid: int, host: str) -> None:
    """Record the worker process of a claimed job."""
    with transaction() as conn:
        conn.execute(jobs.update().where(jobs.c.id == job_id, jobs.c.state.in_(ACTIVE)).values(pid=pid, host=host))


def take(job_id: int, pid: int, host: str) -> bool:
    """The worker process took its claimed job (still ``starting``); False when it was cancelled meanwhile."""
    with transaction() as conn:
        res = conn.execute(
            jobs.update()
            .where(jobs.c.id == job_id, jobs.c.state == "starting", jobs.c.cancel_requested.is_(False))
            .values(pid=pid, host=host, heartbeat_at=now(), error=None, traceback=None)
        )
        return res.rowcount == 1


def mark_running(job_id: int) -> bool:
    """The run began its first step: starting -> running."""
    with transaction() as conn:
        res = conn.execute(
            jobs.update().where(jobs.c.id == job_id, jobs.c.state == "starting").values(state="running"))
        return res.rowcount == 1


def beat(job_id: int, progress: JobProgress | None = None, series: list[SeriesPoint] | None = None) -> bool:
    """Heartbeat (and the latest progress) from the worker; returns whether a cancel was requested."""
    values: dict[str, Any] = {"heartbeat_at": now()}
    if progress is not None:
        values["progress"] = progress
    if series is not None:
        values["series"] = series
    with transaction(lock="rows") as conn:  # one job's row: never waits behind an import's commit
        conn.execute(jobs.update().where(jobs.c.id == job_id, jobs.c.state.in_(ACTIVE)).values(**values))
        flag = conn.execute(sa.select(jobs.c.cancel_requested).where(jobs.c.id == job_id)).scalar()
    return bool(flag)


def add_history(job_id: int, epoch: int, metrics: dict) -> None:
    """Record one epoch's metrics; an epoch seen again (after a resume) replaces its earlier entry."""
    with transaction(lock="rows") as conn:  # the row stays locked from this read to the commit
        hist = conn.execute(sa.select(jobs.c.history).where(jobs.c.id == job_id).with_for_update()).scalar() or []
        hist = [h for h in hist if int(h.get("epoch", -1)) != int(epoch)]
        hist.append({"epoch": int(epoch), **metrics})
        hist.sort(key=lambda h: h["epoch"])
        conn.execute(jobs.update().where(jobs.c.id == job_id).values(history=hist))


def finish(job_id: int, state: str, *, result: dict | None = None, error: str | None = None,
           traceback: str | None = None, from_states: Iterable[str] = ACTIVE) -> bool:
    """Move a job to a final state if it is still in ``from_states``; False when someone else finished it first."""
    assert state in TERMINAL, state
    values: dict[str, Any] = {"state": state, "finished_at": now(), "error": error, "traceback": traceback}
    if result is not None:
        values["result"] = result
        if result.get("model_id") is not None:
            values["model_id"] = int(result["model_id"])
        if result.get("index_id") is not None:
            values["index_id"] = int(result["index_id"])
    with transaction() as conn:
        res = conn.execute(
            jobs.update().where(jobs.c.id == job_id, jobs.c.state.in_(list(from_states))).values(**values))
        return res.rowcount == 1


def request_cancel(job_id: int) -> None:
    with transaction() as conn:
        conn.execute(jobs.update().where(jobs.c.id == job_id, jobs.c.state.in_(ACTIVE)).values(cancel_requested=True))


def cancel_queued(job_id: int) -> bool:
    """Cancel a job that has not been claimed yet; False when it already left the queue."""
    with transaction() as conn:
        res = conn.execute(
            jobs.update().where(jobs.c.id == job_id, jobs.c.state == "queued")
            .values(state="cancelled", cancel_requested=True, finished_at=now(), error="Cancelled before it started."))
        return res.rowcount == 1


def requeue(job_id: int, *, resume: bool = True, from_states: Iterable[str] = RESUMABLE) -> bool:
    """Put a stopped job back in the queue (resume from its checkpoint); False when it is not in ``from_states``."""
    with transaction() as conn:
        res = conn.execute(
            jobs.update().where(jobs.c.id == job_id, jobs.c.state.in_(list(from_states)))
            .values(state="queued", resume=resume, cancel_requested=False, error=None, traceback=None,
                    finished_at=None, claim=None, pid=None, heartbeat_at=None)
        )
        return res.rowcount == 1


def unclaim(job_id: int, heartbeat_before: float) -> bool:
    """Give a claimed job whose worker never started back to the queue (the pump died between claim and launch)."""
    with transaction() as conn:
        res = conn.execute(
            jobs.update().where(jobs.c.id == job_id, jobs.c.state == "starting", jobs.c.pid.is_(None),
                                jobs.c.heartbeat_at <= heartbeat_before)
            .values(state="queued", claim=None, attempts=jobs.c.attempts - 1)
        )
        return res.rowcount == 1


def mark_dead(job_id: int, heartbeat_before: float | None, error: str) -> bool:
    """An active job whose worker is gone becomes interrupted (cancelled if a cancel was asked for).

    ``heartbeat_before`` guards against a worker that beat again since it was judged stale.
    """
    cond = [jobs.c.id == job_id, jobs.c.state.in_(ACTIVE)]
    if heartbeat_before is not None:
        cond.append(sa.or_(jobs.c.heartbeat_at.is_(None), jobs.c.heartbeat_at <= heartbeat_before))
    cancelled = jobs.c.cancel_requested.is_(True)
    state = sa.case((cancelled, "cancelled"), else_="interrupted")
    message = sa.case((cancelled, "Cancelled; the worker was stopped."), else_=error)
    with transaction() as conn:
        res = conn.execute(jobs.update().where(*cond).values(state=state, finished_at=now(), error=message))
        return res.rowcount == 1


def set_config(job_id: int, config: dict) -> None:
    """Replace a job's stored configuration (used when extending: the new job's own copy)."""
    with transaction() as conn:
        conn.execute(jobs.update().where(jobs.c.id == job_id).values(config=config))

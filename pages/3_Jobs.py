"""Jobs: every background job with its state; the selected one's progress, live curves, log, and what to do next.

Jobs live in the store and run in their own processes, so this page only reads: closing the tab or restarting the
server changes nothing, and the page re-attaches by reading the store again. While the selected job is queued or
running, two fragments redraw it: progress and log every POLL_S, curves every CURVES_S; once it has ended the timers
are off. A change of state (started, finished) redraws the whole page.
"""

from __future__ import annotations

import streamlit as st

from core import jobs, settings, ui
from core.device import worker_priority_text
from core.errors import UserError
from core.jobs import view
from core.users import can_change, has_role

POLL_S = 2.0  # progress bar, images/s, ETA, log tail
# The curves redraw less often (the setting curves_refresh_s, 10 s by default): re-sending three plotly charts costs the
# browser ~0.1 of a core each time, CPU a training worker on the same machine loses (bench/bench_jobs_polling.py);
# progress stays at POLL_S.
CURVES_S = settings.get("curves_refresh_s")

st.set_page_config(page_title="Jobs", layout="wide")
st.title("Jobs")
st.caption("Training and indexing run in the background, one job per GPU (one on a CPU-only server); "
           "you can close this tab and come back. " + worker_priority_text())

user = ui.current_user()
team = st.toggle("Show the team's jobs too", key="jobs_everyone",
                 help="Jobs others shared with the team: you can follow them, not cancel or change them")
rows = jobs.list_jobs(user, team=team)
if not rows:
    st.info("No jobs yet. Start one from the Train page.")
    ui.link_page("pages/2_Train.py", "Go to Train", ":material/model_training:")
    st.stop()

st.dataframe(
    [{"id": r["id"], "state": r["state"] + (f" (#{r['position']} in line)" if r.get("position") else ""),
      "what": r["what"], "who": r["owner"], "created": view.when(r["created_at"]),
      "progress": r["fraction"] or 0.0, "epoch": f"{r['epoch'] or '-'}/{r['num_epochs'] or '?'}",
      "finished": view.when(r["finished_at"])} for r in rows],
    key="jobs_table", hide_index=True,
    column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0)},
)

ids = [r["id"] for r in rows]
if st.session_state.get(ui.NEXT_JOB_KEY) in ids:  # a job just started here or on the Train page
    st.session_state["jobs_selected"] = st.session_state.pop(ui.NEXT_JOB_KEY)
if st.session_state.get("jobs_selected") not in ids:
    st.session_state["jobs_selected"] = ids[0]
by_id = {r["id"]: r for r in rows}
# The label leaves the state out: a keyed select box keeps showing the label it first drew (Streamlit 1.67), so a
# state in it went stale ("starting" beside a finished job); the table above and the panel below show the state.
job_id = st.selectbox("Job", ids, key="jobs_selected", format_func=lambda i: f"#{i} · {by_id[i]['what']}")


try:
    job = jobs.status(user, job_id)
except UserError as exc:
    ui.show_error(exc)
    st.stop()
state = job["state"]
st.session_state["jobs_seen_state"] = state
st.subheader(f"Job {job_id}: {ui.md(job['what'])}")
if state == "failed":
    st.error(ui.md(job["error"] or "The job failed."), icon=view.STATE_ICONS["failed"])
    if job.get("traceback"):
        with st.expander("Traceback"):
            st.code(job["traceback"], language="text")
elif state in ("cancelled", "interrupted"):
    st.warning(ui.md(job["error"] or state.capitalize()), icon=view.STATE_ICONS[state])
elif state == "succeeded":
    done = f" Model {job['model_id']} is on the Models page." if job.get("model_id") else ""
    st.success(f"Finished {view.when(job['finished_at'])}.{done}", icon=view.STATE_ICONS["succeeded"])
job_live = state in ("queued", *jobs.ACTIVE)
# a team job of someone else is followed here, changed only by its owner (and a viewer changes nothing)
mine = has_role(user, "member") and can_change(user, job)


@st.fragment(run_every=POLL_S if job_live else None)
def job_progress(job_id: int) -> None:
    """Progress bar, loss, rate, images/s, ETA, device and the log's tail: redrawn every POLL_S s while live."""
    try:
        st_ = jobs.status(user, job_id)
    except UserError as exc:
        ui.show_error(exc)
        return
    state, p = st_["state"], st_["progress"]
    if state != st.session_state.get("jobs_seen_state"):
        st.rerun()  # started, ended, cancelled: redraw the whole page (messages, buttons, timers)
    line = view.progress_text(state, p, st_.get("position"))
    st.progress(float(p.get("fraction") or 0.0), text=f"{state.capitalize()} · {line}")
    cols = st.columns(5)
    cols[0].metric("Loss", f"{p['loss']:.4f}" if isinstance(p.get("loss"), (int, float)) else "-")
    cols[1].metric("Learning rate", f"{p['lr']:.3e}" if isinstance(p.get("lr"), (int, float)) else "-")
    cols[2].metric("Images/s", f"{p['images_per_sec']:.1f}" if p.get("images_per_sec") else "-")
    cols[3].metric("ETA", view.duration(p.get("eta_s")) if state in jobs.ACTIVE else "-")
    cols[4].metric("Attempts", st_["attempts"])
    st.caption(f"Device: {p.get('device') or '-'}" + (f" ({p['numerics']})" if p.get("numerics") else "")
               + f" · Memory: {view.memory_text(p)} · Owner: {ui.md(st_['owner'])} · "
               f"Created {view.when(st_['created_at'])}"
               + (f" · Extends job {st_['parent_id']}" if st_.get("parent_id") else ""))
    with st.expander("Log", expanded=state in jobs.ACTIVE or state == "failed"):
        st.code(jobs.logs(user, job_id, tail=60) or "(empty)", language="text")


@st.fragment(run_every=CURVES_S if job_live else None)
def job_curves(job_id: int) -> None:
    """Loss, accuracy and learning-rate curves and the per-epoch table: redrawn every CURVES_S seconds while live."""
    curves = jobs.metrics(user, job_id)
    figs = view.figures(curves["history"], curves["series"])
    if figs:
        chart_cols = st.columns(len(figs))
        for col, (name, fig) in zip(chart_cols, figs.items()):
            col.plotly_chart(fig, key=f"jobs_chart_{name}")
    if curves["history"]:
        with st.expander("Metrics per epoch"):
            st.dataframe(curves["history"], hide_index=True, key="jobs_epoch_table")


job_progress(job_id)
job_curves(job_id)

acts = st.columns(4)
if acts[0].button("Cancel", key="jobs_cancel", disabled=state not in ("queued", *jobs.ACTIVE) or not mine,
                  icon=":material/stop_circle:"):
    with st.spinner("Asking the job to stop between steps and save a checkpoint..."):
        jobs.cancel(user, job_id)
    st.rerun()
if acts[1].button("Resume", key="jobs_resume", disabled=state not in jobs.RESUMABLE or not mine,
                  icon=":material/play_arrow:", help="Continue from the last completed epoch"):
    try:
        jobs.resume(user, job_id)
        st.rerun()
    except UserError as exc:
        ui.show_error(exc)
is_train = job["type"] == "train"
extra = acts[2].number_input("More epochs", min_value=1, max_value=1000, value=5, step=1,
                             key="jobs_extend_epochs", disabled=not is_train or not mine)
if acts[2].button("Extend", key="jobs_extend", icon=":material/add_circle:",
                  disabled=not is_train or job_live or not mine,
                  help="A new job that continues this one's checkpoint for more epochs"):
    try:
        st.session_state[ui.NEXT_JOB_KEY] = jobs.extend(user, job_id, int(extra))
        st.rerun()
    except UserError as exc:
        ui.show_error(exc)
if acts[3].button("Clone to new configuration", key="jobs_clone", disabled=not is_train or not has_role(user, "member"),
                  icon=":material/content_copy:", help="Open the Train page filled with this configuration"):
    cfg = job["config"]
    ui.prefill_train(cfg["kind"], cfg["template"], cfg.get("params") or {}, cfg.get("dataset"), cfg.get("options"))
    ui.go_to_page("pages/2_Train.py", "Train")
ui.share_toggle(user, job, lambda visibility: jobs.share_job(user, job_id, visibility), key="jobs_share",
                help="Everyone on this server can then follow this job's progress, curves and log")

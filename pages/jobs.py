"""Jobs: launch batch jobs (separate processes) and follow them: progress, elapsed time, log, errors, cancel."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.app import queries
from core.runner import launcher
from core.runner.options import Option
from core.runner.registry import get_job
from core.store.workspace import Workspace, WorkspaceError
from pages._session import data_roots, died_jobs, refresh, view, workspace

ws = workspace()
st.title("Jobs")
store = ws.jobs()
store.init()
dead = died_jobs(ws)
if dead:
    st.warning(f"{len(dead)} job(s) whose process had died are now marked failed: {', '.join(dead)}")

# -- launch ---------------------------------------------------------------------------------------
# Options naming something of the workspace (Option.picker) get a picker; '' means the job's own default.

def _picker_options(what: str) -> tuple[list[str], dict[str, str]]:
    if what == "classifier":
        ids = view(queries.classifier_ids)
        return ids, view(queries.model_labels, ids)
    if what == "selection":
        sels = view(queries.selections)
        return sels.selection_id.tolist(), {r.selection_id: f"{r.selection_id} · {r.name} ({r.n_items} images)"
                                            for r in sels.itertuples()}
    if what == "slice_run":
        return view(queries.slice_runs).run_id.tolist(), {}
    return view(queries.embedders).embedder_id.tolist(), {}


def _option_widget(kind: str, opt: Option):
    key = f"opt_{kind}_{opt.name}"
    label = opt.flag.lstrip("-").replace("-", " ")
    help_text = opt.help or None
    if opt.picker and opt.kind in ("text", "list"):
        ids, names = _picker_options(opt.picker)
        if opt.kind == "list":
            return st.multiselect(label, ids, format_func=lambda i: names.get(i, i), key=key,
                                  help=(help_text or "") + " (none: the job's default)")
        return st.selectbox(label, ["", *ids], format_func=lambda i: names.get(i, i) if i else "(default)",
                            key=key, help=help_text)
    if opt.kind == "flag":
        return st.checkbox(label, value=bool(opt.default), key=key, help=help_text)
    if opt.kind == "choice":
        choices = list(opt.choices or [])
        return st.selectbox(label, choices, index=choices.index(str(opt.default)) if str(opt.default) in choices
                            else 0, key=key, help=help_text)
    if opt.kind == "list" and opt.choices:
        return st.multiselect(label, list(opt.choices), default=list(opt.default or []), key=key, help=help_text)
    if opt.kind == "list":  # free values, one per comma-separated part
        text = st.text_input(label, value=", ".join(map(str, opt.default or [])), key=key,
                             help=(help_text or "") + " (comma-separated)")
        return [v.strip() for v in text.split(",") if v.strip()]
    return st.text_input(label, value="" if opt.default is None else str(opt.default), key=key, help=help_text,
                         placeholder="(job default)" if opt.default is None else None)


def _option_grid(kind: str, options: list[Option], values: dict) -> None:
    groups: dict[str, list[Option]] = {}
    for opt in options:
        groups.setdefault(opt.group, []).append(opt)
    for group, opts in groups.items():
        if group:
            st.markdown(f"**{group}**")
        cols = st.columns(3)
        for i, opt in enumerate(opts):
            with cols[i % 3]:
                values[opt.name] = _option_widget(kind, opt)


kinds = launcher.job_kinds()
with st.expander("Launch a job", expanded=True):
    kind = st.selectbox("Job", kinds, key="jobs_kind")
    spec = get_job(kind)
    st.caption(spec.summary)
    with st.form(f"jobs_form_{kind}", border=False):
        target = None
        if spec.creates_workspace and kind == "demo":
            target = st.text_input("New workspace folder for the demo", key="opt_demo_target",
                                   value=str(ws.root.parent / "demo"),
                                   help="The demo generates its data into a new workspace")
        values: dict = {}
        _option_grid(kind, [o for o in spec.options if not o.advanced], values)
        advanced = [o for o in spec.options if o.advanced]
        if advanced:
            with st.expander("Advanced"):
                _option_grid(kind, advanced, values)
        submitted = st.form_submit_button(f"Launch {kind}", type="primary")
    if submitted:
        try:
            roots = data_roots(ws)
            launcher.check_paths(kind, values, roots)  # job paths only inside the data roots
            args = launcher.build_args(kind, values)
            run_ws = ws
            if target is not None:
                target_path = Path(target or "").expanduser().resolve()
                if not any(target_path.is_relative_to(r) for r in roots):
                    raise ValueError(f"{target_path} is outside the data roots this app may use "
                                     f"({', '.join(map(str, roots))}); start the app with --data-root DIR")
                run_ws = Workspace.create(target_path, exist_ok=True)
            job_id = launcher.launch(run_ws, kind, args)
        except (ValueError, SystemExit, WorkspaceError) as exc:
            st.error(f"Could not launch {kind}: {exc if str(exc) not in ('2', '') else 'invalid arguments'}")
        else:
            refresh()
            st.session_state["jobs_selected"] = job_id
            where = "" if run_ws == ws else f" in workspace `{run_ws.root}` (open it in the sidebar)"
            st.success(f"Launched `{job_id}`{where}: `{kind} {' '.join(args)}`")


# -- the job table (polled while jobs run) --------------------------------------------------------

def _elapsed(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:  # None or NaN
        return "–"
    m, s = divmod(int(seconds), 60)
    return f"{m}:{s:02d}" if m < 60 else f"{m // 60}h{m % 60:02d}"


def job_list() -> None:
    jobs = store.list(limit=100)  # reconciled: a dead job reads as failed
    active = [j for j in jobs if j.is_active]
    was_active = st.session_state.get("jobs_active_ids", set())
    now_active = {j.job_id for j in active}
    st.session_state["jobs_active_ids"] = now_active
    if was_active - now_active:  # a job finished: refresh every page's data
        refresh()
        st.rerun(scope="app")

    st.subheader("Running" if active else "No job running")
    for j in active:
        c1, c2 = st.columns([6, 1])
        c1.progress(float(j.progress), text=f"**{j.kind}** `{j.job_id}` · {j.state} · {_elapsed(j.elapsed)} · "
                                            f"{j.message or ''}")
        if c2.button("Cancel", key=f"cancel_{j.job_id}"):
            launcher.cancel(ws, j.job_id)
            st.toast(f"Cancelling {j.job_id}…")

    st.subheader("All jobs")
    table = view(queries.jobs_table, limit=100)
    if table.empty:
        st.info("No jobs yet.")
        return
    table = table.assign(elapsed=table.elapsed_s.map(_elapsed))
    st.dataframe(table[["job_id", "kind", "state", "progress", "elapsed", "created", "message", "error"]],
                 hide_index=True, key="jobs_table",
                 column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=1)})

    ids = table.job_id.tolist()
    if st.session_state.get("jobs_selected") not in ids:
        st.session_state["jobs_selected"] = ids[0]
    job_id = st.selectbox("Details of", ids, key="jobs_selected")
    job = store.get(job_id)
    st.markdown(f"**{job.kind}** · state **{job.state}** · elapsed {_elapsed(job.elapsed)} · "
                f"`{job.kind} {' '.join(job.args)}`")
    if job.state == "failed" and job.error:
        st.error(job.error)
    elif job.state == "cancelled":
        st.warning(job.error or "cancelled")
    tail = launcher.log_tail(job, lines=30, ws=ws)
    st.code(tail or "(no log output)", language=None)
    if job.result:
        with st.expander("Result"):
            st.json(job.result)


any_active = bool(store.list(active_only=True))
st.fragment(job_list, run_every=2.0 if any_active else None)()

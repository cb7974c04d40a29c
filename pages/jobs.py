"""Jobs: launch batch jobs (separate processes) and follow them: progress, elapsed time, log, errors, cancel,
and what a finished job did (core.app.job_summary) with a link to the page that shows it.

A job's form shows its two or three main options and the rest under Advanced (core.app.job_forms); an empty
field passes no flag, so the job uses its own defaults (the pipeline's), which the placeholder states.
Enter in a field never launches: only the button does."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.app import job_forms, names, queries
from core.app.job_summary import PAGES, duration_text, job_summary
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
    """The ids a picker offers and their names."""
    model_names = view(names.model_names)
    if what == "classifier":
        return view(queries.classifier_ids), model_names
    if what == "selection":
        sels, shown = view(queries.selections), view(names.selection_names)
        return sels.selection_id.tolist(), {r.selection_id: f"{shown.get(r.selection_id, r.name)} ({r.n_items} images)"
                                            for r in sels.itertuples()}
    if what == "slice_run":
        runs = view(queries.slice_runs)
        return runs.run_id.tolist(), {r.run_id: f"{r.n_slices} slices of {model_names.get(r.model_id, r.model_id)} · "
                                                f"{r.created_at:%d %b %H:%M}" for r in runs.itertuples()}
    ids = view(queries.embedders).embedder_id.tolist()
    return ids, {e: names.embedder_name(e, model_names) for e in ids}


PICKER_WORDS = {"classifier": ("classifier", "(the current classifier)"),
                "selection": ("debug-train selection", "(none)"), "slice_run": ("slice run", "(the latest)"),
                "embedder": ("embedder", "(the default)")}


def _option_widget(kind: str, opt: Option, hint: str | None = None):
    key = f"opt_{kind}_{opt.name}"
    label = opt.flag.lstrip("-").replace("-", " ")
    if opt.picker and opt.kind == "text":
        label, empty = PICKER_WORDS[opt.picker]
    help_text = opt.help or None
    if opt.picker and opt.kind in ("text", "list"):
        ids, shown = _picker_options(opt.picker)
        if opt.kind == "list":
            return st.multiselect(label, ids, format_func=lambda i: shown.get(i, i), key=key,
                                  help=(help_text or "") + " (none: the job's default)")
        return st.selectbox(label, ["", *ids], format_func=lambda i: shown.get(i, i) if i else empty,
                            key=key, help=help_text)
    if opt.kind == "flag":
        return st.checkbox(label, value=bool(opt.default), key=key, help=help_text)
    if opt.kind == "choice":
        choices = list(opt.choices or [])
        if opt.default is None:  # no default of its own: empty passes no flag (the job decides)
            return st.selectbox(label, ["", *choices], format_func=lambda c: c or "(the job's default)", key=key,
                                help=help_text)
        return st.selectbox(label, choices, index=choices.index(str(opt.default)) if str(opt.default) in choices
                            else 0, key=key, help=help_text)
    if opt.kind == "list" and opt.choices:
        return st.multiselect(label, list(opt.choices), default=list(opt.default or []), key=key, help=help_text)
    if opt.kind == "list":  # free values, one per comma-separated part
        text = st.text_input(label, value=", ".join(map(str, opt.default or [])), key=key,
                             help=(help_text or "") + " (comma-separated)")
        return [v.strip() for v in text.split(",") if v.strip()]
    return st.text_input(label, value="" if opt.default is None else str(opt.default), key=key, help=help_text,
                         placeholder=(f"{hint} (default)" if hint else "(job default)") if opt.default is None else None)


def _option_grid(kind: str, options: list[Option], values: dict, hints: dict[str, str], *,
                 grouped: bool = True) -> None:
    groups: dict[str, list[Option]] = {}
    for opt in options:
        groups.setdefault(opt.group if grouped else "", []).append(opt)
    for group, opts in groups.items():
        if group:
            st.markdown(f"**{group}**")
        cols = st.columns(3)
        for i, opt in enumerate(opts):
            with cols[i % 3]:
                values[opt.name] = _option_widget(kind, opt, hints.get(opt.name))


if ws.read_only:
    st.info("Viewer mode: jobs are launched and cancelled in the full app.")
else:
    kinds = launcher.job_kinds()
    with st.expander("Launch a job", expanded=True):
        kind = st.selectbox("Job", kinds, key="jobs_kind")
        spec = get_job(kind)
        st.caption(spec.summary)
        main, advanced = job_forms.form_fields(spec)
        hints = view(job_forms.default_hints, kind)
        with st.form(f"jobs_form_{kind}", border=False, enter_to_submit=False):
            target = None
            if spec.creates_workspace and kind == "demo":
                target = st.text_input("New workspace folder for the demo", key="opt_demo_target",
                                       value=str(ws.root.parent / "demo"),
                                       help="The demo generates its data into a new workspace")
            values: dict = {}
            _option_grid(kind, main, values, hints, grouped=False)
            if advanced:
                with st.expander(f"Advanced ({len(advanced)} more options; empty: the job's default)"):
                    _option_grid(kind, advanced, values, hints)
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
                what = names.job_name(kind, args, models=view(names.model_names), selections=view(names.selection_names))
                st.success(f"Launched **{what}**{where}: `{kind} {' '.join(args)}`. Follow it below.")


# -- the job table (polled while jobs run) --------------------------------------------------------

PAGE_FILES = {page: f"pages/{page}.py" for page in PAGES}


def _name(job) -> str:
    return names.job_name(job.kind, job.args, models=view(names.model_names), selections=view(names.selection_names))


def finished_ui(job) -> None:
    """What a job did: its summary and a link for a success, its error for a failure; the raw result after."""
    if job.state == "succeeded":
        summary = view(job_summary, job.kind, job.result)
        st.success(summary.text)
        if summary.page:
            st.page_link(PAGE_FILES[summary.page], label=summary.link, icon=":material/arrow_forward:")
    elif job.state == "failed" and job.error:
        st.error(job.error)
    elif job.state == "cancelled":
        st.warning(job.error or "cancelled")


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
        c1.progress(float(j.progress), text=f"**{_name(j)}** · {j.state} · {duration_text(j.elapsed)} · "
                                            f"{j.message or ''}")
        if not ws.read_only and c2.button("Cancel", key=f"cancel_{j.job_id}"):
            launcher.cancel(ws, j.job_id)
            st.toast(f"Cancelling {_name(j)}…")

    st.subheader("All jobs")
    table = view(queries.jobs_table, limit=100)
    if table.empty:
        st.info("No jobs yet.")
        return
    by_id = {j.job_id: j for j in jobs}
    table = table.assign(job=[_name(by_id[i]) if i in by_id else k for i, k in zip(table.job_id, table.kind)],
                         elapsed=table.elapsed_s.map(duration_text))
    st.dataframe(table[["job", "state", "progress", "elapsed", "created", "message", "error", "job_id"]],
                 hide_index=True, key="jobs_table",
                 column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=1)})

    ids = table.job_id.tolist()
    if st.session_state.get("jobs_selected") not in ids:
        st.session_state["jobs_selected"] = ids[0]
    labels = dict(zip(table.job_id, table.job + " · " + table.state + " · " + table.created.astype(str)))
    job_id = st.selectbox("Details of", ids, key="jobs_selected", format_func=labels.get)
    job = store.get(job_id)
    st.markdown(f"**{_name(job)}** · state **{job.state}** · took {duration_text(job.elapsed)} · "
                f"`{job.kind} {' '.join(job.args)}`")
    finished_ui(job)
    with st.expander("Log", expanded=job.state != "succeeded"):
        tail = launcher.log_tail(job, lines=30, ws=ws)
        st.code(tail or "(no log output)", language=None)
    if job.result:
        with st.expander("Result (JSON)"):
            st.json(job.result)


any_active = bool(store.list(active_only=True))
st.fragment(job_list, run_every=2.0 if any_active else None)()

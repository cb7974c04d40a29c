"""Widgets the pages share: image galleries of cached thumbnails (captions followed by the image's metadata),
percentages, a job launch button, the choice of what to break accuracy down by, pagination, and the review
grid where a person keeps or drops candidate images and fixes their labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import pandas as pd
import streamlit as st

from core.app.breakdowns import GROUP, breakdown_columns, metadata_captions
from core.app.job_summary import FIX_JOBS, duration_text, jobs_running, time_left
from core.app.names import job_name
from core.store.workspace import Workspace
from pages._session import refresh, view

STATUSES = ["accepted", "rejected"]  # no choice = proposed
DECISION_NAMES = {"accepted": ":material/check: keep", "rejected": ":material/close: drop"}
DECISION_ICONS = {"accepted": ":material/check:", "rejected": ":material/close:"}  # where space is short


def pct(value: float | None) -> str:
    """A fraction in [0, 1] as '12.3%' ('–' when unknown)."""
    return "–" if value is None or pd.isna(value) else f"{100 * value:.1f}%"


def launch_button(ws: Workspace, label: str, kind: str, args: Sequence[str] = (), *, key: str) -> None:
    """A button that starts a job and links to the Jobs page, where it can be followed (none in viewer mode)."""
    from core.runner.launcher import launch

    if ws.read_only:
        return
    if st.button(label, key=key):
        launch(ws, kind, list(args))
        st.success(f"Started: {label[:1].lower() + label[1:]}.")
        st.page_link("pages/jobs.py", label="Follow it on the Jobs page →")


@st.fragment(run_every=5)
def jobs_in_progress(ws: Workspace, kinds: tuple[str, ...], what: str) -> None:
    """While jobs of ``kinds`` run (``what`` they bring: "A fix is being made"): what each is doing and when
    it should be done, from its own progress, refreshed every few seconds; when the last ends, the whole page
    reloads its data and shows what it brought. Call it only while one runs (core.app.job_summary.jobs_running)."""
    running = jobs_running(ws, kinds)
    if not running:
        refresh()
        st.rerun(scope="app")
    for job in running:
        left = time_left(job)
        when = f"about {duration_text(left)} left" if left is not None else "estimating the time left"
        st.info(f"**{what}**: {job_name(job.kind, job.args)} is {100 * job.progress:.0f}% done "
                f"({job.message or job.state}), {when}. It appears here by itself when it lands; the Jobs page "
                f"follows it step by step.", icon=":material/hourglass_top:")
        st.progress(float(job.progress))


def fix_in_progress(ws: Workspace) -> None:
    """:func:`jobs_in_progress` for the jobs that bring a fix."""
    jobs_in_progress(ws, FIX_JOBS, "A fix is being made")


def breakdown_ui(*, key: str) -> str | None:
    """What to break accuracy down by: the ground-truth group (where there is one) or a metadata column; None
    (after saying how to get some) when the workspace has neither."""
    columns = view(breakdown_columns)
    if not columns:
        st.caption("No groups and no metadata here. A manifest's extra columns (site, camera, date ...) are kept as "
                   "image metadata at ingest, and accuracy can then be broken down by each.")
        return None
    return st.selectbox("Break down by", columns, key=key,
                        format_func=lambda c: "group (ground truth)" if c == GROUP else c)


BREAKDOWN_NOTE = ("n: images; 95% interval: Wilson's, on n images. Numbers are cut into up to 5 bins of about "
                  "as many images each, dates into months (years over a longer span).")


# -- images ---------------------------------------------------------------------------------------

def thumb(ws: Workspace, image_id: int, path: str, size: int = 128) -> str:
    """Path of the image's cached thumbnail (made once, under artifacts/thumbs), '' when unreadable."""
    from core.data.images import thumbnail

    try:
        return str(thumbnail(path, ws.cache_dir("thumbs"), int(image_id), size=size))
    except (OSError, ValueError):
        return ""


def gallery(ws: Workspace, df: pd.DataFrame, caption: Callable[[pd.Series], str], *, columns: int = 6,
            below: Callable[[pd.Series], None] | None = None, width: int = 128) -> None:
    """Thumbnails of ``df`` (image_id, path), each with a caption followed by the image's metadata (``site=north
    · camera=X``); with ``below``, a grid of ``columns`` with widgets under each image, else one flowing row of
    images."""
    if df.empty:
        st.caption("No images.")
        return
    about = view(metadata_captions, [int(i) for i in df.image_id])
    if about:
        plain = caption

        def caption(r: pd.Series) -> str:
            more = about.get(int(r.image_id))
            return f"{plain(r)} · {more}" if more else plain(r)
    if below is None:
        items = [(thumb(ws, r.image_id, r.path), caption(r)) for _, r in df.iterrows()]
        items = [(t, c) for t, c in items if t]
        if items:
            st.image([t for t, _ in items], caption=[c for _, c in items], width=width)
        if len(items) < len(df):
            st.caption(f"{len(df) - len(items)} image(s) could not be read.")
        return
    for start in range(0, len(df), columns):
        cols = st.columns(columns)
        for col, (_, r) in zip(cols, df.iloc[start:start + columns].iterrows()):
            with col:
                t = thumb(ws, r.image_id, r.path)
                if t:
                    st.image(t, caption=caption(r), width=width)
                else:
                    st.caption(f"{caption(r)} (image missing)")
                below(r)


def paginate(df: pd.DataFrame, *, key: str, per_page: int = 10) -> pd.DataFrame:
    """The rows of the page chosen with a page number input (shown only when there is more than one page)."""
    n_pages = max(1, -(-len(df) // per_page))
    page = st.number_input(f"Page (of {n_pages})", 1, n_pages, 1, key=key) if n_pages > 1 else 1
    return df.iloc[(page - 1) * per_page: page * per_page]


# -- the review grid ------------------------------------------------------------------------------

class Decide(Protocol):
    """Records a decision on some images: a new status ('accepted', 'rejected', 'proposed') and/or label."""

    def __call__(self, image_ids: list[int], *, status: str | None = None, label: int | None = None) -> None: ...


@dataclass(frozen=True)
class GridKeys:
    """The widget keys of one review grid; ``status``, ``label`` and ``group`` are prefixes, followed by an
    image id."""

    keep_rest: str
    drop_rest: str
    reset: str
    bulk_label: str
    relabel_all: str
    page: str
    status: str
    label: str
    group: str = ""


def tally_text(items: pd.DataFrame) -> str:
    """What the review decided and what training will do with it, e.g. '5 reviewed (4 kept, 1 dropped) · 393
    not reviewed: trained on as proposed unless dropped · 397 images to train with'."""
    n_acc, n_rej = int((items.status == "accepted").sum()), int((items.status == "rejected").sum())
    n_open = len(items) - n_acc - n_rej
    text = f"{n_acc + n_rej} reviewed ({n_acc} kept, {n_rej} dropped)"
    if n_open:
        text += f" · **{n_open} not reviewed: trained on as proposed unless dropped**"
    return text + f" · {len(items) - n_rej} images to train with"


def review_grid(ws: Workspace, items: pd.DataFrame, classes: list[str], *, keys: GridKeys, decide: Decide,
                reset: Callable[[], None], caption: Callable[[pd.Series], str],
                sources: pd.DataFrame | None = None, source_caption: Callable[[pd.Series], str] | None = None,
                per_group: int = 10) -> tuple[int, int]:
    """Bulk actions (keep / drop the images not reviewed yet, reset, relabel all), a page of ``items``
    (image_id, path, status, label) each with a keep / drop decision and a label, and a tally saying what
    training does with the images not reviewed. With ``sources`` (image_id, path of the error images the
    items were retrieved for; items carry ``source_image_id``), each page shows a few error images, each
    beside its own candidates (at most ``per_group``), with keep / drop for the group. Every change goes
    through ``decide`` (``reset`` undoes them all). The widgets show ``items`` as given, so pass them with the
    decisions applied. Returns (kept, dropped) counts."""
    if ws.read_only:  # a viewer sees the images and their decisions, and changes none
        gallery(ws, paginate(items, key=keys.page), lambda r: f"{caption(r)} · {DECISION_NAMES.get(r.status, 'not reviewed')}",
                width=110)
        st.markdown(tally_text(items))
        return int((items.status == "accepted").sum()), int((items.status == "rejected").sum())
    ids = [int(i) for i in items.image_id]
    open_ids = [int(i) for i, s in zip(items.image_id, items.status) if s not in STATUSES]
    b1, b2, b3, b4, b5 = st.columns([1, 1, 1, 1.4, 1])
    b1.button("Keep the rest", key=keys.keep_rest, on_click=decide, args=(open_ids,), kwargs={"status": "accepted"},
              help="Keep every image not reviewed yet", disabled=not open_ids)
    b2.button("Drop the rest", key=keys.drop_rest, on_click=decide, args=(open_ids,), kwargs={"status": "rejected"},
              help="Drop every image not reviewed yet: train only on what you kept", disabled=not open_ids)
    b3.button("Reset all", key=keys.reset, on_click=reset, help="Undo the decisions: every image back to not reviewed")
    b4.selectbox("Relabel all to", range(len(classes)), format_func=lambda c: classes[c], key=keys.bulk_label,
                 label_visibility="collapsed")
    b5.button("Relabel all", key=keys.relabel_all,
              on_click=lambda: decide(ids, label=st.session_state[keys.bulk_label]))
    if sources is None or "source_image_id" not in items:
        gallery(ws, paginate(items, key=keys.page), caption, columns=5, below=_decision_widgets(keys, decide, classes),
                width=110)
    else:
        below = _decision_widgets(keys, decide, classes, compact=True)
        order = [s for s in sources.image_id if s in set(items.source_image_id)]
        shown = sources.set_index("image_id").loc[order].reset_index()
        for _, src in paginate(shown, key=keys.page, per_page=3).iterrows():
            _group(ws, src, items[items.source_image_id == src.image_id], keys=keys, decide=decide, caption=caption,
                   source_caption=source_caption, below=below, limit=per_group)
    st.markdown(tally_text(items))
    return int((items.status == "accepted").sum()), int((items.status == "rejected").sum())


def _decision_widgets(keys: GridKeys, decide: Decide, classes: list[str], *,
                      compact: bool = False) -> Callable[[pd.Series], None]:
    def _from_widget(iid: int, what: str) -> None:
        value = st.session_state[f"{getattr(keys, what)}{iid}"]
        decide([iid], **({"status": value or "proposed"} if what == "status" else {"label": value}))

    def widgets(r: pd.Series) -> None:
        iid = int(r.image_id)
        skey, lkey = f"{keys.status}{iid}", f"{keys.label}{iid}"
        st.session_state[skey] = r.status if r.status in STATUSES else None
        st.session_state[lkey] = int(r.label) if pd.notna(r.label) else None
        st.segmented_control("decision", STATUSES, key=skey, label_visibility="collapsed",
                             format_func=(DECISION_ICONS if compact else DECISION_NAMES).get,
                             on_change=_from_widget, args=(iid, "status"), help="keep / drop" if compact else None)
        st.selectbox("label", range(len(classes)), key=lkey, format_func=lambda c: classes[c],
                     label_visibility="collapsed", on_change=_from_widget, args=(iid, "label"))

    return widgets


def source_image(ws: Workspace, src: pd.Series, caption: str) -> None:
    """The error image a group of candidates was retrieved for, with its caption (beside the group)."""
    t = thumb(ws, src.image_id, src.path)
    if t:
        st.image(t, width=120)
    st.caption(caption)


def _group(ws: Workspace, src: pd.Series, group: pd.DataFrame, *, keys: GridKeys, decide: Decide,
           caption: Callable[[pd.Series], str], source_caption: Callable[[pd.Series], str] | None,
           below: Callable[[pd.Series], None], limit: int) -> None:
    """One error image beside the candidates retrieved for it."""
    gids = [int(i) for i in group.image_id]
    with st.container(border=True):
        left, right = st.columns([1, 5])
        with left:
            source_image(ws, src, (source_caption(src) if source_caption else f"#{src.image_id}") +
                         f" · {len(group)} found")
            g1, g2 = st.columns(2)
            g1.button(":material/check:", key=f"{keys.group}keep_{src.image_id}", help="Keep these", on_click=decide,
                      args=(gids,), kwargs={"status": "accepted"})
            g2.button(":material/close:", key=f"{keys.group}drop_{src.image_id}", help="Drop these", on_click=decide,
                      args=(gids,), kwargs={"status": "rejected"})
        with right:
            gallery(ws, group.head(limit), caption, columns=5, below=below, width=96)
            if len(group) > limit:
                st.caption(f"and {len(group) - limit} more for this image (kept or dropped with the buttons on the "
                           f"left, or with Keep / Drop the rest)")

"""Widgets the pages share: image galleries of cached thumbnails, percentages, a job launch button,
pagination, and the review grid where a person keeps or drops candidate images and fixes their labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import pandas as pd
import streamlit as st

from core.store.workspace import Workspace

STATUSES = ["accepted", "rejected"]  # no choice = proposed
DECISION_NAMES = {"accepted": ":material/check: keep", "rejected": ":material/close: drop"}


def pct(value: float | None) -> str:
    """A fraction in [0, 1] as '12.3%' ('–' when unknown)."""
    return "–" if value is None or pd.isna(value) else f"{100 * value:.1f}%"


def launch_button(ws: Workspace, label: str, kind: str, args: Sequence[str] = (), *, key: str) -> None:
    """A button that starts a job and points to the Jobs page."""
    from core.runner.launcher import launch

    if st.button(label, key=key):
        job_id = launch(ws, kind, list(args))
        st.success(f"Started job `{job_id}`: follow it on the Jobs page.")


# -- images ---------------------------------------------------------------------------------------

def thumb(ws: Workspace, image_id: int, path: str, size: int = 128) -> str:
    """Path of the image's cached thumbnail (made once, under artifacts/thumbs), '' when unreadable."""
    from core.data.images import thumbnail

    try:
        return str(thumbnail(path, ws.artifact_dir("thumbs"), int(image_id), size=size))
    except (OSError, ValueError):
        return ""


def gallery(ws: Workspace, df: pd.DataFrame, caption: Callable[[pd.Series], str], *, columns: int = 6,
            below: Callable[[pd.Series], None] | None = None, width: int = 128) -> None:
    """Thumbnails of ``df`` (image_id, path), each with a caption; with ``below``, a grid of ``columns``
    with widgets under each image, else one flowing row of images."""
    if df.empty:
        st.caption("No images.")
        return
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
    """The widget keys of one review grid; ``status`` and ``label`` are prefixes, followed by an image id."""

    accept_all: str
    reject_all: str
    reset: str
    bulk_label: str
    relabel_all: str
    page: str
    status: str
    label: str


def review_grid(ws: Workspace, items: pd.DataFrame, classes: list[str], *, keys: GridKeys, decide: Decide,
                reset: Callable[[], None], caption: Callable[[pd.Series], str]) -> tuple[int, int]:
    """Bulk actions, a page of ``items`` (image_id, path, status, label) each with a keep / drop decision and
    a label, and a tally; every change goes through ``decide`` (``reset`` undoes them all). The widgets show
    ``items`` as given, so pass them with the decisions applied. Returns (accepted, rejected) counts."""
    ids = [int(i) for i in items.image_id]

    def _from_widget(iid: int, what: str) -> None:
        value = st.session_state[f"{getattr(keys, what)}{iid}"]
        decide([iid], **({"status": value or "proposed"} if what == "status" else {"label": value}))

    b1, b2, b3, b4, b5 = st.columns([1, 1, 1, 1.4, 1])
    b1.button("Accept all", key=keys.accept_all, on_click=decide, args=(ids,), kwargs={"status": "accepted"})
    b2.button("Reject all", key=keys.reject_all, on_click=decide, args=(ids,), kwargs={"status": "rejected"})
    b3.button("Reset all", key=keys.reset, on_click=reset, help="Undo the decisions: every image back to proposed")
    b4.selectbox("Relabel all to", range(len(classes)), format_func=lambda c: classes[c], key=keys.bulk_label,
                 label_visibility="collapsed")
    b5.button("Relabel all", key=keys.relabel_all,
              on_click=lambda: decide(ids, label=st.session_state[keys.bulk_label]))

    def _decision_widgets(r: pd.Series) -> None:
        iid = int(r.image_id)
        skey, lkey = f"{keys.status}{iid}", f"{keys.label}{iid}"
        st.session_state[skey] = r.status if r.status in STATUSES else None
        st.session_state[lkey] = int(r.label) if pd.notna(r.label) else None
        st.segmented_control("decision", STATUSES, key=skey, label_visibility="collapsed",
                             format_func=DECISION_NAMES.get, on_change=_from_widget, args=(iid, "status"))
        st.selectbox("label", range(len(classes)), key=lkey, format_func=lambda c: classes[c],
                     label_visibility="collapsed", on_change=_from_widget, args=(iid, "label"))

    gallery(ws, paginate(items, key=keys.page), caption, columns=5, below=_decision_widgets, width=110)
    n_acc, n_rej = int((items.status == "accepted").sum()), int((items.status == "rejected").sum())
    st.caption(f"{n_acc} accepted · {n_rej} rejected · {len(items) - n_acc - n_rej} undecided (kept as "
               f"proposed; rejected images are left out of training)")
    return n_acc, n_rej

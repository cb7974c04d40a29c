"""Every page of the app, driven headlessly with streamlit.testing.v1.AppTest against a copy of the tiny
pipeline workspace; assertions are on what the pages show (counts, table rows, metrics, images) and on what
their actions write."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
import streamlit as st
from helpers import copy_workspace
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.app import queries as views
from core.runner import launcher

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")
PLAN = {"train": 120, "test": 40, "error_sample": 8, "error_heldout": 24, "pool": 200}


@pytest.fixture()
def app(ws_copy, monkeypatch):
    """A fresh AppTest on the test's private copy of the tiny pipeline workspace (``ws_copy`` of conftest, given
    by DCD_WORKSPACE; the pages write to it), with Streamlit's caches cleared."""
    ws, _ = ws_copy
    monkeypatch.setenv("DCD_WORKSPACE", str(ws.root))
    st.cache_data.clear()
    st.cache_resource.clear()

    def open_page(page: str | None = None) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=90)
        at.run()
        if page:
            at.switch_page(page).run()
        _no_exception(at)
        return at

    return open_page


def _no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _df(at: AppTest, *columns: str):
    """The first st.dataframe shown with all of ``columns`` (AppTest cannot look dataframes up by key)."""
    for d in at.dataframe:
        if set(columns) <= set(d.value.columns):
            return d.value
    raise AssertionError(f"no dataframe with columns {columns}: {[list(d.value.columns) for d in at.dataframe]}")


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def test_overview_shows_counts_metrics_models_and_jobs(app, ws_copy):
    ws, report = ws_copy
    at = app()
    assert at.title[0].value == "Overview"
    counts = _df(at, "split", "total").set_index("split")
    assert counts["total"].to_dict() == PLAN
    assert counts.loc["pool", ["disc", "square"]].sum() == PLAN["pool"]
    base = report["methods"]["baseline"]
    assert _metric(at, "Test accuracy") == _pct(base["test_acc"])
    assert _metric(at, "Debug-heldout accuracy") == _pct(base["error_heldout_acc"])
    models = _df(at, "model_id", "current")
    assert set(models.model_id) == {m["model_id"] for m in report["methods"].values()}
    assert models.loc[models.current, "model_id"].tolist() == [base["model_id"]]
    jobs = _df(at, "job_id", "kind")
    assert {"ingest", "pipeline"} <= set(jobs.kind)
    assert "392 images" in at.sidebar.caption[0].value


def test_errors_page_confusion_cells_groups_and_mistakes(app, ws_copy):
    ws, report = ws_copy
    model = report["methods"]["baseline"]["model_id"]
    at = app("pages/errors.py")
    assert at.selectbox(key="errors_model").value == model
    assert at.selectbox(key="errors_split").value == "error_heldout"
    conf = views.confusion(ws, model, "error_heldout")
    wrong = int(conf.loc[conf.label != conf.pred, "n"].sum())
    assert _metric(at, "Images") == str(PLAN["error_heldout"])
    assert _metric(at, "Mistakes") == str(wrong)
    groups = _df(at, "group", "accuracy")
    assert groups.n.sum() == PLAN["error_heldout"]
    assert groups.accuracy.tolist() == sorted(groups.accuracy.tolist())  # worst first

    # Choosing a cell (what a click on the matrix does) shows exactly that cell's images.
    for label, pred, n in conf[conf.n > 0][["label", "pred", "n"]].itertuples(index=False):
        at.selectbox(key="errors_cell").set_value((label, pred)).run()
        _no_exception(at)
        assert len(at.image[0].value) == min(n, 24)  # the cell's gallery comes first
    at.selectbox(key="errors_split").set_value("test").run()
    assert _metric(at, "Images") == str(PLAN["test"])
    mistakes = _df(at, "image_id", "pred_name")
    expected = views.confident_mistakes(ws, model, "test", limit=18)
    assert mistakes.image_id.tolist() == expected.image_id.tolist()
    assert (mistakes.label_name != mistakes.pred_name).all()
    thumbs = list((ws.artifacts / "thumbs").glob("*.jpg"))
    assert len(thumbs) >= len(expected)  # galleries show cached thumbnails


def test_retrieval_review_and_save_a_selection(app, ws_copy):
    ws, report = ws_copy
    at = app("pages/retrieval.py")
    assert at.selectbox(key="retr_embedder").value == report["embedder"]["embedder_id"]
    k, budget = at.number_input(key="retr_k").value, at.number_input(key="retr_budget").value
    assert (k, budget) == (report["selection"]["k"], report["selection"]["budget"])
    assert len(at.multiselect(key="retr_sources").value) == PLAN["error_sample"]
    n = int(at.subheader[0].value.split()[0])
    saved_dcd = views.selection_review(ws, report["methods"]["dcd"]["selection_id"])
    assert n == len(saved_dcd)  # the same candidates as the select job found

    at.button(key="retr_accept_all").click().run()
    shown = [int(w.key.rsplit("_", 1)[1]) for w in at.get("button_group") if w.key.startswith("cand_status_")]
    assert len(shown) == min(n, 10)  # one page of candidates
    first, second = shown[0], shown[1]
    at.button_group(key=f"cand_status_{first}").set_value("rejected").run()
    at.selectbox(key=f"cand_label_{second}").set_value(1).run()
    assert any(f"{n - 1} accepted · 1 rejected" in c.value for c in at.caption)
    at.text_input(key="retr_name").set_value("reviewed-by-test").run()
    at.button(key="retr_save").click().run()
    _no_exception(at)
    assert at.success and "Saved selection" in at.success[0].value
    sel = ws.df("SELECT selection_id FROM selections WHERE name = 'reviewed-by-test'").selection_id.tolist()
    assert len(sel) == 1
    items = views.selection_review(ws, sel[0]).set_index("image_id")
    assert len(items) == n
    assert items.status.value_counts().to_dict() == {"accepted": n - 1, "rejected": 1}
    assert items.loc[first, "status"] == "rejected" and items.loc[second, "label"] == 1

    # The saved selection, reviewed again in bulk: every item rejected, then written to the workspace.
    at.selectbox(key="retr_saved_sel").set_value(sel[0]).run()
    at.button(key="retr_saved_reject").click().run()
    _no_exception(at)
    assert set(views.selection_review(ws, sel[0]).status) == {"rejected"}


def test_retrieval_with_an_uploaded_image(app, ws_copy):
    ws, _ = ws_copy
    at = app("pages/retrieval.py")
    at.radio(key="retr_source").set_value("upload").run()
    at.number_input(key="retr_k").set_value(7).run()
    at.radio(key="retr_policy").set_value("source").run()
    at.selectbox(key="retr_upload_label").set_value(1).run()
    path = ws.df("SELECT path FROM images WHERE split = 'error_sample' LIMIT 1").path[0]
    buf = io.BytesIO()
    Image.open(path).save(buf, format="PNG")
    at.file_uploader(key="retr_upload").upload("query.png", buf.getvalue(), "image/png").run()
    _no_exception(at)
    assert at.subheader[0].value == "7 candidates"
    labels = [at.selectbox(key=w.key).value for w in at.selectbox if w.key and w.key.startswith("cand_label_")]
    assert labels and set(labels) == {1}  # 'error image's label' = the label given to the upload


def test_jobs_page_launches_lists_and_reconciles(app, ws_copy):
    ws, _ = ws_copy
    store = ws.jobs()
    dead = store.create("embed", [])
    store.start(dead, 2 ** 22 + 12345)  # a pid that does not exist: the process has died
    at = app("pages/jobs.py")
    assert any(dead in w.value for w in at.warning)
    table = _df(at, "job_id", "state")
    assert len(table) == len(store.list())
    assert table.set_index("job_id").loc[dead, "state"] == "failed"

    at.selectbox(key="jobs_kind").set_value("predict").run()
    at.multiselect(key="opt_predict_splits").set_value(["error_sample"])  # submitted with the form
    next(b for b in at.button if b.label == "Launch predict").click().run()
    _no_exception(at)
    assert at.success and "Launched" in at.success[0].value
    job = store.list(limit=1)[0]
    assert job.kind == "predict" and job.args == ["--splits", "error_sample"]
    done = launcher.wait(ws, job.job_id, timeout=120)
    assert done.state == "succeeded", done.error
    at = app("pages/jobs.py")
    table = _df(at, "job_id", "state").set_index("job_id")
    assert table.loc[job.job_id, "state"] == "succeeded"
    assert at.selectbox(key="jobs_selected").value == table.index[0]
    assert any("predicted 8 images" in c.value or "predict" in c.value for c in at.code)


def test_compare_page_table_deltas_and_exports(app, ws_copy):
    ws, report = ws_copy
    m = report["methods"]
    at = app("pages/compare.py")
    chosen = at.multiselect(key="compare_models")
    assert chosen.value[0] == m["baseline"]["model_id"]
    at.multiselect(key="compare_models").set_value([m["baseline"]["model_id"], m["dcd"]["model_id"]]).run()
    _no_exception(at)
    table = _df(at, "eval_set", "metric")
    row = table[(table.eval_set == "error_heldout") & (table.metric == "accuracy")].iloc[0]
    delta = m["dcd"]["error_heldout_acc"] - m["baseline"]["error_heldout_acc"]
    assert row[f"Δ {m['dcd']['model_id']}"] == pytest.approx(delta)
    groups = {r for r in table.eval_set if r.startswith("test/group=")}
    assert len(groups) == 4
    assert _metric(at, "Debug-heldout") == _pct(m["baseline"]["error_heldout_acc"])
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["Download CSV", "Download HTML report"]


@pytest.mark.parametrize("case", ["missing", "not_a_workspace", "old_schema"])
def test_the_app_says_clearly_when_the_path_is_not_usable(case, ws_copy, tmp_path, monkeypatch):
    st.cache_data.clear()
    st.cache_resource.clear()
    if case == "missing":
        path, expected = tmp_path / "nope", "does not exist"
    elif case == "not_a_workspace":
        path, expected = tmp_path / "empty", "not a DCD Studio workspace"
        path.mkdir()
    else:
        path = tmp_path / "old"
        old = copy_workspace(ws_copy[0].root, path, ignore=shutil.ignore_patterns("artifacts"))
        with old.write() as con:
            con.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
        expected = "Schema from another version"
    monkeypatch.setenv("DCD_WORKSPACE", str(path))
    at = AppTest.from_file(APP, default_timeout=60).run()
    _no_exception(at)
    assert at.error and expected in at.error[0].value
    assert at.text_input(key="workspace_path").value == str(path)
    assert not at.title or at.title[0].value != "Overview"
    # Typing a good path in the sidebar opens it.
    at.text_input(key="workspace_path").set_value(str(ws_copy[0].root)).run()
    _no_exception(at)
    assert not at.error and at.title[0].value == "Overview"

"""Every page of the app, driven headlessly with streamlit.testing.v1.AppTest against a copy of the tiny
pipeline workspace; assertions are on what the pages show (counts, table rows, metrics, images) and on what
their actions write."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
import streamlit as st
from helpers import copy_workspace, planted_predictions, planted_rows
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.app import queries as views
from core.app.names import model_names
from core.app.story import pct
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


def test_overview_tells_the_story_and_makes_a_model_current(app, ws_copy):
    ws, report = ws_copy
    m = report["methods"]
    base, dcd = m["baseline"], m["dcd"]
    at = app()
    assert at.title[0].value == "Overview"
    # the reference in a sentence, with its numbers and the chance level
    told = next(md.value for md in at.markdown if md.value.startswith("Baseline gets"))
    assert f"{_pct(base['test_acc']).replace('.0%', '%')} of {PLAN['test']} test images right" in told
    assert any("guessing scores 50%" in c.value for c in at.caption)
    # every fix beside it on every eval set, each change with its interval
    card = _df(at, "eval set", "n").set_index("eval set")
    assert list(card.columns)[:3] == ["n", "Baseline (before)", "DCD"]
    assert card.loc["Failure (debug-heldout)", "n"] == PLAN["error_heldout"]
    cell = card.loc["Failure (debug-heldout)", "DCD"]
    assert cell.startswith(_pct(dcd["error_heldout_acc"]).replace(".0%", "%")) and "±" in cell
    assert {"Test", "Train", "Test · worst group"} <= set(card.index)
    assert len([i for i in card.index if i.startswith("Test · ") and "group" not in i]) == 4  # each group
    # the lead fix's sentence, in a box coloured by its outcome
    boxes = [b.value for b in [*at.success, *at.warning, *at.info, *at.error]]
    best = max((r for k, r in m.items() if k != "baseline"), key=lambda r: r["error_heldout_acc"])
    lead = model_names(ws)[best["model_id"]]  # the largest gain on the failure leads
    assert any(lead in v and "accuracy on the failure" in v for v in boxes), (lead, boxes)
    # details: counts, models by name (current marked as text, not a checkbox), jobs by name
    counts = _df(at, "split", "total").set_index("split")
    assert counts["total"].to_dict() == PLAN
    models = _df(at, "name", "current")
    assert models.loc[models.current == "★ current", "model_id"].tolist() == [base["model_id"]]
    assert set(models.name) >= {"Baseline", "DCD from Baseline", "Random pool images from Baseline"}
    assert {"Ingest images", "Whole DCD loop"} <= set(_df(at, "job", "state").job)
    assert "392 images" in at.sidebar.caption[0].value and "Baseline" in at.sidebar.caption[0].value

    # making DCD current from the UI
    at.selectbox(key="overview_current").set_value(dcd["model_id"]).run()
    at.button(key="overview_make_current").click().run()
    _no_exception(at)
    assert views.current_classifier_id(ws) == dcd["model_id"]
    assert any("DCD from Baseline is now the current classifier" in s.value for s in at.success)
    # AppTest drops the sidebar of a rerun under st.navigation: a fresh session shows the new current one
    assert "current classifier: **DCD from Baseline**" in app().sidebar.caption[0].value
    assert at.selectbox(key="overview_current").value == dcd["model_id"]


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


def test_errors_page_names_a_confusion_cell_as_a_failure_then_offers_its_fix(app, ws_copy):
    from core.dcd.failure import failure_from_cell

    ws, report = ws_copy
    model = report["methods"]["baseline"]["model_id"]
    at = app("pages/errors.py")
    at.selectbox(key="errors_split").set_value("test").run()
    conf = views.confusion(ws, model, "test")
    wrong = conf[(conf.label != conf.pred) & (conf.n >= 2)]
    label, pred = (int(v) for v in wrong.sort_values("n").iloc[-1][["label", "pred"]])
    at.selectbox(key="errors_cell").set_value((label, pred)).run()
    _no_exception(at)
    labels = [b.label for b in at.button]
    assert "Name this cell as a failure" in labels and "Collect, retrain and compare with random" not in labels
    made = failure_from_cell(ws, model, label, pred)  # what the button's job does
    at.run()
    _no_exception(at)
    assert "Collect, retrain and compare with random" in [b.label for b in at.button]
    assert any(f"Failure {made.failure_id} " in c.value and made.eval_set in c.value for c in at.caption)
    at.selectbox(key="errors_split").set_value("train").run()  # not an evaluation split: no failure offered
    assert "Name this cell as a failure" not in [b.label for b in at.button]


METADATA = ("site", "exposure", "taken")  # the tiny dataset's planted metadata (conftest.tiny_metadata)


def test_errors_page_breaks_accuracy_down_by_each_metadata_column(app, ws_copy, tiny_manifest):
    ws, report = ws_copy
    model = report["methods"]["baseline"]["model_id"]
    at = app("pages/errors.py")
    assert at.selectbox(key="errors_breakdown").options == ["group (ground truth)", *METADATA]
    planted = planted_predictions(ws, tiny_manifest, model, "error_heldout")
    for column in METADATA:
        at.selectbox(key="errors_breakdown").set_value(column).run()
        _no_exception(at)
        table = _df(at, column, "n", "accuracy", "low", "high")
        assert table.n.sum() == PLAN["error_heldout"] and len(table) > 1
        for r in table.itertuples(index=False):
            rows = planted_rows(planted, column, r[0])
            assert (r.n, r.n_correct) == (len(rows), rows.correct.sum()), (column, r[0])
            assert r.accuracy == pytest.approx(rows.correct.mean()) and r.low <= r.accuracy <= r.high
    # the gallery of the chosen cell says each image's metadata after its own caption
    captions = at.image[0].captions
    assert captions
    for caption in captions:
        image_id = int(caption.split(" ")[0].lstrip("#"))
        r = planted.set_index("image_id").loc[image_id]
        assert caption.endswith(f" · site={r.site} · exposure={int(r.exposure)} · taken={r.taken}"), caption


def test_compare_page_shows_each_fix_per_value_of_each_metadata_column(app, ws_copy, tiny_manifest):
    ws, report = ws_copy
    base, dcd = (report["methods"][m]["model_id"] for m in ("baseline", "dcd"))
    at = app("pages/compare.py")
    at.multiselect(key="compare_models").set_value([base, dcd]).run()
    assert at.selectbox(key="compare_breakdown_split").value == "test"
    before, after = (planted_predictions(ws, tiny_manifest, m, "test") for m in (base, dcd))
    for column in METADATA:
        at.selectbox(key="compare_breakdown").set_value(column).run()
        _no_exception(at)
        table = _df(at, column, "n").set_index(column)
        assert list(table.columns) == ["n", "Baseline (before)", "DCD"]
        assert table.n.sum() == PLAN["test"] and len(table) > 1
        for value, r in table.iterrows():
            was, now = planted_rows(before, column, value), planted_rows(after, column, value)
            assert r.n == len(was) == len(now)
            assert r["Baseline (before)"] == pct(was.correct.mean())
            assert r["DCD"].startswith(pct(now.correct.mean()) + " ") and " ±" in r["DCD"], r["DCD"]


def _launched(ws, kind: str):
    """The job the page has just launched, of ``kind``."""
    job = ws.jobs().list(limit=1)[0]
    assert job.kind == kind, (job.kind, job.args)
    return job


def _wrong_cell(ws, model: str) -> tuple[int, int]:
    conf = views.confusion(ws, model, "test")
    wrong = conf[(conf.label != conf.pred) & (conf.n >= 2)]
    return tuple(int(v) for v in wrong.sort_values("n").iloc[-1][["label", "pred"]])


def test_retrieval_offers_every_failure_and_makes_its_selection_with_the_select_job(app, ws_copy):
    from core.app.names import failure_names
    from core.dcd.failure import failure_from_cell, failure_from_images, list_failures
    from core.dcd.strategies import SelectionRequest, select

    ws, report = ws_copy
    base = report["methods"]["baseline"]["model_id"]
    cell = failure_from_cell(ws, base, *_wrong_cell(ws, base))  # what the failure job stores
    test_ids = ws.df("SELECT image_id FROM images WHERE split = 'test' ORDER BY image_id LIMIT 4").image_id.tolist()
    picked = failure_from_images(ws, test_ids, name="four test images")
    at = app("pages/retrieval.py")
    # every failure, by its human name and parts, the newest first
    refs, named = [f.failure_id for f in list_failures(ws)], failure_names(ws)
    assert set(refs) == {cell.failure_id, picked.failure_id, "error_sample"} and refs[-1] == "error_sample"
    assert at.selectbox(key="retr_failure").options == [named[r] for r in refs]
    assert named[picked.failure_id] == "four test images · 2 to search with, 2 held out"
    assert named["error_sample"].endswith(f"· {PLAN['error_sample']} to search with, {PLAN['error_heldout']} held out")
    assert at.selectbox(key="retr_failure").value == refs[0]
    assert not [b for b in at.button if b.key == "retr_save"]  # the page saves no selection of its own
    assert not [p.name for p in (REPO / "pages").glob("*.py") if "save_selection" in p.read_text()]

    at.selectbox(key="retr_failure").set_value("error_sample").run()
    _no_exception(at)
    assert at.selectbox(key="retr_embedder").value == report["embedder"]["embedder_id"]
    neighbours, budget = at.number_input(key="retr_neighbours").value, at.number_input(key="retr_budget").value
    assert (neighbours, budget) == (report["selection"]["neighbours"], report["selection"]["budget"])
    assert at.radio(key="retr_scope").value == "all"  # as the select job: the whole query part, no chips
    assert not [w for w in at.multiselect if w.key == "retr_sources"]
    n = int(next(h.value for h in at.subheader if h.value.endswith(" candidates")).split()[0])
    # the preview searches as the select job does under the page's pair policy ('agree': no teacher)
    agree = select(ws, "dcd", SelectionRequest(budget=budget, neighbours=neighbours, label_policy="agree",
                                               embedder_id=report["embedder"]["embedder_id"]))
    retrieved = set(agree.items.image_id[agree.items.kind == "retrieved"])
    assert n == len(retrieved)

    # "Make this selection" launches the select job for the failure, with the page's options and name
    at.text_input(key="retr_name").set_value("made-by-test").run()
    at.button(key="retr_select_error_sample").click().run()
    _no_exception(at)
    job = _launched(ws, "select")
    assert job.args == ["--failure", "error_sample", "--method", "dcd", "--embedder-id",
                        report["embedder"]["embedder_id"], "--neighbours", str(neighbours), "--budget", str(budget),
                        "--label-policy", "agree", "--name", "made-by-test"]
    done = launcher.wait(ws, job.job_id, timeout=120)
    assert done.state == "succeeded", done.error
    made = ws.df("SELECT selection_id FROM selections WHERE name = 'made-by-test'").selection_id.tolist()
    assert len(made) == 1
    items = views.selection_review(ws, made[0])
    assert set(items.image_id[items.kind == "retrieved"]) == retrieved  # what the preview showed
    assert set(items.image_id[items.kind == "failure"]) == set(ws.df(
        "SELECT image_id FROM images WHERE split = 'error_sample'").image_id)

    # the Saved tab opens on the newest selection; bulk decisions there are written to the workspace
    at = app("pages/retrieval.py")
    assert at.selectbox(key="retr_saved_sel").value == made[0]
    assert any(b.label == "Retrain Baseline with made-by-test" for b in at.button)
    at.button(key="retr_saved_drop_rest").click().run()
    _no_exception(at)
    assert set(views.selection_review(ws, made[0]).status) == {"rejected"}

    # a stored cell: the select job and the fix are launched with --failure
    at.selectbox(key="retr_failure").set_value(cell.failure_id).run()
    _no_exception(at)
    assert any(f"eval set {cell.eval_set}" in c.value for c in at.caption)
    fix = next(b for b in at.button if b.key == f"retr_fix_{cell.failure_id}")
    assert fix.label == "Collect, retrain and compare with random"
    at.button(key=f"retr_select_{cell.failure_id}").click().run()
    job = _launched(ws, "select")
    assert job.args[:2] == ["--failure", cell.failure_id]
    launcher.cancel(ws, job.job_id)
    launcher.wait(ws, job.job_id, timeout=60)


def _png_of(path: str) -> bytes:
    buf = io.BytesIO()
    Image.open(path).save(buf, format="PNG")
    return buf.getvalue()


def test_retrieval_names_uploaded_images_as_a_failure(app, ws_copy):
    from core.app.names import failure_names

    ws, _ = ws_copy
    at = app("pages/retrieval.py")
    at.radio(key="retr_source").set_value("upload").run()
    at.number_input(key="retr_neighbours").set_value(7).run()
    at.radio(key="retr_policy").set_value("source").run()
    at.selectbox(key="retr_upload_label").set_value(1).run()
    paths = ws.df("SELECT path FROM images WHERE split = 'error_sample' ORDER BY image_id LIMIT 2").path
    files = [("query 1.png", _png_of(paths[0]), "image/png"), ("notes.png", b"not an image", "image/png"),
             ("query 2.png", _png_of(paths[1]), "image/png")]
    at.file_uploader(key="retr_upload").set_value(files).run()
    _no_exception(at)
    # the bad file says why, by name; the others are kept and one is previewed
    assert len(at.error) == 1 and at.error[0].value.startswith("Not used: notes.png is not an image that can be read")
    assert at.subheader[0].value == "7 candidates"
    trained = {c.split("trains as ")[1].split(" · ")[0] for i in at.image for c in i.captions if "trains as " in c}
    assert trained == {ws.class_names()[1]}  # 'error image's label' = the label given to the uploads
    at.text_input(key="retr_upload_name").set_value("photos from the field").run()
    at.button(key="retr_upload_failure").click().run()
    _no_exception(at)
    job = _launched(ws, "failure")
    folder = Path(job.args[1])
    assert job.args == ["--upload-dir", str(folder), "--label", ws.class_names()[1], "--name",
                        "photos from the field"]
    assert folder.parent == ws.artifacts / "uploads" and len(list(folder.iterdir())) == 2
    done = launcher.wait(ws, job.job_id, timeout=120)
    assert done.state == "succeeded", done.error
    at = app("pages/retrieval.py")
    failure = done.result["failure_id"]
    assert at.selectbox(key="retr_failure").value == failure  # the newest failure
    assert failure_names(ws)[failure] == ("photos from the field (no held-out part: measured on test only) · 2 to "
                                          "search with")
    assert any("measured on test only" in c.value for c in at.caption)


def test_errors_page_names_picked_images_as_a_failure_then_offers_its_fix(app, ws_copy):
    from core.dcd.failure import picked_failure

    ws, report = ws_copy
    model = report["methods"]["baseline"]["model_id"]
    at = app("pages/errors.py")
    at.selectbox(key="errors_split").set_value("test").run()
    at.selectbox(key="errors_cell").set_value(_wrong_cell(ws, model)).run()
    assert not [c for c in at.checkbox if (c.key or "").startswith("errors_pick_")]  # off until asked for
    at.toggle(key="errors_picks_on").set_value(True).run()
    cell_boxes = [c.key for c in at.checkbox if c.key.startswith("errors_pick_cell_")]
    mistake_boxes = [c.key for c in at.checkbox if c.key.startswith("errors_pick_mistake_")]
    assert cell_boxes and mistake_boxes
    at.checkbox(key=cell_boxes[0]).check().run()
    assert any("Pick at least 2 images" in i.value for i in at.info)
    other = next(k for k in mistake_boxes if k.rsplit("_", 1)[1] != cell_boxes[0].rsplit("_", 1)[1])
    at.checkbox(key=other).check().run()  # from the other gallery: the picks are one set
    ids = sorted(int(k.rsplit("_", 1)[1]) for k in (cell_boxes[0], other))
    assert any(m.value.startswith("**2 image(s) picked**") for m in at.markdown)
    at.text_input(key="errors_picks_name").set_value("picked by test").run()
    at.button(key="errors_picks_launch").click().run()
    _no_exception(at)
    job = _launched(ws, "failure")
    assert job.args == ["--images", *map(str, ids), "--name", "picked by test"]
    done = launcher.wait(ws, job.job_id, timeout=120)
    assert done.state == "succeeded", done.error
    at.run()
    _no_exception(at)
    made = picked_failure(ws, ids)
    assert made is not None and made.name == "picked by test" and made.kind == "picked"
    assert any(c.value.startswith(f"Failure {made.failure_id} (picked by test): 1 images") for c in at.caption)
    fix = next(b for b in at.button if b.key == f"errors_picks_fix_{made.failure_id}")
    assert fix.label == "Collect, retrain and compare with random"
    # an image without a label cannot be picked: the page says why, and offers no job
    with ws.write() as con:
        con.execute("UPDATE images SET label = NULL WHERE image_id = ?", [ids[0]])
    at.run()
    _no_exception(at)
    assert any(f"image(s) {ids[0]} have no label" in e.value for e in at.error)
    assert not [b for b in at.button if (b.key or "").startswith("errors_picks_fix_")]


def test_jobs_page_launches_lists_and_reconciles(app, ws_copy):
    ws, report = ws_copy
    store = ws.jobs()
    dead = store.create("embed", [])
    store.start(dead, 2 ** 22 + 12345)  # a pid that does not exist: the process has died
    at = app("pages/jobs.py")
    assert any(dead in w.value for w in at.warning)
    table = _df(at, "job_id", "state")
    assert len(table) == len(store.list())
    assert table.set_index("job_id").loc[dead, "state"] == "failed"
    assert "Whole DCD loop" in set(table.job)

    at.selectbox(key="jobs_kind").set_value("predict").run()
    at.multiselect(key="opt_predict_splits").set_value(["error_sample"])  # submitted with the form
    next(b for b in at.button if b.label == "Launch predict").click().run()
    _no_exception(at)
    assert at.success and "Launched **Predict with the current classifier**" in at.success[0].value
    job = store.list(limit=1)[0]
    assert job.kind == "predict" and job.args == ["--splits", "error_sample"]
    done = launcher.wait(ws, job.job_id, timeout=120)
    assert done.state == "succeeded", done.error
    at = app("pages/jobs.py")
    table = _df(at, "job_id", "state").set_index("job_id")
    assert table.loc[job.job_id, "state"] == "succeeded"
    assert at.selectbox(key="jobs_selected").value == table.index[0]
    # a finished job says what it did and links to where to see it, not only its JSON
    assert any(s.value == "Predicted 8 images with **Baseline**." for s in at.success)
    assert any("predict" in c.value for c in at.code)


def test_job_forms_show_few_fields_never_submit_on_enter_and_pass_no_flag_untouched(app, ws_copy):
    from core.app.job_forms import FORM_FIELDS
    from core.runner.registry import get_job

    at = app("pages/jobs.py")
    for kind in launcher.job_kinds():
        at.selectbox(key="jobs_kind").set_value(kind).run()
        _no_exception(at)
        spec = get_job(kind)
        values = _form_values(at, spec)
        assert set(values) == {o.name for o in spec.options}, kind
        if kind in ("ingest", "failure"):  # one of two options needed: an untouched form cannot launch it
            with pytest.raises(SystemExit):
                launcher.build_args(kind, values)
        else:
            assert launcher.build_args(kind, values) == [], kind  # untouched: the job's (the pipeline's) defaults
        assert len(FORM_FIELDS.get(kind, ())) <= 3
        form = next(b for b in _blocks(at.main) if b.proto.DESCRIPTOR.name == "Block" and b.proto.HasField("form"))
        assert form.proto.form.form_id == f"jobs_form_{kind}" and not form.proto.form.enter_to_submit
    at.selectbox(key="jobs_kind").set_value("retrain").run()
    main = [w.label for w in at.selectbox if (w.key or "").startswith("opt_retrain_")][:3]
    assert main == ["debug-train selection", "classifier", "mitigate"]
    lr = next(w for w in at.text_input if w.key == "opt_retrain_lr")
    assert lr.value == "" and "fine-tuning at" in lr.proto.placeholder  # the lr the job will really use


def _blocks(node):
    children = getattr(node, "children", None)
    if isinstance(children, dict):
        for child in children.values():
            yield child
            yield from _blocks(child)


def _form_values(at: AppTest, spec) -> dict:
    """The job form's widget values by option name, as the page hands them to launcher.build_args (a free
    list typed as text is split at commas, as the page does)."""
    prefix, kinds = f"opt_{spec.name}_", {o.name: o.kind for o in spec.options}
    out = {}
    for group in (at.text_input, at.selectbox, at.multiselect, at.checkbox):
        for w in group:
            if w.key and w.key.startswith(prefix):
                name, value = w.key[len(prefix):], w.value
                if name not in kinds:  # the demo's target folder is not an option
                    continue
                if kinds.get(name) == "list" and isinstance(value, str):
                    value = [v.strip() for v in value.split(",") if v.strip()]
                out[name] = value
    return out


def test_compare_page_tells_each_fix_with_its_intervals_and_exports(app, ws_copy):
    ws, report = ws_copy
    m = report["methods"]
    base, dcd = m["baseline"], m["dcd"]
    at = app("pages/compare.py")
    chosen = at.multiselect(key="compare_models")
    assert chosen.value[0] == base["model_id"]
    at.multiselect(key="compare_models").set_value([base["model_id"], dcd["model_id"]]).run()
    _no_exception(at)
    card = _df(at, "eval set", "n").set_index("eval set")
    assert list(card.columns) == ["n", "Baseline (before)", "DCD"]
    cell = card.loc["Failure (debug-heldout)", "DCD"]
    assert cell.startswith(_pct(dcd["error_heldout_acc"]).replace(".0%", "%")) and "±" in cell
    assert len([i for i in card.index if i.startswith("Test · ") and "group" not in i]) == 4  # each group
    # one sentence for the fix, in a box coloured by its outcome; the old bare metric cards are gone
    boxes = [b.value for b in [*at.success, *at.warning, *at.info, *at.error]]
    assert len(boxes) == 1 and "DCD from Baseline" in boxes[0] and "accuracy on the failure" in boxes[0]
    assert not at.metric
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


def test_overview_says_a_fix_is_being_made_while_its_job_runs(app, ws_copy):
    """Before the first fix lands, the Overview says what is running and when it should be done (not "No fix
    yet"); once the job has ended, the page says what is there."""
    import os

    ws, report = ws_copy
    base = report["methods"]["baseline"]["model_id"]
    with ws.write() as con:  # only the baseline, as while the demo job is fine-tuning DCD's fix
        for table in ("metrics", "predictions"):
            con.execute(f"DELETE FROM {table} WHERE model_id <> ?", [base])
        con.execute("DELETE FROM models WHERE role = 'classifier' AND model_id <> ?", [base])
        con.execute("INSERT OR REPLACE INTO meta VALUES ('current_classifier', ?)", [base])
    store = ws.jobs()
    job = store.create("demo", ["--workspace", str(ws.root), "--size", "small"])
    store.start(job, pid=os.getpid())  # a live process: the sidebar's reconcile keeps it running
    store.update(job, progress=0.5, message="[9/13] fine-tuning on dcd")
    at = app()
    said = " ".join(i.value for i in at.info)
    assert "A fix is being made" in said and "50% done" in said and "fine-tuning on dcd" in said
    assert "left" in said and "No fix yet" not in said
    store.finish(job, "succeeded", result={})
    at = app()
    said = " ".join(i.value for i in at.info)
    assert "A fix is being made" not in said and "No fix yet" in said


@pytest.mark.parametrize(("page", "kind", "said"), [("pages/slices.py", "slices", "New slices are being found"),
                                                    ("pages/retrieval.py", "select", "New candidates are being found")])
def test_pages_a_running_job_will_change_say_so(app, ws_copy, page, kind, said):
    """The Slices and Retrieval pages say which job will change them and how far it is, while it runs, and
    stop saying so when it has ended."""
    import os

    ws, _ = ws_copy
    store = ws.jobs()
    job = store.create(kind, ["--workspace", str(ws.root)])
    store.start(job, pid=os.getpid())  # a live process: the sidebar's reconcile keeps it running
    store.update(job, progress=0.25, message="clustering")
    at = app(page)
    _no_exception(at)
    told = " ".join(i.value for i in at.info)
    assert said in told and "25% done" in told and "clustering" in told
    store.finish(job, "succeeded", result={})
    at = app(page)
    _no_exception(at)
    assert said not in " ".join(i.value for i in at.info)

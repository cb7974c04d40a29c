"""The read-only queries behind the pages (core.app.queries), the charts (core.app.charts) and the export
(core.app.report), against the tiny pipeline workspace whose contents are known."""

from __future__ import annotations

import html
import json

import numpy as np
import pandas as pd
import pytest

from core.app import charts, story
from core.app import queries as views
from core.app.before_after import comparison_story
from core.app.queries import comparison_long
from core.app.report import comparison_csv, comparison_html
from core.dcd.retrieval import pairs_from_search
from core.store.workspace import Workspace

PLAN = {"train": 120, "test": 40, "error_sample": 8, "error_heldout": 24, "pool": 200}


@pytest.fixture(scope="module")
def ws(tiny_pipeline_workspace) -> Workspace:
    return Workspace.open(tiny_pipeline_workspace[0])


@pytest.fixture(scope="module")
def report(tiny_pipeline_workspace) -> dict:
    return json.loads(tiny_pipeline_workspace[1].read_text())


def test_split_class_table_counts_every_image(ws):
    table = views.split_class_table(ws).set_index("split")
    assert table["total"].to_dict() == PLAN
    assert list(table.columns) == ["disc", "square", "total"]
    truth = ws.df("SELECT split, count(*) FILTER (WHERE coalesce(label, weak_label) = 0) AS n FROM images GROUP BY split")
    assert table["disc"].to_dict() == dict(zip(truth.split, truth.n))


def test_models_and_headline_metrics_match_the_pipeline_report(ws, report):
    models = views.models_table(ws)
    methods = report["methods"]
    assert set(models.model_id) == {m["model_id"] for m in methods.values()}
    base = methods["baseline"]
    assert models.loc[models.current, "model_id"].tolist() == [base["model_id"]]
    head = views.headline_metrics(ws)
    assert head["model_id"] == base["model_id"]
    assert head["test_acc"] == pytest.approx(base["test_acc"])
    assert head["error_heldout_acc"] == pytest.approx(base["error_heldout_acc"])
    assert (head["n_test"], head["n_error_heldout"]) == (PLAN["test"], PLAN["error_heldout"])
    dcd = models.set_index("model_id").loc[methods["dcd"]["model_id"]]
    assert dcd.test_acc == pytest.approx(methods["dcd"]["test_acc"])


def test_jobs_table_lists_the_recorded_jobs(ws):
    jobs = views.jobs_table(ws)
    recorded = ws.jobs().list()
    assert jobs.job_id.tolist() == [j.job_id for j in recorded]  # every recorded job, once, newest first
    assert sorted(jobs.kind) == ["ingest", "pipeline"]  # what the tiny workspace's build ran
    assert (jobs.state == "succeeded").all() and (jobs.progress == 1.0).all()
    assert jobs.args.tolist() == [" ".join(j.args) for j in recorded]


def test_confusion_matrix_adds_up_to_the_accuracy(ws, report):
    model = report["methods"]["baseline"]["model_id"]
    conf = views.confusion(ws, model, "test")
    assert len(conf) == 4  # every cell of 2 classes, zeros included
    assert conf.n.sum() == PLAN["test"]
    diag = conf.loc[conf.label == conf.pred, "n"].sum()
    assert diag / PLAN["test"] == pytest.approx(report["methods"]["baseline"]["test_acc"])
    assert conf.groupby("label").row_share.sum().round(6).isin([0.0, 1.0]).all()
    cell = conf[conf.label != conf.pred].sort_values("n").iloc[-1]
    imgs = views.cell_images(ws, model, "test", cell.label, cell.pred, limit=100)
    assert len(imgs) == cell.n
    assert (imgs.label == cell.label).all() and (imgs.pred == cell.pred).all()
    assert imgs.confidence.is_monotonic_decreasing


def test_accuracy_by_group_and_class_and_confident_mistakes(ws, report):
    model = report["methods"]["dcd"]["model_id"]
    groups = views.accuracy_by(ws, model, "test", by="group")
    stored = ws.df("SELECT eval_set, value FROM metrics WHERE model_id = ? AND eval_set LIKE 'test/group=%'", [model])
    assert dict(zip("test/group=" + groups.key, groups.accuracy)) == pytest.approx(dict(zip(stored.eval_set, stored.value)))
    assert groups.n.sum() == PLAN["test"]
    classes = views.accuracy_by(ws, model, "test", by="class")
    assert set(classes.key) == {"disc", "square"}
    mistakes = views.confident_mistakes(ws, model, "test", limit=100)
    n_wrong = round(PLAN["test"] * (1 - report["methods"]["dcd"]["test_acc"]))
    assert len(mistakes) == n_wrong
    assert not mistakes.correct.any() and mistakes.confidence.is_monotonic_decreasing
    with pytest.raises(ValueError):
        views.accuracy_by(ws, model, "test", by="colour")


def test_candidates_from_the_persisted_index_match_the_saved_dcd_selection(ws, report):
    from core.dcd.index import load_index, search

    embedder = report["embedder"]["embedder_id"]
    assert views.embedders(ws).embedder_id.tolist() == [embedder]
    index, info = load_index(ws, embedder)
    es = views.error_sample_images(ws, report["methods"]["baseline"]["model_id"])
    assert len(es) == PLAN["error_sample"]
    ids, vecs = views.source_vectors(ws, embedder, es.image_id.tolist())
    # the page's pair policy 'agree', as the select job makes it with that policy (no teacher)
    from core.dcd.strategies import SelectionRequest, select

    budget = report["selection"]["budget"]
    agree = select(ws, "dcd", SelectionRequest(budget=budget, neighbours=report["selection"]["neighbours"],
                                               label_policy="agree", embedder_id=embedder))
    k = json.loads(ws.scalar("SELECT params FROM selections WHERE selection_id = ?", [agree.selection_id]))["neighbours_searched"]
    dist, nn = search(index, vecs, k)
    cands = views.build_candidates(ws, pairs_from_search(ids, dist, nn), budget=budget, label_policy="agree")
    saved = views.selection_review(ws, agree.selection_id)
    saved = saved[saved.kind == "retrieved"]
    assert cands.image_id.tolist() == saved.image_id.tolist()  # same retrieval as the select job
    labels = dict(zip(es.image_id, es.label))
    assert (cands.label == cands.weak_label).all() and (cands.label == cands.source_image_id.map(labels)).all()
    assert cands.image_id.is_unique and len(cands) <= budget
    weak = views.build_candidates(ws, pairs_from_search(ids, dist, nn), budget=budget, label_policy="weak")
    assert (weak.label == weak.weak_label).all() and len(weak) >= len(cands)
    src = views.build_candidates(ws, pairs_from_search(ids, dist, nn), budget=budget, label_policy="source")
    assert (src.label == src.source_image_id.map(labels)).all()
    up = views.build_candidates(ws, pairs_from_search(np.array([-1]), dist[:1], nn[:1]), budget=5,
                                label_policy="source", source_label=1)
    assert len(up) == 5 and (up.label == 1).all()


def test_the_comparison_story_and_its_export(ws, report):
    methods = report["methods"]
    ids = [methods["baseline"]["model_id"], methods["dcd"]["model_id"], methods["random"]["model_id"]]
    tale = comparison_story(ws, ids, ids[0])
    assert tale["fixes"] == ids[1:] and set(tale["sentences"]) == set(ids[1:])
    cmp = tale["comparison"]
    row = cmp[(cmp.model_id == ids[1]) & (cmp.eval_set == "error_heldout") & (cmp.metric == "accuracy")].iloc[0]
    assert row.value == pytest.approx(methods["dcd"]["error_heldout_acc"])
    assert row.delta == pytest.approx(methods["dcd"]["error_heldout_acc"] - methods["baseline"]["error_heldout_acc"])
    assert row.n == PLAN["error_heldout"] and row.lo < row.delta < row.hi
    assert cmp[cmp.model_id == ids[0]].delta.isna().all()  # the reference has no change
    assert "test/group=disc_on_dark" in set(cmp.eval_set)

    chart = charts.comparison_chart(comparison_long(ws, ids)).to_dict()
    assert len(chart["datasets"][chart["data"]["name"]]) == len(comparison_long(ws, ids))
    changes = charts.interval_chart(cmp).to_dict()
    drawn = pd.DataFrame(changes["datasets"][changes["layer"][0]["data"]["name"]])  # the interval rules
    assert len(drawn) == cmp.delta.notna().sum() and set(drawn.model_id) == set(ids[1:])
    assert (drawn.lo <= drawn.delta).all() and (drawn.delta <= drawn.hi).all()

    back = pd.read_csv(pd.io.common.StringIO(comparison_csv(cmp, names=tale["names"], set_names=tale["set_names"])))
    assert len(back) == len(cmp) and set(back.model_id) == set(ids)
    got = back[(back.model_id == ids[1]) & (back.eval_set == "error_heldout") & (back.metric == "accuracy")].iloc[0]
    assert got["delta 95% low"] == pytest.approx(row.lo, abs=1e-5) and got["verdict"] == row.verdict
    page = comparison_html(tale, workspace=str(ws.root))
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in page
    assert all(html.escape(tale["sentences"][m]) in page for m in ids[1:])
    cells, _ = story.scorecard(cmp, ids, names=tale["names"], set_names=tale["set_names"])
    assert page.count("<tr>") == len(cells) + 1 and html.escape(cells.iloc[0][tale["names"][ids[1]]]) in page


def test_slice_metrics_join_members_with_predictions(ws_copy, report):
    ws, _ = ws_copy
    model = report["methods"]["baseline"]["model_id"]
    members = ws.df("SELECT image_id, correct FROM predictions WHERE model_id = ? ORDER BY image_id LIMIT 10", [model])
    with ws.write() as con:
        con.execute("INSERT INTO slice_runs VALUES ('run1', ?, 1, '{}', current_timestamp)", [model])
        con.executemany("INSERT INTO slice_members VALUES ('run1', 0, ?, 0.0)", [[int(i)] for i in members.image_id])
    s = views.slice_metrics(ws, [model])
    assert s.eval_set.tolist() == ["slice=0"] and s.n.tolist() == [10]
    assert s.value.iloc[0] == pytest.approx(members.correct.mean())
    assert views.comparison_long(ws, [model]).eval_set.iloc[-1] == "slice=0"


def test_confusion_and_accuracy_charts_carry_the_data(ws, report):
    model = report["methods"]["baseline"]["model_id"]
    conf = views.confusion(ws, model, "error_heldout")
    spec = charts.confusion_chart(conf).to_dict()
    data = spec["datasets"][spec["data"]["name"]] if "data" in spec else next(iter(spec["datasets"].values()))
    assert sum(r["n"] for r in data) == PLAN["error_heldout"]
    assert spec["params"][0]["name"] == charts.CONFUSION_SELECTION
    acc = views.accuracy_by(ws, model, "error_heldout")
    bars = charts.accuracy_bars(acc).to_dict()
    assert [r["key"] for r in bars["datasets"][bars["data"]["name"]]] == acc.key.tolist()

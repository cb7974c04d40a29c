"""Accuracy broken down by a group or metadata column (core.app.breakdowns), and a slice's metadata in its
report, on the tiny pipeline workspace whose manifest planted three metadata columns (conftest.tiny_metadata:
the site says the background, an exposure number, a day of 2023). Expected numbers are computed from the
manifest and the stored predictions, not from the workspace's metadata tables."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers import planted_predictions, planted_rows

from core.app import queries
from core.app.breakdowns import (
    accuracy_breakdown,
    breakdown_columns,
    breakdown_comparison,
    metadata_captions,
    value_labels,
)
from core.app.job_summary import summarize
from core.app.slice_report import slice_report_data
from core.app.slice_report_page import slice_report_html
from core.app.story import wilson_interval
from core.store.workspace import Workspace

METADATA = ("site", "exposure", "taken")


@pytest.fixture(scope="module")
def tiny(tiny_pipeline_workspace):
    """(the tiny pipeline workspace, opened read-only; the pipeline's report path)."""
    root, report = tiny_pipeline_workspace
    return Workspace.open(root, read_only=True), report


def _model(report_path, method: str) -> str:
    import json

    return json.loads(report_path.read_text())["methods"][method]["model_id"]


@pytest.mark.parametrize("column", METADATA)
def test_accuracy_per_value_matches_the_planted_metadata(tiny, tiny_manifest, column):
    ws, report = tiny
    model = _model(report, "baseline")
    assert breakdown_columns(ws) == ["group", *METADATA]
    planted = planted_predictions(ws, tiny_manifest, model, "test")
    acc = accuracy_breakdown(ws, model, "test", column)
    assert acc.n.sum() == len(planted) == 40  # the rows cover the split, each image once
    for r in acc.itertuples():
        rows = planted_rows(planted, column, r.value)
        assert (r.n, r.n_correct) == (len(rows), rows.correct.sum()), r.value
        assert r.accuracy == pytest.approx(rows.correct.mean())
        assert (r.low, r.high) == pytest.approx(wilson_interval(r.n_correct, r.n)) and r.low <= r.accuracy <= r.high
    if column == "site":  # the site is the background: its accuracy is the background's, read from the groups
        dark = planted.group.str.endswith("_on_dark")
        assert acc.set_index("value").accuracy.to_dict() == pytest.approx(
            {"north": planted.correct[dark].mean(), "south": planted.correct[~dark].mean()})
        assert acc.accuracy.is_monotonic_increasing  # text: worst first
    elif column == "exposure":  # 10 distinct exposures: 5 ranges, in order, none straddling dark and light
        assert len(acc) == 5 and acc.value.iloc[0].startswith("40") and acc.value.iloc[-1].endswith("204")
        assert all(rows.site.nunique() == 1 for rows in (planted_rows(planted, column, v) for v in acc.value))
    else:  # one year of dates: by month, in order
        assert acc.value.tolist() == sorted(acc.value) and set(acc.value) <= {f"2023-{m:02d}" for m in range(1, 13)}


def test_group_breakdown_agrees_with_the_group_accuracy_query(tiny):
    ws, report = tiny
    model = _model(report, "dcd")
    mine = accuracy_breakdown(ws, model, "test", "group").set_index("value")
    theirs = queries.accuracy_by(ws, model, "test", by="group").set_index("key")
    assert mine.n.to_dict() == theirs.n.to_dict()
    assert mine.accuracy.to_dict() == pytest.approx(theirs.accuracy.to_dict())
    with pytest.raises(ValueError, match="cannot break down by 'camera': this workspace has group, site, exposure"):
        accuracy_breakdown(ws, model, "test", "camera")


def test_before_after_per_value_compares_each_fix_with_its_interval(tiny, tiny_manifest):
    ws, report = tiny
    base, dcd = _model(report, "baseline"), _model(report, "dcd")
    cmp, set_names = breakdown_comparison(ws, [dcd], base, "test", "site")
    before, after = (planted_predictions(ws, tiny_manifest, m, "test") for m in (base, dcd))
    assert sorted(set_names.values()) == ["north", "south"]
    for r in cmp.itertuples():
        site = set_names[r.eval_set]
        rows = planted_rows(after if r.model_id == dcd else before, "site", site)
        assert (r.value, r.n) == (pytest.approx(rows.correct.mean()), len(rows))
        if r.model_id == dcd:
            ref = planted_rows(before, "site", site).correct.mean()
            assert r.delta == pytest.approx(rows.correct.mean() - ref) and r.lo <= r.delta <= r.hi
            assert r.verdict in ("gain", "regression", "within noise") and r.kind == "other"


def test_value_labels_bin_numbers_and_dates_and_keep_missing_values_apart():
    numbers = pd.Series([1.0, 2, 3, 4, 5, 6, 7, 8, 9, 10, None])
    labels, order = value_labels(numbers, "number")
    assert order == ["1 – 2", "3 – 4", "5 – 6", "7 – 8", "9 – 10", "(no value)"] and labels.iloc[-1] == "(no value)"
    assert value_labels(pd.Series([0.5, 0.5, 2.0]), "number")[1] == ["0.5", "2"]  # few values: one row each
    dates = pd.Series(pd.to_datetime(["2019-05-01", "2023-03-02", None]))
    assert value_labels(dates, "date")[1] == ["2019", "2023", "(no value)"]  # over two years: by year
    text = pd.Series(["a", "b", "a", "c"], dtype=object)
    assert value_labels(text, "text", max_values=2)[1] == ["a", "b", "(other values)"]


def test_captions_say_an_images_metadata_shortly(tiny, tiny_manifest):
    ws, report = tiny
    planted = planted_predictions(ws, tiny_manifest, _model(report, "baseline"), "test").head(3)
    captions = metadata_captions(ws, planted.image_id.tolist())
    for r in planted.itertuples():
        assert captions[r.image_id] == f"site={r.site} · exposure={int(r.exposure)} · taken={r.taken}"
    assert metadata_captions(ws, [-1]) == {}  # an uploaded image: no metadata


def test_the_ingest_jobs_sentence_names_the_metadata():
    done = summarize("ingest", {"n_added": 9, "n_rejected": 1, "metadata": {"site": "text", "age": "number"},
                                "n_bad_values": 2}, models={}, selections={}, stories={})
    assert done.text == "Added 9 images (1 rejected). Metadata kept: site, age (2 bad values, listed in the job's log)."


def test_the_slice_report_shows_its_members_metadata(sliced_copy, tiny_manifest):
    ws, _, sliced = sliced_copy
    data = slice_report_data(ws, sliced["run_id"], 1)
    members = ws.df("SELECT image_id, i.path, i.split FROM slice_members JOIN images i USING (image_id) "
                    "WHERE run_id = ? AND slice_id = ?", [data.run_id, data.slice_id])
    planted = pd.read_csv(tiny_manifest, dtype=str)
    planted["path"] = [str((tiny_manifest.parent / p).resolve()) for p in planted.path]
    mine = members.merge(planted, on="path")
    around = planted[planted.split.isin(set(members.split))]
    assert [c.column for c in data.metadata] == list(METADATA)
    site = data.metadata[0]
    assert site.n == len(members) and site.n_values == mine.site.nunique()
    expected = mine.site.value_counts()
    for v in site.top:
        assert v.n == expected[v.value] and v.share == pytest.approx(v.n / len(members))
        assert v.share_all == pytest.approx((around.site == v.value).mean())
    html = slice_report_html(data)
    assert "Its images' metadata" in html and '<table id="metadata">' in html
    top = site.top[0]
    assert f"<b>{top.value}</b> {100 * top.share:.1f}%" in html

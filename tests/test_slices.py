"""Slices: k-means recovers planted blobs, ranking, mosaics, the slices job's report, annotations."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.scanner.mosaic import (
    BACKGROUND,
    ERROR_COLOUR,
    GAP,
    HEADER,
    attribution_box,
    grid_shape,
    make_mosaic,
    mosaic_size,
)
from core.scanner.slicer import (
    AttributionSlicer,
    slice_features,
    slice_score,
    slice_table,
)


def _blobs(rng: np.random.Generator, sizes=(60, 40, 30, 20), d: int = 16) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.normal(0, 1, (len(sizes), d)) * 4
    x = np.concatenate([c + rng.normal(0, 0.3, (n, d)) for c, n in zip(centres, sizes)])
    return x.astype(np.float32), np.repeat(np.arange(len(sizes)), sizes)


@pytest.mark.parametrize("n_slices", [4, None])
def test_slicer_recovers_planted_blobs(n_slices):
    x, truth = _blobs(np.random.default_rng(42))
    slicer = AttributionSlicer(n_slices=n_slices, n_slices_range=(2, 8), seed=0).fit(slice_features(x))
    assert slicer.n_slices_ == 4
    table = pd.crosstab(truth, slicer.labels_)
    assert ((table > 0).sum(axis=1) == 1).all() and ((table > 0).sum(axis=0) == 1).all()  # a perfect matching
    proba = slicer.predict_proba(slice_features(x))
    assert proba.shape == (len(x), 4) and np.allclose(proba.sum(1), 1)
    assert (slicer.predict(slice_features(x)) == slicer.labels_).all()


def test_prediction_blocks_split_right_from_wrong():
    x = np.ones((20, 8), np.float32)
    correct = np.arange(20) < 10
    f = slice_features(x, np.zeros(20, int), correct, num_classes=2, pred_weight=0.5, error_weight=0.5)
    labels = AttributionSlicer(n_slices=2).fit(f).labels_
    assert len(set(labels[:10])) == 1 and len(set(labels[10:])) == 1 and labels[0] != labels[10]
    with pytest.raises(ValueError, match="pred"):
        slice_features(x, pred_weight=1.0)


def test_ranking_puts_the_big_low_accuracy_slice_first():
    rows = []
    for sid, (n, acc) in enumerate([(500, 0.97), (120, 0.3), (15, 0.0), (200, 0.9)]):
        k = int(round(n * acc))
        rows += [{"slice_id": sid, "label": 0, "pred": 0, "correct": True}] * k
        rows += [{"slice_id": sid, "label": 0, "pred": 1, "correct": False}] * (n - k)
    table = slice_table(pd.DataFrame(rows), np.zeros((4, 3), np.float32), 2)
    assert table.slice_id.tolist()[:2] == [1, 2] and table["rank"].tolist() == [1, 2, 3, 4]
    assert table.iloc[0]["score"] == pytest.approx(slice_score(120, 36 / 120))
    assert json.loads(table.iloc[0]["confusion"]) == [[36, 84], [0, 0]]


def test_attribution_box_follows_the_peak():
    h = np.zeros((7, 7))
    h[5, 6] = 1.0
    left, top, right, bottom = attribution_box(h, 64, 64, crop_frac=0.5)
    assert (right - left, bottom - top) == (32, 32) and left == 32 and top >= 28


def test_mosaic_has_the_expected_tile_grid(tmp_path):
    paths = []
    for i in range(10):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((40, 40, 3), 20 * i, np.uint8)).save(p)
        paths.append(str(p))
    heat = np.random.default_rng(0).random((10, 7, 7))
    img = make_mosaic(paths, heat, tile=32)
    assert grid_shape(10) == (3, 4) and img.size == mosaic_size(10, 32) == (4 * 32 + 3 * 2, 3 * 32 + 2 * 2)
    # tile i (image i is uniformly 20 * i grey) sits row by row at (col * (32 + gap), row * (32 + gap))
    step = 32 + GAP
    for i in range(10):
        row, col = divmod(i, 4)
        assert img.getpixel((col * step + 16, row * step + 16)) == (20 * i,) * 3, i
    assert img.getpixel((32, 16)) == BACKGROUND  # the gap between tiles
    assert img.getpixel((2 * step + 16, 2 * step + 16)) == BACKGROUND  # the empty end of the last row

    # with cells: four labelled panels TP | FP over FN | TN, each a grid of its own tiles; errors framed red
    cells = ["TP"] * 4 + ["FP"] * 3 + ["FN"] * 2 + ["TN"]
    errors = [c in ("FP", "FN") for c in cells]
    panels = make_mosaic(paths, heat, tile=32, cells=cells, errors=errors)
    tp, fp, fn, tn = (mosaic_size(n, 32) for n in (4, 3, 2, 1))  # each panel's tile grid (below its header)
    sep = 3 * GAP
    assert panels.size == (max(tp[0] + fp[0], fn[0] + tn[0]) + 2 * sep,
                           max(tp[1], fp[1]) + max(fn[1], tn[1]) + 2 * HEADER + 2 * sep)
    y2 = max(tp[1], fp[1]) + HEADER + sep  # top of the FN / TN row
    first_tile = {"TP": (0, HEADER, 0), "FP": (tp[0] + sep, HEADER, 4), "FN": (0, y2 + HEADER, 7),
                  "TN": (fn[0] + sep, y2 + HEADER, 9)}
    for cell, (x, y, i) in first_tile.items():
        assert panels.getpixel((x + 16, y + 16)) == (20 * i,) * 3, cell  # the panel's first member
        corner = panels.getpixel((x, y))
        assert (corner == ERROR_COLOUR) == (cell in ("FP", "FN")), (cell, corner)


@pytest.fixture()
def sliced_ws(ws_copy, tmp_path):
    from jobs import slices

    ws_dir = ws_copy[0].root
    out = tmp_path / "slices.json"
    assert slices.main(["--workspace", str(ws_dir), "--json", str(out), "--slices", "5"]) == 0
    return ws_dir, json.loads(out.read_text())


def test_slices_job_reports_ranked_slices_with_ground_truth(sliced_ws):
    from core.scanner.runs import get_slices, list_runs
    from core.store.workspace import Workspace

    ws_dir, report = sliced_ws
    assert report["n_slices"] == 5 and len(report["slices"]) <= 5
    for r in report["slices"]:
        assert {"rank", "size", "accuracy", "group", "purity", "mislabeled"} <= set(r)
        assert r["group"] is not None and 0 < r["purity"] <= 1 and r["mislabeled"] == 0
    assert [r["rank"] for r in report["slices"]] == list(range(1, len(report["slices"]) + 1))
    scores = [r["score"] for r in report["slices"]]
    assert scores == sorted(scores, reverse=True)
    ws = Workspace.open(ws_dir)
    sl = get_slices(ws, report["run_id"])
    assert sl.mosaic_path.map(lambda p: p and __import__("os").path.exists(p)).all()
    assert sum(r["size"] for r in report["slices"]) == ws.scalar(
        "SELECT count(*) FROM images WHERE split IN ('train', 'test', 'error_heldout')")
    assert len(list_runs(ws)) == 1
    # every image in exactly one slice, and each slice's numbers are its members' (the planted ground truth)
    members = ws.df("SELECT m.slice_id, m.image_id, i.group_name, p.correct FROM slice_members m "
                    "JOIN slice_runs r USING (run_id) JOIN images i USING (image_id) "
                    "LEFT JOIN predictions p ON p.image_id = m.image_id AND p.model_id = r.model_id "
                    "WHERE m.run_id = ?", [report["run_id"]])
    assert members.image_id.is_unique
    for r in report["slices"]:
        part = members[members.slice_id == r["slice_id"]]
        groups = part.group_name.value_counts()
        assert r["size"] == len(part)
        assert r["accuracy"] == pytest.approx(part.correct.astype(float).mean(), abs=1e-4)
        assert r["group"] == groups.index[0] and r["purity"] == pytest.approx(groups.iloc[0] / len(part), abs=1e-4)


def test_annotations_and_propagation(sliced_ws):
    from core.scanner import annotations as ann
    from core.store.workspace import Workspace

    ws_dir, report = sliced_ws
    ws = Workspace.open(ws_dir)
    run_id, first = report["run_id"], report["slices"][0]["slice_id"]
    with pytest.raises(ValueError, match="kind"):
        ann.annotate(ws, run_id, first, "wrong")
    with pytest.raises(ValueError, match="no slice"):
        ann.annotate(ws, run_id, 99, "core")
    ann.annotate(ws, run_id, first, "spurious", note="background", annotator="tester")
    listed = ann.list_annotations(ws, run_id)
    assert listed[["slice_id", "kind", "annotator"]].values.tolist() == [[first, "spurious", "tester"]]
    sugg = ann.propagation_suggestions(ws, run_id, neighbours=4, min_similarity=-1)
    assert len(sugg) == 4 and set(sugg.source_slice_id) == {first} and (sugg.kind == "spurious").all()
    target = int(sugg.slice_id.iloc[0])
    ann.dismiss_suggestion(ws, run_id, target, first)
    assert target not in ann.propagation_suggestions(ws, run_id, neighbours=4, min_similarity=-1).slice_id.tolist()
    other = int(sugg.slice_id.iloc[1])
    ann.confirm_suggestion(ws, run_id, other, first, annotator="tester")
    assert ann.annotated_slices(ws, run_id, "spurious") == sorted([first, other])


def test_mosaic_tile_of_a_missing_image_is_a_placeholder_not_a_crash(tmp_path):
    import numpy as np

    from core.scanner.mosaic import make_tile

    tile = make_tile(tmp_path / "gone.png", np.ones((7, 7), np.float32), tile=32)
    assert tile.size == (32, 32)
    assert tile.getpixel((16, 2)) == (200, 200, 200)

"""Failures of any kind (core.dcd.failure): a confusion cell and picked images split into query and held-out
parts, stored and read back, and the loop (select -> retrain -> evaluate, the pipeline job) run for them."""

from __future__ import annotations

import json

import pytest

from core.dcd.failure import (
    FailureRefError,
    failure_from_cell,
    failure_from_images,
    get_failure,
    list_failures,
)
from core.store.workspace import Workspace


def _baseline(report: dict) -> str:
    return report["methods"]["baseline"]["model_id"]


def _cell(ws: Workspace, model_id: str, split: str = "test") -> tuple[int, int, set[int]]:
    """The off-diagonal confusion cell of ``model_id`` on ``split`` with the most images: (label, pred, ids)."""
    df = ws.df("SELECT i.image_id, i.label, p.pred FROM images i JOIN predictions p USING (image_id) "
               "WHERE p.model_id = ? AND i.split = ? AND i.label != p.pred", [model_id, split])
    label, pred = df.groupby(["label", "pred"]).size().idxmax()
    members = set(df.image_id[(df.label == label) & (df.pred == pred)].astype(int))
    assert len(members) >= 2, "the tiny classifier should confuse at least two test images one way"
    return int(label), int(pred), members


def test_a_confusion_cell_is_split_stored_and_read_back(ws_copy):
    ws, report = ws_copy
    model_id = _baseline(report)
    label, pred, members = _cell(ws, model_id)
    names = ws.class_names()
    f = failure_from_cell(ws, model_id, names[label], names[pred])
    assert f.kind == "cell" and f.name == f"{names[label]} taken for {names[pred]} on test (by {model_id})"
    assert set(f.query_ids) | set(f.heldout_ids) == members and set(f.query_ids).isdisjoint(f.heldout_ids)
    assert f.query_ids and f.heldout_ids
    held = ws.df("SELECT image_id FROM eval_sets WHERE eval_set = ?", [f.eval_set])
    assert f.eval_set == f"failure:{f.failure_id}" and set(held.image_id) == set(f.heldout_ids)
    assert get_failure(ws, f.failure_id) == f
    # the same cell again (classes by index this time) is the same failure; another seed for it is refused
    assert failure_from_cell(ws, model_id, label, pred) == f
    with pytest.raises(ValueError, match="already has a query/held-out split"):
        failure_from_cell(ws, model_id, label, pred, seed=1)
    assert f.failure_id in [x.failure_id for x in list_failures(ws)]
    assert list_failures(ws)[-1].kind == "error_sample"  # the split, after the stored ones
    # on error_heldout too it is another failure, with the images of both splits
    both = failure_from_cell(ws, model_id, label, pred, splits=("test", "error_heldout"))
    assert both.failure_id != f.failure_id and members <= set(both.query_ids) | set(both.heldout_ids)


def test_a_confusion_cell_is_read_on_evaluation_splits_only(ws_copy):
    ws, report = ws_copy
    model_id = _baseline(report)
    for split in ("train", "pool"):
        with pytest.raises(ValueError, match="is read on test or error_heldout"):
            failure_from_cell(ws, model_id, 0, 1, splits=(split,))
    with pytest.raises(ValueError, match="two different classes"):
        failure_from_cell(ws, model_id, 0, 0)
    with pytest.raises(ValueError, match="no class 'wolf'; the classes are"):
        failure_from_cell(ws, model_id, "wolf", 1)


def test_picked_images_labelled_and_not_pool(ws_copy):
    ws, _ = ws_copy
    test_ids = ws.df("SELECT image_id FROM images WHERE split = 'test' ORDER BY image_id LIMIT 5").image_id.tolist()
    pool_id = int(ws.scalar("SELECT min(image_id) FROM images WHERE split = 'pool'"))
    f = failure_from_images(ws, test_ids[:4])
    assert f.kind == "picked" and f.name == "4 picked images"
    assert sorted(f.query_ids + f.heldout_ids) == sorted(test_ids[:4]) and len(f.heldout_ids) == 2
    assert failure_from_images(ws, test_ids[:4][::-1]) == f  # the same images, in any order
    with pytest.raises(ValueError, match="pool images"):
        failure_from_images(ws, [test_ids[0], pool_id])
    with ws.write() as con:
        con.execute("UPDATE images SET label = NULL WHERE image_id = ?", [test_ids[4]])
    with pytest.raises(ValueError, match="have no label"):
        failure_from_images(ws, [test_ids[0], test_ids[4]])
    with pytest.raises(ValueError, match="at least 2"):
        failure_from_images(ws, [test_ids[0]])
    with pytest.raises(ValueError, match="no image 999999"):
        failure_from_images(ws, [test_ids[0], 999999])
    with pytest.raises(FailureRefError, match="no failure 'nope'"):
        get_failure(ws, "nope")


def test_select_retrain_and_evaluate_for_a_cell(ws_copy):
    from core.dcd.fine_tune import retrain, training_set
    from core.dcd.strategies import SelectionRequest, select
    from core.models.evaluation import compute_metrics, evaluate

    ws, report = ws_copy
    base = _baseline(report)
    label, pred, _ = _cell(ws, base)
    f = failure_from_cell(ws, base, label, pred)
    sel = select(ws, "dcd", SelectionRequest(failure=f.failure_id, budget=10, label_policy="weak"))
    assert set(sel.items.image_id[sel.items.kind == "failure"]) == set(f.query_ids)
    assert (sel.items.kind == "retrieved").sum() > 0
    assert json.loads(ws.scalar("SELECT params FROM selections WHERE selection_id = ?",
                                [sel.selection_id]))["failure"]["failure_id"] == f.failure_id
    assert set(training_set(ws, sel.selection_id).image_id).isdisjoint(f.heldout_ids)
    model_id = retrain(ws, base_model_id=base, selection_id=sel.selection_id, method="dcd", epochs=1)
    metrics = evaluate(ws, model_id)
    assert metrics[f.eval_set]["accuracy"] is not None
    assert ws.scalar("SELECT n FROM metrics WHERE model_id = ? AND eval_set = ?", [model_id, f.eval_set]) == len(
        f.heldout_ids)
    assert compute_metrics(ws, base)[f.eval_set]["accuracy"] == 0.0  # all misclassified by it, by construction
    with pytest.raises(ValueError, match="name the failure once"):
        SelectionRequest(failure=f.failure_id, from_slice="latest:1")
    # label issues: dropped for a named failure under a pair label policy, as for a slice, kept for error_sample
    assert SelectionRequest(failure=f.failure_id, label_policy="agree").drops_label_issues()
    assert not SelectionRequest(failure="error_sample", label_policy="agree").drops_label_issues()


def test_the_failure_select_and_pipeline_jobs(ws_copy, tmp_path):
    from jobs import failure, pipeline, select

    ws, report = ws_copy
    base = _baseline(report)
    label, pred, members = _cell(ws, base)
    names = ws.class_names()
    out = tmp_path / "failure.json"
    assert failure.main(["--workspace", str(ws.root), "--cell", f"{names[label]}:{names[pred]}",
                         "--classifier-id", base, "--json", str(out)]) == 0
    made = json.loads(out.read_text())
    assert set(made["query_ids"]) | set(made["heldout_ids"]) == members
    ref = made["failure_id"]
    out = tmp_path / "select.json"
    assert select.main(["--workspace", str(ws.root), "--method", "error_sample_only", "--failure", ref,
                        "--json", str(out)]) == 0
    assert json.loads(out.read_text())["n"] == made["n_query"]
    out = tmp_path / "pipeline.json"
    assert pipeline.main(["--workspace", str(ws.root), "--json", str(out), "--classifier-id", base,
                          "--failure", ref, "--embedder", "classifier", "--retrieval", "always",
                          "--rest-of-pool", "off", "--finetune-epochs", "1", "--batch-size", "32",
                          "--methods", "dcd", "error_sample_only"]) == 0
    loop = json.loads(out.read_text())
    assert loop["failure"]["failure_id"] == ref and "slice" not in loop
    assert set(loop["methods"]) == {"baseline", "dcd", "error_sample_only"}
    assert loop["methods"]["baseline"]["failure_heldout_acc"] == 0.0
    for method in ("dcd", "error_sample_only"):
        assert 0.0 <= loop["methods"][method]["failure_heldout_acc"] <= 1.0
    assert loop["methods"]["error_sample_only"]["n_added"] == made["n_query"]
    # the app's note on what retrieval added compares the two fixes on the failure's held-out part
    from core.app.retrieval_note import retrieval_notes

    dcd, alone = (loop["methods"][m] for m in ("dcd", "error_sample_only"))
    note = retrieval_notes(ws, [dcd["model_id"], alone["model_id"]])[dcd["model_id"]]
    assert f"on the failure {dcd['failure_heldout_acc']:.1%} against {alone['failure_heldout_acc']:.1%}" in note


def _png(size: tuple[int, int] = (24, 24), mode: str = "RGB", seed: int = 0) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    if mode == "1":  # a huge image that compresses to almost nothing: many pixels, few bytes
        im = Image.new("1", size)
    else:
        im = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_uploaded_images_are_a_failure_with_no_heldout_part(ws_copy, monkeypatch):
    from core.data import uploads
    from core.dcd.failure import NO_HELDOUT, failure_from_upload

    ws, _ = ws_copy
    good = [(f"bird {i}.png", _png(seed=i)) for i in range(3)]
    monkeypatch.setattr(uploads, "UPLOAD_MAX_BYTES", 50_000)
    bad = [("notes.png", b"these are notes, not an image"), ("big.png", _png((300, 300))),
           ("huge.png", _png((8000, 6000), mode="1")), ("empty.jpg", b"")]
    saved = uploads.save_uploads(ws, good[:2] + bad + good[2:])
    # each bad file says why, by name; the good ones are saved all the same, under the workspace's artifacts
    assert saved.saved == tuple(n for n, _ in good)
    assert set(saved.refused) == {"notes.png", "big.png", "huge.png", "empty.jpg"}
    assert saved.refused["notes.png"].startswith("notes.png is not an image that can be read")
    assert "MB; upload images of at most 0 MB" in saved.refused["big.png"]
    assert "more than 40 megapixels" in saved.refused["huge.png"] and "empty" in saved.refused["empty.jpg"]
    assert saved.folder.parent == ws.artifacts / "uploads" and len(list(saved.folder.iterdir())) == 3
    # a file that is not an image in the folder itself (a folder given on the command line): named, not fatal
    (saved.folder / "zz-broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    n_images = ws.scalar("SELECT count(*) FROM images")

    f, refused = failure_from_upload(ws, saved.folder, "disc")
    assert list(refused) == ["zz-broken.jpg"] and "unreadable_image" in refused["zz-broken.jpg"]
    assert f.kind == "uploaded" and f.name == f"3 uploaded image(s) of disc ({NO_HELDOUT})"
    assert len(f.query_ids) == 3 and f.heldout_ids == ()  # every image searched with, none held out
    rows = ws.df("SELECT split, label FROM images WHERE image_id IN (SELECT unnest(?::BIGINT[]))", [list(f.query_ids)])
    assert set(rows.split) == {"uploaded"} and set(rows.label) == {ws.class_names().index("disc")}
    assert ws.scalar("SELECT count(*) FROM images") == n_images + 3
    assert ws.scalar("SELECT count(*) FROM eval_sets WHERE eval_set = ?", [f.eval_set]) == 0
    assert f.describe()["eval_set"] is None and f.measured_on == f"test only ({NO_HELDOUT})"
    assert get_failure(ws, f.failure_id) == f and f.failure_id in [x.failure_id for x in list_failures(ws)]
    # the job run again (the same folder) is the same failure, nothing ingested twice
    assert failure_from_upload(ws, saved.folder, "disc") == (f, refused)
    assert ws.scalar("SELECT count(*) FROM images") == n_images + 3
    # an upload of bad files only, and a label that is no class, are refused with the reason
    only_bad = uploads.save_uploads(ws, [("a.png", _png(seed=9))])
    (only_bad.folder / "001-b.png").write_bytes(b"no")
    (only_bad.folder / "000-a.png").write_bytes(b"not a png any more")
    with pytest.raises(ValueError, match="no file of the upload could be used: .*000-a.png"):
        failure_from_upload(ws, only_bad.folder, "disc")
    with pytest.raises(ValueError, match="no class 'wolf'"):
        failure_from_upload(ws, saved.folder, "wolf")


def test_the_loop_for_uploaded_images_is_measured_on_test_only(ws_copy, tmp_path):
    from core.data.uploads import save_uploads
    from jobs import failure, pipeline

    ws, report = ws_copy
    base = _baseline(report)
    paths = ws.df("SELECT path FROM images WHERE split = 'error_sample' AND label = 1 LIMIT 3").path
    saved = save_uploads(ws, [(f"query {i}.png", open(p, "rb").read()) for i, p in enumerate(paths)])
    out = tmp_path / "failure.json"
    assert failure.main(["--workspace", str(ws.root), "--upload-dir", str(saved.folder), "--label", "1",
                         "--name", "my photos", "--json", str(out)]) == 0
    made = json.loads(out.read_text())
    assert made["kind"] == "uploaded" and made["n_query"] == 3 and made["n_heldout"] == 0
    assert made["name"].startswith("my photos (no held-out part")
    out = tmp_path / "pipeline.json"
    assert pipeline.main(["--workspace", str(ws.root), "--json", str(out), "--classifier-id", base,
                          "--failure", made["failure_id"], "--embedder", "classifier", "--retrieval", "always",
                          "--rest-of-pool", "off", "--finetune-epochs", "1", "--batch-size", "32",
                          "--methods", "dcd", "random"]) == 0
    loop = json.loads(out.read_text())
    assert loop["failure"]["failure_id"] == made["failure_id"] and "test only" in loop["measured_on"]
    assert set(loop["methods"]) == {"baseline", "dcd", "random", "error_sample_only"}
    for r in loop["methods"].values():
        assert r["failure_heldout_acc"] is None and 0.0 <= r["test_acc"] <= 1.0
    dcd = loop["methods"]["dcd"]
    assert dcd["n_failure"] == 3  # the uploaded images are DCD's E_sample
    assert loop["retrieval"]["test_acc_over_failure_only"] == pytest.approx(
        dcd["test_acc"] - loop["methods"]["error_sample_only"]["test_acc"], abs=1e-4)
    # an upload needs the class its images should have
    assert failure.main(["--workspace", str(ws.root), "--upload-dir", str(saved.folder)]) == 1

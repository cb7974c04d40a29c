"""DCD's fix: the failure's images plus what retrieval adds, checked on folds of the failure's images before it
is shipped (core.dcd.debug_train, core.dcd.fix_choice), and the sentence that tells a stakeholder what
retrieval bought (core.app.retrieval_note)."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd

from core.app.retrieval_note import retrieval_notes
from core.dcd.debug_train import MIN_LABEL_CONFIDENCE
from core.dcd.fix_choice import VALIDATION_FOLDS, choose_retrieval, split_folds
from core.models.schedules import finetune_schedule
from core.store.workspace import Workspace


def test_folds_deal_each_class_evenly_and_reproducibly():
    labels = np.array([0] * 9 + [1] * 4 + [2] * 1)
    fold = split_folds(labels, seed=3)
    assert np.array_equal(fold, split_folds(labels, seed=3))
    assert set(fold) <= set(range(VALIDATION_FOLDS))
    for c in (0, 1):
        counts = np.bincount(fold[labels == c], minlength=VALIDATION_FOLDS)
        assert counts.max() - counts.min() <= 1


def _failure(ws: Workspace) -> pd.DataFrame:
    return ws.df("SELECT image_id, label FROM images WHERE split = 'error_sample' ORDER BY image_id")


def test_the_check_judges_every_failure_image_once_and_ships_what_won(ws_copy):
    ws, report = ws_copy
    base = report["methods"]["baseline"]["model_id"]
    failure = _failure(ws)
    choice = choose_retrieval(ws, base_id=base, failure_ids=failure.image_id, failure_labels=failure.label,
                              embedder_id=report["embedder"]["embedder_id"], budget=30,
                              config=finetune_schedule(ws, base, {"batch_size": 32}), epochs=2)
    assert choice.folds == VALIDATION_FOLDS and choice.n_validation == len(failure)
    assert len(choice.n_retrieved_for_fit) == VALIDATION_FOLDS and sum(choice.n_retrieved_for_fit) > 0
    won = choice.with_retrieval["accuracy"] > choice.failure_only["accuracy"]  # a tie goes to the simpler fix
    assert choice.used == won and ("does not help" in choice.reason) == (not won)
    right = round(choice.failure_only["accuracy"] * len(failure))
    assert f"{right} with the failure's images alone" in choice.reason


def test_the_check_judges_in_fp32_even_where_bf16_would_be_chosen(ws_copy, monkeypatch):
    """The check is decided by a few images either way: its probabilities are fp32's, even on a device where
    the precision check would pick bf16 for the same model (forced here)."""
    from core.data.images import pixels
    from core.dcd.fine_tune import FineTuned
    from core.dcd.fix_choice import p_right
    from core.models import trunk
    from core.models.catalog import get_model, load_classifier
    from core.models.inference import PrecisionCheck, predict_probs

    ws, report = ws_copy
    base = report["methods"]["baseline"]["model_id"]
    model, data_config = load_classifier(ws, base)
    tuned = FineTuned(model, data_config, get_model(ws, base), {"finetune": {"trainable_stages": None}})
    monkeypatch.setattr(trunk, "choose_precision", lambda *a, allow_bf16=True, **k: PrecisionCheck(
        allow_bf16, "forced by the test"))
    failure = _failure(ws)
    paths = ws.df("SELECT path FROM images WHERE split = 'error_sample' ORDER BY image_id").path.tolist()
    fp32 = predict_probs(model, pixels(ws, paths, data_config.image_size), data_config)
    labels = failure.label.to_numpy()
    right = fp32[np.arange(len(labels)), labels]
    expected = np.where(fp32.argmax(1) == labels, right, -right)
    assert np.array_equal(p_right(ws, tuned, failure.image_id.tolist(), labels), expected)


def test_debug_train_is_the_failure_first_then_confidently_labelled_pool_images(tiny_pipeline_workspace):
    ws_dir, report_path = tiny_pipeline_workspace
    report = json.loads(report_path.read_text())
    methods = report["methods"]
    assert report["retrieval"]["used"] and report["retrieval"]["reason"].startswith("not checked: --retrieval always")
    assert methods["dcd"]["model_id"] != methods["error_sample_only"]["model_id"]
    n_failure = methods["error_sample_only"]["n_added"]
    ws = Workspace.open(ws_dir)
    sel = ws.df("SELECT selection_id, params FROM selections WHERE method = 'dcd'")
    assert json.loads(sel.params.iloc[0])["retrieval"]["used"]
    items = ws.df("SELECT rank, kind, confidence, image_id FROM selection_items WHERE selection_id = ? "
                  "ORDER BY rank", [sel.selection_id.iloc[0]])
    failure = _failure(ws).image_id
    assert items.kind.head(n_failure).eq("failure").all() and set(items.image_id.head(n_failure)) == set(failure)
    retrieved = items[items.kind == "retrieved"]
    assert len(retrieved) > 0 and (retrieved.confidence >= MIN_LABEL_CONFIDENCE).all()
    assert not set(retrieved.image_id) & set(failure)
    # random gets the failure's images and as many pool images as DCD retrieved.
    assert methods["random"]["n_added"] == methods["dcd"]["n_added"] == n_failure + len(retrieved)


def test_the_rest_of_the_pool_is_teacher_labelled_and_drawn_with_train(ws_copy):
    from core.dcd.debug_train import build_debug_train
    from core.dcd.fine_tune import training_set
    from core.models.catalog import load_classifier

    ws, report = ws_copy
    teacher, data_config = load_classifier(ws, report["methods"]["error_sample_only"]["model_id"])
    failure = _failure(ws)
    common = dict(embedder_id=report["embedder"]["embedder_id"], failure_ids=failure.image_id.tolist(),
                  failure_labels=failure.label.tolist(), teacher=teacher, data_config=data_config, budget=20)
    without = build_debug_train(ws, **common)
    made = build_debug_train(ws, **common, rest_of_pool=True)
    assert without.n_rest == 0 and made.n_rest > 0 and made.info["n_rest"] == made.n_rest
    items = made.items
    # the failure's images and the same retrieval first; the rest is neither, each image once
    assert set(items[items.kind != "rest"].image_id) == set(without.items.image_id)
    assert items.image_id.is_unique
    rest = items[items.kind == "rest"]
    assert (rest.confidence >= MIN_LABEL_CONFIDENCE).all()
    pool = set(ws.df("SELECT image_id FROM images WHERE split = 'pool'").image_id)
    assert set(rest.image_id) <= pool
    # fine-tuning draws them with train (source "rest"), not with the debug-train share
    df = training_set(ws, None, items=items)
    sources = df.groupby("source").size()
    assert sources["rest"] == made.n_rest and sources["selection"] == len(items) - made.n_rest


def test_where_retrieval_loses_the_failure_only_fix_is_dcds(ws_copy, monkeypatch, tmp_path):
    """The loop's other branch: no DCD model is trained, DCD's result is the failure-only model's."""
    from core.dcd import fix_choice
    from jobs import pipeline

    ws, report = ws_copy
    lost = fix_choice.RetrievalChoice(False, "retrieval does not help (stubbed for this test)")
    monkeypatch.setattr(fix_choice, "choose_retrieval", lambda *a, **k: lost)
    out = tmp_path / "again.json"
    assert pipeline.main(["--workspace", str(ws.root), "--json", str(out), "--classifier-id",
                          report["methods"]["baseline"]["model_id"], "--finetune-epochs", "1", "--batch-size", "32",
                          "--embedder", "classifier", "--methods", "dcd"]) == 0
    again = json.loads(out.read_text())
    dcd, alone = again["methods"]["dcd"], again["methods"]["error_sample_only"]
    assert dcd["model_id"] == alone["model_id"] and dcd["test_acc"] == alone["test_acc"]
    found = ws.scalar("SELECT count(*) FROM selection_items WHERE selection_id = ? AND kind = 'retrieved'",
                      [dcd["dcd_selection_id"]])
    assert dcd["n_retrieved_found"] == again["retrieval"]["n_retrieved"] == found
    assert not again["retrieval"]["used"] and again["retrieval"]["reason"].endswith("(stubbed for this test)")


def test_too_few_failure_images_are_used_as_found_and_say_so(ws_copy):
    ws, report = ws_copy
    failure = _failure(ws).head(3)
    choice = choose_retrieval(ws, base_id=report["methods"]["baseline"]["model_id"],
                              failure_ids=failure.image_id, failure_labels=failure.label,
                              embedder_id=report["embedder"]["embedder_id"], budget=10)
    assert choice.used and choice.reason.startswith("not checked: 3 failure images are too few")
    assert choice.n_validation == 0


def test_the_note_says_what_retrieval_added_or_that_the_failure_only_fix_stood_in(ws_copy):
    ws, report = ws_copy
    alone = report["methods"]["error_sample_only"]["model_id"]
    sel_id, params = ws.df("SELECT selection_id, params FROM selections WHERE method = 'dcd'").iloc[0]
    params = json.loads(params)

    def note_with(used: bool) -> dict[str, str]:
        changed = {**params, "retrieval": {**params["retrieval"], "used": used}}
        with ws.write() as con:
            con.execute("UPDATE selections SET params = ? WHERE selection_id = ?", [json.dumps(changed), sel_id])
        return retrieval_notes(ws, [alone, dcd])

    # A DCD model trained on the selection (the random arm's model stands in for one, whatever the tiny run chose).
    dcd = report["methods"]["random"]["model_id"]
    with ws.write() as con:
        con.execute("UPDATE models SET method = 'dcd', config = ? WHERE model_id = ?",
                    [json.dumps({"selection_id": sel_id}), dcd])
    stood_in = note_with(False)[alone]
    assert stood_in.startswith(f"This is DCD's fix too: {params['retrieval']['reason']}. ")
    assert f"Retrieval had found {params['n_retrieved']:,} pool images" in stood_in
    notes = note_with(True)
    assert alone not in notes  # used: the failure-only fix is only the reference, not DCD's fix
    assert notes[dcd].startswith(f"Retrieval added {params['n_retrieved']:,} pool images to the failure's "
                                 f"{params['n_failure']:,} labelled images: on the failure ")
    assert "with the failure's images alone; on test " in notes[dcd]
    # each change with its interval and what that interval says (story.verdict): gain, loss or within noise
    assert len(re.findall(r"95% interval [-+][\d.]+ to [-+][\d.]+: (?:a gain|a loss|within noise)\)",
                          notes[dcd])) == 2

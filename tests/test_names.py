"""Human names (core.app.names) for models, selections, slices, eval sets and jobs, on frames whose answer
is known and on the tiny pipeline workspace."""

from __future__ import annotations

import json

import pandas as pd

from core.app import names
from core.store.workspace import Workspace


def _models(rows):
    return pd.DataFrame(rows, columns=["model_id", "role", "arch", "method", "parent_id", "config"])


def test_models_are_named_by_method_selection_and_parent():
    models = _models([
        ("baseline-1", "classifier", "resnet", "baseline", None, "{}"),
        ("dcd-1", "classifier", "resnet", "dcd", "baseline-1", json.dumps({"selection_id": "s-auto"})),
        ("dcd-2", "classifier", "resnet", "dcd", "baseline-1", json.dumps({"selection_id": "s-mine"})),
        ("dcd-3", "classifier", "resnet", "dcd", "baseline-1", json.dumps({"selection_id": "s-auto"})),
        ("corm-1", "classifier", "resnet", "corm", "dcd-2", "{}"),
        ("ft-1", "classifier", "resnet", None, "baseline-1", "{}"),
        ("emb", "embedder", "vit_small", None, None, "{}"),
    ])
    got = names.name_models(models, {"s-auto": "dcd-k20-b500", "s-mine": "my birds"})
    assert got == {
        "baseline-1": "Baseline", "dcd-1": "DCD from Baseline", "dcd-2": "DCD 'my birds' from Baseline",
        "dcd-3": "DCD from Baseline (2)", "corm-1": "CoRM from DCD 'my birds' from Baseline",
        "ft-1": "Fine-tuned from Baseline", "emb": "vit_small (embedder)"}
    assert names.method_name("error_sample_only") == "E_sample only" and names.method_name("new_thing") == "New thing"


def test_selections_keep_the_typed_name_and_say_what_a_job_named():
    sels = pd.DataFrame([("s3", "my birds", 12), ("s2", "dcd-k20-b400", 400), ("s1", "my birds", 9),
                         ("s0", "random-400", 400)], columns=["selection_id", "name", "n_items"])  # newest first
    assert names.name_selections(sels) == {"s0": "Random (400 images)", "s1": "my birds",
                                           "s2": "DCD retrieval (400 images)", "s3": "my birds (2)"}


def test_slices_are_described_by_what_they_hold():
    classes = ["landbird", "waterbird"]
    wrong = {"slice_id": 7, "rank": 1, "size": 502, "accuracy": 0.0, "confusion": "[[0, 0], [502, 0]]"}
    right = {"slice_id": 3, "rank": 5, "size": 1187, "accuracy": 1.0, "confusion": [[1187, 0], [0, 0]]}
    mixed = {"slice_id": 2, "rank": 3, "size": 10, "accuracy": 0.5, "confusion": [[3, 2], [2, 3]]}
    assert names.slice_name(wrong, classes) == "#1 · waterbird taken for landbird (502 images, 0% right)"
    assert names.slice_name(right, classes) == "#5 · landbird, recognised (1,187 images, 100% right)"
    assert names.describe_slice(mixed, classes) == "mixed, mostly landbird, recognised"
    table = names.name_slices(pd.DataFrame([wrong, right]), classes)
    assert table[7].startswith("#1 ·") and table[3].startswith("#5 ·")


def test_eval_sets_and_jobs_read_as_words():
    assert names.eval_set_name("error_heldout") == "Failure (debug-heldout)"
    assert names.eval_set_name("test/group=waterbird_on_land") == "Test · waterbird on land"
    assert names.eval_set_name("test", "worst_group_acc") == "Test · worst group"
    assert names.eval_set_name("slice=7", slices={7: "#1 · waterbird taken for landbird"}) == \
        "Slice #1 · waterbird taken for landbird"
    assert names.eval_set_name("slice:run9:2") == "Slice #2 (held-out part)"
    assert names.eval_set_name("failure:f3") == "Failure f3 (held-out part)"
    keys = names.eval_set_names([("test", "accuracy"), ("test", "worst_group_acc")])
    assert keys == {"test": "Test", "test:worst_group_acc": "Test · worst group"}
    models, sels = {"b-1": "Baseline"}, {"s-1": "my birds"}
    assert names.job_name("retrain", ["--selection-id", "s-1", "--classifier-id", "b-1"], models=models,
                          selections=sels) == "Retrain Baseline with my birds"
    assert names.job_name("retrain", ["--mitigate", "corm"]) == "Retrain the current classifier with CoRM"
    assert names.job_name("predict", ["--classifier-id=b-1"], models=models) == "Predict with Baseline"
    assert names.job_name("pipeline", []) == "Whole DCD loop"


def test_every_model_of_the_pipeline_workspace_has_a_distinct_name(tiny_pipeline_workspace):
    ws = Workspace.open(tiny_pipeline_workspace[0])
    report = json.loads(tiny_pipeline_workspace[1].read_text())
    got = names.model_names(ws)
    methods = report["methods"]
    assert got[methods["baseline"]["model_id"]] == "Baseline"
    assert got[methods["dcd"]["model_id"]] == "DCD from Baseline"
    assert got[methods["random"]["model_id"]] == "Random pool images from Baseline"
    assert len(set(got.values())) == len(got)
    sels = names.selection_names(ws)
    assert sels[methods["dcd"]["selection_id"]].startswith("DCD retrieval (")

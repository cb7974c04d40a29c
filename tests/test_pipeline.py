"""A small end-to-end run of the DCD loop through the job CLIs, on a tiny planted dataset."""

from __future__ import annotations

import json

from core.dcd.selection import list_selections
from core.models.catalog import list_models
from core.store.workspace import Workspace

METHODS = {"baseline", "dcd", "random", "all_pool", "error_sample_only"}


def test_pipeline_report_has_every_method_with_fractions(tiny_pipeline_workspace):
    ws_dir, report_path = tiny_pipeline_workspace
    report = json.loads(report_path.read_text())
    assert set(report["methods"]) == METHODS
    for method, r in report["methods"].items():
        assert 0.0 <= r["test_acc"] <= 1.0 and 0.0 <= r["error_heldout_acc"] <= 1.0
    assert report["methods"]["baseline"]["n_added"] == 0
    assert report["methods"]["all_pool"]["n_added"] == 200
    assert report["methods"]["error_sample_only"]["n_added"] == 8
    assert report["methods"]["random"]["n_added"] == report["methods"]["dcd"]["n_added"] > 0


def test_pipeline_leaves_models_metrics_selections_and_jobs_in_the_workspace(tiny_pipeline_workspace):
    ws = Workspace.open(tiny_pipeline_workspace[0])
    assert len(list_models(ws, "classifier")) == 5
    assert set(list_selections(ws).method) == {"dcd", "random", "all_pool", "error_sample_only"}
    sets = set(ws.df("SELECT DISTINCT eval_set FROM metrics").eval_set)
    assert {"test", "error_heldout", "test/group=square_on_dark", "test/group=disc_on_light"} <= sets
    jobs = ws.jobs().list()
    assert {j.kind for j in jobs} == {"ingest", "pipeline"}
    assert all(j.state == "succeeded" and j.progress == 1.0 for j in jobs)
    n_pred = ws.scalar("SELECT count(*) FROM predictions")
    assert n_pred == 5 * (120 + 40 + 8 + 24)


def test_dcd_retrieves_the_planted_minority_groups(tiny_pipeline_workspace):
    """The error sample is all minority-group images; DCD picks far more of them than random does."""
    ws = Workspace.open(tiny_pipeline_workspace[0])
    share = ws.df(
        "SELECT s.method, avg(CASE WHEN i.group_name IN ('square_on_light', 'disc_on_dark') THEN 1 ELSE 0 END) "
        "AS minority FROM selection_items si JOIN selections s USING (selection_id) "
        "JOIN images i USING (image_id) GROUP BY s.method").set_index("method").minority
    assert share["dcd"] > share["random"] + 0.2


def test_multiscale_classifier_embedding_is_its_own_embedder(ws_copy, tmp_path):
    """jobs.embed --embedder-layers multiscale stores a separate, wider embedding set and builds its index;
    the app can rebuild that embedder from its id."""
    import numpy as np

    from core.models.catalog import current_classifier, load_embedder, split_embedder_id
    from core.models.inference import embed
    from core.store.vectors import load_embeddings
    from jobs import embed as embed_job

    ws, _ = ws_copy
    out = tmp_path / "embed.json"
    assert embed_job.main(["--workspace", str(ws.root), "--splits", "error_sample,pool", "--embedder", "classifier",
                           "--embedder-layers", "multiscale", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    embedder_id = summary["embedder_id"]
    assert embedder_id == f"classifier:{current_classifier(ws)}+multiscale"
    assert split_embedder_id(embedder_id) == (f"classifier:{current_classifier(ws)}", "multiscale")
    ids, vecs = load_embeddings(ws, embedder_id)
    assert len(ids) == 8 + 200 and vecs.shape[1] == summary["dim"] > 64
    model, cfg = load_embedder(ws, embedder_id)
    pool_row = ws.df("SELECT image_id, path FROM images WHERE split = 'pool' LIMIT 1")
    from core.data.images import load_rgb

    again = embed(model, load_rgb(pool_row.path[0], cfg.image_size)[None], cfg, layers="multiscale")
    stored = vecs[list(ids).index(int(pool_row.image_id[0]))]
    assert np.allclose(again[0], stored, atol=0.05)


def test_select_without_an_embedder_searches_what_the_workspace_has(ws_copy):
    """The tiny workspace was embedded with the classifier's own layer only: jobs.select without
    --embedder-id searches that, not the default backbone it has no vectors for."""
    from core.dcd.embed import default_search_embedder
    from core.store.vectors import list_embedders

    ws, report = ws_copy
    assert default_search_embedder(ws) == list_embedders(ws)[-1] == report["embedder"]["embedder_id"]

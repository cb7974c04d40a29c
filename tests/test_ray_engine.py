"""--engine ray: embed, predict and attribute on Ray Data give what the local engine gives.

A real Ray runtime with 2 CPUs, on the tiny pipeline workspace. The first test runs the embed job's CLI with a
runtime started for the job (and checks it is shut down after); the others share one runtime.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.engines.ray_data import RayConfig
from core.models.inference import knn_overlap

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # a real Ray runtime per test module: seconds to start, each


def _vectors(ws, embedder_id):
    from core.store.vectors import load_embeddings

    return load_embeddings(ws, embedder_id)


def test_embed_job_on_ray_matches_local(ws_copy, tmp_path):
    from core.dcd.embed import EmbedderSpec, embed_split_images
    from jobs import embed

    ws, _ = ws_copy
    spec = EmbedderSpec(arch="classifier")
    local = embed_split_images(ws, spec, allow_bf16=False)
    ids_local, vec_local = _vectors(ws, local["embedder_id"])
    assert local["engine"] == "local"

    assert not ray.is_initialized()
    out = tmp_path / "embed.json"
    code = embed.main(["--workspace", str(ws.root), "--engine", "ray", "--embedder", "classifier", "--no-bf16",
                       "--batch-size", "64", "--json", str(out)])
    assert code == 0
    assert not ray.is_initialized(), "the job's local Ray runtime must be shut down after the job"
    result = json.loads(out.read_text())
    assert result["engine"] == "ray" and result["address"] == "local" and result["actors"] == 1
    assert result["n_embedded"] == local["n_embedded"]
    ids_ray, vec_ray = _vectors(ws, local["embedder_id"])
    assert np.array_equal(ids_local, ids_ray) and len(ids_ray) == local["n_embedded"]
    assert knn_overlap(vec_local, vec_ray, k=10) == 1.0
    assert float(np.abs(vec_local - vec_ray).max()) <= 1e-5


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_predict_on_ray_matches_local(ws_copy, ray_session):
    from core.models.catalog import require_classifier
    from core.models.evaluation import predict

    ws, _ = ws_copy
    model_id = require_classifier(ws, None, purpose="predict with")
    splits = ["test", "error_heldout", "pool"]  # 264 images: several batches of 64
    predict(ws, model_id, splits=splits, allow_bf16=False)
    q = ("SELECT image_id, pred, probs, loss, correct FROM predictions JOIN images USING (image_id) "
         "WHERE model_id = ? AND split IN ('test', 'error_heldout', 'pool') ORDER BY image_id")
    local = ws.df(q, [model_id])
    with ws.write() as con:
        con.execute("DELETE FROM predictions WHERE model_id = ?", [model_id])
    predict(ws, model_id, splits=splits, allow_bf16=False, ray=RayConfig())
    on_ray = ws.df(q, [model_id])
    assert len(on_ray) == len(local) == ws.scalar(
        f"SELECT count(*) FROM images WHERE split IN ({', '.join('?' * len(splits))})", splits)
    assert (on_ray.image_id.to_numpy() == local.image_id.to_numpy()).all()
    assert (on_ray.pred.to_numpy() == local.pred.to_numpy()).all()
    assert np.abs(np.stack(on_ray.probs) - np.stack(local.probs)).max() <= 1e-5
    assert on_ray.correct.equals(local.correct)


def test_attribute_on_ray_matches_local(ws_copy, ray_session):
    from core.scanner.attribution import AttributionConfig, attribute, load_attributions

    ws, _ = ws_copy
    config = AttributionConfig(allow_bf16=False, batch_size=32)
    local_summary = attribute(ws, splits=["test", "error_heldout"], config=config)
    local = load_attributions(ws, local_summary["model_id"])
    attribute(ws, splits=["test", "error_heldout"], config=config, ray=RayConfig())
    on_ray = load_attributions(ws, local_summary["model_id"])
    assert np.array_equal(local.image_ids, on_ray.image_ids) and len(local.image_ids) == local_summary["n"]
    assert np.abs(local.heatmaps - on_ray.heatmaps).max() <= 1e-4
    assert np.abs(local.vectors - on_ray.vectors).max() <= 1e-4
    assert knn_overlap(local.vectors, on_ray.vectors, k=10) == 1.0


def test_unreadable_image_on_ray_names_the_file(ws_copy, ray_session):
    from core.models.catalog import require_classifier
    from core.models.evaluation import predict

    ws, _ = ws_copy
    # past the first 128 images, which the driver decodes itself for the precision check
    image_id, path = ws.fetchone("SELECT image_id, path FROM images WHERE split = 'pool' ORDER BY image_id "
                                 "LIMIT 1 OFFSET 150")
    missing = str(path) + ".gone.png"
    with ws.write() as con:
        con.execute("UPDATE images SET path = ? WHERE image_id = ?", [missing, image_id])
    with pytest.raises(RuntimeError, match="gone.png"):
        predict(ws, require_classifier(ws, None, purpose="predict with"), splits=["pool"], allow_bf16=False,
                ray=RayConfig())


def test_ray_flags_need_the_ray_engine(ws_copy, capsys):
    from jobs import embed

    ws, _ = ws_copy
    assert embed.main(["--workspace", str(ws.root), "--embedder", "classifier", "--ray-address", "auto"]) == 1
    assert "--ray-address only apply with --engine ray" in capsys.readouterr().err


def test_the_whole_loop_on_ray_gives_the_local_report(tiny_pipeline_workspace, tmp_path, ray_session):
    """jobs.pipeline --engine ray on one copy of the tiny workspace (in the running Ray session, as a notebook
    would; a job's own runtime is started and shut down as the embed job's test checks), the local engine on
    another: every method's figures are the same."""
    from helpers import copy_workspace

    from jobs import pipeline

    src, report_path = tiny_pipeline_workspace
    base = json.loads(report_path.read_text())["methods"]["baseline"]["model_id"]
    reports = {}
    for engine in ("local", "ray"):
        ws = copy_workspace(src, tmp_path / engine)
        out = tmp_path / f"{engine}.json"
        assert pipeline.main(["--workspace", str(ws.root), "--json", str(out), "--classifier-id", base,
                              "--finetune-epochs", "1", "--batch-size", "32", "--embedder", "classifier",
                              "--retrieval", "always", "--methods", "dcd", "random", "--engine", engine]) == 0
        reports[engine] = json.loads(out.read_text())
    local, on_ray = reports["local"], reports["ray"]
    assert on_ray["engine"] == {"engine": "ray", "address": "local"} and "engine" not in local
    keys = ("test_acc", "error_heldout_acc", "n_added", "n_retrieved")
    for method in ("baseline", "dcd", "random", "error_sample_only"):
        assert {k: local["methods"][method].get(k) for k in keys} == \
               {k: on_ray["methods"][method].get(k) for k in keys}, method

"""DCD Studio's library: find where an image classifier fails, show why, and fix it with targeted data.

Everything a notebook needs is importable from here; the implementation lives in the sub-packages and is
imported only when a name is first used (``import core`` stays instant)::

    import core
    ws = core.Workspace.create("ws")                    # or core.Workspace.open("ws")
    core.ingest_manifest(ws, "data/manifest.csv")
    report = core.run_loop(ws, core.PipelineConfig())   # as jobs.pipeline: the error_sample split's failure,
                                                        # or without one the slice AttributionScanner finds
    run = core.find_slices(ws)                          # after core.attribute(ws)
    core.run_demo(core.Workspace.create("demo"), core.DemoRun(size="small"))  # as jobs.demo, from nothing

The sub-packages, lowest layer first (below them all: ``core.progress``, progress reporting, and
``core.constants``, the vocabulary):

- ``core.store``: the workspace (DuckDB file, connections), its schema, embedding vectors, the job table;
- ``core.data``: the vocabulary (splits, manifest columns), reading manifests, ingest, image decoding;
- ``core.models``: building timm models, the packaged pretrained backbones, checkpoints, the workspace's
  model catalog, inference, training schedules, training, evaluation;
- ``core.dcd``: Data-Centric Debugging: embedding, the faiss pool index, selection strategies, the pipeline;
- ``core.scanner``: AttributionScanner: attributions, the slicer, slice runs, mosaics, annotations, CoRM;
- ``core.app``: the read-only queries, charts and reports the dashboard shows (no Streamlit);
- ``core.runner``: the job registry and every job's typed options, the command line of every job, launching jobs;
- ``core.scenarios``: demo and benchmark data with planted truth, and a demo run from nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> module that defines it
_API = {
    "Workspace": "core.store.workspace",
    "WorkspaceError": "core.store.workspace",
    "ingest_manifest": "core.data.ingest",
    "ingest_imagefolder": "core.data.ingest",
    "read_manifest": "core.data.manifest",
    "metadata_columns": "core.data.metadata",
    "image_metadata": "core.data.metadata",
    "accuracy_breakdown": "core.app.breakdowns",
    "SPLITS": "core.constants",
    "create_model": "core.models.factory",
    "train_classifier": "core.models.training",
    "retrain": "core.dcd.fine_tune",
    "TrainConfig": "core.models.schedules",
    "PRETRAINED_SCHEDULE": "core.models.schedules",
    "BACKBONES": "core.models.pretrained",
    "evaluate": "core.models.evaluation",
    "predict": "core.models.evaluation",
    "current_classifier": "core.models.catalog",
    "list_models": "core.models.catalog",
    "EmbedderSpec": "core.dcd.embed",
    "embed_split_images": "core.dcd.embed",
    "pool_index": "core.dcd.index",
    "select": "core.dcd.strategies",
    "SelectionRequest": "core.dcd.strategies",
    "selection_items": "core.dcd.selection",
    "failure_from_cell": "core.dcd.failure",
    "failure_from_images": "core.dcd.failure",
    "failure_from_upload": "core.dcd.failure",
    "get_failure": "core.dcd.failure",
    "list_failures": "core.dcd.failure",
    "run_loop": "core.scanner.loop",
    "search_size": "core.dcd.strategies",
    "PipelineConfig": "core.dcd.pipeline",
    "attribute": "core.scanner.attribution",
    "AttributionConfig": "core.scanner.attribution",
    "find_slices": "core.scanner.runs",
    "SliceConfig": "core.scanner.runs",
    "slice_report": "core.scanner.runs",
    "annotate": "core.scanner.annotations",
    "corm_retrain": "core.scanner.mitigation",
    "CormConfig": "core.scanner.mitigation",
    "run_demo": "core.scenarios.demo_run",
    "DemoRun": "core.scenarios.demo_run",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'core' has no attribute {name!r}; the public API is {__all__}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__

"""The notebook and the command line run the same loop: ``core.run_loop`` on a workspace gives the report
``jobs.pipeline`` gives on a copy of it, with an ``error_sample`` split and without one (then the failure is
the slice AttributionScanner finds)."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from tests.helpers import copy_workspace

TINY_ARCH = "test_resnet"  # tests/conftest.py
ARGS = ["--classifier", TINY_ARCH, "--image-size", "24", "--epochs", "3", "--finetune-epochs", "2",
        "--batch-size", "32", "--embedder", "classifier", "--retrieval", "always", "--rest-of-pool", "off"]
#: Keys that differ between two runs of the same loop: how long it took, and where its workspace is.
RUN_SPECIFIC = {"timings_s", "total_seconds"}


def _comparable(report: dict, root) -> dict:
    """The report without its timings, with the workspace's folder and the random suffixes of model, selection
    and run ids replaced by their order of first appearance."""
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in RUN_SPECIFIC}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x.replace(str(root), "<ws>") if isinstance(x, str) else x

    seen: dict[str, str] = {}
    text = json.dumps(strip(report))
    text = re.sub(r"\brun-\d{8}-\d{6}-[0-9a-f]{4}\b", lambda m: seen.setdefault(m.group(0), f"run#{len(seen)}"), text)
    text = re.sub(r"\b([a-z_]+)-[0-9a-f]{6,8}\b", lambda m: seen.setdefault(m.group(0), f"{m.group(1)}#{len(seen)}"),
                  text)
    return json.loads(text)


def _this_device_name() -> str:
    from core.models.device import describe_device

    return describe_device()["name"]


@pytest.mark.slow
@pytest.mark.parametrize("error_split", [True, False], ids=["error_sample", "slice_found"])
def test_core_run_loop_gives_the_reports_of_jobs_pipeline(tmp_path, tiny_manifest, error_split) -> None:
    import core
    from core.models.schedules import PRETRAINED_SCHEDULE
    from jobs import ingest, pipeline

    manifest = tiny_manifest
    if not error_split:
        rows = pd.read_csv(tiny_manifest)
        manifest = tiny_manifest.with_name("no-error-split.csv")
        rows[~rows.split.isin(["error_sample", "error_heldout"])].to_csv(manifest, index=False)
    assert ingest.main(["--workspace", str(tmp_path / "ws"), "--manifest", str(manifest)]) == 0
    job_root = copy_workspace(tmp_path / "ws", tmp_path / "job-ws").root
    assert pipeline.main(["--workspace", str(job_root), "--json", str(tmp_path / "job.json"), *ARGS]) == 0
    from_job = json.loads((tmp_path / "job.json").read_text())
    assert from_job.pop("device") == {"device": "cpu", "name": _this_device_name()}  # a job says where it ran

    ws = core.Workspace.open(tmp_path / "ws")
    # ARGS as a notebook writes them (the command line's training settings include its defaults of --seed,
    # --added-share and --added-mix)
    config = core.PipelineConfig(classifier=TINY_ARCH, image_size=24, finetune_epochs=2,
                                 train={"epochs": 3, "batch_size": 32, "seed": 0,
                                        "added_share": PRETRAINED_SCHEDULE.added_share,
                                        "added_mix": PRETRAINED_SCHEDULE.added_mix},
                                 embedder=core.EmbedderSpec("classifier"), retrieval="always", rest_of_pool="off")
    from_notebook = core.run_loop(ws, config)
    assert ("failure" in from_job) is (not error_split)  # without the split, the loop fixed a slice it found
    assert _comparable(from_notebook, tmp_path / "ws") == _comparable(from_job, job_root)

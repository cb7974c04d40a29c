"""Shared fixtures: a tiny planted dataset (made at test time) and a workspace built from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import copy_workspace
from PIL import Image

from core.scenarios.demos import assets_dir

# The real assets come from one setting, $DCD_ASSETS (`make test ASSETS=DIR`); tests that need them skip
# with that reason when it is unset.
ASSETS = assets_dir()
TINY_ARCH = "test_resnet"


def make_tiny_dataset(root: Path, *, seed: int = 0, size: int = 24) -> Path:
    """Two classes (a bright square vs a bright disc) on two backgrounds (dark vs light), with planted
    minority groups in error_sample/error_heldout and 30% weak-label noise in the pool. Three metadata columns
    (:func:`tiny_metadata`): the site (the background), the exposure (a number) and the day it was taken."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    rows = []
    plan = {"train": (120, 0.9), "test": (40, 0.5), "error_sample": (8, 0.0), "error_heldout": (24, 0.0),
            "pool": (200, 0.8)}
    for split, (n, p_major) in plan.items():
        for i in range(n):
            cls = int(rng.integers(2))
            major = rng.random() < p_major
            bg = cls if major else 1 - cls
            img = np.full((size, size, 3), 40 if bg == 0 else 200, np.float32)
            img += rng.normal(0, 10, img.shape)
            cy, cx = rng.integers(6, size - 6, 2)
            if cls == 0:
                mask = (abs(yy - cy) < 4) & (abs(xx - cx) < 4)
            else:
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 < 16
            img[mask] = [220, 60, 60] if cls == 0 else [60, 60, 220]
            path = root / split / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
            names = ["square", "disc"]
            weak = names[cls if rng.random() > 0.3 else 1 - cls] if split == "pool" else ""
            rows.append({"path": f"{split}/{i:04d}.png", "label": "" if split == "pool" else names[cls],
                         "split": split, "weak_label": weak, "group": f"{names[cls]}_on_{'dark light'.split()[bg]}",
                         "true_label": names[cls], **tiny_metadata(i, bg)})
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def tiny_metadata(i: int, background: int) -> dict[str, str]:
    """The metadata of the tiny dataset's image ``i`` of a split on ``background`` (0 dark, 1 light): ``site``
    (text) says the background (north: dark, south: light), ``exposure`` (number) is 40-44 on dark and 200-204 on
    light, ``taken`` (date) a day of 2023, of month ``i % 12 + 1``. None of it draws from the random generator:
    the images and labels are those of the dataset without it."""
    return {"site": "south" if background else "north", "exposure": str((200 if background else 40) + i % 5),
            "taken": f"2023-{i % 12 + 1:02d}-{i % 28 + 1:02d}"}


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny-data"))


@pytest.fixture(scope="session")
def tiny_pipeline_workspace(tmp_path_factory, tiny_manifest):
    """A workspace with the tiny dataset ingested and the whole DCD loop run on it (shared, read-only)."""
    from jobs import ingest, pipeline

    ws_dir = tmp_path_factory.mktemp("tiny-ws") / "ws"
    out = ws_dir.parent / "report.json"
    assert ingest.main(["--workspace", str(ws_dir), "--manifest", str(tiny_manifest)]) == 0
    code = pipeline.main(["--workspace", str(ws_dir), "--json", str(out), "--classifier", TINY_ARCH,
                          "--image-size", "24", "--epochs", "3", "--finetune-epochs", "2", "--batch-size", "32",
                          "--embedder", "classifier", "--retrieval", "always",  # checked: tests/test_debug_train.py
                          "--rest-of-pool", "off"])  # the rest of the pool: tests/test_debug_train.py too
    assert code == 0
    return ws_dir, out


@pytest.fixture()
def ws_copy(tiny_pipeline_workspace, tmp_path):
    """A private copy of the tiny pipeline workspace at ``tmp_path / "ws"`` (the test may write to it) and the
    pipeline's report: (Workspace, report dict)."""
    src, report_path = tiny_pipeline_workspace
    return copy_workspace(src, tmp_path / "ws"), json.loads(report_path.read_text())


@pytest.fixture(scope="session")
def tiny_sliced_workspace(tmp_path_factory, tiny_pipeline_workspace):
    """The tiny pipeline workspace sliced once by the slices job (4 slices, with mosaics), shared read-only:
    (workspace dir, the pipeline's report path, the slices job's report)."""
    from jobs import slices

    src, report_path = tiny_pipeline_workspace
    ws = copy_workspace(src, tmp_path_factory.mktemp("tiny-sliced") / "ws")
    out = ws.root.parent / "slices.json"
    assert slices.main(["--workspace", str(ws.root), "--json", str(out), "--slices", "4"]) == 0
    return ws.root, report_path, json.loads(out.read_text())


@pytest.fixture()
def sliced_copy(tiny_sliced_workspace, tmp_path):
    """A private copy of the sliced tiny workspace at ``tmp_path / "ws"``: (Workspace, the pipeline's report,
    the slices job's report, whose ``run_id`` is the workspace's latest slice run)."""
    src, report_path, sliced = tiny_sliced_workspace
    return copy_workspace(src, tmp_path / "ws"), json.loads(report_path.read_text()), sliced


@pytest.fixture()
def sliced_app_server(sliced_copy, tmp_path):
    """The real app on a copy of the sliced tiny workspace: (base url, workspace dir); always stopped."""
    from browser_app import running_app

    with running_app(sliced_copy[0].root, tmp_path) as served:
        yield served


@pytest.fixture()
def app_server(ws_copy, tmp_path):
    """The real app (`streamlit run`) on a copy of the tiny workspace: (base url, workspace dir); always stopped."""
    from browser_app import running_app

    with running_app(ws_copy[0].root, tmp_path) as served:
        yield served

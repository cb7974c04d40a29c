"""Safe with untrusted files and concurrent jobs: no pickle runs, one job of a kind at a time, killed jobs leave
nothing half-done, and bad workspaces or models get one clear line instead of a traceback."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import wait_until

from core.models.catalog import insert_model_row, load_embedder
from core.models.checkpoints import UnsafeCheckpointError, read_weights
from core.runner import launcher
from core.store.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this writes a file: what a crafted checkpoint does to whoever loads it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def _tiny_state_dict() -> dict:
    import timm

    return timm.create_model("test_resnet", num_classes=2).state_dict()


def _crafted_checkpoint(folder: Path) -> tuple[Path, Path]:
    marker = folder / "payload-ran"
    path = folder / "crafted.pth"
    torch.save({"state_dict": _tiny_state_dict(), "extra": _Payload(marker)}, path)
    return path, marker


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture()
def ws(ws_copy) -> Workspace:
    return ws_copy[0]


# -- 1. no pickle ---------------------------------------------------------------------------------------------

def test_a_crafted_pickle_checkpoint_is_refused_and_its_payload_never_runs(tmp_path):
    path, marker = _crafted_checkpoint(tmp_path)
    with pytest.raises(UnsafeCheckpointError, match="needs Python's pickle.*--trust-checkpoint"):
        read_weights(path)
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("job", ["train", "embed", "pipeline"])
def test_every_job_refuses_a_crafted_checkpoint(ws, tmp_path, job):
    path, marker = _crafted_checkpoint(tmp_path)
    flag = "--embedder-weights" if job == "embed" else "--classifier-weights"
    extra = ["--embedder", "test_resnet"] if job == "embed" else ["--classifier", "test_resnet", "--epochs", "1"]
    out = _run(f"jobs.{job}", "--workspace", str(ws.root), flag, str(path), *extra)
    assert out.returncode == 1, out.stderr
    assert "needs Python's pickle to load" in out.stderr and "Traceback" not in out.stderr
    assert not marker.exists()


def test_the_app_refuses_a_crafted_checkpoint_and_cannot_trust_one(ws, tmp_path):
    path, marker = _crafted_checkpoint(tmp_path)
    with ws.write() as con:  # an embedder recorded with that file (e.g. by a job run with --trust-checkpoint)
        insert_model_row(con, model_id="test_resnet:crafted", role="embedder", arch="test_resnet",
                         config={"weights": str(path), "layers": "penultimate"})
    with pytest.raises(UnsafeCheckpointError):
        load_embedder(ws, "test_resnet:crafted")  # what the Retrieval page calls for an upload
    with pytest.raises(ValueError, match="refused for jobs started from the app"):
        launcher.launch(ws, "train", ["--classifier-weights", str(path), "--trust-checkpoint"])
    assert "trust_checkpoint" not in {o.name for o in launcher.job_options("train")}
    assert not marker.exists()


@pytest.mark.slow
def test_trust_checkpoint_loads_a_pickle_file_from_the_command_line(ws, tmp_path):
    path = tmp_path / "namespace.pth"  # needs pickle (argparse.Namespace), harmless
    torch.save({"state_dict": _tiny_state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    refused = _run("jobs.train", "--workspace", str(ws.root), "--classifier", "test_resnet",
                   "--classifier-weights", str(path), "--epochs", "1", "--image-size", "24")
    assert refused.returncode == 1 and "needs Python's pickle" in refused.stderr
    trusted = _run("jobs.train", "--workspace", str(ws.root), "--classifier", "test_resnet",
                   "--classifier-weights", str(path), "--epochs", "1", "--image-size", "24", "--trust-checkpoint")
    assert trusted.returncode == 0, trusted.stderr


def test_own_checkpoints_are_safetensors_that_load_without_pickle(ws):
    from core.models.catalog import current_classifier, get_model, load_classifier

    rec = get_model(ws, current_classifier(ws))
    assert rec.checkpoint.endswith(".safetensors")
    model, cfg = load_classifier(ws, rec.model_id)
    assert model(torch.zeros(1, 3, cfg.image_size, cfg.image_size)).shape == (1, 2)


# -- 2. one writer at a time ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_writer_jobs_of_one_kind_launched_at_once_both_end_cleanly(ws):
    args = ["--embedder", "test_resnet", "--embedder-image-size", "24", "--splits", "error_sample", "pool"]
    first = launcher.launch(ws, "embed", args)
    second = launcher.launch(ws, "embed", args)
    a, b = launcher.wait(ws, first, timeout=240), launcher.wait(ws, second, timeout=240)
    assert (a.state, b.state) == ("succeeded", "succeeded"), (a.error, b.error)
    logs = launcher.log_tail(a, lines=200) + launcher.log_tail(b, lines=200)
    assert "queued behind job" in logs  # one waited for the other instead of clobbering its staging files
    assert not list((ws.artifacts / "staging").glob("*/*"))  # nothing left behind
    n_images = ws.scalar("SELECT count(*) FROM images WHERE split IN ('error_sample', 'pool')")
    assert ws.scalar("SELECT n FROM embedding_sets WHERE embedder_id = ?", [a.result["embedder_id"]]) == n_images


@pytest.mark.slow
def test_two_ingests_sharing_rows_both_end_cleanly(tmp_path, tiny_manifest):
    import pandas as pd

    rows = pd.read_csv(tiny_manifest)
    half = tiny_manifest.parent / f"half-{tmp_path.name}.csv"  # beside the images: its paths stay inside
    rows.iloc[: len(rows) // 2].to_csv(half, index=False)
    ws = Workspace.create(tmp_path / "ws")
    jobs = [launcher.launch(ws, "ingest", ["--manifest", str(m)]) for m in (tiny_manifest, half)]
    done = [launcher.wait(ws, j, timeout=240) for j in jobs]
    assert [d.state for d in done] == ["succeeded", "succeeded"], [d.error for d in done]
    assert ws.scalar("SELECT count(*) FROM images") == len(rows)  # each image once, none lost
    added = sorted(d.result["n_added"] for d in done)
    assert added in ([0, len(rows)], [len(rows) - len(rows) // 2, len(rows) // 2])


def test_a_job_whose_row_was_taken_from_it_commits_nothing(ws):
    from core.runner.cli import JobLostError
    from core.store.workspace import set_write_guard

    def lost() -> None:
        raise JobLostError("marked failed while paused")

    before = ws.scalar("SELECT count(*) FROM meta")
    set_write_guard(lost)
    try:
        with pytest.raises(JobLostError):
            with ws.write() as con:
                con.execute("INSERT INTO meta VALUES ('half', 'done')")
    finally:
        set_write_guard(None)
    assert ws.scalar("SELECT count(*) FROM meta") == before


# -- 3. killed jobs leave nothing half-done --------------------------------------------------------------------

def _consistent(ws: Workspace) -> None:
    """Every stored result is whole: models load, embedder tables hold their count, runs and selections have
    their members, the current classifier exists."""
    from core.models.catalog import current_classifier, list_models, load_classifier

    for r in list_models(ws, "classifier").itertuples():
        load_classifier(ws, r.model_id)
    current = current_classifier(ws)
    assert current is None or current in set(list_models(ws, "classifier").model_id)
    for r in ws.df("SELECT table_name, n FROM embedding_sets").itertuples():
        assert ws.scalar(f"SELECT count(*) FROM {r.table_name}") == r.n
    assert ws.scalar("SELECT count(*) FROM selections s WHERE NOT EXISTS "
                     "(SELECT 1 FROM selection_items i WHERE i.selection_id = s.selection_id)") == 0
    assert ws.scalar("SELECT count(*) FROM slice_runs r WHERE r.n_slices <> "
                     "(SELECT count(*) FROM slices s WHERE s.run_id = r.run_id)") == 0
    assert ws.scalar("SELECT count(*) FROM slices s WHERE NOT EXISTS (SELECT 1 FROM slice_members m "
                     "WHERE m.run_id = s.run_id AND m.slice_id = s.slice_id)") == 0


KILL_JOBS = {
    "ingest": lambda ws, m: ["--manifest", str(m)],
    "embed": lambda ws, m: ["--embedder", "test_resnet", "--embedder-image-size", "24"],
    "train": lambda ws, m: ["--classifier", "test_resnet", "--image-size", "24", "--epochs", "6"],
    "select": lambda ws, m: ["--method", "dcd"],
    "retrain": lambda ws, m: ["--selection-id", ws.scalar("SELECT selection_id FROM selections LIMIT 1"),
                              "--finetune-epochs", "3"],
    "attribute": lambda ws, m: [],
    "slices": lambda ws, m: ["--attribute"],
}


def _wait_running(ws: Workspace, job_id: str, *, progress: float) -> None:
    """Until the job has made ``progress`` (or has already ended: a job too quick to catch)."""
    store = ws.jobs()

    def reached() -> bool:
        job = store.get(job_id)
        return not job.is_active or (job.state == "running" and job.progress >= progress)

    wait_until(reached, 120, f"job {job_id} to reach progress {progress}", interval=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
@pytest.mark.parametrize("kind", sorted(KILL_JOBS))
def test_a_killed_job_leaves_the_workspace_whole_and_reruns_cleanly(ws, tiny_manifest, kind, sig):
    args = KILL_JOBS[kind](ws, tiny_manifest)
    if kind == "ingest":  # a fresh workspace, the manifest half-ingested at most
        ws = Workspace.create(ws.root.parent / "fresh")
    job_id = launcher.launch(ws, kind, args)
    _wait_running(ws, job_id, progress=0.05 if sig == signal.SIGKILL else 0.02)
    job = ws.jobs().get(job_id)
    if job.is_active:
        os.killpg(job.pid, sig)
    end = launcher.wait(ws, job_id, timeout=60)
    assert end.state in ("failed", "cancelled", "succeeded")
    if end.state != "succeeded":  # the kill landed before the end: the job must say so, on every read
        assert ws.jobs().get(job_id).state == end.state and not ws.jobs().list(active_only=True)
    reopened = Workspace.open(ws.root)
    _consistent(reopened)
    again = launcher.wait(reopened, launcher.launch(reopened, kind, args), timeout=240)
    assert again.state == "succeeded", again.error
    _consistent(reopened)


# -- 5. bad workspaces and models: one clear line --------------------------------------------------------------

def _bad_workspaces(tmp: Path) -> dict[str, Path]:
    import duckdb

    (tmp / "empty").mkdir()
    (tmp / "a-file").write_text("not a folder")
    (tmp / "garbage").mkdir()
    (tmp / "garbage" / "workspace.duckdb").write_bytes(os.urandom(4096))
    (tmp / "sqlite").mkdir()
    import sqlite3

    con = sqlite3.connect(tmp / "sqlite" / "workspace.duckdb")
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    (tmp / "old").mkdir()
    con = duckdb.connect(str(tmp / "old" / "workspace.duckdb"))
    con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute("INSERT INTO meta VALUES ('schema_version', '0')")
    con.close()
    return {"missing": tmp / "nope", "empty": tmp / "empty", "a file": tmp / "a-file",
            "garbage": tmp / "garbage", "sqlite": tmp / "sqlite", "other schema": tmp / "old"}


@pytest.mark.slow
def test_bad_workspaces_get_one_clear_line_from_every_job(tmp_path):
    expected = {"missing": "does not exist", "empty": "no workspace.duckdb", "a file": "is a file",
                "garbage": "not a DuckDB database", "sqlite": "not a DuckDB database",
                "other schema": "schema version 0"}
    for what, folder in _bad_workspaces(tmp_path).items():
        for job in ("predict", "embed", "slices"):
            out = _run(f"jobs.{job}", "--workspace", str(folder))
            lines = out.stderr.strip().splitlines()
            assert out.returncode == 2 and len(lines) == 1, (what, job, out.stderr)
            assert lines[0].startswith("error: ") and expected[what] in lines[0], (what, job, lines)


def test_bad_workspaces_are_explained_by_the_app(tmp_path):
    from pages._session import open_workspace

    for what, folder in _bad_workspaces(tmp_path).items():
        ws, error, _ = open_workspace(str(folder))
        assert ws is None and error, what


@pytest.mark.slow
def test_bad_models_get_one_clear_line(ws, tmp_path):
    from core.data.model_input import DataConfig
    from core.models.checkpoints import save_checkpoint
    from core.models.factory import create_model

    three = save_checkpoint(create_model("test_resnet", num_classes=3), tmp_path / "three",
                            arch="test_resnet", num_classes=3, data_config=DataConfig(24, (0.5,) * 3, (0.5,) * 3),
                            class_names=["a", "b", "c"])
    swapped = save_checkpoint(create_model("test_resnet", num_classes=2), tmp_path / "swapped",
                              arch="test_resnet", num_classes=2, data_config=DataConfig(24, (0.5,) * 3, (0.5,) * 3),
                              class_names=ws.class_names()[::-1])
    corrupted = tmp_path / "corrupted.pth"
    corrupted.write_bytes(b"PK\x03\x04" + os.urandom(300))
    cases = {three: "classifier of 3 classes", swapped: "same classes in another order",
             corrupted: "not a readable weights file"}
    current = ws.scalar("SELECT value FROM meta WHERE key = 'current_classifier'")
    n_models = ws.scalar("SELECT count(*) FROM models")
    for weights, message in cases.items():
        out = _run("jobs.train", "--workspace", str(ws.root), "--classifier", "test_resnet",
                   "--classifier-weights", str(weights), "--image-size", "24")
        assert out.returncode == 1 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
    out = _run("jobs.train", "--workspace", str(ws.root), "--classifier", "no_such_net_v9")
    assert out.returncode == 1 and "is not a timm architecture" in out.stderr and "Traceback" not in out.stderr
    # nothing was registered or made current by the failed jobs
    assert ws.scalar("SELECT count(*) FROM models") == n_models
    assert ws.scalar("SELECT value FROM meta WHERE key = 'current_classifier'") == current


# -- 6. the app's inputs -------------------------------------------------------------------------------------

def test_the_app_reads_no_file_outside_the_workspace_and_no_path_outside_its_data_roots(ws, tmp_path):
    store = ws.jobs()
    job_id = store.create("embed", [], log_path="/etc/passwd")  # a tampered job row
    store.finish(job_id, "failed", error="x")
    tail = launcher.log_tail(store.get(job_id), ws=ws)
    assert "outside the workspace" in tail and "root:" not in tail
    assert ws.contains(ws.artifacts / "logs" / "a.log") and not ws.contains("/etc/passwd")
    assert not ws.contains(ws.root / ".." / "elsewhere")

    inside = ws.root.parent
    launcher.check_paths("ingest", {"manifest": str(inside / "m.csv")}, [inside])
    with pytest.raises(ValueError, match="outside the data roots"):
        launcher.check_paths("ingest", {"manifest": "/etc/passwd"}, [inside])
    with pytest.raises(ValueError, match="outside the data roots"):
        launcher.check_paths("train", {"classifier_weights": str(inside / ".." / ".." / "x.pth")}, [inside])


def test_a_query_upload_that_is_not_an_image_is_refused_cleanly():
    import io

    from core.data.imagefile import ImageTooLargeError
    from core.data.images import load_rgb

    with pytest.raises((OSError, ValueError)):
        load_rgb(io.BytesIO(b"<html>not an image</html>"), 32)
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buf, format="PNG")  # 81 megapixels in a few kB
    with pytest.raises(ImageTooLargeError):
        load_rgb(io.BytesIO(buf.getvalue()), 32, max_pixels=40_000_000)

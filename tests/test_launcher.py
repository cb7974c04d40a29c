"""core.runner.launcher: jobs start as background processes, report into the job table, can be cancelled, and a job
whose process died is reported failed, never running forever."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import wait_until

from core.runner import launcher
from core.store.workspace import Workspace


@pytest.fixture()
def ws(ws_copy) -> Workspace:
    return ws_copy[0]


def test_job_kinds_and_options_come_from_the_job_registry():
    kinds = launcher.job_kinds()
    assert {"embed", "predict", "select", "retrain", "evaluate", "demo", "pipeline", "slices"} <= set(kinds)
    retrain = {o.name: o for o in launcher.job_options("retrain")}
    assert "workspace" not in retrain and "job_id" not in retrain and "json" not in retrain
    assert retrain["finetune_epochs"].kind == "int" and retrain["lr"].kind == "float"
    assert retrain["classifier_id"].picker == "classifier" and "--base-model-id" in retrain["classifier_id"].aliases
    select = {o.name: o for o in launcher.job_options("select")}
    assert select["method"].kind == "choice" and "dcd" in select["method"].choices
    assert select["neighbours"].flag == "--neighbours" and "--k" in select["neighbours"].aliases
    assert {o.name: o for o in launcher.job_options("embed")}["only_missing"].kind == "flag"
    assert {o.name: o for o in launcher.job_options("evaluate")}["classifier_id"].kind == "list"
    assert {o.name: o for o in launcher.job_options("slices")}["slices"].aliases == ("--k",)


def test_every_registered_job_has_its_command_and_every_command_a_job():
    import pkgutil

    import jobs

    commands = {m.name for m in pkgutil.iter_modules(jobs.__path__) if not m.name.startswith("_")}
    assert commands == set(launcher.job_kinds())


def test_build_args_keeps_only_what_differs_from_the_defaults():
    assert launcher.build_args("retrain", {"finetune_epochs": "1", "seed": "0", "selection_id": "",
                                           "record_as": None}) == ["--finetune-epochs", "1"]
    assert launcher.build_args("evaluate", {"classifier_id": ["a", "b"]}) == ["--classifier-id", "a", "b"]
    assert launcher.build_args("embed", {"only_missing": True, "no_bf16": False}) == ["--only-missing"]
    assert launcher.build_args("predict", {"splits": ["train", "test", "error_sample", "error_heldout"]}) == []
    with pytest.raises(ValueError, match="no option"):
        launcher.build_args("retrain", {"colour": "red"})
    with pytest.raises(ValueError, match="takes a list"):  # never split from one string
        launcher.build_args("predict", {"splits": "train --json /etc/x"})
    with pytest.raises(SystemExit):  # argparse rejects it here, not in the background
        launcher.build_args("select", {"neighbours": "many"})
    with pytest.raises(SystemExit):
        launcher.build_args("predict", {"splits": ["nope"]})
    with pytest.raises(ValueError, match="unknown job kind"):
        launcher.launch(Workspace("/nonexistent"), "rm", [])


def test_launch_runs_the_job_in_the_background_and_records_it(ws):
    job_id = launcher.launch(ws, "predict", ["--splits", "error_sample"])
    # launch returns at once, while the job is still queued or running in its own, live process
    job = ws.jobs().get(job_id)
    assert job.is_active and job.state in ("queued", "running"), (job.state, job.error)
    assert job.kind == "predict" and job.pid and job.pid != os.getpid() and job.log_path.endswith(f"{job_id}.log")
    os.kill(job.pid, 0)  # raises ProcessLookupError if the job's process is gone
    job = launcher.wait(ws, job_id, timeout=120)
    assert job.state == "succeeded", job.error
    assert job.result["n_predicted"] == 8 and job.progress == 1.0
    assert job.elapsed and job.elapsed > 0
    assert "predict" in launcher.log_tail(job)


def test_cancel_stops_a_running_job(ws):
    job_id = launcher.launch(ws, "train", ["--classifier", "test_resnet", "--image-size", "24", "--epochs", "500",
                                           "--batch-size", "16"])
    store = ws.jobs()

    def training() -> bool:
        job = store.get(job_id)
        assert job.is_active, f"the train job ended before it could be cancelled: {job.state} {job.error}"
        return job.state == "running" and job.progress > 0

    wait_until(training, 90, f"train job {job_id} to be running and reporting progress", interval=0.2)
    assert launcher.cancel(ws, job_id)
    job = launcher.wait(ws, job_id, timeout=60)
    assert job.state == "cancelled"
    assert not launcher.cancel(ws, job_id)  # nothing left to cancel


def test_a_job_whose_process_died_is_shown_failed(ws):
    store = ws.jobs()
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    job_id = store.create("embed", [])
    store.start(job_id, victim.pid)
    assert store.get(job_id).state == "running"
    victim.kill()
    victim.wait()
    # What the Jobs page does on every render, e.g. after an app restart:
    assert store.reconcile() == [job_id]
    job = store.get(job_id)
    assert job.state == "failed" and "died" in job.error


def test_a_job_that_cannot_start_is_failed_with_its_error(ws):
    job_id = launcher.launch(ws, "select", ["--method", "nope"])
    job = launcher.wait(ws, job_id, timeout=60)
    assert job.state == "failed"
    assert "invalid choice" in job.error or "invalid choice" in launcher.log_tail(job)

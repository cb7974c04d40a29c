"""The quick first run: the stage line with its ETA (a fake clock), a demo that fails before anything useful
leaves nothing behind (one line, exit code 2 for missing assets), the first-run command's log follower, and
the background jobs that finish the demo with the pipeline's own settings."""

from __future__ import annotations

import json

import pytest

from core.progress import Progress, StageLine, eta_seconds, format_duration
from core.runner import demo_rest, first_run, launcher
from core.runner.cli import main as cli_main
from core.runner.configs import pipeline_config
from core.runner.registry import get_job
from core.store.workspace import Workspace


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stage_line(job: str = "demo", interval: float = 15.0) -> tuple[StageLine, FakeClock, list[str]]:
    clock, lines = FakeClock(), []
    return StageLine(job, out=lines.append, clock=clock, interval=interval), clock, lines


# -- formatting and ETA ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("seconds, text", [(0, "0 s"), (8.4, "8 s"), (42, "42 s"), (70, "1 min 10 s"),
                                           (114, "1 min 50 s"), (125, "2 min 10 s"), (179, "3 min"),
                                           (721, "12 min"), (3600, "1 h"), (3900, "1 h 5 min")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_eta_from_measured_progress():
    assert eta_seconds(0.25, 30.0) == pytest.approx(90.0)
    assert eta_seconds(0.5, 42.0) == pytest.approx(42.0)
    assert eta_seconds(1.0, 10.0) == 0.0
    assert eta_seconds(0.01, 30.0) is None  # too little done to tell
    assert eta_seconds(0.5, 1.0) is None  # too early to tell


def test_stage_line_names_the_stage_and_counts_down():
    line, clock, lines = stage_line()
    line.expect(5)
    clock.now += 12
    line.begin("fine-tuning on dcd", 0.4, 0.6)
    assert lines == ["[1/5] fine-tuning on dcd (after 12 s)"]
    clock.now += 42
    line.update(0.4 + 0.2 * 0.375, "epoch 3/8 loss 0.412")  # 3/8 of the stage in 42 s: 70 s to go
    assert lines[-1] == "[1/5] fine-tuning on dcd: epoch 3/8 loss 0.412, 42 s elapsed, ~1 min 10 s left"
    clock.now += 28
    line.update(0.4 + 0.2 * 0.75, "epoch 6/8 loss 0.3")
    assert lines[-1] == "[1/5] fine-tuning on dcd: epoch 6/8 loss 0.3, 1 min 10 s elapsed, ~25 s left"


def test_stage_line_is_quiet_between_intervals():
    line, clock, lines = stage_line(interval=15)
    line.expect(1)
    line.begin("training the classifier", 0.0, 1.0)
    for step in range(1, 100):  # a report per batch, 0.1 s apart: 10 s in all, under one interval
        clock.now += 0.1
        line.update(step / 100, f"epoch 1/1 step {step}")
    assert len(lines) == 1
    clock.now += 5.5
    line.update(0.99, "epoch 1/1 step 99")
    assert len(lines) == 2 and lines[-1].startswith("[1/1] training the classifier: epoch 1/1 step 99, 15 s")


def test_stage_line_before_any_estimate_and_without_stages():
    line, clock, lines = stage_line("retrain", interval=0)
    clock.now += 1
    line.update(0.01, "decode 10/600")
    assert lines[-1] == "retrain: decode 10/600, 1 s elapsed, estimating the time left"
    clock.now += 99
    line.update(0.5, "")  # no new message: the last one stays
    assert lines[-1] == "retrain: decode 10/600, 1 min 40 s elapsed, ~1 min 40 s left"
    line.finish()
    assert lines[-1] == "retrain: done in 1 min 40 s"


def test_more_stages_than_announced_show_no_wrong_total():
    line, _, lines = stage_line()
    line.expect(1)
    line.begin("a", 0, 0.5)
    line.begin("b", 0.5, 1)
    assert lines[-1].startswith("[2] b")


def test_progress_stages_map_into_the_job_range_and_name_the_job_row():
    line, clock, lines = stage_line(interval=0)
    rows: list[tuple[float, str]] = []
    progress = Progress(lambda f, m: rows.append((f, m)), min_interval=0, terminal=line)
    progress.expect_stages(2)
    outer = progress.span(0.5, 1.0)
    stage = outer.stage("embedding pool", 0.0, 0.5)  # the job's 0.5 .. 0.75
    assert (line.lo, line.hi) == (0.5, 0.75)
    clock.now += 10
    stage.report(0.5, "embed 50/100")
    assert rows[-1] == (pytest.approx(0.625), "[1/2] embedding pool: embed 50/100")
    assert lines[-1] == "[1/2] embedding pool: embed 50/100, 10 s elapsed, ~10 s left"


def test_progress_without_terminal_or_sink_is_silent(capsys):
    progress = Progress(bars=False)
    progress.expect_stages(1)
    progress.stage("x", 0, 1).report(0.5, "nothing to print", force=True)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


# -- a failed demo leaves nothing behind ---------------------------------------------------------------------

def test_demo_without_assets_says_what_to_pass_and_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DCD_ASSETS", raising=False)
    target = tmp_path / "ws-cifar"
    assert cli_main("demo", ["--workspace", str(target), "--dataset", "cifar10", "--size", "small"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "--assets DIR" in err[0] and "DCD_ASSETS" in err[0], err
    assert not target.exists()


def test_a_failed_demo_removes_only_what_it_added(tmp_path, monkeypatch, capsys):
    import core.scenarios.demo_run as demo_run

    def broken(*args, **kwargs):
        raise RuntimeError("generator broke")

    monkeypatch.setattr(demo_run, "generate_demo", broken)
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    assert cli_main("demo", ["--workspace", str(target), "--size", "small"]) == 1
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and not ln.startswith("[")]
    assert err == ["error: generator broke"]  # one line besides the stage lines, no log to point to


def test_a_failed_ingest_into_a_new_workspace_keeps_nothing(tmp_path):
    target = tmp_path / "new"
    assert cli_main("ingest", ["--workspace", str(target), "--manifest", str(tmp_path / "missing.csv")]) != 0
    assert not target.exists()


def test_a_failed_job_keeps_a_workspace_that_existed(ws_copy):
    ws, _ = ws_copy
    assert cli_main("demo", ["--workspace", str(ws.root), "--size", "small"]) == 1  # it holds images already
    assert (ws.root / "workspace.duckdb").exists() and ws.scalar("SELECT count(*) FROM images") > 0


def test_first_run_without_assets_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DCD_ASSETS", raising=False)
    target = tmp_path / "first"
    assert first_run.main(["--workspace", str(target), "--dataset", "cifar10"]) == 2
    assert not target.exists()
    assert len([ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]) == 1


# -- following the demo job in the terminal -------------------------------------------------------------------

def test_log_lines_drop_progress_bar_redraws():
    chunk = ("decode:   0%|          | 0/600 [00:00<?, ?img/s]\rdecode: 100%|##########| 600/600 [00:01<00:00, "
             "500.00img/s]\n[3/6] training the classifier (after 20 s)\r\nepoch 1/20 loss 1.3373\n")
    assert first_run.log_lines(chunk) == ["[3/6] training the classifier (after 20 s)", "epoch 1/20 loss 1.3373"]


def test_follow_echoes_the_log_of_a_finished_job(tmp_path):
    ws = Workspace.create(tmp_path / "ws")
    store = ws.jobs()
    store.init()
    job_id = store.create("demo", [])
    log = ws.artifact_dir("logs") / f"{job_id}.log"
    store.set_log_path(job_id, str(log))
    log.write_text("[1/2] generating the waterbirds scenario\nhalf a line without newline")
    store.finish(job_id, "succeeded", result={}, message="done")
    seen: list[str] = []
    job, offset = first_run.follow(ws, job_id, out=seen.append)
    assert job.state == "succeeded" and seen == ["[1/2] generating the waterbirds scenario"]
    assert offset == len("[1/2] generating the waterbirds scenario\n")


# -- the rest of the demo as background jobs, with the pipeline's own settings --------------------------------

def test_launch_rest_repeats_the_pipelines_baseline_runs(ws_copy):
    """The background jobs read what the loop made from the workspace (not from its report) and fine-tune
    with the loop's training settings: the same images and schedule as the pipeline's own random run."""
    ws, report = ws_copy
    pipeline = get_job("pipeline").settings(epochs=3, finetune_epochs=2, batch_size=32)  # as tests/conftest.py ran it
    jobs = demo_rest.launch_rest(ws, pipeline_config(pipeline), ["random"])
    assert [j["kind"] for j in jobs] == ["retrain", "slices"]
    done = {j["kind"]: launcher.wait(ws, j["job_id"], timeout=600) for j in jobs}
    assert all(job.state == "succeeded" for job in done.values()), {k: j.error for k, j in done.items()}
    new_model = done["retrain"].result["methods"]["random"]["model_id"]
    old_model = report["methods"]["random"]["model_id"]

    def recorded(model_id: str) -> tuple[list[int], dict, dict]:
        cfg = json.loads(ws.scalar("SELECT config FROM models WHERE model_id = ?", [model_id]))
        items = ws.df("SELECT image_id FROM selection_items WHERE selection_id = ? ORDER BY image_id",
                      [cfg["selection_id"]]).image_id.tolist()
        return items, cfg["train"], cfg["finetune"]

    assert recorded(new_model) == recorded(old_model)  # the same images, the same schedule
    assert ws.scalar("SELECT count(*) FROM slice_runs") >= 1

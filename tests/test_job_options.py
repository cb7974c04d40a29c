"""Jobs take typed options: each job's options (declared once) give a frozen dataclass that the command line
parses into and the job's run reads; core's config objects are built from it by one function each; the demo's
settings are resolved in core.scenarios.demo_run; argparse is read in one place."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from core.runner.command_line import JobCommand, parse_args
from core.runner.configs import pipeline_config, train_option_values, train_overrides
from core.runner.registry import get_job, job_kinds
from core.scenarios.demo_run import DemoRun, loop_config
from core.scenarios.demos import DemoSettings, demo_settings

ROOT = Path(__file__).resolve().parents[1]


def test_every_job_has_typed_frozen_options_with_its_defaults():
    for kind in job_kinds():
        spec = get_job(kind)
        opts = spec.settings()
        assert [f.name for f in dataclasses.fields(opts)] == [o.name for o in spec.options], kind
        with pytest.raises(dataclasses.FrozenInstanceError):
            opts.seed = 1  # type: ignore[misc]
    predict = get_job("predict").settings()
    assert predict.splits == ("train", "test", "error_sample", "error_heldout") and predict.no_bf16 is False


def test_typed_options_check_their_values():
    select = get_job("select")
    assert select.settings(budget=40, heldout_share=1).heldout_share == 1.0  # an int is a number
    with pytest.raises(ValueError, match="method must be one of"):
        select.settings(method="nope")
    with pytest.raises(ValueError, match="whole number"):
        select.settings(budget="40")
    with pytest.raises(ValueError, match="no option"):
        select.settings(colour="red")
    with pytest.raises(ValueError, match="list of values"):
        get_job("predict").settings(splits="train")
    with pytest.raises(ValueError, match="must be one of"):
        get_job("predict").settings(splits=["train", "nope"])


def test_the_command_line_parses_into_the_jobs_typed_options():
    command = parse_args(get_job("select"), ["--workspace", "w", "--budget", "12", "--method", "random", "--json",
                                              "out.json"])
    assert isinstance(command, JobCommand) and command.workspace == "w" and command.json == Path("out.json")
    assert command.options == get_job("select").settings(budget=12, method="random")
    with pytest.raises(SystemExit):
        parse_args(get_job("select"), ["--workspace", "w", "--budget", "many"])


@pytest.mark.parametrize("flags", [[], ["--epochs", "4", "--lr", "0.01", "--trainable-stages", "all"],
                                   ["--added-share", "0", "--trainable-stages", "2", "--batch-size", "8"]])
def test_training_settings_go_back_to_the_options_that_give_them(flags):
    spec = get_job("pipeline")
    train = train_overrides(parse_args(spec, ["--workspace", "w", *flags]).options)
    again = spec.settings(**{k: v for k, v in train_option_values(train, None).items() if k != "finetune_epochs"})
    assert train_overrides(again) == train


def test_the_pipeline_config_is_the_pipelines_options():
    config = pipeline_config(get_job("pipeline").settings(budget=30, methods=["dcd", "random"], embedder="classifier",
                                                           epochs=2, retrieval="always"))
    assert (config.budget, config.methods, config.embedder.arch, config.train["epochs"], config.retrieval) == \
        (30, ("dcd", "random"), "classifier", 2, "always")


def _demo(**values) -> DemoRun:
    from core.runner.scenario_jobs import demo_run

    return demo_run(get_job("demo").settings(**values))


def test_a_demo_picks_its_settings_where_the_user_gave_none():
    config = loop_config(_demo(size="small"))
    picked = demo_settings("waterbirds", "small")
    assert (config.classifier, config.image_size, config.train["epochs"], config.train["lr"],
            config.finetune_epochs, config.embedder.arch) == \
        (picked.classifier, picked.image_size, picked.epochs, picked.lr, picked.finetune_epochs, picked.embedder)
    mine = loop_config(_demo(size="small", classifier="resnet18", epochs=2, embedder_layers="multiscale"))
    assert (mine.classifier, mine.train["epochs"], mine.embedder.layers) == ("resnet18", 2, "multiscale")
    assert mine.train["lr"] == picked.lr  # what the user left unset is still the demo's
    # The quick demo retrains its head alone; the user's --trainable-stages wins; CIFAR-10's stays whole
    assert config.train["trainable_stages"] == 0
    assert loop_config(_demo(size="small", trainable_stages="all")).train["trainable_stages"] is None
    assert loop_config(_demo(size="small", trainable_stages="2")).train["trainable_stages"] == 2
    assert loop_config(_demo(size="small", trainable_stages="0")).train["trainable_stages"] == 0  # the head alone
    with pytest.raises(ValueError, match="number of stages"):
        loop_config(_demo(size="small", trainable_stages="-1"))
    photos = loop_config(_demo(dataset="photos", size="small"))  # the demo picks nothing: the pipeline's defaults
    assert photos == pipeline_config(get_job("pipeline").settings())


def test_a_demos_weights_come_from_the_assets_folder_unless_the_user_gave_some(tmp_path):
    picked = demo_settings("cifar10", "small")
    for rel in picked.weights.values():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    config = loop_config(_demo(dataset="cifar10", size="small", assets=str(tmp_path)))
    assert config.classifier_weights == str(tmp_path / picked.weights["classifier_weights"])
    assert config.embedder.weights == str(tmp_path / picked.weights["embedder_weights"])
    assert config.train["trainable_stages"] is None  # its pretrained CIFAR ResNet is fine-tuned whole
    mine = loop_config(_demo(dataset="cifar10", size="small", assets=str(tmp_path), classifier_weights="my.pth"))
    assert mine.classifier_weights == "my.pth"
    with pytest.raises(ValueError, match="unknown demo dataset"):
        DemoRun(dataset="nope")
    assert DemoSettings(classifier="a").with_given(DemoSettings(image_size=8, embedder=None)).image_size == 8


def test_argparse_is_read_in_one_place():
    """The jobs' command line is parsed in core.runner.command_line only (first_run has its own small parser);
    no job module, core function or command reads an argparse namespace."""
    allowed = {"core/runner/command_line.py", "core/runner/first_run.py"}
    found = set()
    for path in [*(ROOT / "core").rglob("*.py"), *(ROOT / "jobs").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if "argparse" in names:
                found.add(str(path.relative_to(ROOT)))
    assert found <= allowed, sorted(found - allowed)

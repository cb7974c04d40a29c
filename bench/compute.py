"""Benchmark: how close the default backbone's forward comes to this CPU's measured peak, and what the
channels-last memory layout gives.

1. **Peak**: the best GFLOP/s of a 2048 x 2048 matrix product on all cores, in fp32 (and bf16 where the CPU
   has it natively): the most this machine's arithmetic gives a model.
2. **Forward**: the default backbone (efficientnet_lite0; random weights, cost does not depend on them) at
   128 and 224 px, batch 64, its multiply-adds counted by torch's FLOP counter, in images/s and as a share
   of the peak, in the usual layout and in channels-last (core.models.device runs every model so;
   ``$DCD_CHANNELS_LAST=0``: the usual layout), fp32 and bf16; run as the product runs it, in micro-batches
   with the allocator tuned (core.models.memory), and in fp32 channels-last also in one pass of the whole
   batch (what the micro-batches save).
3. **Training steps**: the backbone's last 2 stages on their stored input (what a fine-tuning runs on the
   frozen trunk) and the demo's CIFAR ResNet-20, in both layouts.

The layouts alternate within each case (median of ``--rounds``), and the load is sampled (bench.common).

    python -m bench.compute [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench.common import best_of, wait_for_quiet, write_result
from core.models.factory import create_model, default_data_config
from core.models.inference import cpu_has_bf16
from core.models.memory import forward_in_micro_batches, tune_allocator
from core.models.pretrained import DEFAULT_BACKBONE
from core.models.trunk import freeze_early_stages, split_trunk

BATCH = 64
LAYOUTS = {"usual": torch.contiguous_format, "channels_last": torch.channels_last}


def _best(fn, repeat: int = 3) -> float:
    fn()  # warm-up: oneDNN picks its kernels on the first call
    return best_of(fn, repeat)


def matmul_peak(dtype: torch.dtype, n: int = 2048) -> float:
    """GFLOP/s of an n x n matrix product (2 n^3 operations), the best of a few."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2 * n ** 3 / _best(lambda: torch.mm(a, b), repeat=5) / 1e9


def forward_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Floating-point operations of one forward pass of ``x`` (2 per multiply-add, as torch counts them)."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def _forward(model: torch.nn.Module, x: torch.Tensor, bf16: bool, micro: bool = True):
    def run():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            forward_in_micro_batches(model, x) if micro else model(x)
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


def _alternate(model: torch.nn.Module, x: torch.Tensor, rounds: int, make) -> dict[str, float]:
    """Median seconds per batch in each layout, the layouts alternating."""
    times: dict[str, list[float]] = {name: [] for name in LAYOUTS}
    for _ in range(rounds):
        for name, fmt in LAYOUTS.items():
            times[name].append(_best(make(copy.deepcopy(model).to(memory_format=fmt), x.contiguous(memory_format=fmt))))
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="alternations of the two layouts per case")
    p.add_argument("--result", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    tune_allocator()
    torch.manual_seed(0)
    bf16 = cpu_has_bf16()
    res: dict = {"quiet": wait_for_quiet(), "batch": BATCH, "arch": DEFAULT_BACKBONE, "bf16_native": bf16,
                 "peak_gflops": {"fp32": matmul_peak(torch.float32)}, "forward": {}, "train": {}}
    if bf16:
        res["peak_gflops"]["bf16"] = matmul_peak(torch.bfloat16)
    print(f"[compute] peak: {', '.join(f'{k} {v:.0f} GFLOP/s' for k, v in res['peak_gflops'].items())}", flush=True)
    backbone = create_model(DEFAULT_BACKBONE, num_classes=10).eval()
    for size in (128, 224):
        x = torch.randn(BATCH, 3, size, size)
        flops = forward_flops(backbone, x[:1])
        for precision in ("fp32", "bf16") if bf16 else ("fp32",):
            t = _alternate(backbone, x, args.rounds, lambda m, xi: _forward(m, xi, precision == "bf16"))
            row = {"gflop_per_image": flops / 1e9, "speedup_channels_last": t["usual"] / t["channels_last"]}
            for name, seconds in t.items():
                row[f"{name}_images_per_s"] = BATCH / seconds
                row[f"{name}_share_of_peak"] = BATCH * flops / seconds / 1e9 / res["peak_gflops"][precision]
            if precision == "fp32":  # the same batch in one pass: every activation mapped afresh
                whole = statistics.median(_best(_forward(copy.deepcopy(backbone).to(memory_format=torch.channels_last),
                                                         x.contiguous(memory_format=torch.channels_last), False,
                                                         micro=False)) for _ in range(args.rounds))
                row["whole_batch_images_per_s"] = BATCH / whole
                row["speedup_micro_batches"] = whole / t["channels_last"]
            res["forward"][f"{size}_{precision}"] = row
            print(f"[compute] {DEFAULT_BACKBONE} {size} px {precision}: {row['usual_images_per_s']:.0f} -> "
                  f"{row['channels_last_images_per_s']:.0f} img/s channels-last ({row['speedup_channels_last']:.2f}x), "
                  f"{row['channels_last_share_of_peak']:.1%} of the {precision} peak"
                  + (f"; one pass of the whole batch {row['whole_batch_images_per_s']:.0f} img/s"
                     if "whole_batch_images_per_s" in row else ""), flush=True)
    freeze_early_stages(backbone, 2)
    cut = split_trunk(backbone, default_data_config(backbone, 128))
    with torch.no_grad():  # not inference_mode: its tensors cannot be saved for the backward pass below
        stored = cut.trunk(torch.randn(BATCH, 3, 128, 128))
    for name, (model, x) in {"last_stages_128": (cut.rest, stored),
                             "cifar_resnet20_32": (create_model("cifar_resnet20", num_classes=10),
                                                   torch.randn(BATCH, 3, 32, 32))}.items():
        t = _alternate(model, x, args.rounds, _train_step)
        res["train"][name] = {"usual_s": t["usual"], "channels_last_s": t["channels_last"],
                              "speedup_channels_last": t["usual"] / t["channels_last"]}
        print(f"[compute] training step {name}: {t['usual']:.3f} -> {t['channels_last']:.3f} s per batch of {BATCH} "
              f"({t['usual'] / t['channels_last']:.2f}x)", flush=True)
    res["load_average_end"] = os.getloadavg()[0]
    write_result(args.result, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

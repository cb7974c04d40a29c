"""Benchmark 3: storage and compute per comparison, LPIPS-style features vs our embedding + faiss.

LPIPS (AlexNet) compares two images through the spatial activations of five conv layers: to compare a
query against a pool without recomputing, the pool must keep those activations: 64·55² + 192·27² +
384·13² + 256·13² + 256·13² = 484,992 floats per 224px image. DCD keeps one pooled vector (ResNet-50:
2,048; ViT-S/16: 384) and compares with faiss. Random weights: cost does not depend on them.

    python -m bench.lpips
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

from bench.common import best_of, write_result

LPIPS_ALEX_ACTIVATIONS = 64 * 55 ** 2 + 192 * 27 ** 2 + 384 * 13 ** 2 + 2 * 256 * 13 ** 2


class AlexFeatures(nn.Module):
    """torchvision's AlexNet ``features`` trunk, returning the five ReLU outputs LPIPS compares."""

    def __init__(self):
        super().__init__()
        self.slices = nn.ModuleList([
            nn.Sequential(nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU()),
            nn.Sequential(nn.MaxPool2d(3, 2), nn.Conv2d(64, 192, 5, padding=2), nn.ReLU()),
            nn.Sequential(nn.MaxPool2d(3, 2), nn.Conv2d(192, 384, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(384, 256, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(256, 256, 3, padding=1), nn.ReLU()),
        ])
        self.lins = nn.ModuleList([nn.Conv2d(c, 1, 1, bias=False) for c in (64, 192, 384, 256, 256)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for s in self.slices:
            x = s(x)
            outs.append(x)
        return outs

    def distance(self, fa: list[torch.Tensor], fb: list[torch.Tensor]) -> torch.Tensor:
        """LPIPS: unit-normalise channels, squared difference, learned 1x1 weights, spatial mean, sum."""
        total = 0
        for a, b, lin in zip(fa, fb, self.lins):
            a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
            b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
            total = total + lin((a - b) ** 2).mean(dim=(2, 3))
        return total.view(-1)


def main(argv: list[str] | None = None) -> int:
    import faiss

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-pool", type=int, default=2048, help="stored pool items compared per query")
    p.add_argument("--result", default=None)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    alex = AlexFeatures().eval()
    with torch.inference_mode():
        feats = alex(torch.randn(1, 3, 224, 224))
    per_image = int(sum(f[0].numel() for f in feats))
    if per_image != LPIPS_ALEX_ACTIVATIONS:
        raise RuntimeError(f"AlexNet features give {per_image} activations, expected {LPIPS_ALEX_ACTIVATIONS}")
    # LPIPS compute per comparison: one query against stored pool features (batch of 64 pool items).
    batch = 64
    with torch.inference_mode():
        pool = [f.repeat(batch, 1, 1, 1) + 0.01 * torch.randn(batch, *f.shape[1:]) for f in feats]
        query = [f.expand(batch, -1, -1, -1) for f in feats]
        alex.distance(query, pool)
        t_lpips = best_of(lambda: alex.distance(query, pool), 3) / batch
    rng = np.random.default_rng(0)
    res = {"lpips_activations_per_image": per_image, "lpips_bytes_per_image_fp32": per_image * 4,
           "lpips_seconds_per_comparison": t_lpips, "embedders": {}}
    for name, dim in (("resnet50", 2048), ("vit_s16", 384)):
        xb = rng.standard_normal((args.n_pool, dim), dtype=np.float32)
        xq = rng.standard_normal((64, dim), dtype=np.float32)
        index = faiss.IndexFlatL2(dim)
        index.add(xb)
        index.search(xq, 10)
        t = best_of(lambda: index.search(xq, 10), 5) / (len(xq) * args.n_pool)
        res["embedders"][name] = {
            "dim": dim, "bytes_per_image_fp32": dim * 4, "storage_reduction": 1 - dim / per_image,
            "seconds_per_comparison": t, "compute_ratio_vs_lpips": t / t_lpips,
            "flop_reduction": 1 - (3 * dim) / _lpips_compare_flops(feats)}
        print(f"[lpips] {name}: {dim * 4} B/image vs {per_image * 4} B: {1 - dim / per_image:.2%} less; "
              f"{t * 1e9:.1f} ns vs {t_lpips * 1e6:.0f} us per comparison", flush=True)
    write_result(args.result, res)
    return 0


def _lpips_compare_flops(feats: list[torch.Tensor]) -> float:
    """Floating-point operations of one LPIPS distance between stored features (norms, diff, 1x1, mean)."""
    return float(sum(f[0].numel() * 7 for f in feats))


if __name__ == "__main__":
    raise SystemExit(main())

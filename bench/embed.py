"""Benchmark 1: embedding pipeline efficiency, bf16 speed-up and bf16/fp32 neighbour agreement.

Efficiency = images/s of the real embed path (``core.dcd.embed.embed_split_images``: decode JPEG files,
resize, normalise, forward, stage, write to the workspace) / images/s of the bare forward pass on a
pre-made batch, same model, batch size and precision; each real run is bracketed by two bare runs (their
mean is the baseline) so that both see the same machine load. The real
path's rate counts its streaming phase and the final write (``seconds.embed + seconds.store``); the
one-off setup (model build, bf16-vs-fp32 check on 128 images) is reported apart, with its share of a
1M-image pool.

    python -m bench.embed [--assets DIR] [--n-images 384] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from bench.common import best_of, write_result

ARCHS = {"resnet18": "resnet18", "vit_s16": "vit_small_patch16_224"}


def make_jpegs(folder: Path, n: int, *, assets: Path | None, seed: int = 0) -> list[Path]:
    """``n`` JPEG photos of 256-500 px sides (typical web/ImageNet sizes), quality 90.

    Content: CIFAR-10 photos (from the assets zip) upscaled, with sensor-like grain so that the files
    decode like real photos; random smooth scenes if the assets are absent.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sources: list[np.ndarray] = []
    zpath = assets / "cifar10" / "cifar10-jpg.zip" if assets else None
    if zpath and zpath.exists():
        with zipfile.ZipFile(zpath) as z:
            names = sorted(x for x in z.namelist() if x.endswith(".jpg") and "test/" in x)
            for name in rng.choice(names, n, replace=False):
                sources.append(np.asarray(Image.open(io.BytesIO(z.read(name))).convert("RGB")))
    paths = []
    for i in range(n):
        w, h = int(rng.integers(256, 501)), int(rng.integers(192, 376))
        if sources:
            base = np.asarray(Image.fromarray(sources[i]).resize((w, h), Image.Resampling.BICUBIC), np.float32)
        else:
            coarse = rng.normal(0, 1, (h // 16 + 2, w // 16 + 2, 3)).astype(np.float32)
            base = np.asarray(Image.fromarray(((coarse - coarse.min()) / np.ptp(coarse) * 255).astype(np.uint8))
                              .resize((w, h), Image.Resampling.BICUBIC), np.float32)
        img = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
        p = folder / f"{i:05d}.jpg"
        Image.fromarray(img).save(p, quality=90)
        paths.append(p)
    return paths


def make_workspace(root: Path, paths: list[Path]):
    from core.data.ingest import ingest_manifest
    from core.store.workspace import Workspace

    ws = Workspace.create(root / "ws")
    manifest = root / "manifest.csv"
    pd.DataFrame({"path": [str(p) for p in paths], "label": "", "split": "pool",
                  "weak_label": ["a" if i % 2 else "b" for i in range(len(paths))]}).to_csv(manifest, index=False)
    report = ingest_manifest(ws, manifest, classes=["a", "b"])
    if report.n_added != len(paths):
        raise RuntimeError(f"ingest added {report.n_added} of {len(paths)} images")
    return ws


def bare_forward(model, x: torch.Tensor, n_batches: int, bf16: bool) -> None:
    from core.models.features import features

    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for _ in range(n_batches):
            features(model, x).float()


def bench_arch(ws, key: str, arch: str, n: int, batch_size: int, rounds: int) -> dict:
    from core.data.images import to_tensor
    from core.dcd.embed import EmbedderSpec, embed_split_images
    from core.models.factory import create_model, default_data_config
    from core.models.inference import cpu_has_bf16

    model = create_model(arch, num_classes=0).eval()
    cfg = default_data_config(model)
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (batch_size, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    x_cl = to_tensor(pixels, cfg)  # the layout the pipeline feeds (NHWC memory, channels_last)
    x_nchw = x_cl.contiguous()
    n_batches = max(1, n // batch_size)
    out: dict = {"arch": arch, "n_images": n, "batch_size": batch_size, "rounds": []}
    precision = None
    layout, x_bare = None, None

    def bare_run(bf16: bool) -> tuple[float, float]:
        c = time.process_time()
        t = best_of(lambda: bare_forward(model, x_bare, n_batches, bf16), 1)
        return n_batches * batch_size / t, (time.process_time() - c) / (n_batches * batch_size)

    for r in range(rounds):
        # bare, real, bare: each real run is bracketed by bare runs, so both see the same load.
        if layout is None:
            bf16_guess = cpu_has_bf16()
            bare_forward(model, x_cl, 1, bf16_guess)  # warm-up; then the faster input layout is the baseline
            t_cl = best_of(lambda: bare_forward(model, x_cl, 1, bf16_guess), 2)
            t_nchw = best_of(lambda: bare_forward(model, x_nchw, 1, bf16_guess), 2)
            layout, x_bare = ("channels_last", x_cl) if t_cl <= t_nchw else ("nchw", x_nchw)
        before = bare_run(cpu_has_bf16())
        summary = embed_split_images(ws, EmbedderSpec(arch=arch), splits=["pool"], batch_size=batch_size)
        secs, cpu = summary["seconds"], summary["cpu_seconds"]
        bf16 = summary["precision"] == "bf16"
        precision = summary["precision"]
        after = bare_run(bf16)
        if bf16 != cpu_has_bf16():
            before = after  # the job chose the other precision: only the matching bare run counts
        bare_rate = (before[0] + after[0]) / 2
        bare_cpu = (before[1] + after[1]) / 2
        real_rate = summary["n_embedded"] / (secs["embed"] + secs["store"])
        real_cpu = (cpu["embed"] + cpu["store"]) / summary["n_embedded"]
        out["rounds"].append({"bare_img_s": bare_rate, "bare_layout": layout,
                              "bare_img_s_before_after": [before[0], after[0]],
                              "real_img_s": real_rate, "ratio": real_rate / bare_rate,
                              "cpu_ratio": bare_cpu / real_cpu, "setup_s": secs["setup"],
                              "embed_s": secs["embed"], "store_s": secs["store"],
                              "end_to_end_img_s": summary["n_embedded"] / sum(secs.values()),
                              "load_average": os.getloadavg()[0]})
        print(f"[embed] {key} round {r}: real {real_rate:.1f} img/s, bare {before[0]:.1f}/{after[0]:.1f} img/s "
              f"({layout}), ratio {real_rate / bare_rate:.3f}, cpu-time ratio {bare_cpu / real_cpu:.3f} "
              f"({precision}; setup {secs['setup']:.1f}s; load {os.getloadavg()[0]:.1f})", flush=True)
    rounds_ = out["rounds"]
    out["precision"] = precision
    out["efficiency"] = float(np.median([x["ratio"] for x in rounds_]))
    out["cpu_efficiency"] = float(np.median([x["cpu_ratio"] for x in rounds_]))
    out["efficiency_best_over_best"] = max(x["real_img_s"] for x in rounds_) / max(x["bare_img_s"] for x in rounds_)
    setup = float(np.median([x["setup_s"] for x in rounds_]))
    rate = max(x["real_img_s"] for x in rounds_)
    out["setup_share_at_1m"] = setup / (setup + 1_000_000 / rate)
    return out


def bench_bf16(arch: str, batch_size: int, n_batches: int, rounds: int) -> dict:
    from core.data.images import to_tensor
    from core.models.factory import create_model, default_data_config

    model = create_model(arch, num_classes=0).eval()
    cfg = default_data_config(model)
    pixels = np.random.default_rng(2).integers(0, 256, (batch_size, cfg.image_size, cfg.image_size, 3),
                                                dtype=np.uint8)
    x = to_tensor(pixels, cfg)
    bare_forward(model, x, 1, True)
    bare_forward(model, x, 1, False)
    t16, t32 = [], []
    for _ in range(rounds):  # alternate so that both see the same load; the best of each is kept
        t16.append(best_of(lambda: bare_forward(model, x, n_batches, True), 1))
        t32.append(best_of(lambda: bare_forward(model, x, n_batches, False), 1))
    out_rounds = [{"bf16_s": a, "fp32_s": b} for a, b in zip(t16, t32)]
    n = n_batches * batch_size
    out = {"arch": arch, "batch_size": batch_size, "bf16_img_s": n / min(t16), "fp32_img_s": n / min(t32),
           "rounds": out_rounds, "median_of_round_ratios": float(np.median([b / a for a, b in zip(t16, t32)]))}
    out["speedup"] = out["bf16_img_s"] / out["fp32_img_s"]
    print(f"[embed] bf16 {arch}: {out['bf16_img_s']:.1f} vs fp32 {out['fp32_img_s']:.1f} img/s = "
          f"{out['speedup']:.2f}x", flush=True)
    return out


def bench_overlap(paths: list[Path], arch: str, *, weights: str | None = None) -> dict:
    from core.data.images import iter_decoded
    from core.models.factory import create_model, default_data_config
    from core.models.inference import embed, knn_overlap

    model = create_model(arch, num_classes=0, weights=weights).eval()
    cfg = default_data_config(model)
    pixels = np.concatenate(list(iter_decoded([str(p) for p in paths], cfg.image_size, chunk=64)))
    e32 = embed(model, pixels, cfg, batch_size=64, bf16=False)
    e16 = embed(model, pixels, cfg, batch_size=64, bf16=True)
    ov = knn_overlap(e32, e16, k=10)
    print(f"[embed] kNN@10 overlap bf16 vs fp32, {arch}: {ov:.3f} on {len(paths)} images", flush=True)
    return {"arch": arch, "weights": weights or "random init", "n_images": len(paths), "knn10_overlap": ov}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--assets", type=Path, default=None)
    p.add_argument("--n-images", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--overlap-images", type=int, default=192, help="images for the bf16/fp32 kNN overlap")
    p.add_argument("--result", default=None)
    args = p.parse_args(argv)
    res: dict = {"archs": {}}
    with tempfile.TemporaryDirectory(prefix="dcd-bench-embed-") as tmp:
        t = time.perf_counter()
        paths = make_jpegs(Path(tmp) / "jpg", args.n_images, assets=args.assets)
        sizes = [Image.open(p).size for p in paths[:50]]
        res["jpeg"] = {"n": len(paths), "mean_bytes": float(np.mean([p.stat().st_size for p in paths])),
                       "mean_size_px": [float(np.mean([s[0] for s in sizes])), float(np.mean([s[1] for s in sizes]))]}
        ws = make_workspace(Path(tmp), paths)
        print(f"[embed] {len(paths)} JPEGs made and ingested in {time.perf_counter() - t:.1f}s", flush=True)
        for key in args.archs.split(","):
            res["archs"][key] = bench_arch(ws, key, ARCHS[key], len(paths), args.batch_size, args.rounds)
        res["bf16_vit_s16"] = bench_bf16(ARCHS["vit_s16"], args.batch_size, 1, 4)
        overlap_paths = paths[:args.overlap_images]
        res["overlap"] = {"vit_s16": bench_overlap(overlap_paths, ARCHS["vit_s16"]),
                          "resnet18": bench_overlap(overlap_paths, ARCHS["resnet18"])}
    write_result(args.result, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

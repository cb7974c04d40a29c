"""Benchmark 1: embedding pipeline efficiency, bf16 speed-up and bf16/fp32 neighbour agreement.

Efficiency = images/s of the real embed path (``core.dcd.embed.embed_split_images``: decode JPEG files,
resize, normalise, forward, stage, write to the workspace) / images/s of the bare forward pass on a
pre-made batch, same model, batch size and precision. Runs alternate (bare, real, bare, real, ..., bare);
each real run is compared with the mean of the bare runs either side; the figure is the median of the
rounds' wall ratios, beside the CPU-time ratio (bare CPU s/image over real) and the load of each run
(1-min load average; other processes' runnable threads, sampled). A wall ratio above 1, or a load above
the cores, marks the result ``loaded``: not meaningful. The real path's rate counts its streaming phase
and the final write (``seconds.embed + seconds.store``); the one-off setup (model build, bf16-vs-fp32
check on 128 images) is reported apart, with its share of a 1M-image pool. Decode's own CPU cost per
image (``iter_model_inputs`` alone) is set against the forward's: ``forward / (forward + decode)`` is the
ratio reachable when the bare forward already keeps every core busy. The bf16 speed-up alternates fp32
and bf16 forwards the same way (median ratio, CPU-time ratio, load).

    python -m bench.embed [--assets DIR] [--n-images 1024] [--batch-size 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import threading
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
    """The forward alone, on a pre-made batch, run as the embed job runs it: in micro-batches with the
    allocator tuned (core.models.memory; the whole batch in one pass is up to 2x slower at 224 px, which
    made the job look faster than its own forward)."""
    from core.models.features import features
    from core.models.memory import forward_in_micro_batches

    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for _ in range(n_batches):
            forward_in_micro_batches(lambda part: features(model, part), x).float()


def _running_threads(pid: int | str) -> int:
    """Threads of process ``pid`` in the running state now (from /proc; 0 where it cannot be read)."""
    n = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            n += stat.read_text().rsplit(")", 1)[1].split()[0] == "R"
        except (OSError, IndexError):
            continue
    return n


def _descendants(pid: int) -> list[int]:
    """The processes started by ``pid``, at any depth (from /proc's parent ids)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _own_running(tree: bool = False) -> int:
    """Running threads of this process, and with ``tree`` of every process it started (a Ray runtime's)."""
    return _running_threads("self") + (sum(_running_threads(p) for p in _descendants(os.getpid())) if tree else 0)


def _system_running() -> int | None:
    """Runnable threads of the whole machine now (the 4th field of /proc/loadavg), or None."""
    try:
        return int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return None


class LoadProbe:
    """Samples the machine's load while a run goes on: the runnable threads of *other* processes (system
    runnable minus this process's, and with ``tree`` minus those of the processes it started), every
    ``period`` s, and the 1-min load average at the end."""

    def __init__(self, period: float = 0.2, *, tree: bool = False) -> None:
        self.period, self.tree, self.samples, self.own = period, tree, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            system, own = _system_running(), _own_running(self.tree)
            if system is not None:
                self.samples.append(max(0, system - own))
                self.own.append(own)

    def __enter__(self) -> LoadProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.load_average = os.getloadavg()[0]

    def summary(self) -> dict:
        """``load_average`` (1 min, at the end), ``other_runnable`` (mean), ``own_runnable`` (mean)."""
        mean = (lambda xs: float(np.mean(xs)) if xs else None)
        return {"load_average": self.load_average, "other_runnable": mean(self.samples),
                "own_runnable": mean(self.own)}


def timed(fn) -> dict:
    """Run ``fn``: its wall and process CPU seconds, the load during it, and ``fn``'s result."""
    with LoadProbe() as probe:
        t, c = time.perf_counter(), time.process_time()
        value = fn()
        wall, cpu = time.perf_counter() - t, time.process_time() - c
    return {"wall_s": wall, "cpu_s": cpu, **probe.summary(), "value": value}


def loaded_verdict(ratios: list[float], loads: list[dict], *, above_one_is_suspect: bool = True) -> dict:
    """Whether the machine was too loaded for the ratios to mean anything, and why.

    Loaded if a wall ratio is above 1 (the pipeline beat its own bare forward: only other load does that),
    if the 1-min load average less this process's own runnable threads exceeds the core count, or if
    other processes kept on average at least half the cores busy during the runs.
    """
    cores = os.cpu_count() or 1
    la = float(np.median([x["load_average"] for x in loads]))
    own = float(np.median([x["own_runnable"] or 0 for x in loads]))
    others = [x["other_runnable"] for x in loads if x["other_runnable"] is not None]
    other = float(np.median(others)) if others else None
    why = []
    if above_one_is_suspect and any(r > 1 for r in ratios):
        why.append("a wall ratio above 1")
    if la - own > cores:
        why.append(f"load average {la:.1f} (less {own:.1f} own threads) above {cores} cores")
    if other is not None and other >= cores / 2:
        why.append(f"other processes' runnable threads {other:.1f} on {cores} cores")
    return {"loaded": bool(why), "loaded_why": "; ".join(why), "load_average": la, "other_runnable": other}


def bench_arch(ws, key: str, arch: str, n: int, batch_size: int, rounds: int, paths: list[Path]) -> dict:
    """Alternate bare and real runs (bare, real, bare, ..., bare): each real run against the mean of the
    bare runs either side, in wall and CPU time, with the load of each run; plus decode's CPU cost alone."""
    from core.data.images import iter_model_inputs, to_tensor
    from core.dcd.embed import EmbedderSpec, embed_split_images
    from core.models.device import model_to_device
    from core.models.factory import create_model, default_data_config
    from core.models.inference import cpu_has_bf16

    model = model_to_device(create_model(arch, num_classes=0).eval())  # weights laid out as the job lays them
    cfg = default_data_config(model)
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (batch_size, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    x_cl = to_tensor(pixels, cfg)  # the layout the pipeline feeds (NHWC memory, channels_last)
    x_nchw = x_cl.contiguous()
    n_batches = max(1, n // batch_size)
    n_bare = n_batches * batch_size
    bf16 = cpu_has_bf16()
    bare_forward(model, x_cl, 1, bf16)  # warm-up; then the faster input layout is the baseline
    t_cl = best_of(lambda: bare_forward(model, x_cl, 1, bf16), 2)
    t_nchw = best_of(lambda: bare_forward(model, x_nchw, 1, bf16), 2)
    layout, x_bare = ("channels_last", x_cl) if t_cl <= t_nchw else ("nchw", x_nchw)

    def bare_run() -> dict:
        r = timed(lambda: bare_forward(model, x_bare, n_batches, bf16))
        r.pop("value")
        return {**r, "img_s": n_bare / r["wall_s"], "cpu_ms_img": r["cpu_s"] / n_bare * 1e3}

    def real_run() -> dict:
        r = timed(lambda: embed_split_images(ws, EmbedderSpec(arch=arch), splits=["pool"], batch_size=batch_size))
        s = r.pop("value")
        k = s["n_embedded"]
        wall, cpu = s["seconds"]["embed"] + s["seconds"]["store"], s["cpu_seconds"]["embed"] + s["cpu_seconds"]["store"]
        return {**r, "img_s": k / wall, "cpu_ms_img": cpu / k * 1e3, "setup_s": s["seconds"]["setup"],
                "embed_s": s["seconds"]["embed"], "store_s": s["seconds"]["store"], "precision": s["precision"],
                "end_to_end_img_s": k / sum(s["seconds"].values())}

    bares, reals = [bare_run()], []
    for r in range(rounds):
        reals.append(real_run())
        if (reals[-1]["precision"] == "bf16") != bf16:  # the job chose the other precision: match it
            bf16 = not bf16
            bares = [bare_run()]
        bares.append(bare_run())
        b = (bares[-2], bares[-1])
        real = reals[-1]
        real["bare_img_s"] = (b[0]["img_s"] + b[1]["img_s"]) / 2
        real["bare_cpu_ms_img"] = (b[0]["cpu_ms_img"] + b[1]["cpu_ms_img"]) / 2
        real["ratio"] = real["img_s"] / real["bare_img_s"]
        real["cpu_ratio"] = real["bare_cpu_ms_img"] / real["cpu_ms_img"]
        print(f"[embed] {key} round {r}: real {real['img_s']:.1f} img/s, bare {b[0]['img_s']:.1f}/{b[1]['img_s']:.1f} "
              f"img/s ({layout}), ratio {real['ratio']:.3f}, cpu-time ratio {real['cpu_ratio']:.3f} "
              f"({real['precision']}; setup {real['setup_s']:.1f}s; load {real['load_average']:.1f}, others' "
              f"runnable {real['other_runnable'] or 0:.1f})", flush=True)
    # Decode + resize + normalise alone, as the embed job runs it: its CPU cost per image vs the forward's.
    strs = [str(p) for p in paths]
    dec = timed(lambda: sum(len(b) for b in iter_model_inputs(strs, cfg, chunk=batch_size)))
    decode_ms = dec["cpu_s"] / len(strs) * 1e3
    forward_ms = float(np.median([b["cpu_ms_img"] for b in bares]))
    out: dict = {"arch": arch, "n_images": n, "batch_size": batch_size, "bare_layout": layout,
                 "precision": reals[-1]["precision"], "rounds": reals, "bare_runs": bares,
                 "efficiency": float(np.median([x["ratio"] for x in reals])),
                 "cpu_efficiency": float(np.median([x["cpu_ratio"] for x in reals])),
                 "decode_cpu_ms_img": decode_ms, "forward_cpu_ms_img": forward_ms,
                 # the ratio if the bare forward kept every core busy and decode's CPU came on top of it
                 "cpu_bound_efficiency": forward_ms / (forward_ms + decode_ms)}
    out.update(loaded_verdict([x["ratio"] for x in reals], reals + bares))
    setup = float(np.median([x["setup_s"] for x in reals]))
    out["setup_share_at_1m"] = setup / (setup + 1_000_000 / max(x["img_s"] for x in reals))
    print(f"[embed] {key}: efficiency {out['efficiency']:.3f} (cpu {out['cpu_efficiency']:.3f}); decode "
          f"{decode_ms:.2f} vs forward {forward_ms:.2f} CPU ms/img -> bound {out['cpu_bound_efficiency']:.3f}"
          f"{'; LOADED: ' + out['loaded_why'] if out['loaded'] else ''}", flush=True)
    return out


def bench_bf16(arch: str, batch_size: int, n_batches: int, rounds: int) -> dict:
    """Alternate fp32 and bf16 forwards; the median of the per-round wall and CPU-time ratios, and the load."""
    from core.data.images import to_tensor
    from core.models.factory import create_model, default_data_config

    model = create_model(arch, num_classes=0).eval()
    cfg = default_data_config(model)
    pixels = np.random.default_rng(2).integers(0, 256, (batch_size, cfg.image_size, cfg.image_size, 3),
                                                dtype=np.uint8)
    x = to_tensor(pixels, cfg)
    bare_forward(model, x, 1, True)
    bare_forward(model, x, 1, False)
    out_rounds = []
    for _ in range(rounds):  # alternate so that both see the same load
        f32 = timed(lambda: bare_forward(model, x, n_batches, False))
        b16 = timed(lambda: bare_forward(model, x, n_batches, True))
        out_rounds.append({"fp32_s": f32["wall_s"], "bf16_s": b16["wall_s"], "fp32_cpu_s": f32["cpu_s"],
                           "bf16_cpu_s": b16["cpu_s"], "ratio": f32["wall_s"] / b16["wall_s"],
                           "cpu_ratio": f32["cpu_s"] / b16["cpu_s"],
                           "load_average": b16["load_average"], "other_runnable": b16["other_runnable"],
                           "own_runnable": b16["own_runnable"], "loads": [f32, b16]})
    n = n_batches * batch_size
    out = {"arch": arch, "batch_size": batch_size, "rounds": out_rounds,
           "bf16_img_s": n / float(np.median([r["bf16_s"] for r in out_rounds])),
           "fp32_img_s": n / float(np.median([r["fp32_s"] for r in out_rounds])),
           "speedup": float(np.median([r["ratio"] for r in out_rounds])),
           "cpu_speedup": float(np.median([r["cpu_ratio"] for r in out_rounds]))}
    loads = [{k: v for k, v in x.items() if k != "value"} for r in out_rounds for x in r.pop("loads")]
    out.update(loaded_verdict([], loads, above_one_is_suspect=False))
    print(f"[embed] bf16 {arch}: {out['bf16_img_s']:.1f} vs fp32 {out['fp32_img_s']:.1f} img/s, median ratio "
          f"{out['speedup']:.2f}x (cpu {out['cpu_speedup']:.2f}x; load {out['load_average']:.1f})"
          f"{'; LOADED: ' + out['loaded_why'] if out['loaded'] else ''}", flush=True)
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
    p.add_argument("--n-images", type=int, default=1024, help="images per run (runs of a few seconds vary by 10%%)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3, help="real embed runs per model, alternating with bare runs")
    p.add_argument("--bf16-rounds", type=int, default=4, help="fp32/bf16 alternations")
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
            res["archs"][key] = bench_arch(ws, key, ARCHS[key], len(paths), args.batch_size, args.rounds, paths)
        res["bf16_vit_s16"] = bench_bf16(ARCHS["vit_s16"], args.batch_size, 1, args.bf16_rounds)
        res["embed_loaded"] = any(a["loaded"] for a in res["archs"].values())
        overlap_paths = paths[:args.overlap_images]
        res["overlap"] = {"vit_s16": bench_overlap(overlap_paths, ARCHS["vit_s16"]),
                          "resnet18": bench_overlap(overlap_paths, ARCHS["resnet18"])}
    write_result(args.result, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

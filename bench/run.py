"""Run the whole benchmark suite and write bench/results.json and bench/RESULTS.md.

    python -m bench.run [--assets DIR] [--work /tmp/dcd-bench] [--only embed,retrieval,...]
                        [--fresh] [--n-pool 1000000]

Each benchmark runs in its own child process (isolated peak memory; one failing does not stop the rest).
The synthetic 1M workspace is kept in ``--work`` between runs (``--fresh`` rebuilds it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from bench.common import ROOT, machine, run_child
from bench.report import write_report
from core.scenarios.demos import assets_dir

BENCHES = ("compute", "lpips", "embed", "ray", "scale", "retrieval", "memory", "pages", "index10m", "labels", "pipeline")
SCALE_VERSION = "2"


def _scale_workspace(work: Path, n_pool: int, fresh: bool, log: dict) -> Path:
    """The synthetic scale workspace, built in three child processes (the store step's peak RSS is the
    embed job's write phase at full scale), or reused from an earlier run."""
    root = work / f"ws-{n_pool}"
    stamp = root / "bench-scale.json"
    if fresh or not stamp.exists() or json.loads(stamp.read_text()).get("version") != SCALE_VERSION:
        shutil.rmtree(root, ignore_errors=True)
        rows = run_child("bench.scale", ["rows", "--root", str(root), "--n-pool", str(n_pool)])
        store = run_child("bench.scale", ["store", "--root", str(root), "--dim", str(rows["dim"])])
        extras = run_child("bench.scale", ["extras", "--root", str(root)])
        info = {"version": SCALE_VERSION, **rows, **{k: v for k, v in extras.items() if k != "peak_rss_bytes"},
                "store": store, "seconds_total": rows["wall_seconds"] + store["wall_seconds"] + extras["wall_seconds"]}
        stamp.write_text(json.dumps(info, indent=2))
        log["built_now"] = True
    else:
        log["built_now"] = False
    log.update(json.loads(stamp.read_text()))
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--assets", type=Path, default=assets_dir(),
                   help="real assets folder (default: $DCD_ASSETS); without it, generated images")
    p.add_argument("--work", type=Path, default=Path(os.environ.get("DCD_BENCH_WORK", "/tmp/dcd-bench")))
    p.add_argument("--only", default=",".join(BENCHES))
    p.add_argument("--fresh", action="store_true", help="rebuild the synthetic scale workspace")
    p.add_argument("--n-pool", type=int, default=1_000_000)
    p.add_argument("--embed-images", type=int, default=1024)
    p.add_argument("--embed-rounds", type=int, default=3, help="real embed runs per model (each between two bare)")
    p.add_argument("--index10m-n", type=int, default=10_000_000, help="pool size of the beyond-memory bench")
    p.add_argument("--index10m-memory-gb", type=float, default=2.0, help="its index memory budget")
    p.add_argument("--out", type=Path, default=ROOT / "bench")
    args = p.parse_args(argv)
    only = [b.strip() for b in args.only.split(",") if b.strip()]
    args.work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    raw: dict = {"machine": machine(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "command": " ".join([Path(sys.executable).name, "-m", "bench.run", *_public(argv or sys.argv[1:])]),
                 "n_pool": args.n_pool, "errors": {}, "seconds": {}}

    def step(name: str, fn):
        t = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            raw[name] = fn()
        except Exception as exc:
            traceback.print_exc()
            raw["errors"][name] = f"{type(exc).__name__}: {exc}"[-2000:]
        raw["seconds"][name] = time.perf_counter() - t

    assets = args.assets.resolve() if args.assets and args.assets.exists() else None
    if "compute" in only:
        step("compute", lambda: run_child("bench.compute", []))
    if "lpips" in only:
        step("lpips", lambda: run_child("bench.lpips", []))
    if "embed" in only:
        step("embed", lambda: run_child("bench.embed", ["--n-images", str(args.embed_images),
                                                        "--rounds", str(args.embed_rounds)]
                                        + (["--assets", str(assets)] if assets else [])))
    if "ray" in only:
        step("ray", lambda: run_child("bench.ray_embed", ["--assets", str(assets)] if assets else []))
    root = None
    if any(b in only for b in ("retrieval", "memory", "pages")):
        scale_log: dict = {}
        step("scale", lambda: (_scale_workspace(args.work, args.n_pool, args.fresh, scale_log), scale_log)[1])
        root = Path(raw["scale"]["root"]) if "scale" in raw else None
    if root and "retrieval" in only:
        def retrieval():
            out = {"build": run_child("bench.retrieval", ["build", "--root", str(root)])}
            out["select"] = run_child("bench.retrieval", ["select", "--root", str(root)])
            return out
        step("retrieval", retrieval)
    if root and "memory" in only:
        step("memory", lambda: _memory(root, args.work, assets, raw.get("scale") or {}))
    if root and "pages" in only:
        step("pages", lambda: run_child("bench.pages", ["--root", str(root)]))
    if "index10m" in only:  # generated chunks fed to the builder: no workspace vectors, files deleted after
        step("index10m", lambda: run_child("bench.index10m", ["all", "--work", str(args.work / "index10m"),
                                                              "--n", str(args.index10m_n),
                                                              "--memory-gb", str(args.index10m_memory_gb)],
                                           timeout=5400))
    if "labels" in only:
        if assets is not None and (assets / "label-bench").is_dir():
            step("labels", lambda: run_child("bench.label_bench", ["--inputs", str(assets / "label-bench")]))
        else:
            print("== labels: skipped (no label-bench/ in the real assets; pass --assets DIR)", flush=True)
    if "pipeline" in only:  # last: the longest, and it wants a quiet machine for each run
        step("pipeline", lambda: run_child("bench.pipeline_time", ["--assets", str(assets)] if assets else [],
                                           timeout=7200))
    raw["total_seconds"] = time.perf_counter() - t_start
    _keep_earlier(raw, args.out / "results-raw.json", [b for b in BENCHES if b not in only])
    results = write_report(raw, args.out)
    print(json.dumps(results, indent=2))
    return 0


def _public(args: list[str]) -> list[str]:
    """The command's arguments as the report prints them: a folder (the assets, the work folder) as its flag's
    name, so a committed report names no path of the machine it ran on."""
    out = list(args)
    for i, a in enumerate(out[:-1]):
        if a in ("--assets", "--work", "--out"):
            out[i + 1] = "DIR"
    return out


def _keep_earlier(raw: dict, earlier_path: Path, not_run: list[str]) -> None:
    """With ``--only``, the benchmarks not run keep their figures from the earlier report (each marked with
    the date it was measured), so a partial run does not erase the rest of bench/RESULTS.md."""
    if not not_run or not earlier_path.exists():
        return
    earlier = json.loads(earlier_path.read_text())
    kept = {}
    for name in not_run:
        if name in earlier and name not in raw:
            raw[name] = earlier[name]
            kept[name] = (earlier.get("kept_from") or {}).get(name, earlier.get("date"))
    if kept:
        raw["kept_from"] = kept


def _memory(root: Path, work: Path, assets: Path | None, scale: dict) -> dict:
    """Benchmark 5: peak RSS of the real job CLIs, each in its own process (``bench._rss``).

    - select: ``jobs.select --method dcd --label-policy weak`` on the 1M workspace (its index built by benchmark 2);
    - embed at 1M: the write phase (``store_embedding_files`` of 1M staged vectors, the scale build's store
      step): the only part of the embed job whose memory could grow with the pool, the rest streams one
      8,192-image part at a time; plus the whole ``jobs.embed`` CLI on a small JPEG workspace (fixed cost);
    - slices: ``jobs.slices`` on the 10,000 attributed test images (slices never read the pool).
    """
    from bench.scale import EMBEDDER_ID

    out: dict = {"embed_store_1m": scale.get("store")}
    out["select_job"] = run_child("bench._rss", ["jobs.select", "--workspace", str(root), "--method", "dcd",
                                                 "--embedder-id", EMBEDDER_ID, "--neighbours", "50", "--budget", "5000",
                                                 # weak labels: the synthetic workspace has vectors, no classifier
                                                 # to fine-tune the default's teacher from
                                                 "--label-policy", "weak", "--name", "bench-memory"])
    out["slices_job"] = run_child("bench._rss", ["jobs.slices", "--workspace", str(root), "--splits", "test",
                                                 "--slices", "8", "--no-mosaics"])
    out["slices_job"]["n_images"] = 10_000
    # The whole embed job on a small JPEG workspace: its fixed memory (torch, model, decode-ahead buffers).
    import tempfile

    from bench.embed import make_jpegs, make_workspace

    with tempfile.TemporaryDirectory(prefix="dcd-bench-embedjob-") as tmp:
        paths = make_jpegs(Path(tmp) / "jpg", 256, assets=assets)
        ws = make_workspace(Path(tmp), paths)
        out["embed_job_small"] = run_child("bench._rss", ["jobs.embed", "--workspace", str(ws.root),
                                                          "--embedder", "resnet18", "--splits", "pool",
                                                          "--batch-size", "64"])
        out["embed_job_small"]["n_images"] = len(paths)
    return out


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: the whole loop's wall time, ingest to proven fix, with its stage split.

Runs ``python -m jobs.demo`` (generate, ingest, then the loop with its defaults: train, evaluate, embed, the
failure-only fix, the fix check, dcd, random, all_pool) in a fresh workspace for each scenario:

- ``waterbirds``: ``make run``'s small demo (``--size small``; generated images, no assets needed);
- ``photos``: CIFAR-10 images as 224 px photos with a low-light failure (needs the real assets).

Each run starts once the machine is quiet (bench.common.wait_for_quiet; else it is marked loaded) and is
timed from outside, in a child process of its own (wall seconds, peak RSS of the job) beside the stage split the loop reports
(``timings_s``). ``--pixels-too`` runs each scenario a second time with ``DCD_TRUNK_CACHE=0`` (every model
on pixels) and reports the ratio.

    python -m bench.pipeline_time [--assets DIR] [--only waterbirds,photos] [--pixels-too]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from bench.common import run_child, wait_for_quiet, write_result

SCENARIOS = ("waterbirds", "photos")


def run_demo(dataset: str, assets: Path | None, *, pixels: bool = False) -> dict:
    """One ``jobs.demo`` run in a fresh workspace, in a child process of its own (bench._rss): wall seconds,
    the loop's stage split, the child's peak RSS, the load."""
    quiet = wait_for_quiet()
    with tempfile.TemporaryDirectory(prefix=f"dcd-pipeline-{dataset}-") as tmp:
        out = Path(tmp) / "report.json"
        size = ["--size", "small"] if dataset == "waterbirds" else []  # make run's demo; the photos at full size
        run = run_child("bench._rss", ["jobs.demo", "--dataset", dataset, *size, "--workspace", str(Path(tmp) / "ws"),
                                       "--json", str(out), *(["--assets", str(assets)] if assets else [])],
                        env={"DCD_TRUNK_CACHE": "0"} if pixels else None, timeout=7200, quiet=True)
        report = json.loads(out.read_text())
    methods = report.get("methods") or {}
    return {"dataset": dataset, "pixels": pixels, "wall_seconds": run["wall_seconds"], "quiet": quiet,
            "load_average_end": os.getloadavg()[0], "loop_seconds": report.get("total_seconds"),
            "stages_s": report.get("timings_s"), "peak_rss_bytes": run["peak_rss_bytes"],
            "accuracy": {m: {k: r.get(k) for k in ("test_acc", "error_heldout_acc", "failure_heldout_acc")
                             if r.get(k) is not None} for m, r in methods.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--assets", type=Path, default=None, help="the real assets (the photos scenario needs them)")
    p.add_argument("--only", default=",".join(SCENARIOS))
    p.add_argument("--pixels-too", action="store_true", help="also run each with DCD_TRUNK_CACHE=0")
    p.add_argument("--result", default=None)
    args = p.parse_args(argv)
    res: dict = {"runs": {}}
    for dataset in [s.strip() for s in args.only.split(",") if s.strip()]:
        if dataset == "photos" and args.assets is None:
            print("[pipeline] photos: skipped (needs the real assets: --assets DIR)", flush=True)
            continue
        for pixels in (False, True) if args.pixels_too else (False,):
            run = run_demo(dataset, args.assets, pixels=pixels)
            res["runs"][f"{dataset}{'_pixels' if pixels else ''}"] = run
            print(f"[pipeline] {dataset}{' on pixels' if pixels else ''}: {run['wall_seconds']:.0f} s "
                  f"(loop {run['loop_seconds']} s; {run['stages_s']}), load {run['quiet']['load_average']:.2f} at "
                  f"its start", flush=True)
        if f"{dataset}_pixels" in res["runs"]:
            res["runs"][dataset]["over_pixels"] = (res["runs"][dataset]["wall_seconds"]
                                                   / res["runs"][f"{dataset}_pixels"]["wall_seconds"])
    write_result(args.result, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

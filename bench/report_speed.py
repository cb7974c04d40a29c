"""The speed sections of bench/RESULTS.md: the default backbone against the CPU's peak (bench.compute) and the
whole loop's wall time (bench.pipeline_time), with their flat keys for bench/results.json."""

from __future__ import annotations

from typing import Any


def _f(v: Any, fmt: str = "{:.3f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def _loaded(quiet: dict | None) -> bool | None:
    return None if not quiet else bool(quiet.get("loaded"))


def speed_keys(raw: dict) -> dict[str, Any]:
    """Flat keys of the compute and pipeline benchmarks; a share of the peak above 1 (impossible) is flagged."""
    c, p = raw.get("compute") or {}, (raw.get("pipeline") or {}).get("runs") or {}
    r: dict[str, Any] = {"peak_gflops_fp32": (c.get("peak_gflops") or {}).get("fp32"),
                         "peak_gflops_bf16": (c.get("peak_gflops") or {}).get("bf16"),
                         "compute_loaded": _loaded(c.get("quiet"))}
    for key, row in (c.get("forward") or {}).items():
        r[f"forward_{key}_images_per_s"] = row["channels_last_images_per_s"]
        r[f"forward_{key}_share_of_peak"] = row["channels_last_share_of_peak"]
        r[f"forward_{key}_channels_last_speedup"] = row["speedup_channels_last"]
        if "speedup_micro_batches" in row:
            r[f"forward_{key}_micro_batches_speedup"] = row["speedup_micro_batches"]
    for key, row in (c.get("train") or {}).items():
        r[f"train_step_{key}_channels_last_speedup"] = row["speedup_channels_last"]
    r["share_of_peak_above_1"] = sorted(k for k, v in r.items() if k.endswith("share_of_peak") and v and v > 1) or None
    for name, run in p.items():
        r[f"pipeline_{name}_seconds"] = run["wall_seconds"]
        r[f"pipeline_{name}_loaded"] = _loaded(run.get("quiet"))
        if "over_pixels" in run:
            r[f"pipeline_{name}_over_pixels"] = run["over_pixels"]
    return r


def speed_sections(raw: dict) -> list[str]:
    """## 8 (compute) and ## 9 (the loop's wall time)."""
    c = raw.get("compute") or {}
    L = ["", "## 8. The default backbone against this CPU's peak", ""]
    if not c:
        L.append("Not run (`python -m bench.run --only compute`).")
    else:
        peak = c.get("peak_gflops") or {}
        q = c.get("quiet") or {}
        L += [f"Peak: a 2048 x 2048 matrix product on all cores, **{_f(peak.get('fp32'), '{:.0f}')} GFLOP/s fp32**"
              + (f", {_f(peak.get('bf16'), '{:.0f}')} GFLOP/s bf16" if peak.get("bf16") else " (no native bf16)")
              + f". {c.get('arch')} forward, batch {c.get('batch')}, operations counted by torch's FLOP counter "
              f"(2 per multiply-add); the two memory layouts alternate (median of rounds). Load average "
              f"{_f(q.get('load_average'), '{:.2f}')} at the start (after waiting {_f(q.get('waited_s'), '{:.0f}')} s"
              f" for a quiet machine), {_f(c.get('load_average_end'), '{:.2f}')} at the end"
              + (" (**loaded**: these figures do not count)" if q.get("loaded") else "") + ".", "",
              "| input | precision | GFLOP / image | img/s usual | img/s channels-last | channels-last speed-up | "
              "share of the peak (channels-last) |", "|---|---|---|---|---|---|---|"]
        for key, row in (c.get("forward") or {}).items():
            size, precision = key.split("_")
            share = row["channels_last_share_of_peak"]
            L.append(f"| {size} px | {precision} | {row['gflop_per_image']:.3f} | {row['usual_images_per_s']:.0f} | "
                     f"{row['channels_last_images_per_s']:.0f} | {row['speedup_channels_last']:.2f}x | "
                     f"{share:.1%}{' (**above 1: a measurement error**)' if share > 1 else ''} |")
        micro = {k: v for k, v in (c.get("forward") or {}).items() if "speedup_micro_batches" in v}
        if micro:
            L += ["", "Each forward above runs as the product runs it: in micro-batches, the allocator tuned "
                  "(core.models.memory). The whole batch in one pass instead (fp32, channels-last): "
                  + "; ".join(f"{k.split('_')[0]} px {v['whole_batch_images_per_s']:.0f} img/s (micro-batches "
                              f"{v['speedup_micro_batches']:.2f}x faster)" for k, v in micro.items()) + "."]
        L += ["", "Training steps (batch " + str(c.get("batch")) + "), usual -> channels-last: "
              + "; ".join(f"{k}: {v['usual_s']:.3f} -> {v['channels_last_s']:.3f} s ({v['speedup_channels_last']:.2f}x)"
                          for k, v in (c.get("train") or {}).items()) + ".",
              "", "A depthwise-separable network (EfficientNet) runs far below a matrix product's peak: its "
              "depthwise convolutions and activations move more memory than they compute."]
    runs = (raw.get("pipeline") or {}).get("runs") or {}
    L += ["", "## 9. The whole loop's wall time", ""]
    if not runs:
        return L + ["Not run (`python -m bench.run --only pipeline`; the photos scenario needs the real assets)."]
    L += ["`python -m jobs.demo --dataset NAME` (waterbirds with `--size small`: `make run`'s demo; photos at full "
          "size) in a fresh workspace (generate, ingest, train, evaluate, embed, "
          "the failure-only fix, the fix check, dcd, random, all_pool), timed from outside, started on a quiet "
          "machine; the stage split is the loop's own (`timings_s`).", "",
          "| scenario | wall s | load at start | stages (s) | accuracy (held-out / test) |", "|---|---|---|---|---|"]
    for name, run in runs.items():
        q = run.get("quiet") or {}
        acc = "; ".join(f"{m} {_f(a.get('failure_heldout_acc', a.get('error_heldout_acc')))} / {_f(a.get('test_acc'))}"
                        for m, a in (run.get("accuracy") or {}).items())
        stages = ", ".join(f"{k} {v:.0f}" for k, v in (run.get("stages_s") or {}).items())
        L.append(f"| {name} | {run['wall_seconds']:.0f}"
                 + (f" ({run['over_pixels']:.2f}x pixels)" if "over_pixels" in run else "")
                 + f" | {_f(q.get('load_average'), '{:.2f}')}{' **loaded**' if q.get('loaded') else ''} | "
                 f"{stages} | {acc} |")
    return L

"""The speed benchmarks' own arithmetic: a loaded machine is called loaded, operations are counted as torch
does, and a share of the peak above 1 (impossible) is flagged in the report."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from bench import common, embed
from bench.compute import forward_flops
from bench.report import flatten, markdown


def test_a_machine_that_stays_loaded_is_called_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    loads = iter([3.0, 2.0, 0.4])
    monkeypatch.setattr(common.os, "getloadavg", lambda: (next(loads), 0.0, 0.0))
    monkeypatch.setattr(common.time, "sleep", lambda s: None)
    found = common.wait_for_quiet(max_wait_s=60)
    assert found["loaded"] is False and found["load_average"] == 0.4  # waited until it was quiet
    monkeypatch.setattr(common.os, "getloadavg", lambda: (1.5, 0.0, 0.0))
    found = common.wait_for_quiet(max_wait_s=0)
    assert found["loaded"] is True and found["load_average"] == 1.5


def test_operations_are_counted_two_per_multiply_add() -> None:
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert forward_flops(conv, torch.zeros(1, 3, 8, 8)) == 2 * (8 * 8) * 8 * (3 * 3 * 3)


def _raw(share: float) -> dict:
    row = {"gflop_per_image": 0.8, "usual_images_per_s": 40.0, "channels_last_images_per_s": 60.0,
           "usual_share_of_peak": share / 1.5, "channels_last_share_of_peak": share, "speedup_channels_last": 1.5}
    return {"machine": {"cpu": "test CPU", "cpu_flags": ["avx2"]},
            "compute": {"peak_gflops": {"fp32": 100.0}, "quiet": {"load_average": 0.2, "loaded": False},
                        "forward": {"224_fp32": row}, "train": {}, "batch": 64, "arch": "efficientnet_lite0"},
            "pipeline": {"runs": {"waterbirds": {"wall_seconds": 300.0, "quiet": {"load_average": 0.9, "loaded": True},
                                                 "stages_s": {"train": 100.0}, "accuracy": {}}}}}


def test_the_report_states_the_share_of_the_peak_and_flags_an_impossible_one() -> None:
    r = flatten(_raw(0.3))
    assert r["forward_224_fp32_share_of_peak"] == 0.3 and r["share_of_peak_above_1"] is None
    assert r["pipeline_waterbirds_seconds"] == 300.0 and r["pipeline_waterbirds_loaded"] is True
    text = markdown(_raw(0.3), r)
    assert "30.0%" in text and "CPU flags: avx2" in text and "**loaded**" in text
    micro = _raw(0.3)
    micro["compute"]["forward"]["224_fp32"].update(whole_batch_images_per_s=20.0, speedup_micro_batches=3.0)
    assert flatten(micro)["forward_224_fp32_micro_batches_speedup"] == 3.0
    assert "224 px 20 img/s (micro-batches 3.00x faster)" in markdown(micro, flatten(micro))
    bad = _raw(1.2)
    r = flatten(bad)
    assert r["share_of_peak_above_1"] == ["forward_224_fp32_share_of_peak"]
    assert "a measurement error" in markdown(bad, r)


def test_the_10m_select_is_reported_from_the_page_cache_and_from_a_cold_disk() -> None:
    def select(seconds: float, peak: int) -> dict:
        return {"cold_seconds": seconds, "load_seconds": 0.5, "warm_seconds": 0.4, "recall_at_k": 0.95,
                "n_queries": 100, "neighbours": 50, "peak_rss_bytes": peak}

    gib = 1 << 30
    raw = {"machine": {"cpu": "test CPU"}, "index10m": {
        "n": 10, "dim": 4, "memory_gb": 2.0, "budget_bytes": 2 * gib, "raw_vector_bytes": 160,
        "build": {"seconds": 9.0, "peak_rss_bytes": gib}, "truth": {"seconds": 1.0},
        "select": select(0.9, gib // 2), "select_cold_disk": select(14.0, 3 * gib)}}
    r = flatten(raw)
    assert r["select_10m_seconds"] == 0.9 and r["targets"]["select_10m_seconds"]["met"] is True
    assert r["select_10m_cold_disk_seconds"] == 14.0
    assert r["index_10m_peak_rss_over_budget"] == 1.5  # the cold run's peak counts against the budget too
    assert "dropped from the page cache first" in markdown(raw, r) and "14.000 s" in markdown(raw, r)


def test_the_bf16_speedup_is_judged_only_on_a_cpu_with_native_bf16() -> None:
    def raw(native: bool) -> dict:
        return {"machine": {"cpu": "test CPU", "bf16_native": native},
                "embed": {"bf16_vit_s16": {"speedup": 0.1}}}

    with_bf16 = flatten(raw(True))["targets"]["bf16_speedup_vit_s16"]["met"]
    without = flatten(raw(False))["targets"]["bf16_speedup_vit_s16"]["met"]
    assert with_bf16 is False  # 0.1x where the CPU has bf16 is a miss
    assert without.startswith("not applicable: no native bf16")
    assert "| `bf16_speedup_vit_s16` | 0.100 | >= 1.8 | not applicable" in markdown(raw(False), flatten(raw(False)))


def test_a_figure_its_run_marked_loaded_is_shown_but_not_counted() -> None:
    def raw(loaded: bool) -> dict:
        arch = {"arch": "vit_small_patch16_224", "batch_size": 64, "efficiency": 0.99, "loaded": loaded,
                "loaded_why": "a wall ratio above 1" if loaded else "", "rounds": []}
        return {"machine": {"cpu": "test CPU"}, "embed": {"archs": {"vit_s16": arch}}}

    assert flatten(raw(False))["targets"]["embed_efficiency_vit_s16"]["met"] is True
    r = flatten(raw(True))
    assert r["targets"]["embed_efficiency_vit_s16"]["met"] == "loaded: not counted"
    text = markdown(raw(True), r)
    assert "| `embed_efficiency_vit_s16` | 0.990 | >= 0.95 | loaded: not counted |" in text
    assert "not counted against the target: vit_small_patch16_224 (a wall ratio above 1)" in text


def test_the_load_probe_counts_the_processes_a_run_started_as_its_own() -> None:
    # a Ray runtime's daemons and workers are children of the benchmark: their work is the run's, not load
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert child.pid in embed._descendants(os.getpid())
        extra = [embed._own_running(tree=True) - embed._own_running() for _ in range(5)]
        assert max(extra) >= 1  # the busy child is always runnable
    finally:
        child.kill()
        child.wait()
    assert child.pid not in embed._descendants(os.getpid())

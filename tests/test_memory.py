"""Forward passes without a page fault per activation (core.models.memory): the allocator tuned once, big
inference batches run in micro-batches with the same outputs and a fraction of the page faults."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.models import memory

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator tuning is glibc's mallopt")


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
                               torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten()).eval()


def test_micro_batches_keep_to_the_pixel_budget_and_cover_the_batch() -> None:
    assert memory.micro_batch_size(torch.zeros(64, 3, 224, 224)) == 4
    assert memory.micro_batch_size(torch.zeros(64, 3, 128, 128)) == 12
    assert memory.micro_batch_size(torch.zeros(64, 3, 32, 32)) == 196
    assert memory.micro_batch_size(torch.zeros(2, 3, 1024, 1024)) == 1  # one image, however large
    x = torch.arange(10 * 3 * 224 * 224, dtype=torch.float32).reshape(10, 3, 224, 224)
    parts = list(memory.micro_batches(x))
    assert [len(p) for p in parts] == [4, 4, 2] and torch.equal(torch.cat(parts), x)


def test_a_forward_in_micro_batches_gives_each_image_its_own_output() -> None:
    net, x = _net(), torch.randn(9, 3, 224, 224)
    calls = []

    def fn(part: torch.Tensor) -> torch.Tensor:
        calls.append(len(part))
        return net(part)

    with torch.inference_mode():
        whole, parts = net(x), memory.forward_in_micro_batches(fn, x)
    assert calls == [4, 4, 1]
    assert parts.shape == whole.shape and torch.allclose(parts, whole, atol=1e-5)


@glibc_only
def test_the_allocator_is_tuned_once_unless_turned_off(monkeypatch) -> None:
    monkeypatch.setattr(memory, "_tuned", None)
    monkeypatch.setenv("DCD_TUNE_ALLOCATOR", "0")
    assert memory.tune_allocator() is False and memory.tune_allocator() is False
    monkeypatch.setattr(memory, "_tuned", None)
    monkeypatch.delenv("DCD_TUNE_ALLOCATOR")
    assert memory.tune_allocator() is True


_FAULTS = """
import json, resource, sys, torch
sys.path.insert(0, {root!r})
from core.models import memory
from tests.test_memory import _net
torch.set_num_threads(1)
net, x = _net(), torch.randn(16, 3, 224, 224)
micro = sys.argv[1] == "micro"
run = (lambda: memory.forward_in_micro_batches(net, x)) if micro else (lambda: net(x))
with torch.inference_mode():
    run()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        run()
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""


@glibc_only
def test_micro_batches_reuse_memory_where_one_big_batch_faults_in_fresh_pages() -> None:
    """The point of the module: 16 images at 224 px in one pass make activations of 100 MB that glibc maps
    and unmaps every time; in micro-batches with the tuned allocator the same passes reuse freed memory."""
    root = str(Path(__file__).resolve().parents[1])
    faults = {}
    for how in ("one", "micro"):
        out = subprocess.run([sys.executable, "-c", _FAULTS.format(root=root), how], capture_output=True, text=True,
                             check=True, env={**os.environ, "DCD_TUNE_ALLOCATOR": "1"})
        faults[how] = json.loads(out.stdout.strip().splitlines()[-1])
    assert faults["micro"] * 10 < faults["one"], faults

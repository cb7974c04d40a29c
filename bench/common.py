"""What the benchmarks share: timing, peak memory of subprocesses, machine facts, a JSON result channel."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024 ** 3


def best_of(fn: Callable[[], Any], repeat: int) -> float:
    """The shortest wall time of ``repeat`` calls of ``fn`` (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def median_of(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _proc_status_bytes(key: str) -> int | None:
    """A ``kB`` field of /proc/self/status (e.g. ``VmHWM``) in bytes, or None where it cannot be read."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (VmHWM)."""
    peak = _proc_status_bytes("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    return _proc_status_bytes("VmRSS") or 0


def run_child(module: str, args: list[str], *, timeout: float = 1800, env: dict[str, str] | None = None,
              quiet: bool = False) -> dict[str, Any]:
    """Run ``python -m module args --result FILE`` and return the JSON it wrote, plus its peak RSS.

    Children measure their own peak (VmHWM) and write it with their result; the parent adds
    ``wall_seconds``. A failing child raises with its stderr tail.
    """
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"dcd-bench-{os.getpid()}-{time.monotonic_ns()}.json"
    cmd = [sys.executable, "-m", module, *args, "--result", str(out)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=timeout,
                          stdout=subprocess.DEVNULL if quiet else None, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(out.read_text())
    out.unlink(missing_ok=True)
    result["wall_seconds"] = wall
    return result


#: The 1-min load average below which a timing counts (above it, the figure is marked loaded).
QUIET_LOAD = 0.5


def wait_for_quiet(max_wait_s: float | None = None, *, below: float = QUIET_LOAD) -> dict[str, Any]:
    """Wait (at most ``max_wait_s``, default ``$DCD_BENCH_QUIET_WAIT`` or 600 s) until the 1-min load average is
    below ``below``; what was found: the load, the seconds waited, and ``loaded`` (the wait ran out: the
    figures taken now do not count)."""
    if max_wait_s is None:
        max_wait_s = float(os.environ.get("DCD_BENCH_QUIET_WAIT", "600"))
    t = time.monotonic()
    load = os.getloadavg()[0]
    while load >= below and time.monotonic() - t < max_wait_s:
        time.sleep(5)
        load = os.getloadavg()[0]
    waited = time.monotonic() - t
    if load >= below:
        print(f"note: the load average is still {load:.2f} after {waited:.0f} s (quiet is below {below}): "
              f"the figures taken now are marked loaded", flush=True)
    return {"load_average": load, "waited_s": round(waited, 1), "loaded": load >= below, "below": below}


def write_result(path: str | Path | None, result: dict[str, Any]) -> None:
    result = {**result, "peak_rss_bytes": peak_rss_bytes()}
    if path:
        Path(path).write_text(json.dumps(result, indent=2, default=float))
    else:
        print(json.dumps(result, indent=2, default=float))


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    import duckdb
    import faiss
    import numpy
    import torch

    from core.models.inference import cpu_has_bf16

    flags = ""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        pass
    present = set(next((line.split(":", 1)[1].split() for line in flags.splitlines() if line.startswith("flags")),
                       []))
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem / GIB, 1),
            "cpu_flags": [f for f in wanted if f in present],
            "bf16_native": cpu_has_bf16(),  # the product's own rule for choosing bf16 on a CPU
            "python": platform.python_version(), "torch": torch.__version__, "faiss": faiss.__version__,
            "duckdb": duckdb.__version__, "numpy": numpy.__version__,
            "torch_threads": torch.get_num_threads(),
            "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}

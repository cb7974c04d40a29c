"""The quick first run of ``make run``: the small demo built as a background job whose stages the terminal
follows, the app started as soon as the baseline and DCD are in, the rest arriving in the app.

    python -m core.runner.first_run --workspace workspaces/demo [--dataset waterbirds] [--assets DIR] [--wait 150]

1. The demo job (``jobs.demo --size small --rest-in-background``) generates and ingests the scenario, trains
   the baseline, embeds, selects with DCD and fine-tunes on that selection: enough for the Overview and
   Before / after to tell the story. Its stage lines (core.progress.StageLine) are echoed here.
2. At its end it makes the baselines' selections (as many images as DCD's, as the pipeline does) and launches
   their fine-tuning and the slices as background jobs (core.runner.demo_rest); the Jobs page shows them and
   every page shows their results as they land.
3. This command returns when the demo job is done, or after ``--wait`` seconds on a slow machine: then the
   app opens while the job goes on, and a follower process keeps echoing its stages to the terminal.

A demo that fails or is interrupted before the app opens leaves no workspace behind, so the next ``make run``
starts over; one whose assets are missing creates nothing and exits with code 2.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from core.runner.launcher import REPO_ROOT, cancel, launch
from core.runner.launcher import wait as wait_job
from core.store.jobs import Job
from core.store.workspace import Workspace

DEFAULT_WAIT_SECONDS = 150.0
POLL_SECONDS = 0.5
_BAR = re.compile(r"\d+%\|.*\||\|\s*\d+/\d+\s*\[|it/s\]|img/s\]")  # a tqdm bar's redraw


# -- following a job's log in the terminal ----------------------------------------------------------------

def log_lines(chunk: str) -> list[str]:
    """The lines a person should see in a piece of a job's log: tqdm redraws dropped, the rest kept."""
    out = []
    for line in chunk.replace("\r\n", "\n").split("\n"):
        out += [seg.rstrip() for seg in line.split("\r") if seg.strip() and not _BAR.search(seg)]
    return out


def read_new(path: Path | None, offset: int) -> tuple[list[str], int]:
    """Complete lines written to ``path`` since byte ``offset``, and the offset after them."""
    if path is None or not path.is_file():
        return [], offset
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    return log_lines(data[:end].decode("utf-8", errors="replace")), offset + end


def follow(ws: Workspace, job_id: str, *, until: float | None = None, offset: int = 0,
           out: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic) -> tuple[Job, int]:
    """Echo job ``job_id``'s log lines until it ends (or the clock reaches ``until``); returns its row and how
    far its log was read."""
    store = ws.jobs()
    while True:
        job = store.get(job_id)
        lines, offset = read_new(Path(job.log_path) if job.log_path else None, offset)
        for line in lines:
            out(line)
        if not job.is_active:
            return job, offset
        if until is not None and clock() >= until:
            return job, offset
        time.sleep(POLL_SECONDS)


# -- the command --------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    from core.scenarios.demos import DATASETS

    p = argparse.ArgumentParser(prog="python -m core.runner.first_run", description=__doc__.split("\n\n")[0])
    p.add_argument("--workspace", required=True, help="the demo workspace to build (a new folder)")
    p.add_argument("--dataset", default="waterbirds", choices=DATASETS)
    p.add_argument("--assets", default=None, help="folder of the real assets (default: $DCD_ASSETS)")
    p.add_argument("--wait", type=float, default=DEFAULT_WAIT_SECONDS,
                   help=f"open the app after this many seconds at most ({DEFAULT_WAIT_SECONDS:.0f})")
    p.add_argument("--follow", default=None, help=argparse.SUPPRESS)  # the follower process: this job id
    p.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    return p


def _entries(root: Path) -> set[str] | None:
    return {p.name for p in root.iterdir()} if root.is_dir() else None


def _remove(root: Path, before: set[str] | None) -> None:
    """Remove what the first run made in ``root``: the folder if it made it, else the entries it added."""
    if before is None:
        shutil.rmtree(root, ignore_errors=True)
        return
    for name in (_entries(root) or set()) - before:
        target = root / name
        shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)


def _start_follower(root: Path, job_id: str, offset: int) -> None:
    """A process that goes on echoing the job's stages beside the app (same terminal, same Ctrl-C)."""
    subprocess.Popen([sys.executable, "-m", "core.runner.first_run", "--workspace", str(root), "--follow", job_id,
                      "--offset", str(offset)], cwd=str(REPO_ROOT), stdin=subprocess.DEVNULL)


def _outcome(job: Job, root: Path, before: set[str] | None, started: float) -> int:
    """What the terminal says when the demo job has ended before the app opens; the exit code."""
    if job.state == "succeeded":
        print(f"first run: baseline and DCD are in after {time.monotonic() - started:.0f} s; opening the app "
              f"(the other methods and the slices arrive in it as their background jobs end: Jobs page)")
        return 0
    _remove(root, before)
    print(f"error: the demo {job.state}: {job.error or 'no reason recorded'} ({root} removed, so that the next "
          f"`make run` starts over)", file=sys.stderr)
    return 1


def build(root: Path, dataset: str, assets: str | None, wait: float) -> int:
    """Build the demo workspace ``root`` in the background and follow it (see the module docstring)."""
    from core.scenarios.demos import AssetsMissingError, assets_dir, check_assets

    if (root / "workspace.duckdb").exists():
        print(f"{root} holds a workspace already: opening it (delete the folder to build the demo again)")
        return 0
    try:
        check_assets(dataset, assets_dir(assets))
    except AssetsMissingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    started, before = time.monotonic(), _entries(root)
    ws = Workspace.create(root, exist_ok=True)
    args = ["--size", "small", "--dataset", dataset, "--rest-in-background", *(["--assets", assets] if assets else [])]
    job_id = launch(ws, "demo", args)
    print(f"first run: building the small {dataset} demo in {root} as job {job_id}; the app opens when the baseline "
          f"and DCD are in, or after {wait:.0f} s with the rest arriving in it", flush=True)
    try:
        job, offset = follow(ws, job_id, until=started + wait, out=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        cancel(ws, job_id)
        wait_job(ws, job_id, timeout=60)
        _remove(root, before)
        print(f"first run: cancelled ({root} removed)", file=sys.stderr)
        return 130
    if job.is_active:
        _start_follower(root, job_id, offset)
        print(f"first run: opening the app after {time.monotonic() - started:.0f} s while the demo job goes on "
              f"(now: {job.message or job.state}); its results appear in the app as they land", flush=True)
        return 0
    return _outcome(job, root, before, started)


def main(argv: Sequence[str] | None = None) -> int:
    opts = _parser().parse_args(argv)
    root = Path(opts.workspace)
    if opts.follow:
        try:
            job, _ = follow(Workspace.open(root), opts.follow, offset=opts.offset,
                            out=lambda line: print(line, flush=True))
        except KeyboardInterrupt:
            return 130
        print(f"first run: the demo job {job.state}; refresh the app's pages to see everything", flush=True)
        return 0 if job.state == "succeeded" else 1
    return build(root, opts.dataset, opts.assets, opts.wait)


if __name__ == "__main__":
    raise SystemExit(main())

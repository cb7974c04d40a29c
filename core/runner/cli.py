"""A job as a command: the job found in the registry, its command line parsed, and the run recorded in the job
table.

``python -m jobs.<name>`` calls :func:`main`: parse the flags of the job's :class:`~core.runner.jobspec.JobSpec`
into its typed options (core.runner.command_line, plus ``--workspace``, ``--json`` and the launcher's hidden
``--job-id``), open the workspace, and run the job as a recorded job (queued -> running ->
succeeded/failed/cancelled) with a heartbeat, SIGTERM as a clean cancellation, and the ``--json`` report.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core.models.checkpoints import allow_pickle
from core.models.device import DeviceError, describe_device, use_device
from core.models.memory import tune_allocator
from core.progress import Progress, StageLine
from core.runner.command_line import JobCommand, parse_args
from core.runner.jobspec import JobSpec
from core.runner.registry import get_job
from core.store.jobs import HEARTBEAT_SECONDS, JobStore
from core.store.workspace import Workspace, WorkspaceError, set_write_guard

QUEUE_POLL_SECONDS = 1.0


class JobCancelled(Exception):
    pass


def _heartbeat(store: JobStore, job_id: str, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_SECONDS):
        try:
            store.update(job_id)
        except Exception:  # a missed heartbeat is not worth killing the job
            pass


def _on_sigterm(signum: int, frame: Any) -> None:
    raise JobCancelled("cancelled by request (SIGTERM)")


def main(name: str, argv: Sequence[str] | None = None, *,
         report: Callable[[dict[str, Any]], None] | None = None) -> int:
    """Run job ``name`` from the command line ``argv`` (default ``sys.argv[1:]``) and return the exit code;
    ``report(result)`` prints the result for a person. Errors are one line on stderr; the traceback goes to
    the job's log file (and to stderr too with ``--debug``)."""
    spec = get_job(name)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = parse_args(spec, argv_list)
    if not command.workspace:
        print(f"error: {name} needs --workspace DIR (or the DCD_WORKSPACE environment variable)", file=sys.stderr)
        return 2
    try:
        use_device(command.device)
    except DeviceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tune_allocator()  # freed activations are reused, not faulted in afresh (core.models.memory)
    before = _folder_entries(Path(command.workspace)) if spec.creates_workspace else None
    try:
        ws = (Workspace.create(command.workspace, exist_ok=True) if spec.creates_workspace
              else Workspace.open(command.workspace))
    except (WorkspaceError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    allow_pickle(command.trust_checkpoint)
    new_workspace = before is None or "workspace.duckdb" not in before
    try:
        return run_recorded(spec, ws, command, argv_list, report=report,
                            discard=(lambda: _discard_if_empty(ws, before)) if spec.creates_workspace and new_workspace
                            else None)
    finally:
        allow_pickle(False)


def _folder_entries(path: Path) -> set[str] | None:
    """The names in folder ``path`` (None if there is no such folder)."""
    try:
        return {p.name for p in path.iterdir()}
    except (FileNotFoundError, NotADirectoryError):
        return None


def _discard_if_empty(ws: Workspace, before: set[str] | None) -> bool:
    """After a failed run of a job that created workspace ``ws``: if it holds no image, remove what the run
    made (the whole folder if the run made it, else only the entries it added); True if removed."""
    import shutil

    try:
        if ws.scalar("SELECT count(*) FROM images"):
            return False
    except Exception:  # an unreadable half-made workspace is not worth keeping either
        pass
    root = Path(ws.root)
    if before is None:
        shutil.rmtree(root, ignore_errors=True)
        return not root.exists()
    for entry in set(_folder_entries(root) or ()) - before:
        target = root / entry
        shutil.rmtree(target, ignore_errors=True) if target.is_dir() and not target.is_symlink() else \
            target.unlink(missing_ok=True)
    return True


class JobLostError(RuntimeError):
    """The job's row is no longer this process's (marked failed while it was paused): it must not commit."""


def _wait_for_turn(store: JobStore, job_id: str, kind: str) -> None:
    """Block while another job of the same kind runs on this workspace (the row stays queued)."""
    said = None
    while (other := store.claim(job_id, os.getpid())) is not None:
        if other != said:
            print(f"{kind}: queued behind job {other} (the same kind of job is running on this workspace)",
                  file=sys.stderr, flush=True)
            said = other
        time.sleep(QUEUE_POLL_SECONDS)


def _log_failure(log_path: Path, spec: JobSpec, exc: BaseException) -> None:
    try:
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"\n--- {spec.name} failed: {type(exc).__name__}: {exc}\n")
            log.write("".join(traceback.format_exception(exc)))
    except OSError:
        pass


def run_recorded(spec: JobSpec, ws: Workspace, command: JobCommand, argv: list[str], *,
                 report: Callable[[dict[str, Any]], None] | None = None,
                 discard: Callable[[], bool] | None = None) -> int:
    """Run ``spec`` with ``command``'s options as a job recorded in the workspace's job table; returns the process
    exit code.

    The job waits its turn behind a running job of the same kind, keeps a heartbeat, and commits nothing
    once its row is no longer its own (:func:`core.store.workspace.set_write_guard`). It prints its stages
    with elapsed time and ETA (:class:`~core.progress.StageLine`) on stderr. If it fails or is
    cancelled, ``discard()`` may remove the workspace (a new one that kept nothing): then the error is one
    line, with no log to point to. An exception's ``exit_code`` attribute (2: something to pass on the command
    line) is the exit code of a failure."""
    store = ws.jobs()
    store.init()
    job_id = command.job_id or store.create(spec.name, argv)
    log_path = Path(store.get(job_id).log_path or ws.artifact_dir("logs") / f"{job_id}.log")
    if not command.job_id:
        store.set_log_path(job_id, str(log_path))
    signal.signal(signal.SIGTERM, _on_sigterm)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(store, job_id, stop), daemon=True)
    beat.start()
    pid = os.getpid()

    def discarded() -> bool:
        """Whether ``discard`` removed the workspace (once the heartbeat has stopped writing to it)."""
        if discard is None:
            return False
        stop.set()
        beat.join(timeout=10)
        return discard()

    def guard() -> None:
        if not store.owns(job_id, pid):
            raise JobLostError(f"job {job_id} is no longer running in the job table (it was marked "
                               f"{store.get(job_id).state} while this process was paused or cut off); its results "
                               f"were not saved. Run the command again.")

    terminal = StageLine(spec.name)
    progress = Progress(lambda f, m: store.update(job_id, progress=f, message=m), terminal=terminal)
    try:
        _wait_for_turn(store, job_id, spec.name)
        set_write_guard(guard)
        result = {**(spec.run(ws, command.options, progress) or {}), "device": describe_device()}  # where models ran
        guard()
        if report is not None:
            report(result)
        if command.json:
            command.json.parent.mkdir(parents=True, exist_ok=True)
            command.json.write_text(json.dumps(result, indent=2, default=str))
        store.finish(job_id, "succeeded", result=result, message="done")
        terminal.finish("done")
        return 0
    except (JobCancelled, KeyboardInterrupt) as exc:
        store.finish(job_id, "cancelled", error=str(exc) or "cancelled")
        print(f"{spec.name}: cancelled" + (f"; nothing was kept ({ws.root} removed)" if discarded() else ""),
              file=sys.stderr)
        return 130
    except Exception as exc:
        _log_failure(log_path, spec, exc)
        store.finish(job_id, "failed", error=f"{type(exc).__name__}: {exc}")
        if command.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        if not discarded():
            print(f"(details: {log_path})", file=sys.stderr)
        code = getattr(exc, "exit_code", 1)
        return code if isinstance(code, int) and code > 0 else 1
    finally:
        set_write_guard(None)
        stop.set()


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """Rows as a plain-text table: ``columns`` are (key, title, format spec); missing values print empty."""
    def cell(value: Any, spec: str) -> str:
        return "" if value is None else format(value, spec) if spec else str(value)

    texts = [[cell(r.get(key), spec) for key, _, spec in columns] for r in rows]
    widths = [max([len(title)] + [len(t[i]) for t in texts]) for i, (_, title, _) in enumerate(columns)]
    lines = ["  ".join(title.rjust(w) if i else title.ljust(w) for i, ((_, title, _), w) in
                       enumerate(zip(columns, widths)))]
    lines += ["  ".join(t.rjust(w) if i else t.ljust(w) for i, (t, w) in enumerate(zip(row, widths)))
              for row in texts]
    return "\n".join(lines)


def methods_table(result: dict[str, Any]) -> str:
    """The ``methods`` of a pipeline or retrain result as a table."""
    rows = [{"method": m, **r} for m, r in result.get("methods", {}).items()]
    return format_table(rows, [("method", "method", ""), ("test_acc", "test_acc", ".3f"),
                               ("error_heldout_acc", "error_heldout_acc", ".3f"),
                               ("worst_group_acc", "worst_group_acc", ".3f"), ("n_added", "n_added", "")])

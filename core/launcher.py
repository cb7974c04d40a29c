"""Start batch jobs as background processes and cancel them; describe each job's options for a form.

A launched job is ``python -m jobs.<kind> --workspace DIR --job-id ID ...`` in its own session (process
group), so it outlives the app's rerun, the browser tab and the app itself. The job row is created here
(``queued``, with its log path under ``artifacts/logs``); the job marks itself running, reports progress and
finishes its row. If the process ends without finishing its row (a crash before ``run_job`` starts, a kill),
the launcher's waiter thread, or after an app restart :meth:`core.jobstore.JobStore.reconcile`, marks it
failed with the log's last lines.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.jobstore import Job
from core.workspace import Workspace

REPO_ROOT = Path(__file__).resolve().parents[1]
# Flags every job has that the launcher sets itself.
_HIDDEN_DESTS = {"workspace", "json", "job_id", "help"}
# Order of kinds in the app (the rest follow alphabetically).
PREFERRED_ORDER = ("embed", "predict", "select", "retrain", "evaluate", "train", "pipeline", "demo", "ingest")


def job_kinds() -> list[str]:
    """Every job module in ``jobs/`` (not starting with ``_``), in workflow order."""
    import jobs

    found = {m.name for m in pkgutil.iter_modules(jobs.__path__) if not m.name.startswith("_")}
    return [k for k in PREFERRED_ORDER if k in found] + sorted(found - set(PREFERRED_ORDER))


def _check_kind(kind: str) -> None:
    if kind not in job_kinds():
        raise ValueError(f"unknown job kind {kind!r}; jobs are {job_kinds()}")


def job_parser(kind: str) -> argparse.ArgumentParser:
    _check_kind(kind)
    return importlib.import_module(f"jobs.{kind}").build_parser()


@dataclass(frozen=True)
class JobOption:
    """One command-line option of a job, described for a form.

    ``widget`` is ``flag`` (store_true), ``choice``, ``int``, ``float``, ``list`` (nargs='*' / '+') or ``text``.
    """

    flag: str
    dest: str
    widget: str
    default: Any
    choices: tuple[str, ...] | None
    help: str
    group: str
    required: bool = False


def job_options(kind: str) -> list[JobOption]:
    """The options of ``jobs.<kind>``'s parser, minus those the launcher sets (workspace, job id, json)."""
    p = job_parser(kind)
    group_of = {id(a): g.title or "" for g in p._action_groups for a in g._group_actions}
    required_in_group = {id(a) for g in p._mutually_exclusive_groups if g.required for a in g._group_actions}
    out = []
    for a in p._actions:
        if a.dest in _HIDDEN_DESTS or not a.option_strings or a.help == argparse.SUPPRESS:
            continue
        flag = max(a.option_strings, key=len)
        if isinstance(a, argparse._StoreTrueAction):
            widget = "flag"
        elif a.choices:
            widget = "choice"
        elif a.nargs in ("*", "+"):
            widget = "list"
        elif a.type is int:
            widget = "int"
        elif a.type is float:
            widget = "float"
        else:
            widget = "text"
        default = a.default if not isinstance(a.default, Path) else str(a.default)
        group = group_of.get(id(a), "")
        group = "" if group in ("options", "optional arguments") else group
        out.append(JobOption(flag, a.dest, widget, default, tuple(map(str, a.choices)) if a.choices else None,
                             (a.help or "").replace("%%", "%"), group,
                             bool(a.required) or id(a) in required_in_group))
    return out


def build_args(kind: str, values: Mapping[str, Any]) -> list[str]:
    """Command-line arguments for ``jobs.<kind>`` from form values keyed by option ``dest``.

    Values equal to the option's default, empty strings and None are left out (the job's own defaults apply);
    lists are given as separate words; flags appear when true.
    """
    by_dest = {o.dest: o for o in job_options(kind)}
    unknown = set(values) - set(by_dest)
    if unknown:
        raise ValueError(f"job {kind!r} has no option(s) {sorted(unknown)}")
    args: list[str] = []
    for dest, value in values.items():
        opt = by_dest[dest]
        if opt.widget == "flag":
            if value:
                args.append(opt.flag)
            continue
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if opt.widget == "list":
            words = value.split() if isinstance(value, str) else [str(v) for v in value]
            if words:
                args += [opt.flag, *words]
            continue
        if opt.default is not None and str(value) == str(opt.default):
            continue
        args += [opt.flag, str(value).strip()]
    job_parser(kind).parse_args(["--workspace", "x", *args])  # fail here, not in the background
    return args


def _waiter(ws: Workspace, job_id: str, proc: subprocess.Popen) -> None:
    """Reap the process; if it ended without finishing its row, record why."""
    code = proc.wait()
    try:
        store = ws.jobs()
        job = store.get(job_id)
        if job.is_active:
            if code in (-signal.SIGTERM, 130, -signal.SIGINT):
                store.finish(job_id, "cancelled", error="cancelled before the job started")
            else:
                tail = log_tail(job, lines=5).strip()
                store.finish(job_id, "failed", error=f"the job's process exited with code {code}"
                             + (f": {tail.splitlines()[-1]}" if tail else ""))
    except Exception:  # the row is reconciled on the next Jobs page render anyway
        pass


def launch(ws: Workspace, kind: str, args: Sequence[str] = ()) -> str:
    """Start ``jobs.<kind>`` with ``args`` in the background and return its job id."""
    _check_kind(kind)
    store = ws.jobs()
    store.init()
    logs = ws.artifact_dir("logs")
    job_id = store.create(kind, list(args))
    log_path = logs / f"{job_id}.log"
    store.set_log_path(job_id, str(log_path))  # the row names its log before the process writes to it
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TQDM_MININTERVAL", "5")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"jobs.{kind}", "--workspace", str(ws.root), "--job-id", job_id, *args],
            cwd=str(REPO_ROOT), env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    store.set_pid(job_id, proc.pid)
    threading.Thread(target=_waiter, args=(ws, job_id, proc), daemon=True, name=f"wait-{job_id}").start()
    return job_id


def cancel(ws: Workspace, job_id: str) -> bool:
    """Ask a queued or running job to stop (SIGTERM to its process group); True if a signal was sent.

    The job records itself as cancelled; a job whose process is already gone is marked failed by reconcile.
    """
    store = ws.jobs()
    job = store.get(job_id)
    if not job.is_active or not job.pid:
        return False
    try:
        os.killpg(job.pid, signal.SIGTERM)
    except ProcessLookupError:
        store.reconcile()
        return False
    except PermissionError:
        os.kill(job.pid, signal.SIGTERM)
    return True


def log_tail(job: Job, lines: int = 40, max_bytes: int = 64_000) -> str:
    """The last ``lines`` lines of a job's log ('' if it has none). Progress-bar redraws are collapsed."""
    if not job.log_path or not Path(job.log_path).exists():
        return ""
    with open(job.log_path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - max_bytes))
        text = f.read().decode("utf-8", errors="replace")
    out = [([p for p in ln.split("\r") if p.strip()] or [""])[-1]
           for ln in text.replace("\r\n", "\n").split("\n")]
    return "\n".join([ln for ln in out if ln.strip()][-lines:])


def wait(ws: Workspace, job_id: str, timeout: float = 120.0, poll: float = 0.2) -> Job:
    """Block until a job is no longer queued/running (for scripts and tests); returns its final row."""
    import time

    deadline = time.monotonic() + timeout
    store = ws.jobs()
    while True:
        job = store.get(job_id)
        if not job.is_active:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job.state} after {timeout:.0f} s")
        store.reconcile()
        time.sleep(poll)


def form_defaults(kind: str) -> dict[str, Any]:
    """{dest: default} of a job's options (what an untouched form submits)."""
    return {o.dest: o.default for o in job_options(kind)}


__all__ = ["JobOption", "build_args", "cancel", "form_defaults", "job_kinds", "job_options", "launch",
           "log_tail", "wait"]

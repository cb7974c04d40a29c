"""The app's door to batch jobs: launch a job of the registry in the background, cancel it, wait for it, read its
log; describe each job's options for a form.

The processes themselves are core.runner.processes (a launched job is ``python -m jobs.<kind> ...`` in its
own process group, with its row in the job table); here a kind is checked against the job registry first,
and a form's values become the job's arguments (core.runner.command_line).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core.runner.command_line import job_arguments
from core.runner.options import Option
from core.runner.processes import REPO_ROOT, cancel, log_tail, start_job, wait
from core.runner.registry import get_job, job_kinds
from core.store.workspace import Workspace


def job_options(kind: str) -> list[Option]:
    """The options of job ``kind`` (what its form shows), from the job registry."""
    return list(get_job(kind).options)


def form_defaults(kind: str) -> dict[str, Any]:
    """{option name: default} of a job (what an untouched form submits)."""
    return {o.name: o.default for o in job_options(kind)}


def check_paths(kind: str, values: Mapping[str, Any], roots: Sequence[str | Path]) -> None:
    """Refuse form values of path options that lie outside every folder of ``roots`` (the app's data roots):
    someone who can open the app must not make a job read or create files anywhere on the server."""
    spec = get_job(kind)
    resolved = [Path(r).expanduser().resolve() for r in roots]
    for name, value in values.items():
        opt = spec.option(name) if name in {o.name for o in spec.options} else None
        if opt is None or opt.kind != "path" or value is None or not str(value).strip():
            continue
        path = Path(str(value).strip()).expanduser()
        try:
            path = path.resolve()
        except (OSError, RuntimeError) as exc:
            raise ValueError(f"{opt.flag}: {value} cannot be resolved ({exc})") from None
        if not any(path.is_relative_to(r) for r in resolved):
            raise ValueError(f"{opt.flag}: {path} is outside the data roots this app may use "
                             f"({', '.join(map(str, resolved))}); start the app with --data-root DIR to allow "
                             f"another folder")


def build_args(kind: str, values: Mapping[str, Any]) -> list[str]:
    """Command-line arguments for job ``kind`` from form values keyed by option name
    (core.runner.command_line.job_arguments: values equal to the option's default, empty strings and None are
    left out; a list option takes a list of values, never a string to be split; checked with the job's parser
    here, not in the background)."""
    return job_arguments(get_job(kind), values)


def launch(ws: Workspace, kind: str, args: Sequence[str] = ()) -> str:
    """Start job ``kind`` of the registry with ``args`` (an argv list, no shell) in the background; returns its
    job id (an unknown kind is a ValueError; see core.runner.processes.start_job)."""
    get_job(kind)  # an unknown kind fails here
    return start_job(ws, kind, args)


__all__ = ["REPO_ROOT", "build_args", "cancel", "check_paths", "form_defaults", "job_kinds", "job_options", "launch",
           "log_tail", "wait"]

"""The job registry: every batch job by name, with its typed options and the core function it runs.

A job is declared once, as a :class:`JobSpec` registered with :func:`register_job` (the declarations are in
``core.runner.dcd_jobs``, ``scanner_jobs``, ``scenario_jobs`` and ``report_jobs``). The CLI (``python -m jobs.<name>``, see
core.runner.cli) builds its parser from the spec, and the app's Jobs form builds its widgets from the same
options, so a flag is declared in one place::

    from core.runner.registry import get_job, job_kinds
    job_kinds()                      # ['embed', 'predict', 'select', ...]
    [o.flag for o in get_job("select").options]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.progress import Progress
from core.runner.options import Option
from core.store.workspace import Workspace

RunFn = Callable[[Workspace, argparse.Namespace, Progress], dict[str, Any]]

#: Order of kinds in the app (the rest follow alphabetically).
PREFERRED_ORDER = ("embed", "predict", "select", "retrain", "evaluate", "train", "pipeline", "demo", "ingest")


@dataclass(frozen=True)
class JobSpec:
    """A batch job: its name (``python -m jobs.<name>``), a one-line summary, its options and what it runs.

    ``run(ws, opts, progress) -> result`` calls core and returns a JSON-ready result (the job row's result
    and ``--json``). ``one_of`` lists groups of option names of which exactly one must be given.
    ``creates_workspace``: the job may be pointed at a folder that is not a workspace yet.
    """

    name: str
    summary: str
    options: tuple[Option, ...]
    run: RunFn
    one_of: tuple[tuple[str, ...], ...] = ()
    creates_workspace: bool = False

    def __post_init__(self) -> None:
        names = [o.name for o in self.options]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"job {self.name!r} declares option(s) {dupes} twice")
        flags = [f for o in self.options for f in (o.flag, *o.aliases)]
        clash = sorted({f for f in flags if flags.count(f) > 1})
        if clash:
            raise ValueError(f"job {self.name!r} uses flag(s) {clash} twice")
        for group in self.one_of:
            if not set(group) <= set(names):
                raise ValueError(f"job {self.name!r}: one_of names unknown options {sorted(set(group) - set(names))}")

    def option(self, name: str) -> Option:
        for o in self.options:
            if o.name == name:
                return o
        raise KeyError(f"job {self.name!r} has no option {name!r}")


_JOBS: dict[str, JobSpec] = {}


def register_job(spec: JobSpec) -> JobSpec:
    if spec.name in _JOBS:
        raise ValueError(f"a job named {spec.name!r} is registered already")
    _JOBS[spec.name] = spec
    return spec


def _load() -> None:
    """Import the modules that declare the jobs (once; they register on import)."""
    from core.runner import dcd_jobs, failure_jobs, label_jobs, report_jobs, scanner_jobs, scenario_jobs  # noqa: F401


def job_kinds() -> list[str]:
    """Every registered job's name, in workflow order."""
    _load()
    return [k for k in PREFERRED_ORDER if k in _JOBS] + sorted(set(_JOBS) - set(PREFERRED_ORDER))


def get_job(name: str) -> JobSpec:
    _load()
    if name not in _JOBS:
        raise ValueError(f"unknown job kind {name!r}; jobs are {job_kinds()}")
    return _JOBS[name]

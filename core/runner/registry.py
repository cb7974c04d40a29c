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

from core.runner.jobspec import JobSpec

#: Order of kinds in the app (the rest follow alphabetically).
PREFERRED_ORDER = ("embed", "predict", "select", "retrain", "evaluate", "train", "pipeline", "demo", "ingest")


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

"""The job registry: every batch job by name, with its typed options and the core function it runs.

A job is declared once, as a :class:`~core.runner.jobspec.JobSpec` in the module of its kind
(``core.runner.dcd_jobs``, ``scanner_jobs``, ``scenario_jobs``, ``label_jobs``, ``failure_jobs``,
``report_jobs``: each lists its specs as ``JOBS``). This catalogue imports those modules and gathers their
specs; they import nothing of it (a job that starts other jobs, as the demo does, starts them through
core.runner.processes with the specs it imports directly), so no import goes round in a circle. The CLI
(``python -m jobs.<name>``, see core.runner.cli) builds its parser from the spec, and the app's Jobs form
builds its widgets from the same options, so a flag is declared in one place::

    from core.runner.registry import get_job, job_kinds
    job_kinds()                      # ['embed', 'predict', 'select', ...]
    [o.flag for o in get_job("select").options]
"""

from __future__ import annotations

from collections.abc import Iterable

from core.runner import dcd_jobs, failure_jobs, label_jobs, report_jobs, scanner_jobs, scenario_jobs
from core.runner.jobspec import JobSpec

#: Order of kinds in the app (the rest follow alphabetically).
PREFERRED_ORDER = ("embed", "predict", "select", "retrain", "evaluate", "train", "pipeline", "demo", "ingest")


def catalogue(specs: Iterable[JobSpec]) -> dict[str, JobSpec]:
    """{name: spec} of ``specs``; two jobs of one name are a ValueError."""
    jobs: dict[str, JobSpec] = {}
    for spec in specs:
        if spec.name in jobs:
            raise ValueError(f"two jobs are named {spec.name!r}")
        jobs[spec.name] = spec
    return jobs


_JOBS = catalogue([*dcd_jobs.JOBS, *scanner_jobs.JOBS, *scenario_jobs.JOBS, *label_jobs.JOBS, *failure_jobs.JOBS,
                   *report_jobs.JOBS])


def job_kinds() -> list[str]:
    """Every job's name, in workflow order."""
    return [k for k in PREFERRED_ORDER if k in _JOBS] + sorted(set(_JOBS) - set(PREFERRED_ORDER))


def get_job(name: str) -> JobSpec:
    """The job called ``name`` (a ValueError naming the jobs if there is none)."""
    if name not in _JOBS:
        raise ValueError(f"unknown job kind {name!r}; jobs are {job_kinds()}")
    return _JOBS[name]

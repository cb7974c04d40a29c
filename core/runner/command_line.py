"""A job's command line, both ways: its parser built from the job's options, parsed into the job's typed options
(:class:`JobCommand`), and option values turned back into arguments (:func:`job_arguments`, what the app's
forms and the demo's background jobs launch).

Besides the job's own options, every job takes ``--workspace``, ``--json``, ``--debug``, ``--device``
(core.models.device), ``--trust-checkpoint`` and the launcher's hidden ``--job-id``. A deprecated spelling (``Option.aliases``)
still works and prints the current one; a list option's values may also be comma-separated.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.models.device import DEVICES
from core.runner.jobspec import JobOptions, JobSpec
from core.runner.options import Option, split_values

_ALIAS_PREFIX = "_alias__"
_TYPES: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "text": str, "path": str, "choice": str,
                                          "list": str}
#: The flags every job takes, beside its own options (their argparse destinations).
COMMON_FLAGS = ("workspace", "json", "job_id", "debug", "device", "trust_checkpoint")


@dataclass(frozen=True)
class JobCommand:
    """A parsed job command line: where and how the job runs, and its own typed options."""

    workspace: str | None
    json: Path | None
    job_id: str | None
    debug: bool
    device: str  # auto, cpu or cuda: where its models run
    trust_checkpoint: bool
    options: JobOptions


def _argparse_kwargs(o: Option) -> dict[str, Any]:
    if o.kind == "flag":
        return {"action": "store_true"}
    kw: dict[str, Any] = {"type": _TYPES[o.kind]}
    if o.kind == "choice":
        kw["choices"] = o.choices
    if o.kind == "list":
        kw["nargs"] = "+"
        kw["metavar"] = o.name.upper()
    return kw


def _help(o: Option) -> str:
    text = o.help.replace("%", "%%")
    if o.kind == "list" and o.choices:
        text += f" (any of {', '.join(o.choices)})"
    return text


def build_parser(spec: JobSpec) -> argparse.ArgumentParser:
    """The job's command-line parser; deprecated spellings are accepted but hidden from ``--help``."""
    p = argparse.ArgumentParser(prog=f"python -m jobs.{spec.name}", description=spec.summary)
    p.add_argument("--workspace", default=os.environ.get("DCD_WORKSPACE"),
                   help="workspace folder (default: $DCD_WORKSPACE)")
    p.add_argument("--json", type=Path, default=None, help="also write the job's result as JSON here")
    p.add_argument("--job-id", default=None, help=argparse.SUPPRESS)  # set by the app's launcher
    p.add_argument("--debug", action="store_true", help="also print the traceback of an error")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where models run: a CUDA GPU when there is one (auto), the CPU, or CUDA or nothing (cuda)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="let weight files that need pickle load (pickle can run code: only for files you trust; "
                        "never available from the app)")
    exclusive: dict[str, Any] = {}
    for names in spec.one_of:
        group = p.add_mutually_exclusive_group(required=True)
        exclusive.update({name: group for name in names})
    groups: dict[str, argparse._ArgumentGroup] = {}
    for o in spec.options:
        if o.name in exclusive:
            target: Any = exclusive[o.name]
        elif o.group:
            target = groups.setdefault(o.group, p.add_argument_group(o.group))
        else:
            target = p
        kw = _argparse_kwargs(o)
        target.add_argument(o.flag, dest=o.name, default=o.default, help=_help(o),
                            **({"required": True} if o.required else {}), **kw)
        for alias in o.aliases:
            p.add_argument(alias, dest=_ALIAS_PREFIX + o.name, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                           **kw)
    return p


def parse_args(spec: JobSpec, argv: Sequence[str]) -> JobCommand:
    """Parse ``argv`` for ``spec`` into a :class:`JobCommand`: deprecated spellings are mapped (with a warning
    on stderr), list values split on commas and checked against their choices. A bad command line exits
    (SystemExit 2), as argparse does."""
    parser = build_parser(spec)
    parsed = dict(vars(parser.parse_args(list(argv))))  # argparse's namespace, read once, here only
    values: dict[str, Any] = {}
    for o in spec.options:
        value = parsed.pop(o.name)
        alias_dest = _ALIAS_PREFIX + o.name
        if alias_dest in parsed:
            used = [a for a in o.aliases if a in argv or any(str(x).startswith(a + "=") for x in argv)]
            print(f"warning: {used[0] if used else o.aliases[0]} is deprecated for jobs.{spec.name}; "
                  f"use {o.flag}", file=sys.stderr)
            value = parsed.pop(alias_dest)
        if o.kind == "list":
            value = split_values(list(value) if isinstance(value, (list, tuple)) else None)
            if value is not None and o.choices:
                bad = [v for v in value if v not in o.choices]
                if bad:
                    parser.error(f"argument {o.flag}: invalid choice(s) {bad} (choose from {', '.join(o.choices)})")
        values[o.name] = value
    try:
        options = spec.options_type(**values)
    except ValueError as exc:  # a value argparse let through that the option does not take
        parser.error(str(exc))
    return JobCommand(options=options, **{name: parsed[name] for name in COMMON_FLAGS})


def job_arguments(spec: JobSpec, values: Mapping[str, Any]) -> list[str]:
    """Command-line arguments for job ``spec`` from option values keyed by option name.

    Values equal to the option's default, empty strings and None are left out (the job's own defaults apply);
    a list option takes a list (or tuple) of values, each passed as its own argument, never a string to be
    split; flags appear when true. The arguments are checked with the job's parser here (a bad value exits
    with SystemExit, as argparse does), not in the background.
    """
    by_name = {o.name: o for o in spec.options}
    unknown = set(values) - set(by_name)
    if unknown:
        raise ValueError(f"job {spec.name!r} has no option(s) {sorted(unknown)}")
    args: list[str] = []
    for name, value in values.items():
        opt = by_name[name]
        if opt.kind == "flag":
            if value:
                args.append(opt.flag)
            continue
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if opt.kind == "list":
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise ValueError(f"option {opt.flag} of job {spec.name!r} takes a list of values, got {value!r}")
            words = [str(v) for v in value]
            if words and words != [str(d) for d in (opt.default or [])]:
                args += [opt.flag, *words]
            continue
        if opt.default is not None and str(value).strip() == str(opt.default):
            continue
        args += [opt.flag, str(value).strip()]
    parse_args(spec, ["--workspace", "x", *args])
    return args

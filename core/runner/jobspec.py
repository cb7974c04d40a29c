"""A job's declaration, and the typed options its ``run`` receives.

A :class:`JobSpec` names a batch job (``python -m jobs.<name>``), declares its options once (a tuple of
:class:`~core.runner.options.Option`) and says what it runs. From the same options it derives a frozen
dataclass, :attr:`JobSpec.options_type`, with one typed field per option (``int | None`` for an ``int``
option, ``tuple[str, ...] | None`` for a ``list`` ...): the command line (core.runner.command_line) parses
into it, and ``run(ws, options, progress)`` reads it; nothing reads or writes an argparse namespace::

    spec = get_job("select")
    spec.settings(budget=40).budget     # 40; every other field its option's default
    spec.settings(method="nope")        # ValueError: method must be one of ...

The job modules (``core.runner.dcd_jobs`` ...) declare their specs as data (their ``JOBS``); the registry
(core.runner.registry) gathers them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, make_dataclass
from typing import Any

from core.progress import Progress
from core.runner.options import Option
from core.store.workspace import Workspace

#: The type of an option's value, by its kind (None: not given, where the option has no default).
KIND_TYPES: dict[str, Any] = {"text": str | None, "path": str | None, "choice": str | None, "int": int | None,
                              "float": float | None, "flag": bool, "list": tuple[str, ...] | None}


@dataclass(frozen=True)
class JobOptions:
    """The base of every job's typed options (:attr:`JobSpec.options_type`): one field per option."""


def _check_value(option: Option, value: Any) -> Any:
    """``value`` as option ``option`` holds it (a list as a tuple, an int as a float for a float option), or a
    ValueError saying what the option takes."""
    if value is None:
        if option.kind == "flag":
            raise ValueError(f"{option.name} is a flag: True or False, not None")
        return None
    kind, name = option.kind, option.name
    if kind == "flag":
        if not isinstance(value, bool):
            raise ValueError(f"{name} is a flag: True or False, not {value!r}")
        return value
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{name} takes a whole number, not {value!r}")
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} takes a number, not {value!r}")
        return float(value)
    if kind == "list":
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} takes a list of values, not {value!r}")
        value = tuple(str(v) for v in value)
    elif kind in ("text", "path", "choice"):
        if not isinstance(value, str):
            raise ValueError(f"{name} takes text, not {value!r}")
    if option.choices is not None:
        bad = [v for v in (value if kind == "list" else (value,)) if v not in option.choices]
        if bad:
            raise ValueError(f"{name} must be one of {', '.join(option.choices)}, not {', '.join(map(str, bad))}")
    return value


def options_class(job_name: str, options: tuple[Option, ...]) -> type[JobOptions]:
    """A frozen dataclass with one field per option (typed by its kind, defaulting to its default; a list
    default as a tuple) that checks each value on construction (:func:`_check_value`)."""
    by_name = {o.name: o for o in options}

    def __post_init__(self: JobOptions) -> None:
        for name, option in by_name.items():
            object.__setattr__(self, name, _check_value(option, getattr(self, name)))

    def default(o: Option) -> Any:
        if o.kind == "list" and o.default is not None:
            return tuple(o.default)
        return False if o.kind == "flag" and o.default is None else o.default

    title = "".join(part.capitalize() for part in job_name.split("_")) + "Options"
    cls = make_dataclass(title, [(o.name, KIND_TYPES[o.kind], field(default=default(o))) for o in options],
                         bases=(JobOptions,), frozen=True,
                         namespace={"__post_init__": __post_init__,
                                    "__doc__": f"The typed options of the {job_name} job (one field per option)."})
    cls.__module__ = __name__
    return cls


RunFn = Callable[[Workspace, Any, Progress], dict[str, Any]]


@dataclass(frozen=True)
class JobSpec:
    """A batch job: its name (``python -m jobs.<name>``), a one-line summary, its options and what it runs.

    ``run(ws, options, progress) -> result`` gets the job's typed options (an instance of
    :attr:`options_type`), calls core and returns a JSON-ready result (the job row's result and ``--json``).
    ``one_of`` lists groups of option names of which exactly one must be given. ``creates_workspace``: the
    job may be pointed at a folder that is not a workspace yet.
    """

    name: str
    summary: str
    options: tuple[Option, ...]
    run: RunFn
    one_of: tuple[tuple[str, ...], ...] = ()
    creates_workspace: bool = False
    options_type: type[JobOptions] = field(init=False, repr=False, compare=False)

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
        object.__setattr__(self, "options_type", options_class(self.name, self.options))

    def option(self, name: str) -> Option:
        for o in self.options:
            if o.name == name:
                return o
        raise KeyError(f"job {self.name!r} has no option {name!r}")

    def settings(self, **values: Any) -> Any:
        """The job's typed options: ``values`` by option name, every other option at its default (what the
        command line gives when those flags alone are passed). An unknown name is a ValueError."""
        unknown = sorted(set(values) - {o.name for o in self.options})
        if unknown:
            raise ValueError(f"job {self.name!r} has no option(s) {unknown}")
        return self.options_type(**values)

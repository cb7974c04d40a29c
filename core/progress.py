"""Progress reporting for long tasks: a tqdm bar on stderr, an optional sink (the job table) and an optional
stage line for a person at a terminal.

Core functions take ``progress: Progress | None``; a notebook user passes nothing and sees tqdm bars,
a job passes a ``Progress`` whose sink writes the job row. ``span(lo, hi)`` gives a child that maps its
own 0..1 onto a part of the parent's range, so a pipeline can hand each step its share; ``stage(name, lo, hi)``
does the same and names the step, and ``expect_stages(n)`` says how many named steps a task will run.

A job's :class:`StageLine` turns this into a few lines, never one per batch: one when a stage starts, then at
most one every ``interval`` seconds, each with what the stage is doing, how long it has run and how long it
has left, estimated from its own measured progress::

    [3/7] training the classifier: epoch 3/20 loss 0.412, 42 s elapsed, ~3 min left
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
Sink = Callable[[float, str], None]
Clock = Callable[[], float]

STAGE_LINE_SECONDS = 15.0  # at most one progress line per stage this often
ETA_MIN_FRACTION = 0.03  # no estimate before this share of a stage is done ...
ETA_MIN_SECONDS = 3.0  # ... or before it has run this long
MESSAGE_CHARS = 60


def format_duration(seconds: float) -> str:
    """``8 s``, ``42 s``, ``1 min 10 s``, ``12 min``, ``1 h 5 min``: coarse enough to read at a glance."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 600:
        m, rest = divmod(s, 60)
        rest = 10 * math.floor(rest / 10 + 0.5)
        if rest == 60:
            m, rest = m + 1, 0
        return f"{m} min {rest} s" if rest else f"{m} min"
    h, m = divmod(round(s / 60), 60)
    if not h:
        return f"{m} min"
    return f"{h} h {m} min" if m else f"{h} h"


def eta_seconds(fraction: float, elapsed: float) -> float | None:
    """Seconds left for a task ``fraction`` done after ``elapsed`` seconds, at its pace so far; None while too
    little is done to tell."""
    if fraction >= 1.0:
        return 0.0
    if fraction < ETA_MIN_FRACTION or elapsed < ETA_MIN_SECONDS:
        return None
    return elapsed * (1.0 - fraction) / fraction


def _eta_text(left: float) -> str:
    """``~1 min left``; under 10 s: ``a few s left``; ETAs are estimates, so 5 s steps under a minute."""
    if left < 10:
        return "a few s left"
    if left < 60:
        return f"~{5 * math.ceil(left / 5)} s left"
    return f"~{format_duration(left)} left"


class StageLine:
    """A job's stages as terminal lines with elapsed time and ETA (see the module docstring).

    ``out`` prints one line (default: above any tqdm bar, on stderr); ``clock`` is ``time.monotonic``
    (a test passes a fake one). Fractions given to :meth:`update` are the job's (0..1); a stage owns the part
    ``[lo, hi]`` of that range."""

    def __init__(self, job: str, *, out: Callable[[str], None] | None = None, clock: Clock = time.monotonic,
                 interval: float = STAGE_LINE_SECONDS):
        self.job = job
        self._out = out or (lambda line: tqdm.write(line, file=sys.stderr))
        self._clock = clock
        self.interval = interval
        self.total = 0  # stages announced with expect()
        self.index = 0  # the current stage's number; 0 until the first one starts (the job is its own stage)
        self.name = job
        self.lo, self.hi = 0.0, 1.0
        self.job_started = self.started = clock()
        self._last_line = -math.inf
        self._message = ""

    def expect(self, n: int) -> None:
        """``n`` more stages will run (a task announces its own; nested tasks add theirs)."""
        self.total += max(0, int(n))

    @property
    def prefix(self) -> str:
        """``[3/7] training the classifier`` (``[8]`` past the announced total), or the job's name before any
        stage has started."""
        if not self.index:
            return self.job
        count = f"{self.index}/{self.total}" if self.total >= self.index else str(self.index)  # no wrong total
        return f"[{count}] {self.name}"

    def begin(self, name: str, lo: float, hi: float) -> None:
        """Stage ``name`` starts now and owns ``[lo, hi]`` of the job's range; prints its first line."""
        now = self._clock()
        self.index += 1
        self.name, self.lo, self.hi = name, lo, hi
        self.started, self._message = now, ""
        after = now - self.job_started
        self._emit(self.prefix + (f" (after {format_duration(after)})" if after >= 1 else ""), now)

    def stage_fraction(self, fraction: float) -> float:
        width = self.hi - self.lo
        return 1.0 if width <= 0 else min(max((fraction - self.lo) / width, 0.0), 1.0)

    def line(self, fraction: float, message: str = "") -> str:
        """The stage's line at job progress ``fraction``: what it does, time elapsed, time left."""
        elapsed = self._clock() - self.started
        parts = [f"{elapsed:.0f} s elapsed" if elapsed < 60 else f"{format_duration(elapsed)} elapsed"]
        left = eta_seconds(self.stage_fraction(fraction), elapsed)
        parts.append("estimating the time left" if left is None else _eta_text(left))
        text = (message or self._message).strip()
        if len(text) > MESSAGE_CHARS:
            text = text[:MESSAGE_CHARS - 1] + "…"
        return f"{self.prefix}: " + (f"{text}, " if text else "") + ", ".join(parts)

    def update(self, fraction: float, message: str = "") -> None:
        """Progress of the job; prints a line if the last one is ``interval`` seconds old."""
        if message:
            self._message = message
        now = self._clock()
        if now - self._last_line >= self.interval:
            self._emit(self.line(fraction, message), now)

    def finish(self, state: str = "done") -> None:
        """The job's last line: ``demo: done in 2 min 40 s``."""
        self._emit(f"{self.job}: {state} in {format_duration(self._clock() - self.job_started)}", self._clock())

    def _emit(self, text: str, now: float) -> None:
        self._last_line = now
        self._out(text)


class Progress:
    def __init__(self, sink: Sink | None = None, *, lo: float = 0.0, hi: float = 1.0,
                 min_interval: float = 0.5, bars: bool = True, terminal: StageLine | None = None):
        self._sink = sink
        self.lo, self.hi = lo, hi
        self._min_interval = min_interval
        self._last = 0.0
        self.bars = bars
        self.terminal = terminal

    def report(self, fraction: float, message: str = "", *, force: bool = False) -> None:
        """Report that this task is ``fraction`` (0..1) done."""
        if self._sink is None and self.terminal is None:
            return
        now = time.monotonic()
        if not force and now - self._last < self._min_interval:
            return
        self._last = now
        fraction = self.lo + (self.hi - self.lo) * min(max(fraction, 0.0), 1.0)
        if self.terminal is not None:
            self.terminal.update(fraction, message)
            if self.terminal.index:  # the job table's message names the stage too
                message = f"{self.terminal.prefix}: {message}" if message else self.terminal.prefix
        if self._sink is not None:
            self._sink(fraction, message)

    def span(self, lo: float, hi: float) -> "Progress":
        """A child reporting into [lo, hi] of this task's range."""
        width = self.hi - self.lo
        child = Progress(self._sink, lo=self.lo + width * lo, hi=self.lo + width * hi,
                         min_interval=self._min_interval, bars=self.bars, terminal=self.terminal)
        return child

    def stage(self, name: str, lo: float, hi: float) -> "Progress":
        """Like :meth:`span`, for a named step that starts now (its line is printed at once)."""
        child = self.span(lo, hi)
        if self.terminal is not None:
            self.terminal.begin(name, child.lo, child.hi)
        child.report(0.0, force=True)
        return child

    def expect_stages(self, n: int) -> None:
        """This task will run ``n`` named stages (:meth:`stage`)."""
        if self.terminal is not None:
            self.terminal.expect(n)

    def iter(self, items: Iterable[T], *, total: int | None = None, desc: str = "",
             unit: str = "it", weight: Callable[[T], int] | None = None) -> Iterator[T]:
        """Iterate with a tqdm bar, reporting progress as items (or ``weight(item)`` units) pass."""
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        done = 0
        self.report(0.0, desc, force=True)
        with tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not self.bars,
                  dynamic_ncols=True, mininterval=1.0) as bar:
            for item in items:
                yield item
                step = weight(item) if weight else 1
                done += step
                bar.update(step)
                if total:
                    self.report(done / total, f"{desc} {done}/{total}")
        self.report(1.0, desc, force=True)


def as_progress(progress: Progress | None) -> Progress:
    return progress if progress is not None else Progress()

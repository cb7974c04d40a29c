"""Progress reporting for long tasks: a tqdm bar on stderr plus an optional sink (the job table).

Core functions take ``progress: Progress | None``; a notebook user passes nothing and sees tqdm bars,
a job passes a ``Progress`` whose sink writes the job row. ``span(lo, hi)`` gives a child that maps its
own 0..1 onto a part of the parent's range, so a pipeline can hand each step its share.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
Sink = Callable[[float, str], None]


class Progress:
    def __init__(self, sink: Sink | None = None, *, lo: float = 0.0, hi: float = 1.0,
                 min_interval: float = 0.5, bars: bool = True):
        self._sink = sink
        self.lo, self.hi = lo, hi
        self._min_interval = min_interval
        self._last = 0.0
        self.bars = bars

    def report(self, fraction: float, message: str = "", *, force: bool = False) -> None:
        """Report that this task is ``fraction`` (0..1) done."""
        if self._sink is None:
            return
        now = time.monotonic()
        if not force and now - self._last < self._min_interval:
            return
        self._last = now
        fraction = min(max(fraction, 0.0), 1.0)
        self._sink(self.lo + (self.hi - self.lo) * fraction, message)

    def span(self, lo: float, hi: float) -> "Progress":
        """A child reporting into [lo, hi] of this task's range."""
        width = self.hi - self.lo
        child = Progress(self._sink, lo=self.lo + width * lo, hi=self.lo + width * hi,
                         min_interval=self._min_interval, bars=self.bars)
        return child

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

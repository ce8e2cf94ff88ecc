"""Progress of a run on stderr: a live bar on a terminal, plain lines in a log.

On a terminal (stderr is a TTY) a rich bar shows tiles done/total, cells so far, tiles/s, the
elapsed time and the time left. Anywhere else (SLURM and Snakemake logs, ``> log 2>&1``) one plain
line is written every ``interval`` seconds and at the end, e.g.::

    slidecell: segmenting: 120/480 tiles (25%), 5,310 cells, 3.2 tiles/s, elapsed 0:00:37, left ~0:01:52

The rate behind the time left is smoothed (exponentially, over about ``interval`` × 3 seconds) so
that it does not swing with every slow or empty tile.
"""

from __future__ import annotations

import sys
import time


def _hms(seconds: float) -> str:
    s = int(round(max(seconds, 0)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class RunProgress:
    """``with RunProgress(total, done, enabled=...) as p: p.advance(tiles, cells)``."""

    def __init__(self, total: int, done: int = 0, enabled: bool = True, label: str = "segmenting",
                 interval: float = 10.0, stream=None, start: float | None = None):
        self.total, self.done, self.enabled, self.label = total, done, enabled, label
        self.interval = interval
        self.stream = stream if stream is not None else sys.stderr
        self.cells = 0
        #: when the run started (``time.perf_counter``): the elapsed time includes planning
        self.start = start if start is not None else time.perf_counter()
        self.last = time.perf_counter()
        self.rate: float | None = None  # smoothed tiles/s
        self._since = (self.last, done)  # rate sample start
        self._first = (self.last, done)
        self._samples = 0
        self._bar = None

    def __enter__(self) -> "RunProgress":
        if not self.enabled:
            return self
        isatty = getattr(self.stream, "isatty", lambda: False)
        if isatty():
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._bar = Progress(TextColumn(f"[bold]{self.label}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("tiles, {task.fields[cells]:,} cells, {task.fields[rate]}"),
                                 TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                                 console=Console(file=self.stream), transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total, completed=self.done, cells=0,
                                            rate="… tiles/s")
        return self

    def advance(self, tiles: int = 1, cells: int = 0) -> None:
        self.done += tiles
        self.cells += cells
        if not self.enabled:
            return
        now = time.perf_counter()
        t0, d0 = self._since
        if now - t0 >= min(self.interval, 2.0) and self.done > d0:
            sample = (self.done - d0) / (now - t0)
            weight = min(1.0, (now - t0) / (3 * self.interval))
            self.rate = sample if self.rate is None else (1 - weight) * self.rate + weight * sample
            self._since = (now, self.done)
            self._samples += 1
        if self._bar is not None:
            rate = f"{self.rate:.1f} tiles/s" if self._samples >= 2 else "… tiles/s"
            self._bar.update(self._task, advance=tiles, cells=self.cells, rate=rate)
        elif now - self.last >= self.interval and self.done < self.total:  # the last line at the end
            self.last = now
            self._line(now)

    def _line(self, now: float, final: bool = False) -> None:
        pct = 100 * self.done / self.total if self.total else 100.0
        parts = [f"{self.done}/{self.total} tiles ({pct:.0f}%)", f"{self.cells:,} cells"]
        t0, d0 = self._first
        # the smoothed rate once it has two samples; the mean rate of this run at the end
        rate = (self.done - d0) / (now - t0) if final and now > t0 else self.rate if self._samples >= 2 else None
        if rate:
            parts.append(f"{rate:.1f} tiles/s")
        parts.append(f"elapsed {_hms(now - self.start)}")
        if rate and self.done < self.total:
            parts.append(f"left ~{_hms((self.total - self.done) / rate)}")
        print(f"slidecell: {self.label}: " + ", ".join(parts), file=self.stream, flush=True)

    def __exit__(self, exc_type, exc, tb):
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)
        elif exc_type is None:
            self._line(time.perf_counter(), final=True)

"""Progress of a long command: a tqdm bar on a terminal, plain lines anywhere else.

A redrawn bar written to a log file, CI or a cluster job is hundreds of carriage-return frames on one
"line"; there ``progress`` writes one plain line per tenth of the work (and at least one a minute), as
``train.py`` does: ``pack cifar10: 25,000/50,000 img (50%), 5,512 img/s, 0:05 left``.
"""

from __future__ import annotations

import math
import sys
import time


def progress(
    total: int | None, desc: str, unit: str = "img", *, enabled: bool = True, stream=None, summary_follows=False
):
    """A context manager with ``update(n)``: tqdm on a terminal, :class:`LineProgress` elsewhere. With
    ``unit="B"`` the counts are bytes, shown in MB (and MB/s).

    ``summary_follows``: the command ends with its own summary holding the job's throughput, so the progress
    leaves no second, different figure: the bar is cleared at the end, the closing plain line has no rate."""
    stream = stream or sys.stderr
    if enabled and getattr(stream, "isatty", lambda: False)():
        from tqdm import tqdm

        scaled = {"unit_scale": True, "unit_divisor": 1024} if unit == "B" else {}
        leave = not summary_follows
        return tqdm(
            total=total, unit=unit, desc=desc, file=stream, mininterval=0.5, dynamic_ncols=True, leave=leave, **scaled
        )
    return LineProgress(total, desc, unit, enabled=enabled, stream=stream, closing_rate=not summary_follows)


class LineProgress:
    """One line per ``step`` of the total (a tenth) and at least every ``max_gap_s`` seconds (never two
    within ``min_gap_s``), and a last line at the end; nothing for work done within ``quiet_s`` seconds
    (the command's summary says it all).
    Without a total: a line every ``max_gap_s`` seconds."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "img",
        *,
        enabled=True,
        stream=None,
        step=0.1,
        max_gap_s=60.0,
        min_gap_s=1.0,
        quiet_s=2.0,
        closing_rate=True,
    ):
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.closing_rate = closing_rate  # False: the closing line says count and time, the summary the rate
        self.stream = stream or sys.stderr
        self.step, self.max_gap_s, self.min_gap_s, self.quiet_s = step, max_gap_s, min_gap_s, quiet_s
        self.n, self.t0, self.lines = 0, time.perf_counter(), 0
        self.next_mark = step
        self.last_line = self.t0
        self.closed = False

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *rest):
        if exc_type is None:
            self.close()
        self.closed = True

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.enabled:
            return
        now = time.perf_counter()
        done = self.n / self.total if self.total else None
        if done is not None and done >= 1:
            return  # the last line comes from close()
        marked = done is not None and done >= self.next_mark and now - self.last_line >= self.min_gap_s
        if marked or now - self.last_line >= self.max_gap_s:
            if now - self.t0 >= self.quiet_s:
                self._line(now)
            if done is not None:  # the next tenth after the one shown (a line after a long gap counts too)
                while self.next_mark <= done:
                    self.next_mark += self.step

    def close(self) -> None:
        now = time.perf_counter()
        if self.enabled and not self.closed and self.n and (self.lines or now - self.t0 >= self.quiet_s):
            self._line(now, rate_shown=self.closing_rate)
        self.closed = True

    def _line(self, now: float, rate_shown: bool = True) -> None:
        elapsed = max(now - self.t0, 1e-9)
        rate = self.n / elapsed
        unit, show = self.unit, (lambda n: f"{n:,}")
        if unit == "B":  # bytes: in MB
            unit, show = "MB", (lambda n: f"{n / 2**20:,.1f}")
        if self.total:
            left = (self.total - self.n) / rate if rate > 0 else float("nan")
            where = f"{show(self.n)}/{show(self.total)} {unit} ({math.floor(100 * self.n / self.total)}%)"
            tail = f", {duration(left)} left" if self.n < self.total else f" in {duration(elapsed)}"
        else:
            where, tail = f"{show(self.n)} {unit}", f" in {duration(elapsed)}"
        rate_text = f"{rate / 2**20:,.1f}" if self.unit == "B" else f"{rate:,.0f}"
        speed = f", {rate_text} {unit}/s" if rate_shown else ""
        print(f"{self.desc}: {where}{speed}{tail}", file=self.stream, flush=True)
        self.last_line, self.lines = now, self.lines + 1


def duration(seconds: float) -> str:
    """``M:SS`` or ``H:MM:SS`` (``d`` days beyond a day); ``?`` when unknown."""
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return "?"
    seconds = int(round(seconds))
    days, seconds = divmod(seconds, 86400)
    h, rem = divmod(seconds, 3600)
    text = f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h or days else f"{rem // 60}:{rem % 60:02d}"
    return f"{days}d {text}" if days else text

"""Progress of long jobs: a one-line bar on a terminal, a log line every few seconds otherwise."""

from __future__ import annotations

import logging
import sys
import time

__all__ = ["Progress"]

log = logging.getLogger("arrowscore.progress")


class Progress:
    """Counts rows against a known total; safe to call ``add`` from one thread."""

    def __init__(self, total_rows: int, enabled: bool | None = None, stream=None, log_every_s: float = 10.0):
        self.total = total_rows
        self.stream = stream or sys.stderr
        self.tty = enabled if enabled is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self.log_every_s = log_every_s
        self.done = 0
        self.start = time.perf_counter()
        self._last = 0.0

    def add(self, rows: int) -> None:
        self.done += rows
        now = time.perf_counter()
        if self.tty and now - self._last >= 0.2:
            self._last = now
            self.stream.write("\r" + self._line(now))
            self.stream.flush()
        elif not self.tty and now - self._last >= self.log_every_s:
            self._last = now
            log.info("%s", self._line(now))

    def _line(self, now: float) -> str:
        seconds = max(now - self.start, 1e-9)
        rate = self.done / seconds
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = (self.total - self.done) / rate if rate > 0 and self.total >= self.done else 0.0
        width = 24
        filled = int(width * min(pct, 100.0) / 100)
        return (f"[{'#' * filled}{'.' * (width - filled)}] {self.done:,}/{self.total:,} rows "
                f"{pct:5.1f}%  {rate:,.0f} rows/s  eta {eta:,.0f}s ")

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r" + self._line(time.perf_counter()) + "\n")
            self.stream.flush()

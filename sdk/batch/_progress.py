"""A small thread-safe progress bar (the runtime does not depend on tqdm): redrawn in place on a
terminal, a log line every ``log_every_s`` elsewhere (CI logs, nohup)."""
from __future__ import annotations

import logging
import sys
import threading
import time

log = logging.getLogger("skulens.batch")


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """Images done of ``total`` (``skipped`` of them done by an earlier run), with images/s of
    this run, errors and the time left."""

    def __init__(self, total: int, skipped: int = 0, *, enabled: bool = True, stream=None,
                 desc: str = "classify-batch", log_every_s: float = 30.0, width: int = 24):
        self.total, self.done, self.errors = total, skipped, 0
        self._start_done = skipped
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.desc, self.log_every_s, self.width = desc, log_every_s, width
        self._t0 = time.perf_counter()
        self._last_draw, self._last_log = 0.0, self._t0
        self._lock = threading.Lock()
        self._drawn = False

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self._t0
        return (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0

    def restart_clock(self) -> None:
        """Measure images/s from now (after a cluster or the models started)."""
        with self._lock:
            self._t0 = time.perf_counter()

    def update(self, images: int, errors: int = 0) -> None:
        with self._lock:
            self.done += images
            self.errors += errors
            now = time.perf_counter()
            if self.tty and (now - self._last_draw >= 0.2 or self.done >= self.total):
                self._last_draw = now
                self._draw()
            elif self.enabled and not self.tty and now - self._last_log >= self.log_every_s:
                self._last_log = now
                log.info("%s", self.line())

    def line(self) -> str:
        rate = self.rate
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        frac = self.done / self.total if self.total else 1.0
        filled = int(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        eta = _clock(left) if left == left else "?"
        return (f"{self.desc} {frac:4.0%} |{bar}| {self.done}/{self.total} "
                f"[{_clock(time.perf_counter() - self._t0)}<{eta}, {rate:.1f} img/s, {self.errors} errors]")

    def _draw(self) -> None:
        self.stream.write("\r" + self.line())
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        with self._lock:
            if self.tty:
                self._draw()
                self.stream.write("\n")
                self.stream.flush()

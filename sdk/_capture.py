"""Video sources for the running modes: opening a file, camera or stream URL with clear errors,
and a grabber thread that keeps only the newest frame of a live source.

A live source never lets latency pile up: the grabber reads frames as fast as the source
delivers them and overwrites the single pending slot, counting every overwritten frame as
dropped. The capture is only ever touched by the thread that reads it and is released there
when the grabber stops (end of stream, error, or ``stop()``).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2

from ._errors import SkulensError

log = logging.getLogger(__name__)


class StreamError(SkulensError, RuntimeError):
    """A video source cannot be used: missing camera, unopenable file or URL, truncated video."""


@dataclass
class StreamStats:
    """Frame accounting of the current (or last) video or stream.

    frames_read: frames taken from the source, including skipped and dropped ones.
    frames_skipped: frames left out on purpose by ``frame_stride``.
    frames_dropped: live frames overwritten by a newer one before they could be classified.
    frames_processed: frames classified.
    """

    frames_read: int = 0
    frames_skipped: int = 0
    frames_dropped: int = 0
    frames_processed: int = 0


def describe_source(source) -> str:
    if isinstance(source, cv2.VideoCapture):
        return "<VideoCapture>"
    if isinstance(source, int) or (isinstance(source, str) and source.isdigit()):
        return f"camera {int(source)}"
    return os.fspath(source)


def open_capture(source) -> cv2.VideoCapture:
    """A camera index (int or digits), stream URL, video path, or an opened ``cv2.VideoCapture``
    (whose ownership passes to skulens: it is released when the stream ends) -> opened capture."""
    name = describe_source(source)
    if isinstance(source, cv2.VideoCapture):
        cap = source
    elif isinstance(source, bool) or not isinstance(source, (int, str, os.PathLike)):
        raise StreamError(f"unsupported video source {type(source).__name__}: pass a camera index, "
                          "a stream URL, a video file path or a cv2.VideoCapture")
    elif isinstance(source, int) or (isinstance(source, str) and source.isdigit()):
        cap = cv2.VideoCapture(int(source))
        if not cap.isOpened():
            raise StreamError(f"{name}: cannot open the camera (no such device, no permission, "
                              "or it is in use)")
    else:
        text = os.fspath(source)
        if "://" not in text and not Path(text).is_file():
            raise StreamError(f"{name}: no such video file")
        cap = cv2.VideoCapture(text)
    if not cap.isOpened():
        cap.release()
        raise StreamError(f"{name}: cannot open the video (not a video, truncated header, "
                          "unsupported codec or unreachable stream)")
    return cap


class LatestFrameGrabber(threading.Thread):
    """Reads ``capture`` on its own thread; :meth:`take` returns the newest unread frame.

    Frames whose index is not a multiple of ``stride`` are grabbed but never decoded (skipped).
    A frame still pending when a newer one arrives is dropped. Timestamps are milliseconds
    since the grabber started, taken when the frame was read.
    """

    def __init__(self, capture: cv2.VideoCapture, name: str, stats: StreamStats, stride: int = 1):
        super().__init__(name=f"skulens-grabber[{name}]", daemon=True)
        self._cap, self.source_name, self.stats, self._stride = capture, name, stats, stride
        self._cond = threading.Condition()
        self._slot = None
        self._stop_event = threading.Event()
        self.ended = False
        self.error: BaseException | None = None

    def run(self) -> None:
        t0 = time.monotonic()
        index = -1
        try:
            while not self._stop_event.is_set():
                index += 1
                if index % self._stride:
                    if not self._cap.grab():
                        break
                    with self._cond:
                        self.stats.frames_read += 1
                        self.stats.frames_skipped += 1
                    continue
                ok, frame = self._cap.read()
                if not ok or frame is None:
                    break
                ts = (time.monotonic() - t0) * 1000.0
                with self._cond:
                    self.stats.frames_read += 1
                    if self._slot is not None:
                        self.stats.frames_dropped += 1
                    self._slot = (frame, index, ts)
                    self._cond.notify_all()
        except BaseException as exc:  # reported to the consumer by take()
            self.error = exc
        finally:
            self._cap.release()
            with self._cond:
                self.ended = True
                self._cond.notify_all()
            log.debug("%s: grabber ended after %d frames", self.source_name, self.stats.frames_read)

    def take(self, timeout: float | None = None):
        """Block until a frame is pending -> (frame, index, timestamp_ms); None once the source
        ended (or ``stop()`` was called) and nothing is pending."""
        with self._cond:
            self._cond.wait_for(lambda: self._slot is not None or self.ended or self._stop_event.is_set(),
                                timeout=timeout)
            if self._slot is not None and not self._stop_event.is_set():
                item, self._slot = self._slot, None
                return item
        if self.error is not None:
            raise StreamError(f"{self.source_name}: reading the video failed: {self.error}") from self.error
        return None

    @property
    def stopped(self) -> bool:
        return self._stop_event.is_set()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the grabber to stop and wait for it (the capture is released on its thread)."""
        self._stop_event.set()
        with self._cond:
            self._cond.notify_all()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)
            if self.is_alive():
                log.warning("%s: the source did not return within %.0fs; its capture will be "
                            "released when the pending read returns", self.source_name, timeout)

"""Running modes for scanners and kiosks: IMAGE, VIDEO (a file) and LIVE_STREAM (a camera).

    opts = FrameClassifierOptions(running_mode="LIVE_STREAM", roi=(0.25, 0.25, 0.5, 0.5),
                                  smoothing="mean", window=5, unknown_below=0.5)
    with FrameClassifier.from_path("model.int8.onnx", opts) as scanner:
        for result in scanner.stream(0):             # camera 0; newest frame only
            print(result.frame_index, result.label, result.score)

As in MediaPipe's task API the running mode is fixed when the task is created, and each call
checks it: ``classify`` (IMAGE), ``classify_video`` / ``classify_for_video`` (VIDEO),
``stream`` / ``start_stream`` (LIVE_STREAM). Every frame goes through ImageClassifier's own
preprocess -> run -> postprocess, after an optional region-of-interest crop; optional temporal
smoothing works on the per-frame probabilities.
"""
from __future__ import annotations

import enum
import logging
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from ._capture import LatestFrameGrabber, StreamError, StreamStats, describe_source, open_capture
from ._classifier import Category, ClassificationResult, ClassifierOptions, ImageClassifier, _source_name, softmax
from ._config import option
from ._errors import SkulensError

log = logging.getLogger(__name__)
SMOOTHING = ("none", "majority", "mean")


class RunningMode(str, enum.Enum):
    IMAGE = "IMAGE"
    VIDEO = "VIDEO"
    LIVE_STREAM = "LIVE_STREAM"


class RunningModeError(SkulensError, ValueError):
    """An option or a call does not fit the running mode the task was created with."""


@dataclass(frozen=True)
class FrameClassifierOptions:
    """How a FrameClassifier runs.

    running_mode: IMAGE, VIDEO or LIVE_STREAM (a RunningMode or its name).
    roi: region of interest (x, y, width, height) as fractions of the frame; None = whole frame.
    smoothing: "none"; "mean" (average probabilities over the last ``window`` frames); or
        "majority" (the label most of the last ``window`` frames had as top-1, ties to the higher
        mean probability; its score is its mean probability over those frames, the vote share
        is ``FrameResult.votes``).
    window: frames kept for smoothing.
    unknown_below: the answer is ``unknown_label`` when the (smoothed) top score is below this.
    frame_stride: classify every n-th frame of a video or stream (others are skipped unread).
    result_callback: LIVE_STREAM only: called with each FrameResult by ``start_stream``.
    classifier: options of the underlying ImageClassifier (threads, top_k, ...).
    """

    running_mode: RunningMode | str = option(RunningMode.IMAGE, "IMAGE, VIDEO or LIVE_STREAM")
    roi: tuple[float, float, float, float] | None = option(None, "region of interest (x, y, width, height) "
                                                            "as fractions of the frame; None: the whole frame")
    smoothing: str = option("none", "temporal smoothing over the last --window frames: mean = average "
                            "probabilities; majority = the most frequent top-1 label, scored by its mean "
                            "probability", choices=SMOOTHING)
    window: int = option(5, "frames kept for --smoothing")
    unknown_below: float = option(0.0, "answer --unknown-label when the (smoothed) top score is below this (0..1)")
    unknown_label: str = option("unknown", "the label reported for an unknown product")
    frame_stride: int = option(1, "classify every n-th frame (the others are skipped undecoded)")
    result_callback: Callable[["FrameResult"], None] | None = field(default=None, compare=False)
    classifier: ClassifierOptions = field(default_factory=ClassifierOptions)

    def __post_init__(self):
        try:
            mode = RunningMode(str(getattr(self.running_mode, "value", self.running_mode)).upper())
        except ValueError:
            raise RunningModeError(f"unknown running_mode {self.running_mode!r}; expected one of "
                                   f"{[m.value for m in RunningMode]}") from None
        object.__setattr__(self, "running_mode", mode)
        if self.smoothing not in SMOOTHING:
            raise ValueError(f"smoothing must be one of {SMOOTHING}, got {self.smoothing!r}")
        if self.window < 1 or self.frame_stride < 1:
            raise ValueError(f"window and frame_stride must be >= 1, got {self.window}, {self.frame_stride}")
        if not 0.0 <= self.unknown_below <= 1.0:
            raise ValueError(f"unknown_below must be in [0, 1], got {self.unknown_below}")
        if mode is RunningMode.IMAGE and (self.smoothing != "none" or self.frame_stride != 1):
            raise RunningModeError("smoothing and frame_stride work across frames: they need running "
                                   "mode VIDEO or LIVE_STREAM, not IMAGE")
        if self.result_callback is not None and mode is not RunningMode.LIVE_STREAM:
            raise RunningModeError(f"result_callback is only used in running mode LIVE_STREAM, "
                                   f"not {mode.value}")
        if self.result_callback is not None and not callable(self.result_callback):
            raise ValueError("result_callback must be callable")
        if self.roi is not None:
            roi = tuple(float(v) for v in self.roi)
            if len(roi) != 4:
                raise ValueError(f"roi must be (x, y, width, height) fractions, got {self.roi}")
            x, y, w, h = roi
            if not (0 <= x < 1 and 0 <= y < 1 and 0 < w and 0 < h and x + w <= 1 + 1e-9 and y + h <= 1 + 1e-9):
                raise ValueError(f"roi {self.roi} must lie inside the frame: 0 <= x, y and "
                                 "x + width, y + height <= 1 with positive width and height")
            object.__setattr__(self, "roi", roi)


@dataclass(frozen=True)
class FrameResult:
    """One classified frame. ``label``/``score`` are the (smoothed) top-1, or ``unknown_label``
    with ``unknown=True`` when nothing scores at least ``unknown_below``. With smoothing,
    ``score`` is the label's mean probability (or, with a gallery, the similarity of the mean
    embedding) over the window; ``raw_label``/``raw_score`` are this frame's own top-1 before
    smoothing, and with majority smoothing ``votes`` is the share of the window's frames whose
    top-1 was ``label``'s class."""

    classification: ClassificationResult
    label: str
    score: float
    unknown: bool
    frame_index: int = 0
    timestamp_ms: float = 0.0
    raw_label: str | None = None
    raw_score: float | None = None
    votes: float | None = None

    def to_dict(self) -> dict:
        cls = self.classification.to_dict()
        out = {"frame_index": self.frame_index, "timestamp_ms": round(self.timestamp_ms, 3),
               "label": self.label, "score": round(self.score, 6), "unknown": self.unknown,
               "raw_label": self.raw_label,
               "raw_score": None if self.raw_score is None else round(self.raw_score, 6)}
        if self.votes is not None:
            out["votes"] = round(self.votes, 6)
        out |= {"source": cls["source"], "categories": cls["categories"]}
        if "coarse" in cls:
            out["coarse"] = cls["coarse"]
        return out


class _Smoother:
    """The last ``window`` frames' probabilities (or embeddings): their mean, and for
    "majority" the vote share of each class (the fraction of frames whose top-1 it was)."""

    def __init__(self, method: str, window: int):
        self.method, self._hist = method, deque(maxlen=window)

    def update(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(mean over the window, vote shares or None)."""
        self._hist.append(values)
        mean = np.mean(self._hist, axis=0)
        if self.method != "majority":
            return mean, None
        votes = Counter(int(p.argmax()) for p in self._hist)
        shares = np.zeros_like(values)
        for k, n in votes.items():
            shares[k] = n / len(self._hist)
        return mean, shares


class FrameClassifier:
    """Classify images, video files or live streams with one running mode; see the module doc."""

    def __init__(self, classifier: ImageClassifier, options: FrameClassifierOptions):
        self._clf, self.options = classifier, options
        if classifier.gallery is not None and options.smoothing == "majority":
            raise ValueError("smoothing 'majority' votes over model labels; with a gallery use 'mean' "
                             "(the mean embedding of the last frames)")
        self.labels = classifier.labels
        self._reset()
        self._grabber: LatestFrameGrabber | None = None
        self._worker: threading.Thread | None = None
        self._worker_error: BaseException | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_path(cls, path, options: FrameClassifierOptions | None = None) -> "FrameClassifier":
        options = options or FrameClassifierOptions()
        return cls(ImageClassifier.from_path(path, options.classifier), options)

    @property
    def running_mode(self) -> RunningMode:
        return self.options.running_mode

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Stop a running stream, release its capture and close the model."""
        self._stop_stream()
        self._clf.close()

    def _stop_stream(self) -> None:
        grabber, worker = self._grabber, self._worker
        if grabber is not None:
            grabber.stop()
        if worker is not None and worker is not threading.current_thread():
            worker.join(10.0)
        self._grabber = self._worker = None

    # -- checks ----------------------------------------------------------------------------------
    def _require(self, mode: RunningMode, call: str) -> None:
        self._clf._require_open()
        if self.options.running_mode is not mode:
            raise RunningModeError(f"{call}() needs running mode {mode.value}, but this task was "
                                   f"created with running mode {self.options.running_mode.value}")

    def _reset(self) -> None:
        """Fresh frame counters, smoothing history and timestamps for a new video or stream."""
        self.stats = StreamStats()
        self._smoother = _Smoother(self.options.smoothing, self.options.window) \
            if self.options.smoothing != "none" else None
        self._last_ts: float | None = None
        self._index = 0

    # -- the per-frame pipeline ------------------------------------------------------------------
    def _crop(self, image: np.ndarray) -> np.ndarray:
        if self.options.roi is None:
            return image
        x, y, w, h = self.options.roi
        H, W = image.shape[:2]
        x0, y0 = min(W - 1, int(x * W)), min(H - 1, int(y * H))
        x1, y1 = max(x0 + 1, min(W, round((x + w) * W))), max(y0 + 1, min(H, round((y + h) * H)))
        return image[y0:y1, x0:x1]

    def _classify_frame(self, frame, index: int, ts: float, source) -> FrameResult:
        image = self._clf.decode(frame, reduced=False)  # in full: the ROI crop is in the frame's pixels
        output = self._clf.run(self._clf.preprocess(self._crop(image))[None])
        votes = raw = None
        if self._smoother is not None and self._clf.gallery is not None:  # smooth the embedding
            raw = self._clf.postprocess(output)[0].top
            e, _ = self._smoother.update(output[0].astype(np.float32))
            cls = self._clf.postprocess((e / max(float(np.linalg.norm(e)), 1e-12))[None], [source])[0]
        elif self._smoother is not None:
            probs = softmax(output.astype(np.float32))[0]
            j = int(probs.argmax())
            raw = Category(self.labels[j], j, float(probs[j]))
            mean, shares = self._smoother.update(probs)
            if shares is None:
                cls = self._clf.postprocess(np.log(np.maximum(mean, 1e-12))[None], [source])[0]  # softmax(log p) == p
            else:
                cls = self._by_votes(mean, shares, source)
                if cls.top is not None:
                    votes = float(shares[cls.top.index])
        else:
            cls = self._clf.postprocess(output, [source])[0]
        top = cls.top
        if raw is None:
            raw = top
        # unknown: below the model's / gallery's calibrated threshold, or below unknown_below
        unknown = top is None or cls.unknown or top.score < self.options.unknown_below
        self.stats.frames_processed += 1
        return FrameResult(cls, self.options.unknown_label if unknown else top.label,
                           0.0 if top is None else top.score, unknown, index, ts,
                           raw_label=None if raw is None else raw.label,
                           raw_score=None if raw is None else raw.score, votes=votes)

    def _by_votes(self, mean: np.ndarray, shares: np.ndarray, source) -> ClassificationResult:
        """Majority smoothing: classes ranked by vote share, ties to the higher mean probability;
        each scored by its mean probability over the window (top_k, score_threshold and the
        "unknown" threshold apply to that score, as for a single frame)."""
        opts = self._clf.options
        order = np.lexsort((-mean, -shares))[:min(opts.top_k, len(mean))]
        cats = tuple(Category(self.labels[j], int(j), float(mean[j])) for j in order
                     if mean[j] >= opts.score_threshold)
        threshold = self._clf.unknown_threshold
        return ClassificationResult(cats, source=source, coarse=self._clf.coarse_answer(mean, order[0]),
                                    unknown=threshold is not None and float(mean[order[0]]) < threshold)

    # -- IMAGE -----------------------------------------------------------------------------------
    def classify(self, image) -> FrameResult:
        """IMAGE mode: one path, encoded bytes or uint8 array."""
        self._require(RunningMode.IMAGE, "classify")
        return self._classify_frame(image, 0, 0.0, _source_name(image))

    # -- VIDEO -----------------------------------------------------------------------------------
    def classify_for_video(self, frame: np.ndarray, timestamp_ms: float) -> FrameResult:
        """VIDEO mode, frames you decode yourself: timestamps must increase from call to call."""
        self._require(RunningMode.VIDEO, "classify_for_video")
        if self._last_ts is not None and timestamp_ms <= self._last_ts:
            raise StreamError(f"timestamp {timestamp_ms} ms is not after the previous frame's "
                              f"{self._last_ts} ms; running mode VIDEO needs increasing timestamps")
        self._last_ts = float(timestamp_ms)
        self.stats.frames_read += 1
        result = self._classify_frame(frame, self._index, float(timestamp_ms), None)
        self._index += 1
        return result

    def classify_video(self, path) -> Iterator[FrameResult]:
        """VIDEO mode: every ``frame_stride``-th frame of a video file, in order (none dropped).
        Timestamps come from the file's frame rate. Raises StreamError for a file that cannot
        be opened, has no decodable frame, or ends before its header's frame count (truncated)
        — the latter after yielding the frames that did decode."""
        self._require(RunningMode.VIDEO, "classify_video")
        name = describe_source(path)
        if isinstance(path, (int, bool)) or (isinstance(path, str) and path.isdigit()):
            raise RunningModeError(f"{name}: cameras need running mode LIVE_STREAM, not VIDEO")
        cap = open_capture(path)
        self._reset()
        return self._iter_video(cap, name)

    def _iter_video(self, cap, name) -> Iterator[FrameResult]:
        import cv2

        try:
            fps = cap.get(cv2.CAP_PROP_FPS)
            expected = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            index = -1
            while True:
                index += 1
                if index % self.options.frame_stride:
                    if not cap.grab():
                        break
                    self.stats.frames_read += 1
                    self.stats.frames_skipped += 1
                    continue
                ok, frame = cap.read()
                if not ok or frame is None:
                    break
                self.stats.frames_read += 1
                ts = index * 1000.0 / fps if fps > 0 else cap.get(cv2.CAP_PROP_POS_MSEC)
                yield self._classify_frame(frame, index, ts, name)
        finally:
            cap.release()
        n = self.stats.frames_read
        if n == 0:
            raise StreamError(f"{name}: no decodable frame in this video")
        if expected > 0 and n < expected - 1:  # the header count may be an estimate: allow 1
            raise StreamError(f"{name}: the video ended after {n} of the {expected} frames its "
                              "header announces (truncated or corrupt file)")

    # -- LIVE_STREAM -----------------------------------------------------------------------------
    def _start_grabber(self, source, call: str) -> LatestFrameGrabber:
        self._require(RunningMode.LIVE_STREAM, call)
        with self._lock:
            if self._grabber is not None and (self._grabber.is_alive() or
                                              (self._worker is not None and self._worker.is_alive())):
                raise RunningModeError("a live stream is already running on this task; close it first")
            cap = open_capture(source)
            self._reset()
            self._worker_error = None
            self._grabber = LatestFrameGrabber(cap, describe_source(source), self.stats,
                                               self.options.frame_stride)
            self._grabber.start()
            return self._grabber

    def stream(self, source) -> Iterator[FrameResult]:
        """LIVE_STREAM, iterator style: results for the newest frames of a camera index, stream
        URL or video path until the source ends or the task is closed. Stale frames are dropped
        (counted in ``stats.frames_dropped``); the capture is released when the iteration
        ends, breaks or fails."""
        grabber = self._start_grabber(source, "stream")
        return self._iter_live(grabber)

    def _iter_live(self, grabber: LatestFrameGrabber) -> Iterator[FrameResult]:
        stopped = False
        try:
            while True:
                item = grabber.take()
                if item is None:
                    stopped = grabber.stopped
                    break
                frame, index, ts = item
                yield self._classify_frame(frame, index, ts, grabber.source_name)
        finally:
            grabber.stop()
        if self.stats.frames_read == 0 and not stopped:
            raise StreamError(f"{grabber.source_name}: the source opened but delivered no frame")

    def start_stream(self, source) -> None:
        """LIVE_STREAM, callback style: classify on a background thread and hand each result to
        ``options.result_callback``; returns at once. ``wait()`` blocks until the source ends
        and re-raises a failure; ``close()`` stops it early."""
        if self.options.result_callback is None:
            self._clf._require_open()
            raise RunningModeError("start_stream() needs options.result_callback (running mode "
                                   f"{self.options.running_mode.value}); use stream() to iterate instead")
        grabber = self._start_grabber(source, "start_stream")
        self._worker = threading.Thread(target=self._work, args=(grabber,), daemon=True,
                                        name=f"skulens-stream[{grabber.source_name}]")
        self._worker.start()

    def _work(self, grabber: LatestFrameGrabber) -> None:
        try:
            for result in self._iter_live(grabber):
                self.options.result_callback(result)
        except BaseException as exc:
            self._worker_error = exc
            log.error("live stream %s stopped: %s", grabber.source_name, exc)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a ``start_stream`` to finish; True when it has. Re-raises its failure."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
            if worker.is_alive():
                return False
        if self._worker_error is not None:
            err, self._worker_error = self._worker_error, None
            raise err
        return True


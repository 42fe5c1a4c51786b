"""Running modes on real videos written with cv2.VideoWriter from real Grocery photos."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from skulens import (ClassifierOptions, FrameClassifier, FrameClassifierOptions, ImageClassifier,
                 RunningMode, RunningModeError, StreamError)
from skulens._classifier import softmax
from skulens.cli import main as cli_main

FPS, PER_IMAGE, SIZE = 10, 8, (176, 144)  # 3 photos x 8 frames = 24 frames, 100 ms apart


@pytest.fixture(scope="module")
def photos(grocery_subset):
    lines = [ln.split(", ") for ln in (grocery_subset / "test.txt").read_text().splitlines() if ln]
    picked, seen = [], set()
    for path, label, _ in lines:
        if label not in seen:
            seen.add(label)
            picked.append(cv2.resize(cv2.imread(path), SIZE, interpolation=cv2.INTER_AREA))
        if len(picked) == 3:
            return picked


@pytest.fixture(scope="module")
def video(photos, tmp_path_factory):
    path = tmp_path_factory.mktemp("videos") / "shelf.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, SIZE)
    assert writer.isOpened()
    for img in photos:
        for _ in range(PER_IMAGE):
            writer.write(img)
    writer.release()
    return path


def decoded_frames(path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            return frames
        frames.append(frame)


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models[0]


def scanner(model, mode, **kw):
    return FrameClassifier.from_path(model, FrameClassifierOptions(
        running_mode=mode, classifier=ClassifierOptions(num_threads=1, top_k=3, reject_unknown=False), **kw))


def test_video_mode_matches_image_classifier_on_every_decoded_frame(model, video):
    frames = decoded_frames(video)
    assert len(frames) == 3 * PER_IMAGE
    with ImageClassifier.from_path(model, ClassifierOptions(num_threads=1, top_k=3, reject_unknown=False)) as clf:
        expected = [clf.classify(f) for f in frames]
    with scanner(model, "video") as sc:
        assert sc.running_mode is RunningMode.VIDEO
        results = list(sc.classify_video(video))
        assert sc.stats.frames_processed == sc.stats.frames_read == len(frames)
    assert [r.frame_index for r in results] == list(range(len(frames)))
    assert [r.timestamp_ms for r in results] == pytest.approx([i * 1000 / FPS for i in range(len(frames))])
    for r, e in zip(results, expected):
        assert [c.label for c in r.classification.categories] == [c.label for c in e.categories]
        assert r.score == pytest.approx(e.top.score, abs=1e-6) and r.label == e.top.label
        assert not r.unknown
    assert json.loads(json.dumps(results[0].to_dict()))["source"] == str(video)


def test_frame_stride_and_region_of_interest(model, video):
    frames = decoded_frames(video)
    roi = (0.25, 0.2, 0.5, 0.6)
    H, W = frames[0].shape[:2]
    crop = lambda f: f[int(0.2 * H):round(0.8 * H), int(0.25 * W):round(0.75 * W)]  # noqa: E731
    with ImageClassifier.from_path(model, ClassifierOptions(num_threads=1)) as clf:
        whole = clf.logits_batch(frames[::3])
        cropped = clf.logits_batch([crop(f) for f in frames[::3]])
    assert np.abs(whole - cropped).max() > 1e-3, "the ROI must change what the model sees"
    with scanner(model, RunningMode.VIDEO, roi=roi, frame_stride=3) as sc:
        results = list(sc.classify_video(video))
        assert (sc.stats.frames_read, sc.stats.frames_skipped) == (len(frames), len(frames) - len(results))
    assert [r.frame_index for r in results] == list(range(0, len(frames), 3))
    probs = softmax(cropped)
    assert [r.score for r in results] == pytest.approx(probs.max(1).tolist(), abs=1e-6)


@pytest.mark.parametrize("method", ["mean", "majority"])
def test_temporal_smoothing_over_last_k_frames(model, video, method):
    frames = decoded_frames(video)
    k = 4
    with ImageClassifier.from_path(model, ClassifierOptions(num_threads=1)) as clf:
        probs = softmax(clf.logits_batch(frames))
        labels = clf.labels
    with scanner(model, "VIDEO", smoothing=method, window=k) as sc:
        results = list(sc.classify_video(video))
    for i, r in enumerate(results):
        win = probs[max(0, i - k + 1):i + 1]
        mean = win.mean(0)
        top = r.classification.top
        # the frame's own answer is kept beside the smoothed one
        assert r.raw_score == pytest.approx(probs[i].max(), abs=1e-5)
        assert r.raw_label == labels[int(probs[i].argmax())]
        assert r.score == pytest.approx(top.score) and top.score == pytest.approx(mean[top.index], abs=1e-5)
        if method == "mean":
            assert top.score == pytest.approx(mean.max(), abs=1e-5) and r.votes is None
        else:  # the most frequent top-1 (ties: the higher mean), scored by its mean probability
            votes = np.bincount(win.argmax(1), minlength=len(labels)) / len(win)
            assert votes[top.index] == votes.max() and r.votes == pytest.approx(votes.max())
            assert mean[top.index] == pytest.approx(mean[votes == votes.max()].max(), abs=1e-6)
        # the coarse answer: the smoothed top product's group, scored by its smoothed total
        groups = np.array(clf.metadata.coarse_labels)
        assert r.classification.coarse.label == groups[top.index]
        assert r.to_dict()["coarse"]["score"] == pytest.approx(mean[groups == groups[top.index]].sum(), abs=1e-5)
    if method == "majority":  # frame 0: one vote of one frame, but its score is the real confidence
        first = results[0]
        assert first.votes == 1.0 and first.score == pytest.approx(first.raw_score, abs=1e-6)
        assert first.score < 1.0
        row = first.to_dict()
        assert row["votes"] == 1.0 and row["score"] == pytest.approx(row["raw_score"], abs=1e-6)


def test_unknown_product_below_threshold(model, video):
    with scanner(model, "VIDEO") as sc:
        scores = [r.score for r in sc.classify_video(video)]
    threshold = float(np.median(scores))
    with scanner(model, "VIDEO", unknown_below=threshold, unknown_label="no match") as sc:
        results = list(sc.classify_video(video))
    assert [r.unknown for r in results] == [s < threshold for s in scores]
    assert any(r.unknown for r in results) and not all(r.unknown for r in results)
    assert {r.label for r in results if r.unknown} == {"no match"}
    assert all(r.classification.top is not None for r in results), "categories are still reported"


def test_truncated_video_yields_decodable_frames_then_raises(model, video, tmp_path):
    data = video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[:len(data) // 2])
    seen = []
    with scanner(model, "VIDEO") as sc:
        with pytest.raises(StreamError, match=r"cut\.avi: the video ended after \d+ of the 24 frames"):
            for r in sc.classify_video(cut):
                seen.append(r.frame_index)
    assert 0 < len(seen) < 24 and seen == list(range(len(seen)))
    # An MP4 cut in half has lost its index: refused when opened, before any frame.
    mp4 = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(mp4), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    for f in decoded_frames(video)[:5]:
        writer.write(f)
    writer.release()
    mp4.write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])
    with scanner(model, "VIDEO") as sc, pytest.raises(StreamError, match="clip.mp4: cannot open the video"):
        sc.classify_video(mp4)


def test_missing_camera_missing_file_and_non_video(model, tmp_path):
    with scanner(model, "LIVE_STREAM") as sc:
        with pytest.raises(StreamError, match="camera 99: cannot open the camera"):
            sc.stream(99)
        with pytest.raises(StreamError, match="nope.avi: no such video file"):
            sc.stream(tmp_path / "nope.avi")
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"not a video at all" * 100)
    with scanner(model, "VIDEO") as sc:
        with pytest.raises(StreamError, match="junk.avi: cannot open the video"):
            sc.classify_video(junk)
        with pytest.raises(RunningModeError, match="camera 0: cameras need running mode LIVE_STREAM, not VIDEO"):
            sc.classify_video(0)


def test_running_mode_checked_at_construction_and_on_each_call(model, video, photos):
    with pytest.raises(RunningModeError, match="unknown running_mode 'STREAMING'"):
        FrameClassifierOptions(running_mode="STREAMING")
    with pytest.raises(RunningModeError, match="not IMAGE"):
        FrameClassifierOptions(smoothing="mean")
    with pytest.raises(RunningModeError, match="only used in running mode LIVE_STREAM, not VIDEO"):
        FrameClassifierOptions(running_mode="VIDEO", result_callback=print)
    with pytest.raises(ValueError, match="roi"):
        FrameClassifierOptions(roi=(0.5, 0.5, 0.6, 0.1))
    with scanner(model, "IMAGE") as sc:
        assert sc.classify(photos[0]).frame_index == 0
        with pytest.raises(RunningModeError, match=r"classify_video\(\) needs running mode VIDEO.*IMAGE"):
            sc.classify_video(video)
        with pytest.raises(RunningModeError, match=r"stream\(\) needs running mode LIVE_STREAM.*IMAGE"):
            sc.stream(video)
    with scanner(model, "VIDEO") as sc:
        with pytest.raises(RunningModeError, match=r"classify\(\) needs running mode IMAGE.*VIDEO"):
            sc.classify(photos[0])
        sc.classify_for_video(photos[0], 0.0)
        sc.classify_for_video(photos[1], 40.0)
        with pytest.raises(StreamError, match="not after the previous frame's 40.0 ms"):
            sc.classify_for_video(photos[2], 40.0)
    with scanner(model, "LIVE_STREAM") as sc, pytest.raises(RunningModeError, match="result_callback"):
        sc.start_stream(video)


def test_live_stream_processes_newest_frame_and_counts_drops(model, video):
    cap = cv2.VideoCapture(str(video))  # a source that delivers frames much faster than we consume
    with scanner(model, "LIVE_STREAM", frame_stride=2) as sc:
        results = []
        for r in sc.stream(cap):
            results.append(r)
            time.sleep(0.05)  # a slow consumer (a busy kiosk)
        s = sc.stats
    assert not cap.isOpened(), "the capture is released when the stream ends"
    idx = [r.frame_index for r in results]
    assert idx == sorted(set(idx)) and all(i % 2 == 0 for i in idx)
    assert idx[-1] == 22, "the newest frame at the end of the source is still classified"
    assert s.frames_read == 24 and s.frames_skipped == 12
    assert s.frames_dropped > 0 and s.frames_processed == len(results)
    assert s.frames_read == s.frames_skipped + s.frames_dropped + s.frames_processed
    ts = [r.timestamp_ms for r in results]
    assert ts == sorted(ts) and ts[0] >= 0


def test_callback_style_and_release_on_close_and_on_error(model, video):
    got = []
    opts = dict(result_callback=got.append)
    with scanner(model, "LIVE_STREAM", **opts) as sc:
        sc.start_stream(str(video))
        assert sc.wait(timeout=30)
        assert got and got[-1].frame_index == 23 and sc.stats.frames_processed == len(got)

    def explode(result):
        raise ValueError("display unplugged")

    cap = cv2.VideoCapture(str(video))
    with scanner(model, "LIVE_STREAM", result_callback=explode) as sc:
        sc.start_stream(cap)
        with pytest.raises(ValueError, match="display unplugged"):
            sc.wait(timeout=30)
    assert not cap.isOpened()

    cap = cv2.VideoCapture(str(video))
    sc = scanner(model, "LIVE_STREAM")
    it = sc.stream(cap)
    next(it)
    sc.close()  # stops the grabber mid-stream
    assert not cap.isOpened()
    assert list(it) == [], "a closed task ends its streams"


def test_cli_predict_video_json_and_missing_camera(model, video, capsys):
    assert cli_main(["predict", str(model), "--video", str(video), "--json", "--frame-stride", "4",
                     "--smoothing", "mean", "--window", "2", "--unknown-below", "0.99"]) == 0
    out = capsys.readouterr()
    rows = [json.loads(line) for line in out.out.splitlines()]
    assert [r["frame_index"] for r in rows] == [0, 4, 8, 12, 16, 20]
    assert all(r["label"] == "unknown" for r in rows if r["unknown"]) and "dropped (stale) 0" in out.err
    assert all(r["unknown"] == (r["score"] < 0.99) for r in rows)
    assert cli_main(["predict", str(model), "--video", str(video), "--json", "--smoothing", "majority",
                     "--max-frames", "3"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["votes"] == 1.0 and rows[0]["score"] == pytest.approx(rows[0]["raw_score"])
    assert rows[0]["score"] < 1.0
    assert all(0 < r["score"] <= 1 and 0 < r["raw_score"] <= 1 for r in rows)
    assert cli_main(["predict", str(model), "--video", str(video), "--max-frames", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].startswith("frame 1 t=100ms: ")
    assert cli_main(["predict", str(model), "--camera", "99"]) == 2
    assert "camera 99: cannot open the camera" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["predict", str(model)])
    with pytest.raises(SystemExit):
        cli_main(["predict", str(model), "x.jpg", "--video", str(video)])


def test_cli_predict_video_into_a_closed_pipe_exits_quietly(model, video):
    """`skulens predict --video ... | head -1`: the reader is gone; exit 0, no BrokenPipeError."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "skulens.cli", "predict", str(model), "--video", str(video),
                               "--json", "--smoothing", "majority"], stdout=write, stderr=subprocess.PIPE,
                              timeout=120, cwd=Path(__file__).resolve().parents[1])
    finally:
        os.close(write)
    assert proc.returncode == 0 and b"Traceback" not in proc.stderr and b"BrokenPipe" not in proc.stderr, \
        proc.stderr.decode()

"""``skulens predict MODEL --video FILE`` / ``--camera INDEX|URL``: one line (or JSON) per frame."""
from __future__ import annotations

import argparse
import json
import sys

from skulens.internal import add_dataclass_flags
from skulens import FrameClassifier, FrameClassifierOptions


def add_stream_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("video and live stream (instead of IMAGE files)")
    g.add_argument("--video", metavar="FILE", help="classify the frames of a video file (running mode VIDEO)")
    g.add_argument("--camera", metavar="INDEX|URL",
                   help="classify a camera index or stream URL live, newest frame only (LIVE_STREAM)")
    g.add_argument("--max-frames", type=int, default=None, help="stop after N results (default: until the source ends)")
    g.add_argument("--roi", metavar="X,Y,W,H", default=None,
                   help="region of interest as fractions of the frame, e.g. 0.25,0.25,0.5,0.5")
    add_dataclass_flags(g, FrameClassifierOptions)
    p.set_defaults(_predict_parser=p)


def wants_stream(args) -> bool:
    """True for --video/--camera; exits with a usage error for a bad combination."""
    streams = (args.video is not None) + (args.camera is not None)
    if streams == 0 and not args.images:
        args._predict_parser.error("give IMAGE files, --video FILE or --camera INDEX|URL")
    if streams and args.images or streams > 1:
        args._predict_parser.error("give either IMAGE files, --video or --camera, not several")
    return bool(streams)


def predict_stream(args, classifier_options) -> int:
    roi = None
    if args.roi:
        try:
            roi = tuple(float(v) for v in args.roi.split(","))
        except ValueError:
            args._predict_parser.error(f"--roi must be four numbers X,Y,W,H, got {args.roi!r}")
    mode = "VIDEO" if args.video is not None else "LIVE_STREAM"
    try:
        opts = FrameClassifierOptions(running_mode=mode, roi=roi, smoothing=args.smoothing,
                                      window=args.window, unknown_below=args.unknown_below,
                                      unknown_label=args.unknown_label, frame_stride=args.frame_stride,
                                      classifier=classifier_options)
    except ValueError as exc:
        args._predict_parser.error(str(exc))
    with FrameClassifier.from_path(args.model, opts) as scanner:
        results = scanner.classify_video(args.video) if args.video is not None else scanner.stream(args.camera)
        try:
            for n, r in enumerate(results, 1):
                if args.json:
                    print(json.dumps(r.to_dict()), flush=True)
                else:
                    others = ", ".join(f"{c.label} {c.score:.3f}" for c in r.classification.categories[1:])
                    smoothed = ""
                    if opts.smoothing != "none" and r.raw_label is not None:
                        votes = f", votes {r.votes:.0%}" if r.votes is not None else ""
                        smoothed = (f" [{opts.smoothing} of {opts.window}{votes}; "
                                    f"this frame: {r.raw_label} {r.raw_score:.3f}]")
                    print(f"frame {r.frame_index} t={r.timestamp_ms:.0f}ms: {r.label} {r.score:.3f}{smoothed}"
                          + (f"  ({others})" if others else ""), flush=True)
                if args.max_frames is not None and n >= args.max_frames:
                    break
        finally:
            results.close()
        s = scanner.stats
        print(f"frames read {s.frames_read}, classified {s.frames_processed}, skipped (stride) "
              f"{s.frames_skipped}, dropped (stale) {s.frames_dropped}", file=sys.stderr)
    return 0

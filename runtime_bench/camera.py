"""Camera-sized JPEGs end to end: reduced-scale JPEG decoding on vs off, per model.

    python -m skulens.bench.camera MODEL.onnx [MODEL2.onnx ...] \\
        --data ../shared/datasets/grocery-store/dataset --out runs/camera

Inputs: the split's photos as they are (348 px wide for Grocery) and JPEG copies of them at
1920x1080 and 4032x3024 (quality 90), made in a temporary folder: each photo is scaled
(bicubic) to the frame's height and the frame's sides are filled by reflection, a product
held in front of a scanner camera or a phone. Scaled-up photos hold no detail finer than the
original, so the accuracy figures check the decode + resize path, not a sharper camera.

Per model and input: p50 / p90 ms of ``ImageClassifier.classify(jpeg_bytes)`` at one thread
(onnxruntime and OpenCV), batch 1, with JPEGs decoded in full (``reduced_decode=0``) and at
the reduced scale of each ``--reduced-decode`` ratio, every configuration of every model
timed interleaved in one loop; the speedup (ratio of p50s); the model alone (p50 on a
preprocessed tensor); and top-1 on the split's photos and their 1080p copies (``--accuracy``)
for each path, with how often the paths agree on the top-1. The split defaults to "test"
(final figures); choose ratios on "val" or "train". Each timing is also taken on the calling
thread's CPU clock, which other work on a shared machine disturbs far less than the wall
clock (``--clock cpu`` bases speedups and goals on it). A last table times ``cv2.imdecode``
of one 1080p frame as JPEG, PNG and WebP, in full and reduced: only JPEG gains.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import tempfile
import time
from itertools import cycle
from pathlib import Path

import cv2
import numpy as np

from skulens import ClassifierOptions, ImageClassifier, PreprocessConfig, decode_image, load_dataset
from skulens.internal import interleaved_samples, label_mapping

from ._files import write_result_files

log = logging.getLogger(__name__)

FRAMES = {"native": None, "1080p": (1920, 1080), "12mp": (4032, 3024)}  # name -> (width, height)
JPEG_QUALITY = 90
# goals of issue #14, by the model's registry name: end-to-end p50 ms with reduced decoding
GOALS_MS = {"edge_resnet_patch": {"1080p": 5.0, "12mp": 25.0},
            "efficientnet_lite0": {"1080p": 10.0, "12mp": 30.0}}
MIN_SPEEDUP = 4.0  # reduced vs full decode, end to end, at 1080p and 12 MP
MAX_TOP1_DROP_PP = 0.3  # reduced vs full decode, on each accuracy input
_P50 = {"wall": "p50_ms", "cpu": "cpu_p50_ms"}  # the statistic speedups and goals use, per clock


def camera_frame(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` scaled (bicubic) to the frame's height, its sides filled by reflection (or,
    for a photo wider than the frame, centre-cropped) to ``size`` = (width, height)."""
    width, height = size
    h, w = image.shape[:2]
    scaled = cv2.resize(image, (max(1, round(w * height / h)), height), interpolation=cv2.INTER_CUBIC)
    sw = scaled.shape[1]
    if sw >= width:
        x0 = (sw - width) // 2
        return scaled[:, x0:x0 + width]
    left = (width - sw) // 2
    while scaled.shape[1] < width:  # reflection can add at most the image's own width per pass
        pad = width - scaled.shape[1]
        left_now, right_now = min(left, scaled.shape[1] - 1), min(pad - left, scaled.shape[1] - 1)
        scaled = cv2.copyMakeBorder(scaled, 0, 0, left_now, right_now, cv2.BORDER_REFLECT_101)
        left -= left_now
    return scaled


def camera_jpeg(image: np.ndarray, size: tuple[int, int] | None, quality: int = JPEG_QUALITY) -> bytes:
    """The JPEG bytes of ``camera_frame(image, size)`` (``size`` None: the image as it is)."""
    frame = image if size is None else camera_frame(image, size)
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return buf.tobytes()


def spread(samples: list, n: int | None) -> list:
    """``n`` samples evenly spread over the list (all when ``n`` is None or too large)."""
    if n is None or n >= len(samples):
        return list(samples)
    return [samples[round(i * len(samples) / n)] for i in range(n)]


def write_copies(samples, frame: str, folder: Path) -> list[Path]:
    """The samples' photos as ``frame`` JPEGs in ``folder`` (the originals for "native")."""
    if FRAMES[frame] is None:
        return [s.path for s in samples]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, s in enumerate(samples):
        path = folder / f"{i:05d}.jpg"
        path.write_bytes(camera_jpeg(decode_image(s.path), FRAMES[frame]))
        paths.append(path)
    return paths


def _paths(ratios) -> list[tuple[str, float]]:
    """(name, reduced_decode) of each decoding path: the full decode first."""
    return [("full", 0.0)] + [(f"reduced r={r:g}", float(r)) for r in ratios]


def _classifier(model, reduced: float, threads: int) -> ImageClassifier:
    return ImageClassifier.from_path(model, ClassifierOptions(num_threads=threads, reduced_decode=reduced,
                                                              reject_unknown=False, top_k=1))


WARMUP = 2  # untimed calls of each configuration before the interleaved rounds


def _stats_ms(wall: list[float], cpu: list[float]) -> dict:
    """p50/p90 of the wall-clock and of the thread CPU time per call, in ms."""
    out = {"n": len(wall)}
    for clock, samples in (("", wall), ("cpu_", cpu)):
        ms = 1e3 * np.asarray(samples)
        out.update({f"{clock}p50_ms": float(np.percentile(ms, 50)), f"{clock}p90_ms": float(np.percentile(ms, 90))})
    return out


def _with_cpu_clock(fns) -> tuple:
    """``fns`` wrapped to record the calling thread's CPU time of each call, and the lists they
    record into. Other work on a shared machine barely touches that clock (at one thread,
    onnxruntime and OpenCV do all their work on the calling thread), unlike the wall clock."""
    cpu = [[] for _ in fns]

    def on_cpu_clock(fn, out):
        def call():
            t0 = time.thread_time()
            fn()
            out.append(time.thread_time() - t0)
        return call

    return [on_cpu_clock(fn, out) for fn, out in zip(fns, cpu)], cpu


def _timed(fns, rounds: int, iters: int) -> list[dict]:
    wrapped, cpu = _with_cpu_clock(fns)
    wall = interleaved_samples(wrapped, rounds=rounds, iters=iters, warmup=WARMUP)
    return [_stats_ms(w, c[WARMUP:]) for w, c in zip(wall, cpu)]


def latency(models, timing_jpegs: dict[str, list[bytes]], ratios, *, threads: int = 1,
            rounds: int = 5, iters: int = 10) -> list[dict]:
    """One row per (model, frame, path): end-to-end p50/p90 of ``classify(jpeg_bytes)``, each
    call on the next of the frame's photos; plus a "model only" row per model. Everything is
    timed in one interleaved loop."""
    keys, fns, open_clfs = [], [], []
    for model in models:
        clfs = {name: _classifier(model, reduced, threads) for name, reduced in _paths(ratios)}
        open_clfs += clfs.values()
        for frame, jpegs in timing_jpegs.items():
            for name, clf in clfs.items():
                photos = cycle(jpegs)
                keys.append((model, frame, name))
                fns.append(lambda clf=clf, photos=photos: clf.classify(next(photos)))
        full = clfs["full"]
        x = full.preprocess(timing_jpegs[next(iter(timing_jpegs))][0])[None]
        keys.append((model, "-", "model only"))
        fns.append(lambda clf=full, x=x: clf.run(x))
    stats = _timed(fns, rounds, iters)
    for clf in open_clfs:
        clf.close()
    return [{"model": str(m), "frame": f, "path": p, **st} for (m, f, p), st in zip(keys, stats)]


def accuracy(model, dataset, samples, copies: dict[str, list[Path]], ratios, *, threads: int = 1) -> list[dict]:
    """Top-1 of each decoding path on each set of copies, and its top-1 agreement with the full decode."""
    rows = []
    clfs = {name: _classifier(model, reduced, threads) for name, reduced in _paths(ratios)}
    targets = label_mapping(clfs["full"].labels, dataset)[np.array([s.label for s in samples])]
    for frame, paths in copies.items():
        preds = {name: clf.logits_batch(paths).argmax(axis=1) for name, clf in clfs.items()}
        for name, pred in preds.items():
            rows.append({"model": str(model), "frame": frame, "path": name, "n": len(paths),
                         "top1": float((pred == targets).mean()),
                         "agreement": float((pred == preds["full"]).mean())})
        log.info("%s %s: %s", Path(model).name, frame,
                 ", ".join(f"{r['path']} {100 * r['top1']:.2f} %" for r in rows[-len(preds):]))
    for clf in clfs.values():
        clf.close()
    return rows


def format_decoding(photo: np.ndarray, *, rounds: int = 5, iters: int = 10) -> list[dict]:
    """Why only JPEGs decode reduced: ``cv2.imdecode`` of ``photo`` as a 1080p JPEG, PNG and
    WebP (quality 90), in full and with ``IMREAD_REDUCED_COLOR_4`` (for PNG and WebP OpenCV
    decodes in full and then shrinks), timed interleaved."""
    frame = camera_frame(photo, FRAMES["1080p"])
    params = {".jpg": [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY], ".png": [],
              ".webp": [cv2.IMWRITE_WEBP_QUALITY, JPEG_QUALITY]}
    keys, fns = [], []
    for ext, extra in params.items():
        buf = cv2.imencode(ext, frame, extra)[1]
        for flag_name, flag in (("full", cv2.IMREAD_UNCHANGED), ("reduced 1/4", cv2.IMREAD_REDUCED_COLOR_4)):
            keys.append((ext[1:], flag_name, len(buf)))
            fns.append(lambda buf=buf, flag=flag: cv2.imdecode(buf, flag))
    return [{"format": f, "decode": d, "kb": round(n / 1e3, 1), **st}
            for (f, d, n), st in zip(keys, _timed(fns, rounds, iters))]


def decode_scales(contract: PreprocessConfig, ratios, sizes: dict[str, list[tuple[int, int]]]) -> dict:
    """The JPEG scale(s) each ratio decodes each input at, e.g. {"r=2": {"1080p": "1/2"}}, from
    the (width, height) of the input's timed photos."""
    out = {}
    for r in ratios:
        rule = dataclasses.replace(contract, reduced_decode=r)
        out[f"r={r:g}"] = {frame: ", ".join(f"1/{k}" for k in sorted({rule.decode_scale(*wh) for wh in whs}))
                           for frame, whs in sizes.items()}
    return out


def camera_benchmark(models, data, *, split: str = "test", ratios=(PreprocessConfig.RECOMMENDED_REDUCED_DECODE,),
                     limit: int | None = None, accuracy_frames=("native", "1080p"), timing_images: int = 8,
                     threads: int = 1, rounds: int = 5, iters: int = 10, clock: str = "wall") -> dict:
    """Latency and accuracy of every model (see the module docstring); the result as a dict.
    ``clock``: what speedups and goals compare, "wall" or "cpu" (thread CPU time)."""
    cv2.setNumThreads(threads)
    dataset = load_dataset(data)
    samples = spread(dataset.split(split), limit)
    timed = spread(samples, timing_images)
    photos = [decode_image(s.path) for s in timed]
    timing_jpegs = {frame: [s.path.read_bytes() for s in timed] if size is None else
                    [camera_jpeg(photo, size) for photo in photos] for frame, size in FRAMES.items()}
    sizes = {frame: [size or photo.shape[1::-1] for photo in photos] for frame, size in FRAMES.items()}
    result = {"split": split, "n": len(samples), "timing_images": len(timed), "threads": threads, "clock": clock,
              "rounds": rounds, "iters": iters, "jpeg_quality": JPEG_QUALITY, "ratios": list(ratios),
              "frames": {f: list(s) if s else "as stored" for f, s in FRAMES.items()},
              "timing_jpeg_kb": {f: round(np.mean([len(b) for b in j]) / 1e3, 1) for f, j in timing_jpegs.items()},
              "opencv": cv2.__version__, "load_average_before": os.getloadavg()[0], "models": {}}
    for model in models:
        with ImageClassifier.from_path(model) as clf:
            result["models"][str(model)] = {"model_name": clf.metadata.model_name,
                                            "input_size": list(clf.preprocess_config.input_size),
                                            "contract_reduced_decode": clf.preprocess_config.reduced_decode,
                                            "decode_scales": decode_scales(clf.preprocess_config, ratios, sizes)}
    log.info("timing %d models x %d inputs x %d paths, interleaved", len(models), len(FRAMES), len(ratios) + 1)
    result["latency"] = latency(models, timing_jpegs, ratios, threads=threads, rounds=rounds, iters=iters)
    result["formats"] = format_decoding(photos[0], rounds=rounds, iters=iters)
    result["load_average_after_timing"] = os.getloadavg()[0]  # other work on the machine skews timings
    result["accuracy"] = []
    with tempfile.TemporaryDirectory(prefix="skulens-camera-") as tmp:
        copies = {}
        for frame in accuracy_frames:
            log.info("writing %d %s copies", len(samples), frame)
            copies[frame] = write_copies(samples, frame, Path(tmp) / frame)
        for model in models:
            result["accuracy"] += accuracy(model, dataset, samples, copies, ratios, threads=threads)
    result["goals"] = goals(result)
    return result


def _row(rows, **match) -> dict | None:
    return next((r for r in rows if all(r[k] == v for k, v in match.items())), None)


def _goal(model: str, path: str, goal: str, measured: str, met: bool) -> dict:
    return {"model": model, "path": path, "goal": goal, "measured": measured, "met": bool(met)}


def _speed_goals(result: dict, model: str, path: str) -> list[dict]:
    """Latency and speedup goals at 1080p and 12 MP of one model's reduced path (p50 on the
    result's clock)."""
    out, key = [], _P50[result["clock"]]
    for frame in ("1080p", "12mp"):
        full = _row(result["latency"], model=model, frame=frame, path="full")
        red = _row(result["latency"], model=model, frame=frame, path=path)
        limit = GOALS_MS.get(result["models"][model]["model_name"], {}).get(frame)
        if limit is not None:
            out.append(_goal(model, path, f"{frame} p50 <= {limit:g} ms ({result['clock']})", f"{red[key]:.2f} ms",
                             red[key] <= limit))
        speedup = full[key] / red[key]
        out.append(_goal(model, path, f"{frame} >= {MIN_SPEEDUP:g}x faster than full decode", f"{speedup:.1f}x",
                         speedup >= MIN_SPEEDUP))
    return out


def _accuracy_goals(result: dict, model: str, path: str) -> list[dict]:
    """Top-1 of one model's reduced path against its full decode, on each accuracy input."""
    out = []
    for full in [a for a in result["accuracy"] if a["model"] == model and a["path"] == "full"]:
        red = _row(result["accuracy"], model=model, frame=full["frame"], path=path)
        change = round(100 * (red["top1"] - full["top1"]), 2) + 0.0  # + 0.0: no "-0.00"
        out.append(_goal(model, path, f"{full['frame']} top-1 within {MAX_TOP1_DROP_PP:g} pp of full",
                         f"{change:+.2f} pp", change >= -MAX_TOP1_DROP_PP))
    return out


def goals(result: dict) -> list[dict]:
    """Each goal of issue #14 that applies, per model and reduced path, with the measured value."""
    out = []
    for model in result["models"]:
        for r in result["ratios"]:
            path = f"reduced r={r:g}"
            out += _speed_goals(result, model, path) + _accuracy_goals(result, model, path)
    return out


def markdown(result: dict) -> str:
    """Latency, accuracy and goal tables."""
    name = {m: Path(m).name for m in result["models"]}
    key = _P50[result["clock"]]
    lines = [f"End to end `classify(jpeg_bytes)`, {result['threads']} thread, batch 1, "
             f"{result['timing_images']} photos cycled per input, {result['rounds']} x {result['iters']} "
             f"interleaved calls each; OpenCV {result['opencv']}, JPEG quality {result['jpeg_quality']} "
             f"(mean kB: {', '.join(f'{k} {v}' for k, v in result['timing_jpeg_kb'].items())}); "
             f"1-minute load average {result['load_average_before']:.1f} before timing, "
             f"{result['load_average_after_timing']:.1f} after. Wall clock, and the calling thread's CPU "
             f"time (what one free core would take); speedups and goals use the {result['clock']} clock.", "",
             "| model | input | path | DCT scale | p50 ms | p90 ms | CPU p50 ms | CPU p90 ms | speedup |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["latency"]:
        info = result["models"][r["model"]]
        full = _row(result["latency"], model=r["model"], frame=r["frame"], path="full")
        scale = "1/1" if r["frame"] != "-" else ""
        if r["path"].startswith("reduced"):
            scale = info["decode_scales"][r["path"].split()[-1]][r["frame"]]
        speed = f"{full[key] / r[key]:.1f}x" if r["path"].startswith("reduced") else ""
        lines.append(f"| {name[r['model']]} | {r['frame']} | {r['path']} | {scale} | {r['p50_ms']:.2f} "
                     f"| {r['p90_ms']:.2f} | {r['cpu_p50_ms']:.2f} | {r['cpu_p90_ms']:.2f} | {speed} |")
    lines += ["", f"Top-1 on the {result['split']} split ({result['n']} photos) and on copies of them:", "",
              "| model | input | path | top-1 % | agreement with full % |", "|---|---|---|---|---|"]
    for r in result["accuracy"]:
        lines.append(f"| {name[r['model']]} | {r['frame']} | {r['path']} | {100 * r['top1']:.2f} "
                     f"| {100 * r['agreement']:.2f} |")
    lines += ["", "1080p decoding alone (`cv2.imdecode`), one photo, by format: only JPEG decodes faster reduced.", "",
              "| format | kB | decode | p50 ms | p90 ms | CPU p50 ms |", "|---|---|---|---|---|---|"]
    for r in result["formats"]:
        lines.append(f"| {r['format']} | {r['kb']} | {r['decode']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} "
                     f"| {r['cpu_p50_ms']:.2f} |")
    lines += ["", "| model | path | goal | measured | met |", "|---|---|---|---|---|"]
    for g in result["goals"]:
        lines.append(f"| {name[g['model']]} | {g['path']} | {g['goal']} | {g['measured']} | "
                     f"{'yes' if g['met'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"reduced-decode ratios must be >= 1, got {text!r}")
    return values


def _frames(text: str) -> list[str]:
    frames = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in frames if f not in FRAMES]
    if not frames or unknown:
        raise argparse.ArgumentTypeError(f"inputs must be among {list(FRAMES)}, got {text!r}")
    return frames


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="classifier .onnx files")
    p.add_argument("--data", required=True, help="dataset folder (its --split photos are the inputs)")
    p.add_argument("--split", default="test", help="split to measure (choose ratios on val or train; default: test)")
    p.add_argument("--out", default="runs/camera", help="folder for camera.json / camera.md")
    p.add_argument("--reduced-decode", type=_floats, default=[PreprocessConfig.RECOMMENDED_REDUCED_DECODE],
                   help="comma-separated ratios r >= 1 of the reduced paths (default: %(default)s)")
    p.add_argument("--accuracy", type=_frames, default=["native", "1080p"],
                   help=f"inputs to measure top-1 on, comma-separated among {list(FRAMES)} (default: native,1080p)")
    p.add_argument("--limit", type=int, default=None, help="measure top-1 on this many photos, evenly spread")
    p.add_argument("--timing-images", type=int, default=8, help="photos cycled through per timed input")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime and OpenCV threads (default: 1)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--iters", type=int, default=10, help="calls per configuration per round")
    p.add_argument("--clock", choices=tuple(_P50), default="wall",
                   help="what speedups and goals compare: wall-clock p50, or the calling thread's CPU time "
                        "(on a machine shared with other work)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = camera_benchmark(args.models, args.data, split=args.split, ratios=args.reduced_decode,
                              limit=args.limit, accuracy_frames=args.accuracy, timing_images=args.timing_images,
                              threads=args.threads, rounds=args.rounds, iters=args.iters, clock=args.clock)
    table = markdown(result)
    for path in write_result_files(args.out, "camera", result, table, lambda *_: False):
        log.info("wrote %s", path)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

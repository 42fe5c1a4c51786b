"""Corruption robustness (``skulens robustness``): top-1 of an exported classifier on corrupted photos.

``evaluate_robustness`` runs an fp32 or INT8 skulens ONNX model through the torch-free SDK over a
dataset split, clean and once per corruption, and reports each corruption's top-1 as a fraction
of the clean top-1 (the product goal: >= ``GOAL`` = 0.85 everywhere).

Corruptions act on the decoded uint8 BGR image (OpenCV conventions, HxWx3) *before* the model's
own preprocessing. Each is a pure function ``image, rng -> image`` registered in ``CORRUPTIONS``;
``rng`` is a numpy Generator seeded with ``(seed, index of the image in the split)``, so runs are
reproducible and an image gets the same corruption whatever ``limit`` is. Fixed severities:

* lighting: ``dark`` (gamma ``DARK_GAMMA`` = 1.2 deepens the shadows, then x ``DARK_GAIN`` = 0.4),
  ``bright`` (x ``BRIGHT_GAIN`` = 1.6, clipped), ``low_contrast`` (x ``LOW_CONTRAST`` = 0.4 around
  the image mean), ``warm_cast`` / ``cool_cast`` (white balance R x1.25 and B x0.75 / the
  opposite: ``CAST_GAIN`` = 0.25);
* angle: ``rotation`` (``ROTATION_DEG`` = 25 degrees, random sign, reflected border),
  ``perspective`` (each corner moved by up to ``PERSPECTIVE_JITTER`` = 12 % of the width/height);
* scale: ``small_in_frame`` (shrunk to ``SMALL_SCALE`` = 0.6 and pasted centred on a canvas of the
  original size: the photo reduced to 4x4 cells, blown back up and blurred, i.e. a smooth field
  of its own border colours like an out-of-focus shelf, with no second copy of the product),
  ``low_resolution`` (1/``LOWRES_FACTOR`` = 1/4 of the side with INTER_AREA, back with INTER_LINEAR);
* sensor: ``gaussian_noise`` (sigma ``NOISE_SIGMA`` = 12 levels), ``blur`` (Gaussian, sigma
  ``BLUR_SIGMA`` = 2 px at a 348 px shorter side, scaled with it), ``jpeg`` (quality ``JPEG_QUALITY`` = 15).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import cv2
import numpy as np

from skulens import ClassifierOptions, ImageClassifier, decode_image, load_dataset
from skulens.internal import Dataset, atomic_write, label_mapping

from ._files import write_result_files

log = logging.getLogger(__name__)

Corruption = Callable[[np.ndarray, np.random.Generator], np.ndarray]

GOAL = 0.85
DARK_GAIN, DARK_GAMMA = 0.4, 1.2
BRIGHT_GAIN = 1.6
LOW_CONTRAST = 0.4
CAST_GAIN = 0.25
ROTATION_DEG = 25.0
PERSPECTIVE_JITTER = 0.12
SMALL_SCALE = 0.6
LOWRES_FACTOR = 4
NOISE_SIGMA = 12.0
BLUR_SIGMA, BLUR_REFERENCE_SIDE = 2.0, 348
JPEG_QUALITY = 15
BATCH = 32  # images decoded and classified together (per corruption)
PNG_NAME = "robustness.png"
GROUP_COLORS = {"lighting": "tab:orange", "angle": "tab:blue", "scale": "tab:green", "sensor": "tab:purple"}


# -- corruptions ---------------------------------------------------------------------------------
def _lut(image: np.ndarray, fn) -> np.ndarray:
    """Apply ``fn`` (float levels 0..255 -> float levels) as a 256-entry lookup table."""
    table = np.clip(np.rint(fn(np.arange(256, dtype=np.float64))), 0, 255).astype(np.uint8)
    return cv2.LUT(image, table)


def dark(image, rng):
    return _lut(image, lambda v: 255.0 * DARK_GAIN * (v / 255.0) ** DARK_GAMMA)


def bright(image, rng):
    return _lut(image, lambda v: v * BRIGHT_GAIN)


def low_contrast(image, rng):
    mean = float(image.mean())
    return _lut(image, lambda v: mean + LOW_CONTRAST * (v - mean))


def _white_balance(image, red_gain: float, blue_gain: float) -> np.ndarray:
    gains = np.array([blue_gain, 1.0, red_gain], dtype=np.float32)  # BGR order
    return np.clip(np.rint(image * gains), 0, 255).astype(np.uint8)


def warm_cast(image, rng):
    return _white_balance(image, 1.0 + CAST_GAIN, 1.0 - CAST_GAIN)


def cool_cast(image, rng):
    return _white_balance(image, 1.0 - CAST_GAIN, 1.0 + CAST_GAIN)


def rotation(image, rng):
    h, w = image.shape[:2]
    angle = ROTATION_DEG * (1 if rng.random() < 0.5 else -1)
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0)
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def perspective(image, rng):
    h, w = image.shape[:2]
    src = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float32)
    shift = rng.uniform(-PERSPECTIVE_JITTER, PERSPECTIVE_JITTER, size=(4, 2)) * [w, h]
    m = cv2.getPerspectiveTransform(src, (src + shift).astype(np.float32))
    return cv2.warpPerspective(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def small_in_frame(image, rng):
    h, w = image.shape[:2]
    sh, sw = max(1, round(h * SMALL_SCALE)), max(1, round(w * SMALL_SCALE))
    small = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA)
    cells = cv2.resize(image, (4, 4), interpolation=cv2.INTER_AREA)
    canvas = cv2.resize(cells, (w, h), interpolation=cv2.INTER_LINEAR)
    canvas = cv2.GaussianBlur(canvas, (0, 0), sigmaX=max(1.0, 0.05 * min(h, w)))
    top, left = (h - sh) // 2, (w - sw) // 2
    canvas[top:top + sh, left:left + sw] = small
    return canvas


def low_resolution(image, rng):
    h, w = image.shape[:2]
    tiny = cv2.resize(image, (max(1, w // LOWRES_FACTOR), max(1, h // LOWRES_FACTOR)),
                      interpolation=cv2.INTER_AREA)
    return cv2.resize(tiny, (w, h), interpolation=cv2.INTER_LINEAR)


def gaussian_noise(image, rng):
    return np.clip(np.rint(image + rng.normal(0.0, NOISE_SIGMA, size=image.shape)), 0, 255).astype(np.uint8)


def blur(image, rng):
    sigma = BLUR_SIGMA * min(image.shape[:2]) / BLUR_REFERENCE_SIDE
    return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma)


def jpeg(image, rng):
    _, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


CORRUPTIONS: dict[str, Corruption] = {f.__name__: f for f in (
    dark, bright, low_contrast, warm_cast, cool_cast, rotation, perspective,
    small_in_frame, low_resolution, gaussian_noise, blur, jpeg)}
GROUPS = {**dict.fromkeys(("dark", "bright", "low_contrast", "warm_cast", "cool_cast"), "lighting"),
          "rotation": "angle", "perspective": "angle", "small_in_frame": "scale",
          "low_resolution": "scale", "gaussian_noise": "sensor", "blur": "sensor", "jpeg": "sensor"}


def select_corruptions(corruptions=None) -> dict[str, Corruption]:
    """Resolve ``None`` (all), "a,b", a list of registered names, or a {name: function} mapping."""
    if corruptions is None:
        return dict(CORRUPTIONS)
    if isinstance(corruptions, Mapping):
        chosen = dict(corruptions)
        bad = [k for k, f in chosen.items() if not callable(f)]
        if bad:
            raise ValueError(f"corruptions {bad} are not callables image, rng -> image")
    else:
        names = corruptions.split(",") if isinstance(corruptions, str) else list(corruptions)
        names = [n.strip() for n in names if n.strip()]
        unknown = [n for n in names if n not in CORRUPTIONS]
        if unknown:
            raise ValueError(f"unknown corruption(s) {unknown}; known: {', '.join(CORRUPTIONS)}")
        chosen = {n: CORRUPTIONS[n] for n in names}
    if not chosen:
        raise ValueError("no corruptions selected")
    return chosen


# -- evaluation ----------------------------------------------------------------------------------
def _pick(n: int, limit: int | None) -> list[int]:
    """Indices of the images to use: all, or ``limit`` evenly spaced through the split (split
    lists are often sorted by class, so the first N would cover only a few classes)."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if limit is None or limit >= n:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, limit).round()})


def _decode_bgr(path, max_pixels: int) -> np.ndarray:
    image = decode_image(path, max_pixels=max_pixels)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR) if image.shape[2] == 4 else image


def _apply(name: str, fn: Corruption, image: np.ndarray, seed: int, index: int) -> np.ndarray:
    out = fn(image.copy(), np.random.default_rng([seed, index]))
    if not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.ndim != 3:
        raise ValueError(f"corruption {name!r} must return a uint8 HxWx3 array, got "
                         f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}")
    return out


def evaluate_robustness(model_path, data, split: str = "test", corruptions=None, limit: int | None = None,
                        threads: int = 1, seed: int = 0) -> dict:
    """Clean and per-corruption top-1 of the model at ``model_path`` on ``split`` of ``data`` (a
    dataset folder or a loaded Dataset). ``corruptions``: see ``select_corruptions``. Returns a
    JSON-able dict; ``relative`` is top-1 / clean top-1 (None when the clean top-1 is 0)."""
    chosen = select_corruptions(corruptions)
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    samples = dataset.split(split)  # skulens.DatasetError when missing or empty
    picked = _pick(len(samples), limit)
    clf = ImageClassifier.from_path(model_path, ClassifierOptions(num_threads=threads, top_k=1))
    with clf:
        to_model = label_mapping(clf.labels, dataset)
        clean_correct, correct = 0, dict.fromkeys(chosen, 0)
        for start in _progress(range(0, len(picked), BATCH)):
            idx = picked[start:start + BATCH]
            images = [_decode_bgr(samples[i].path, clf.options.max_pixels) for i in idx]
            targets = to_model[[samples[i].label for i in idx]]
            # top-1 is the logits' argmax, exactly as `skulens eval` (skulens._evaluate) scores it
            clean_correct += int((clf.logits_batch(images).argmax(axis=1) == targets).sum())
            for name, fn in chosen.items():
                batch = [_apply(name, fn, im, seed, i) for im, i in zip(images, idx)]
                correct[name] += int((clf.logits_batch(batch).argmax(axis=1) == targets).sum())
    n = len(picked)
    per = {name: {"group": GROUPS.get(name, "custom"), "top1": correct[name] / n,
                  "relative": correct[name] / clean_correct if clean_correct else None}
           for name in chosen}
    worst = min(per, key=lambda k: per[k]["top1"])
    return {"model": str(model_path), "split": split, "n": n, "seed": seed, "goal": GOAL,
            "clean_top1": clean_correct / n, "corruptions": per, "worst": worst,
            "min_relative": per[worst]["relative"]}


def _progress(batches):
    """``batches`` wrapped in a tqdm bar (shown on terminals only), or as is without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        return batches
    return tqdm(batches, desc=f"robustness ({BATCH} images a batch)", unit="batch", disable=None, leave=False)


# -- reports -------------------------------------------------------------------------------------
def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def markdown(result: dict) -> str:
    """The report as Markdown: one table row per corruption, then the worst one."""
    goal = result.get("goal", GOAL)
    lines = [f"# Corruption robustness: {Path(result['model']).name}", "",
             f"Clean top-1 {_fmt(result['clean_top1'])} on {result['split']} (n={result['n']}); "
             f"goal: every corruption >= {goal:.2f} of clean.", "",
             "| corruption | group | top-1 | relative to clean |", "|---|---|---:|---:|"]
    for name, r in result["corruptions"].items():
        below = r["relative"] is not None and r["relative"] < goal
        lines.append(f"| {name} | {r['group']} | {_fmt(r['top1'])} | {_fmt(r['relative'])}"
                     f"{' (below goal)' if below else ''} |")
    n_below = sum(r["relative"] is not None and r["relative"] < goal for r in result["corruptions"].values())
    lines += ["", f"Worst: {result['worst']} ({_fmt(result['min_relative'])} of clean); "
              f"{n_below} of {len(result['corruptions'])} below the goal."]
    return "\n".join(lines) + "\n"


def chart(result: dict, path) -> bool:
    """Horizontal bars of relative top-1 per corruption, coloured by group; False without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        log.warning("matplotlib is not installed: no %s (pip install 'skulens[train]')", PNG_NAME)
        return False
    rows = list(result["corruptions"].items())
    values = [r["relative"] or 0.0 for _, r in rows]
    groups = [r["group"] for _, r in rows]
    fig = Figure(figsize=(7, 0.3 * len(rows) + 1.6))
    ax = fig.add_subplot()
    y = list(range(len(rows)))
    ax.barh(y, values, color=[GROUP_COLORS.get(g, "tab:gray") for g in groups])
    ax.set_yticks(y, [name for name, _ in rows], fontsize=8)
    ax.invert_yaxis()
    goal = result.get("goal", GOAL)
    ax.axvline(goal, color="k", linestyle="--", linewidth=1)
    ax.set_xlim(0, max(1.05, max(values, default=0) * 1.05))
    ax.set_xlabel(f"top-1 relative to clean top-1 (dashed: the {goal:.2f} goal)")
    ax.set_title(f"{Path(result['model']).name}: clean top-1 {_fmt(result['clean_top1'])}, "
                 f"n={result['n']}", fontsize=10)
    ax.legend(handles=[Patch(color=GROUP_COLORS.get(g, "tab:gray"), label=g) for g in dict.fromkeys(groups)],
              loc="lower right", fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: FigureCanvasAgg(fig).print_png(tmp))
    return True


def write_report(result: dict, out_dir) -> list[Path]:
    """Write robustness.json, robustness.md and robustness.png into ``out_dir``; their paths."""
    return write_result_files(out_dir, "robustness", result, markdown(result), chart)

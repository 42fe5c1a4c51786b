"""The accuracy / latency / size frontier of several exported models (``skulens bench-table``).

``frontier_table`` measures skulens ONNX models side by side in one run, one row per model:
its name, architecture, input size and precision (from the metadata the file carries), file
size, fine and coarse top-1 on a dataset split through the SDK, model-only latency at batch 1
(the model's own preprocessed tensor of a real image) and end-to-end latency (JPEG bytes ->
top-5 through ``ImageClassifier.classify``: decode + preprocess + inference + postprocess).

Both latencies are measured with every model in the same loop, round by round (A B C A B C ...),
so drift on a shared, noisy machine hits all models alike; each reports the median of its
per-iteration samples (``skulens.bench._timing.summarize``). ``write_table`` writes
``frontier.json``, ``frontier.md`` and ``frontier.png`` (top-1 against end-to-end latency).
"""
from __future__ import annotations

import contextlib
import logging
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from skulens import ClassifierOptions, ImageClassifier, load_dataset
from skulens.internal import Dataset, atomic_write, evaluate

from ._files import write_result_files
from ._timing import interleaved_samples, ort_runner, summarize

log = logging.getLogger(__name__)

PNG_NAME = "frontier.png"
SYNTHETIC_SIDE = 348      # side of the synthetic JPEGs timed end to end when there is no dataset
MISSING = "–"             # table cell of a value not measured (no dataset)
MARKERS = {"fp32": "o", "int8": "s"}


def _cycle(clf: ImageClassifier, jpegs: list[bytes]) -> Callable[[], object]:
    """A zero-argument call classifying the next JPEG of ``jpegs`` (round robin) from its bytes."""
    state = {"i": 0}

    def run():
        data = jpegs[state["i"] % len(jpegs)]
        state["i"] += 1
        return clf.classify(data)

    return run


def synthetic_jpegs(n: int, side: int = SYNTHETIC_SIDE, seed: int = 0) -> list[bytes]:
    """``n`` smooth random-texture pictures encoded as JPEG bytes (for timing without a dataset)."""
    import cv2

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
        img = cv2.resize(small, (side, side), interpolation=cv2.INTER_CUBIC)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:  # pragma: no cover - OpenCV always encodes a plain uint8 image
            raise RuntimeError("cv2.imencode failed on a synthetic image")
        out.append(buf.tobytes())
    return out


def _names(paths: list[Path]) -> list[str]:
    """File names, or the full paths where two models share a file name."""
    names = [p.name for p in paths]
    return [str(p) if names.count(p.name) > 1 else p.name for p in paths]


def _accuracy(clf: ImageClassifier, dataset: Dataset, split: str, limit: int | None,
              reuse_metadata_eval: bool) -> dict:
    """Fine/coarse top-1 of ``clf`` on ``split``: measured through the SDK, or, when asked and
    valid (same split, whole split, same number of images), the eval export stored in the file."""
    stored = (clf.metadata.metrics or {}).get("eval") or {}
    if (reuse_metadata_eval and limit is None and stored.get("split") == split
            and stored.get("n") == len(dataset.split(split)) and "top1" in stored):
        ev, source = stored, "from metadata"
    else:
        ev, source = evaluate(clf, dataset, split=split, limit=limit), "measured"
    return {"top1": ev["top1"], "coarse_top1": ev.get("coarse_top1"), "n": ev["n"], "accuracy_source": source}


def _cpu_info() -> dict:
    """This machine, as far as it decides latency: CPU model, cores and features, OS, runtimes."""
    import onnxruntime as ort

    from ._cpu import cpu_report

    return {**cpu_report(), "platform": platform.platform(), "python": platform.python_version(),
            "onnxruntime": ort.__version__}


def frontier_table(models: Sequence, data=None, split: str = "test", limit: int | None = None,
                   threads: int = 1, rounds: int = 5, e2e_images: int = 8, *, iters: int = 20,
                   reuse_metadata_eval: bool = False) -> dict:
    """Measure each skulens ONNX model in ``models`` side by side; one row per model.

    data: dataset folder (or a loaded ``Dataset``) for accuracy and real JPEGs; without it the
    accuracy columns are None and the end-to-end path times synthetic JPEGs. limit: evaluate only
    the first N images of ``split``. threads: onnxruntime intra-op threads of every session.
    rounds x iters: timed calls per model, interleaved across models. e2e_images: how many JPEGs
    (read once, cycled) the end-to-end path classifies. reuse_metadata_eval: take top-1 from the
    eval that export stored in the file when it covers the same whole split (else measured).

    Raises ValueError for an empty ``models`` or bad counts, ModelError naming the file for a
    missing, invalid or non-skulens model, DatasetError for an unreadable dataset.
    """
    paths = [Path(os.fspath(m)) for m in models]
    if not paths:
        raise ValueError("frontier_table needs at least one model file")
    if min(rounds, iters, e2e_images, threads) < 1:
        raise ValueError("rounds, iters, e2e_images and threads must all be >= 1")
    dataset = None if data is None else data if isinstance(data, Dataset) else load_dataset(data)
    if dataset is not None:
        samples = dataset.split(split)
        picks = samples[:limit] if limit else samples
        jpegs = [Path(s.path).read_bytes() for s in picks[:e2e_images]]
        e2e_inputs = "real images of the split"
    else:
        jpegs, e2e_inputs = synthetic_jpegs(e2e_images), f"synthetic {SYNTHETIC_SIDE}x{SYNTHETIC_SIDE} JPEGs"
    options = ClassifierOptions(num_threads=threads, top_k=5)
    with contextlib.ExitStack() as stack:
        # open (and so validate) every model before measuring anything
        clfs = [stack.enter_context(ImageClassifier.from_path(p, options)) for p in paths]
        rows = []
        for name, path, clf in zip(_names(paths), paths, clfs):
            pre = clf.preprocess_config
            size = path.stat().st_size
            row = {"name": name, "path": str(path), "model_name": clf.metadata.model_name,
                   "input_size": list(pre.input_size), "input_dtype": pre.dtype, "layout": pre.layout,
                   "precision": "int8" if clf.metadata.quantization is not None else "fp32",
                   "size_bytes": size, "size_mb": size / 1e6,
                   "top1": None, "coarse_top1": None, "n": None, "accuracy_source": None}
            if dataset is not None:
                row.update(_accuracy(clf, dataset, split, limit, reuse_metadata_eval))
            rows.append(row)
        # model-only: the bare session on each model's own tensor of the same real image
        runners = [ort_runner(p, clf.preprocess(jpegs[0])[None], threads) for p, clf in zip(paths, clfs)]
        model_only = interleaved_samples(runners, rounds=rounds, iters=iters)
        e2e = interleaved_samples([_cycle(clf, jpegs) for clf in clfs], rounds=rounds, iters=iters)
    for row, mo, ee in zip(rows, model_only, e2e):
        m, e = summarize(mo)["latency_ms"], summarize(ee)["latency_ms"]
        row.update(model_only_p50_ms=m["p50"], model_only_p90_ms=m["p90"],
                   e2e_p50_ms=e["p50"], e2e_p90_ms=e["p90"], timing_samples=m["n"])
    return {"threads": threads, "split": split, "limit": limit,
            "data": str(dataset.root) if dataset is not None else None, "rounds": rounds, "iters": iters,
            "e2e_inputs": e2e_inputs, "e2e_images": len(jpegs), "rows": rows, "cpu": _cpu_info()}


# -- report ---------------------------------------------------------------------------------------
def _pct(x) -> str:
    return MISSING if x is None else f"{100 * x:.1f} %"


def markdown(result: dict) -> str:
    """The frontier as a Markdown table, one row per model, with how it was measured."""
    cpu = result.get("cpu") or {}
    lines = ["# Accuracy / latency / size frontier", "",
             f"Batch 1, {result['threads']} intra-op thread(s), {cpu.get('model', 'unknown CPU')}; "
             f"latencies are p50 of {result['rounds']} x {result['iters']} calls per model, all models "
             f"interleaved; end to end: JPEG bytes -> top-5 on {result['e2e_images']} {result['e2e_inputs']}.",
             "", "| model | input | precision | top-1 fine | top-1 coarse | model-only p50 ms "
             "| end-to-end p50 ms | size MB |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        h, w = r["input_size"]
        lines.append(f"| {r['name']} ({r['model_name']}) | {h}x{w} {r['input_dtype']} | {r['precision']} "
                     f"| {_pct(r['top1'])} | {_pct(r['coarse_top1'])} | {r['model_only_p50_ms']:.3f} "
                     f"| {r['e2e_p50_ms']:.3f} | {r['size_mb']:.2f} |")
    lines.append("")
    if result.get("data"):
        sources = sorted({r["accuracy_source"] for r in result["rows"]})
        n = sorted({r["n"] for r in result["rows"]})
        lines.append(f"Accuracy on split '{result['split']}' of {result['data']} "
                     f"(n={', '.join(map(str, n))}; {', '.join(sources)}).")
    else:
        lines.append(f"No dataset: accuracy not measured ({MISSING}).")
    return "\n".join(lines) + "\n"


def chart(result: dict, path) -> bool:
    """Scatter of top-1 (or, without a dataset, file size) against end-to-end p50, one labelled
    point per model, fp32 and INT8 as different markers; False when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError:
        log.warning("matplotlib is not installed: no %s (pip install 'skulens[train]')", PNG_NAME)
        return False
    rows = result["rows"]
    accuracy = all(r["top1"] is not None for r in rows)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for r in rows:
        x = r["e2e_p50_ms"]
        y = 100 * r["top1"] if accuracy else r["size_mb"]
        ax.scatter([x], [y], marker=MARKERS.get(r["precision"], "x"), s=60,
                   color="tab:blue" if r["precision"] == "fp32" else "tab:orange")
        ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel(f"end-to-end p50 (ms, JPEG -> top-5, batch 1, {result['threads']} thread(s))")
    ax.set_ylabel(f"top-1 fine on {result['split']} (%)" if accuracy else "file size (MB), no dataset")
    ax.legend(handles=[Line2D([], [], marker=m, linestyle="", color=c, label=p) for p, m, c in
                       (("fp32", "o", "tab:blue"), ("int8", "s", "tab:orange"))], fontsize=8)
    ax.margins(x=0.2, y=0.15)  # room for the labels of the outermost points
    ax.grid(alpha=0.3)
    ax.set_title("Accuracy / latency frontier" if accuracy else "Size / latency (no accuracy)", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: FigureCanvasAgg(fig).print_png(tmp))
    return True


def write_table(result: dict, out_dir) -> list[Path]:
    """Write frontier.json, frontier.md and frontier.png into ``out_dir``; the paths written."""
    return write_result_files(out_dir, "frontier", result, markdown(result), chart)

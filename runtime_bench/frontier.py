"""The accuracy / latency / size frontier of several exported models (``skulens bench-table``).

``frontier_table`` measures skulens ONNX models side by side in one run, one row per model x
backend (onnxruntime, OpenVINO) x thread count: its name, architecture, input size and precision
(from the metadata the file carries), file size, fine and coarse top-1 on a dataset split through
the SDK, model-only latency at batch 1 (the model's own preprocessed tensor of a real image),
end-to-end latency (JPEG bytes -> top-5 through ``ImageClassifier.classify``: decode + preprocess
+ inference + postprocess), p50 and p99 of both, model-only throughput at larger batches, the
peak RSS of a process running it, and whether it is Pareto-optimal (no other row at the same
thread count is at least as accurate and at least as fast end to end, and better in one).

Accuracy is measured once per model x backend (results do not depend on the thread count) and
copied to its rows of every thread count. A backend whose extra is missing (or that cannot
compile a model) is skipped with the reason, logged and listed in ``result["skipped"]``. Rows of
another backend than onnxruntime carry ``vs_onnxruntime``: top-1 agreement and the largest
absolute logit difference against onnxruntime on the same file.

All rows of one thread count are timed in the same loop, round by round (A B C A B C ...), so
drift on a shared, noisy machine hits them alike; one loop for batch-1 model-only latency, one for
end to end, one per throughput batch size. ``write_table`` writes ``frontier.json``,
``frontier.md`` and ``frontier.png`` (top-1 against end-to-end latency, the Pareto front marked).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from skulens import ClassifierOptions, ImageClassifier, MissingExtraError, ModelError, load_dataset
from skulens.internal import Dataset, evaluate_samples, require_extra

from . import _procs
from ._frontier_report import MISSING, PNG_NAME, chart, markdown, pareto_marks, write_table  # noqa: F401
from ._timing import interleaved_samples, summarize
from .config import parse_int_list

log = logging.getLogger(__name__)

REFERENCE = "onnxruntime"  # the backend every other backend's outputs are checked against
SYNTHETIC_SIDE = 348       # side of the synthetic JPEGs timed end to end when there is no dataset
CHECK_IMAGES = 8           # most timing JPEGs the outputs check runs when there are no eval logits
RSS_HOW = ("peak RSS (VmHWM) of a fresh process per row: import skulens, open the model with the row's "
           "backend and threads, classify one JPEG, run one batch of {batch}")


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


def _ints(value, what: str, *, empty_ok: bool = False) -> tuple[int, ...]:
    """An int, a sequence of ints or "1,2" -> a tuple of ints >= 1 (ValueError naming ``what``)."""
    out = parse_int_list(value) if isinstance(value, str) else (int(value),) if isinstance(value, int) \
        else tuple(int(v) for v in value)
    if (not out and not empty_ok) or any(v < 1 for v in out):
        raise ValueError(f"{what} must be integers >= 1, got {value!r}")
    return tuple(dict.fromkeys(out))


def _backends(value) -> tuple[str, ...]:
    """"onnxruntime,openvino" (or a sequence) -> backend names, each one the SDK knows."""
    names = [b.strip() for b in (value.split(",") if isinstance(value, str) else value) if b.strip()]
    if not names:
        raise ValueError("backends: name at least one (onnxruntime, openvino)")
    for b in names:
        ClassifierOptions(backend=b)  # ValueError listing the choices for an unknown one
    return tuple(dict.fromkeys(names))


def backend_unavailable(backend: str) -> str | None:
    """Why ``backend`` cannot run here (its extra is not installed), or None when it can."""
    if backend == "openvino":
        try:
            require_extra("openvino", "openvino")
        except MissingExtraError as exc:
            return str(exc)
    return None


def _accuracy(clf: ImageClassifier, backend: str, dataset: Dataset, split: str, picks: list,
              limit: int | None, reuse_metadata_eval: bool) -> tuple[dict, np.ndarray | None]:
    """(fine/coarse top-1 of ``clf`` on ``picks``, their logits): measured through the SDK, or for
    an onnxruntime row when asked and valid (same split, whole split, same number of images), the
    eval export stored in the file (no logits then)."""
    stored = (clf.metadata.metrics or {}).get("eval") or {}
    if (reuse_metadata_eval and backend == REFERENCE and limit is None and stored.get("split") == split
            and stored.get("n") == len(picks) and "top1" in stored):
        ev, source, logits = stored, "from metadata", None
    else:
        logits, ev = evaluate_samples(clf, picks, dataset)
        source = "measured"
    return {"top1": ev["top1"], "coarse_top1": ev.get("coarse_top1"), "n": ev["n"],
            "accuracy_source": source}, logits


def _check(got: np.ndarray, ref: np.ndarray, precision: str, on: str) -> dict:
    """How far ``got`` (logits of a backend) is from ``ref`` (onnxruntime's, same images); ``ok``
    when the largest difference is within skulens bench's tolerance (1e-3 fp32, 5e-2 INT8,
    relative to the largest reference logit when that is above 1)."""
    tol = (5e-2 if precision == "int8" else 1e-3) * max(1.0, float(np.abs(ref).max()))
    diff = float(np.abs(got.astype(np.float64) - ref).max())
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    return {"on": on, "images": int(len(ref)), "top1_agreement": agree, "max_abs_logit_diff": diff,
            "tolerance": tol, "ok": bool(np.isfinite(got).all() and diff <= tol)}


def _options(backend: str, threads: int) -> ClassifierOptions:
    return ClassifierOptions(num_threads=threads, top_k=5, backend=backend)


def _open_all(stack: contextlib.ExitStack, paths, names, backends, threads: int, skipped: list):
    """(the onnxruntime classifier of every model, [(model index, backend, classifier)]), all
    entered into ``stack``. The onnxruntime ones are the outputs check's reference and validate
    each file, so a bad file is a ModelError whatever the backends; a model that another backend
    cannot open is added to ``skipped`` (logged) instead."""
    refs, opened = [], []
    for i, path in enumerate(paths):
        refs.append(stack.enter_context(ImageClassifier.from_path(path, _options(REFERENCE, threads))))
        for b in backends:
            if b == REFERENCE:
                opened.append((i, b, refs[-1]))
                continue
            try:
                opened.append((i, b, stack.enter_context(ImageClassifier.from_path(path, _options(b, threads)))))
            except ModelError as exc:
                log.warning("%s: backend %s skipped for this model: %s", names[i], b, exc)
                skipped.append({"backend": b, "model": names[i], "reason": str(exc)})
    return refs, opened


def _peak_rss_child(path: str, backend: str, threads: int, image: str, batch: int) -> dict:
    """Run in a fresh interpreter by :func:`_peak_rss`: what one row costs a process that uses it."""
    from ._worker import peak_rss_mb

    data = Path(image).read_bytes()
    with ImageClassifier.from_path(path, _options(backend, threads)) as clf:
        clf.classify(data)
        if batch > 1:
            with contextlib.suppress(Exception):  # a fixed-batch model: its throughput was skipped too
                clf.run_logits(np.repeat(clf.preprocess(data)[None], batch, axis=0))
    return {"peak_rss_mb": peak_rss_mb()}


def _peak_rss(rows: list[dict], image: str, batch: int) -> float | None:
    """Set ``peak_rss_mb`` of each row from its own child process; the RSS of a process that only
    imports skulens (the baseline), or None if that probe failed."""
    for row in rows:
        args = json.dumps([row["path"], row["backend"], row["threads"], image, batch])
        try:
            row["peak_rss_mb"] = _procs._probe(
                "import json; from skulens.bench.frontier import _peak_rss_child as f; "
                f"print(json.dumps(f(*json.loads({args!r}))))")["peak_rss_mb"]
        except _procs.WorkerError as exc:
            log.warning("%s (%s, %d threads): no peak RSS: %s", row["name"], row["backend"], row["threads"], exc)
    try:
        return _procs.import_sdk_probe()["peak_rss_mb"]
    except _procs.WorkerError as exc:
        log.warning("no baseline RSS of import skulens: %s", exc)
        return None


def _time_rows(rows, clfs, xs, jpegs, batches, rounds: int, iters: int) -> None:
    """Every latency and throughput figure of ``rows`` (one thread count), each in one interleaved
    loop over all rows. Model-only: ``run_logits`` (the row's backend session) on the model's own
    tensor of the first JPEG, or of the JPEGs tiled to the batch size; throughput is the batch size
    over the median call time."""
    mo = interleaved_samples([lambda c=c, x1=x[:1]: c.run_logits(x1) for c, x in zip(clfs, xs)],
                             rounds=rounds, iters=iters)
    e2e = interleaved_samples([_cycle(c, jpegs) for c in clfs], rounds=rounds, iters=iters)
    for row, m_s, e_s in zip(rows, mo, e2e):
        m, e = summarize(m_s)["latency_ms"], summarize(e_s)["latency_ms"]
        row.update(model_only_p50_ms=m["p50"], model_only_p99_ms=m["p99"], e2e_p50_ms=e["p50"],
                   e2e_p99_ms=e["p99"], timing_samples=m["n"], p99_reliable=m["p99_reliable"])
    for b in batches:
        runs = {}
        for k, (row, clf, x) in enumerate(zip(rows, clfs, xs)):
            row[f"throughput_b{b}_ips"] = None
            xb = np.concatenate([x] * -(-b // len(x)))[:b]
            try:
                clf.run_logits(xb)
            except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types; a fixed batch size
                log.warning("%s (%s): no throughput at batch %d: %s", row["name"], row["backend"], b, exc)
                row.setdefault("throughput_skipped", {})[str(b)] = str(exc).strip().splitlines()[0][:200]
                continue
            runs[k] = lambda c=clf, xb=xb: c.run_logits(xb)
        samples = interleaved_samples(list(runs.values()), rounds=rounds, iters=max(2, -(-iters // b)))
        for k, s in zip(runs, samples):
            rows[k][f"throughput_b{b}_ips"] = b / float(np.median(s))


def frontier_table(models: Sequence, data=None, split: str = "test", limit: int | None = None,
                   threads=(1,), backends=(REFERENCE,), rounds: int = 5, e2e_images: int = 8,
                   throughput_batch=(8, 32), *, iters: int = 20, rss: bool = True,
                   reuse_metadata_eval: bool = False) -> dict:
    """Measure each skulens ONNX model in ``models`` side by side; one row per model x backend x
    thread count (in that nesting: thread counts outermost).

    data: dataset folder (or a loaded ``Dataset``) for accuracy and real JPEGs; without it the
    accuracy columns are None, there is no Pareto mark, and the end-to-end path times synthetic
    JPEGs. limit: evaluate only the first N images of ``split``. threads: intra-op thread counts
    (an int, a sequence or "1,2"). backends: "onnxruntime", "openvino" (a sequence or "a,b"); one
    whose extra is missing is skipped with the reason. rounds x iters: timed calls per row,
    interleaved across rows. e2e_images: how many JPEGs (read once, cycled) the end-to-end path
    classifies. throughput_batch: batch sizes of the model-only throughput (empty: none).
    rss: peak RSS of each row in a child process. reuse_metadata_eval: take the onnxruntime rows'
    top-1 from the eval export stored in the file when it covers the same whole split.

    Raises ValueError for an empty ``models``, bad counts or an unknown backend, or when no asked
    backend can run here; ModelError naming the file for a missing, invalid or non-skulens model;
    DatasetError for an unreadable dataset.
    """
    paths = [Path(os.fspath(m)) for m in models]
    if not paths:
        raise ValueError("frontier_table needs at least one model file")
    if min(rounds, iters, e2e_images) < 1:
        raise ValueError("rounds, iters and e2e_images must all be >= 1")
    threads, batches = _ints(threads, "threads"), _ints(throughput_batch, "throughput_batch", empty_ok=True)
    asked, skipped = _backends(backends), []
    for b in asked:
        why = backend_unavailable(b)
        if why:
            log.warning("backend %s skipped: %s", b, why)
            skipped.append({"backend": b, "model": None, "reason": why})
    usable = [b for b in asked if not any(s["backend"] == b for s in skipped)]
    if not usable:
        raise ValueError("no asked backend can run here: "
                         + "; ".join(f"{s['backend']}: {s['reason']}" for s in skipped))
    dataset = None if data is None else data if isinstance(data, Dataset) else load_dataset(data)
    picks = None
    if dataset is not None:
        samples = dataset.split(split)
        picks = samples[:limit] if limit else samples
        jpegs = [Path(s.path).read_bytes() for s in picks[:e2e_images]]
        e2e_inputs = "real images of the split"
    else:
        jpegs, e2e_inputs = synthetic_jpegs(e2e_images), f"synthetic {SYNTHETIC_SIDE}x{SYNTHETIC_SIDE} JPEGs"
    names, rows, static = _names(paths), [], {}
    for t in threads:
        with contextlib.ExitStack() as stack:
            if not static:  # first thread count: open (and so validate) every model before measuring
                refs, opened = _open_all(stack, paths, names, usable, t, skipped)
                if not opened:
                    raise ValueError("no model could be opened with the asked backends: "
                                     + "; ".join(f"{s['model']}: {s['reason']}" for s in skipped))
            else:           # the same model x backend pairs again, at this thread count
                opened = [(i, b, stack.enter_context(ImageClassifier.from_path(paths[i], _options(b, t))))
                          for i, b in static]
            xs = [np.stack([clf.preprocess(j) for j in jpegs]) for _, _, clf in opened]
            if not static:  # what does not depend on the thread count, once per model x backend
                static.update(_static_rows(paths, names, opened, refs, xs, dataset, split, picks, limit,
                                           reuse_metadata_eval))
            block = [{**static[(i, b)], "threads": t} for i, b, _ in opened]
            log.info("timing %d rows at %d thread(s)", len(block), t)
            _time_rows(block, [c for _, _, c in opened], xs, jpegs, batches, rounds, iters)
        rows += block
    for row, mark in zip(rows, pareto_marks(rows)):
        row["pareto"] = mark
    rss_info = {"measured": False, "how": "not measured (rss=False)", "baseline_mb": None}
    if rss:
        for row in rows:
            row["peak_rss_mb"] = None
        with tempfile.TemporaryDirectory() as tmp:
            image = Path(tmp) / "image.jpg"
            image.write_bytes(jpegs[0])
            base = _peak_rss(rows, str(image), max(batches, default=1))
        rss_info = {"measured": True, "how": RSS_HOW.format(batch=max(batches, default=1)), "baseline_mb": base}
    return {"threads": list(threads), "backends": list(asked), "skipped": skipped, "split": split, "limit": limit,
            "data": str(dataset.root) if dataset is not None else None, "rounds": rounds, "iters": iters,
            "e2e_inputs": e2e_inputs, "e2e_images": len(jpegs), "throughput_batch": list(batches),
            "rss": rss_info, "rows": rows, "cpu": _cpu_info(usable)}


def _static_rows(paths, names, opened, refs, xs, dataset, split, picks, limit, reuse) -> dict:
    """{(model index, backend): the row's fields that do not depend on the thread count}:
    metadata, size, accuracy and, for another backend than onnxruntime, the outputs check."""
    out, eval_logits = {}, {}
    for (i, b, clf), x in zip(opened, xs):
        pre, size = clf.preprocess_config, paths[i].stat().st_size
        row = {"name": names[i], "path": str(paths[i]), "backend": b, "model_name": clf.metadata.model_name,
               "input_size": list(pre.input_size), "input_dtype": pre.dtype, "layout": pre.layout,
               "precision": "int8" if clf.metadata.quantization is not None else "fp32",
               "size_bytes": size, "size_mb": size / 1e6,
               "top1": None, "coarse_top1": None, "n": None, "accuracy_source": None, "vs_onnxruntime": None}
        if dataset is not None:
            acc, eval_logits[(i, b)] = _accuracy(clf, b, dataset, split, picks, limit, reuse)
            row.update(acc)
        out[(i, b)] = row
    for (i, b, clf), x in zip(opened, xs):
        if b == REFERENCE:
            continue
        got, ref = eval_logits.get((i, b)), eval_logits.get((i, REFERENCE))
        on = "evaluated images"
        if got is None or ref is None:
            got, ref = clf.run_logits(x[:CHECK_IMAGES]), refs[i].run_logits(x[:CHECK_IMAGES])
            on = "timing JPEGs"
        check = out[(i, b)]["vs_onnxruntime"] = _check(got, ref, out[(i, b)]["precision"], on)
        if not check["ok"]:
            log.warning("%s: %s outputs differ from onnxruntime: max |diff| %.3g > %.3g, top-1 agreement %.3f",
                        names[i], b, check["max_abs_logit_diff"], check["tolerance"], check["top1_agreement"])
    return out


def _cpu_info(backends) -> dict:
    """This machine, as far as it decides latency: CPU model, cores and features, OS, runtimes."""
    import onnxruntime as ort

    from ._cpu import cpu_report

    info = {**cpu_report(), "platform": platform.platform(), "python": platform.python_version(),
            "onnxruntime": ort.__version__}
    if "openvino" in backends:
        import openvino

        info["openvino"] = openvino.__version__
    return info

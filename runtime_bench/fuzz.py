"""Coverage-guided fuzzing of what reads untrusted bytes: image decoding and model metadata.

    python -m skulens.bench.fuzz decode   --seconds 600 --out runs/fuzz   # needs atheris
    python -m skulens.bench.fuzz metadata --seconds 600 --out runs/fuzz
    python -m skulens.bench.fuzz classify --model m.int8.onnx --seconds 600 --out runs/fuzz

Each target feeds fuzzer-made bytes to the SDK and counts an input as a *finding* when it
raises anything but a :class:`skulens.SkulensError` (a raw ``cv2.error``, ``TypeError``,
``RecursionError``...), or when one input costs more than the budget (``--rss-limit-mb``,
``--timeout``: libFuzzer's own limits, so a memory bomb is a finding too). The seed corpus is
made from real photos in several formats (``--data``, else generated images). Findings are
written to ``OUT/<target>/crash-*``; a JSON summary (executions, findings, seconds) to
``OUT/<target>/summary.json``. Without atheris installed the command says which extra to install.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from skulens import ImageClassifier, SkulensError, decode_image
from skulens.internal import decode_metadata

TARGETS = ("decode", "metadata", "classify")
MAX_PIXELS = 4_000_000  # a ~4 KB input must not reach the default 40 MP budget: 4 MP x 3 B = 12 MB


def seed_images(data: str | None, n: int = 6) -> list[np.ndarray]:
    """A few small real photos (or generated stripes without ``data``), 64-128 px."""
    images = []
    if data:
        from skulens import load_dataset

        train = load_dataset(data).split("train")
        for s in train[:: max(1, len(train) // n)][:n]:
            img = decode_image(s.path)
            images.append(cv2.resize(img, (96, 64 + 16 * (len(images) % 3)), interpolation=cv2.INTER_AREA))
    while len(images) < n:
        k = len(images)
        img = np.zeros((48 + 8 * k, 64, 3), np.uint8)
        img[:, :, k % 3] = np.linspace(0, 255, 64, dtype=np.uint8)
        images.append(img)
    return images


def seed_corpus(folder: Path, data: str | None) -> Path:
    """Encoded seeds: JPEG (baseline and progressive), PNG (8/16-bit, grey, alpha), WebP, BMP,
    TIFF, GIF-like and PPM versions of the seed photos."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(seed_images(data)):
        encodings = {"jpg": [cv2.IMWRITE_JPEG_QUALITY, 80], "png": [], "webp": [cv2.IMWRITE_WEBP_QUALITY, 60],
                     "bmp": [], "tiff": [], "ppm": []}
        for ext, params in encodings.items():
            ok, buf = cv2.imencode("." + ext, img, params)
            if ok:
                (folder / f"seed{i}.{ext}").write_bytes(buf.tobytes())
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
        (folder / f"seed{i}.prog.jpg").write_bytes(buf.tobytes())
        ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257)
        (folder / f"seed{i}.16.png").write_bytes(buf.tobytes())
        ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_BGR2BGRA))
        (folder / f"seed{i}.alpha.png").write_bytes(buf.tobytes())
    return folder


def metadata_seed(model: str | None) -> dict[str, str]:
    if model:
        import onnx

        return {p.key: p.value for p in onnx.load(model).metadata_props}
    return {"skulens.schema_version": "1", "skulens.kind": "classifier", "skulens.labels": '["a", "b"]',
            "skulens.io": "{}", "skulens.preprocess": '{"input_size": [32, 32]}'}


def one_input(target: str, model: str | None):
    """The function atheris calls with each input: returns normally for accepted inputs and
    for SkulensErrors; anything else propagates and is a finding."""
    classifier = ImageClassifier.from_path(model) if target == "classify" else None
    keys = sorted(metadata_seed(model))

    def run(data: bytes) -> None:
        try:
            if target == "decode":
                decode_image(data, max_pixels=MAX_PIXELS)
            elif target == "classify":
                classifier.classify(data)
            else:  # metadata: split the bytes into one value per key (and a few key names)
                parts = data.split(b"\x00")
                props = {k: p.decode("utf-8", "replace") for k, p in zip(keys + ["skulens.extra"], parts)}
                decode_metadata(props, source="fuzz")
        except SkulensError:
            pass

    return run


def run_fuzzer(target: str, out: Path, seconds: int, model: str | None, rss_limit_mb: int, timeout: int,
               max_len: int) -> dict:
    """Run atheris in a child process (libFuzzer exits on the first finding; the child is
    restarted until the time is up) and summarise."""
    work = out / target
    corpus = work / "corpus"
    if not corpus.exists():
        if target == "metadata":
            corpus.mkdir(parents=True)
            (corpus / "seed").write_bytes(b"\x00".join(v.encode() for _, v in sorted(metadata_seed(model).items())))
        else:
            seed_corpus(corpus, None)
    deadline, findings, execs, runs, peak_rss, slowest = time.monotonic() + seconds, 0, 0, 0, 0, 0
    while time.monotonic() < deadline - 5:
        left = int(deadline - time.monotonic())
        cmd = [sys.executable, "-c", _CHILD, target, model or "", str(corpus), f"-max_total_time={left}", f"-rss_limit_mb={rss_limit_mb}", f"-timeout={timeout}",
               f"-max_len={max_len}", f"-artifact_prefix={work}/", "-print_final_stats=1"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        runs += 1
        log_text = proc.stdout + proc.stderr
        (work / f"run{runs}.log").write_text(log_text[-200_000:])
        stats = _stats(log_text)
        execs += stats.get("number_of_executed_units", 0)
        peak_rss = max(peak_rss, stats.get("peak_rss_mb", 0))
        slowest = max(slowest, stats.get("slowest_unit_time_sec", 0))
        if proc.returncode != 0:
            findings += 1
            logging.getLogger(__name__).warning("%s: finding in run %d (exit %d); see %s", target, runs, proc.returncode, work)
    summary = {"target": target, "seconds": seconds, "executions": execs, "fuzzer_runs": runs,
               "findings": findings, "artifacts": sorted(p.name for p in work.glob("crash-*")) +
               sorted(p.name for p in work.glob("oom-*")) + sorted(p.name for p in work.glob("timeout-*")),
               "peak_rss_mb": peak_rss, "slowest_input_s": slowest, "rss_limit_mb": rss_limit_mb, "timeout_s": timeout, "max_len": max_len}
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _stats(log_text: str) -> dict[str, int]:
    """libFuzzer's final ``stat::name: value`` lines."""
    out = {}
    for line in log_text.splitlines():
        if line.startswith("stat::"):
            name, value = line[len("stat::"):].rsplit(":", 1)
            out[name.strip()] = int(value)
    return out


_CHILD = """
import sys
import atheris
with atheris.instrument_imports(include=["skulens"]):  # the SDK's own branches guide the fuzzer
    from skulens.bench.fuzz import one_input
target, model = sys.argv[1], (sys.argv[2] or None)
atheris.Setup([sys.argv[0], *sys.argv[3:]], one_input(target, model))
atheris.Fuzz()
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m skulens.bench.fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("target", choices=TARGETS, help="what to fuzz")
    p.add_argument("--model", help="an exported model: the classify target's model, the metadata target's seed")
    p.add_argument("--seconds", type=int, default=600, help="fuzzing time (default: 600)")
    p.add_argument("--out", default="runs/fuzz", help="folder for corpus, findings and summary.json")
    p.add_argument("--rss-limit-mb", type=int, default=1024, help="an input costing more memory is a finding")
    p.add_argument("--timeout", type=int, default=5, help="an input taking more seconds is a finding")
    p.add_argument("--max-len", type=int, default=4096, help="largest input in bytes (default: 4096)")
    args = p.parse_args(argv)
    try:
        import atheris  # noqa: F401
    except ModuleNotFoundError:
        print("skulens: error: fuzzing needs atheris: pip install 'skulens[fuzz]'", file=sys.stderr)
        return 2
    if args.target == "classify" and not args.model:
        p.error("the classify target needs --model")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    summary = run_fuzzer(args.target, Path(args.out), args.seconds, args.model, args.rss_limit_mb, args.timeout,
                         args.max_len)
    print(json.dumps(summary, indent=2))
    return 0 if summary["findings"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""One benchmark configuration in its own process (``python -m skulens.bench._worker``).

The parent writes a JSON spec line, then JSON commands one per line; each answer is one JSON
line on the original stdout (everything libraries print goes to stderr). A fresh process per
configuration keeps memory figures clean and lets the parent interleave configurations:
only one worker runs at a time, the others wait on their stdin.

Commands: outputs (save logits of the timing input), eval (save logits of a whole array),
warmup / run (time for N seconds), exit (report peak RSS). Only the standard library is
imported at module level, so :func:`cold_start` can time ``import skulens`` from a clean slate.

Kinds: ``ort`` (onnxruntime, the SDK's session options), ``openvino`` (the SDK's OpenVINO
backend session), ``torch`` (the checkpoint, eager), ``opencv`` (cv2.dnn). :func:`nncf_quantize`
also runs in a fresh process: NNCF imports torch when it is installed, and is chatty.
"""
from __future__ import annotations

import json
import os
import sys
import time


def peak_rss_mb() -> float:
    """Peak resident set size of this process (MB).

    On Linux this is VmHWM of the process's own memory map: ``ru_maxrss`` would also count the
    parent's memory that a forked child briefly shared before exec.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def current_rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, AttributeError):
        return None


def cold_start(path: str, image: str, threads: int = 1, top_k: int = 5, backend: str = "onnxruntime") -> dict:
    """``import skulens`` + ImageClassifier.from_path + the first classify of JPEG bytes, timed."""
    t0 = time.perf_counter()
    import skulens

    t1 = time.perf_counter()
    with open(image, "rb") as f:
        data = f.read()
    clf = skulens.ImageClassifier.from_path(path, skulens.ClassifierOptions(num_threads=threads, top_k=top_k,
                                                                            backend=backend))
    t2 = time.perf_counter()
    clf.classify(data)
    t3 = time.perf_counter()
    return {"import_s": t1 - t0, "create_s": t2 - t1, "first_result_s": t3 - t2, "total_s": t3 - t0,
            "peak_rss_mb": peak_rss_mb()}


def import_sdk_time() -> dict:
    t0 = time.perf_counter()
    import skulens  # noqa: F401

    return {"import_s": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb()}


class _Runner:
    """Builds the configuration's model and times it."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.kind, self.mode = spec["kind"], spec["mode"]
        self.threads, self.batch = int(spec["threads"]), int(spec["batch"])
        t0 = time.perf_counter()
        import numpy as np

        self.np = np
        if self.kind == "torch":
            import torch

            torch.set_num_threads(self.threads)
            torch.set_num_interop_threads(1)
            from skulens.training.checkpoint import load_checkpoint, model_from_checkpoint
        elif self.kind == "opencv":
            import cv2

            cv2.setNumThreads(self.threads)
        elif self.kind == "openvino":
            import openvino  # noqa: F401

            import skulens  # noqa: F401
        else:
            import onnxruntime  # noqa: F401

            import skulens  # noqa: F401
        t1 = time.perf_counter()
        self.rss_before_create = current_rss_mb()
        if self.mode == "e2e":
            from skulens import ClassifierOptions, ImageClassifier, decode_image

            self.decode = decode_image
            self.clf = ImageClassifier.from_path(spec["path"], ClassifierOptions(
                num_threads=self.threads, top_k=int(spec.get("top_k", 5)), max_batch=max(1, self.batch),
                backend=spec.get("backend", "onnxruntime")))
            self.images = []
            for p in spec["images"]:
                with open(p, "rb") as f:
                    self.images.append(f.read())
            self._next = 0
        elif self.kind == "torch":
            self.model = model_from_checkpoint(load_checkpoint(spec["checkpoint"]))
            self.torch = torch
        elif self.kind == "opencv":
            self.net = cv2.dnn.readNetFromONNX(spec["path"])
        elif self.kind == "openvino":  # the SDK backend's own session (same settings, same wrapper)
            from skulens.internal import OpenVinoSession

            self.sess = OpenVinoSession(spec["path"], num_threads=self.threads)
            self.input_name = self.sess.get_inputs()[0].name
        else:
            import onnxruntime as ort

            from skulens.internal import session_options

            self.sess = ort.InferenceSession(spec["path"], session_options(self.threads),
                                             providers=["CPUExecutionProvider"])
            self.input_name = self.sess.get_inputs()[0].name
        t2 = time.perf_counter()
        if self.mode == "model":
            x = np.load(spec["input"])
            reps = -(-self.batch // len(x))
            self.x = np.ascontiguousarray(np.concatenate([x] * reps)[:self.batch])  # the contract's dtype
            if self.kind == "torch":
                self.xt = torch.from_numpy(self.x)
        t3 = time.perf_counter()
        self.once()
        self.ready = {"event": "ready", "import_s": t1 - t0, "create_s": t2 - t1,
                      "first_run_s": time.perf_counter() - t3,
                      "rss_before_create_mb": self.rss_before_create, "rss_after_create_mb": current_rss_mb()}
        if self.mode == "e2e":
            import cv2

            self.ready["cv2_threads"] = cv2.getNumThreads()
        session = self.clf._session if self.mode == "e2e" else getattr(self, "sess", None)
        if hasattr(session, "settings"):  # OpenVINO: the effective compile properties
            self.ready["openvino_settings"] = {k: v if isinstance(v, (int, bool)) else str(v)
                                               for k, v in session.settings().items()}

    # -- one inference ----------------------------------------------------------------------
    def infer(self, x):
        if self.kind == "torch":
            with self.torch.inference_mode():
                xt = self.xt if x is self.x else self.torch.from_numpy(x)
                return self.model(xt).numpy()
        if self.kind == "opencv":
            self.net.setInput(x)
            return self.net.forward()
        return self.sess.run(None, {self.input_name: x})[0]

    def once(self):
        return self.e2e_once()[0] if self.mode == "e2e" else self.infer(self.x)

    def e2e_once(self):
        """JPEG bytes -> top-k results through the SDK, one stage at a time (as classify does)."""
        clf, np = self.clf, self.np
        datas = [self.images[(self._next + i) % len(self.images)] for i in range(self.batch)]
        self._next = (self._next + self.batch) % len(self.images)
        t0 = time.perf_counter()
        imgs = [self.decode(d, max_pixels=clf.options.max_pixels) for d in datas]
        t1 = time.perf_counter()
        cfg = clf.preprocess_config
        x = cfg.apply(imgs[0])[None] if self.batch == 1 else np.stack([cfg.apply(im) for im in imgs])
        t2 = time.perf_counter()
        logits = clf.run(x)
        t3 = time.perf_counter()
        results = clf.postprocess(logits)
        t4 = time.perf_counter()
        return results, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)

    # -- commands ---------------------------------------------------------------------------
    def run_for(self, seconds: float, record: bool = True) -> dict:
        stages = ([], [], [], []) if self.mode == "e2e" else None
        samples, classify = [], []
        end = time.perf_counter() + seconds
        i = 0
        while True:
            if self.mode == "e2e":
                if i % 2 == 0:
                    _, st = self.e2e_once()
                    for k, v in enumerate(st):
                        stages[k].append(v)
                    samples.append(sum(st))
                else:  # the SDK's own one-call path, as a check on the stage split
                    datas = [self.images[(self._next + j) % len(self.images)] for j in range(self.batch)]
                    self._next = (self._next + self.batch) % len(self.images)
                    t0 = time.perf_counter()
                    if self.batch == 1:
                        self.clf.classify(datas[0])
                    else:
                        self.clf.classify_batch(datas)
                    classify.append(time.perf_counter() - t0)
            else:
                t0 = time.perf_counter()
                self.infer(self.x)
                samples.append(time.perf_counter() - t0)
            i += 1
            if time.perf_counter() >= end and (i >= 2 or self.mode != "e2e"):
                break
        if not record:
            return {"iterations": i}
        out = {"samples": samples}
        if stages is not None:
            out["stages"] = dict(zip(("decode", "preprocess", "inference", "postprocess"), stages))
            out["classify"] = classify
        return out

    def handle(self, cmd: dict) -> dict:
        name = cmd.get("cmd")
        if name == "outputs":
            self.np.save(cmd["out"], self.np.asarray(self.infer(self.x), dtype=self.np.float32))
            return {"ok": True}
        if name == "eval":
            x = self.np.load(cmd["input"])
            step = int(cmd.get("batch", 1))
            out = [self.np.asarray(self.infer(self.np.ascontiguousarray(x[i:i + step])), dtype=self.np.float32)
                   for i in range(0, len(x), step)]
            self.np.save(cmd["out"], self.np.concatenate(out))
            return {"ok": True}
        if name == "warmup":
            return self.run_for(float(cmd["seconds"]), record=False)
        if name == "run":
            return self.run_for(float(cmd["seconds"]))
        raise ValueError(f"unknown command {name!r}")


def nncf_quantize(fp32: str, calibration: str, out: str) -> dict:
    """Quantize the fp32 ONNX ``fp32`` to INT8 with NNCF (OpenVINO's own post-training quantizer,
    its default preset: symmetric activations) on the preprocessed images in the ``calibration``
    .npy, fed one image at a time; write OpenVINO IR ``out`` (.xml + .bin)."""
    t0 = time.perf_counter()
    import numpy as np

    import nncf
    import openvino as ov

    x = np.load(calibration)
    model = ov.Core().read_model(fp32)
    data = nncf.Dataset([x[i:i + 1] for i in range(len(x))])
    quantized = nncf.quantize(model, data, subset_size=len(x))
    ov.save_model(quantized, out, compress_to_fp16=False)  # fp16 would also round the float parts
    return {"seconds": time.perf_counter() - t0, "nncf": nncf.__version__, "openvino": ov.__version__,
            "calibration_images": len(x), "preset": "nncf default (performance: symmetric activations)",
            "peak_rss_mb": peak_rss_mb()}


def main() -> int:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints must not corrupt the protocol

    def send(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        runner = _Runner(json.loads(sys.stdin.readline()))
    except Exception as exc:  # reported to the parent, which marks the configuration failed
        send({"event": "error", "error": f"{type(exc).__name__}: {str(exc).strip()[:500]}"})
        return 1
    send(runner.ready)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("cmd") == "exit":
            send({"event": "exit", "peak_rss_mb": peak_rss_mb()})
            return 0
        try:
            send(runner.handle(cmd))
        except Exception as exc:
            send({"event": "error", "error": f"{type(exc).__name__}: {str(exc).strip()[:500]}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())

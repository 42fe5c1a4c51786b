"""Before timing: find the fp32 / INT8 siblings of the model under test (quantizing the missing
activation type with export's quantizer), and build the shared inputs every peer gets: an
evaluation subset preprocessed exactly as the SDK does, the timing batch, and JPEG files for
the end-to-end path.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from skulens import DatasetError, ModelError, PreprocessConfig, decode_image, load_dataset
from skulens.internal import ModelMetadata, coarse_index, label_mapping, sha256_file

from . import _procs
from .config import ORT_INT8_PEERS, OPENVINO_PEERS, BenchConfig

log = logging.getLogger(__name__)
ACTIVATION_PEER = {"u8": "ort_int8_u8s8", "s8": "ort_int8_s8s8"}
N_E2E_IMAGES = 16


@dataclass
class Peer:
    name: str
    path: str | None = None
    status: str = "ok"          # ok | skipped | failed | wrong
    reason: str | None = None
    format: str = "ONNX"
    precision: str = "fp32"
    origin: str = "given"       # given | sibling | quantized here | checkpoint
    info: dict = field(default_factory=dict)
    # its own inputs, where its preprocessing differs from the ONNX contract (the same images):
    # PyTorch takes the float tensors it was trained on when the ONNX model takes uint8 pixels
    eval_npy: Path | None = None
    input_npy: Path | None = None

    def fail(self, status: str, reason: str) -> None:
        self.status, self.reason = status, reason


@dataclass
class Prepared:
    peers: dict[str, Peer]
    subject: str
    metadata: ModelMetadata
    preprocess: PreprocessConfig
    eval_npy: Path
    input_npy: Path
    images: list[str]
    inputs: str                          # "real images" or "random images"
    targets: np.ndarray | None = None    # eval labels in model indices
    coarse_of: np.ndarray | None = None
    dataset: str | None = None
    train_samples: list = field(default_factory=list)  # for calibration (export's check)
    notes: list[str] = field(default_factory=list)


def read_metadata(path) -> ModelMetadata:
    """The skulens metadata of an ONNX file (ModelError when it is missing or invalid)."""
    from skulens.internal import open_model

    return open_model(path, num_threads=1, expect_kind="classifier")[1]


def _int8_sibling(fp32: Path) -> Path:
    return fp32.with_name(fp32.stem + ".int8" + fp32.suffix)


def _fp32_sibling(int8: Path) -> Path | None:
    stem = int8.stem
    return int8.with_name(stem[: -len(".int8")] + int8.suffix) if stem.endswith(".int8") else None


def _checkpoint_dataset(checkpoint) -> str | None:
    from skulens.training.checkpoint import load_checkpoint  # needs torch: only with --checkpoint

    return load_checkpoint(checkpoint).get("dataset")


def _checkpoint_preprocess(checkpoint) -> PreprocessConfig:
    from skulens.training.checkpoint import load_checkpoint, preprocess_of

    return preprocess_of(load_checkpoint(checkpoint))


def _sample(samples, n: int, seed: int):
    """The same deterministic sample export takes (numpy choice without replacement, sorted)."""
    if len(samples) <= n:
        return list(samples)
    idx = np.random.default_rng(seed).choice(len(samples), size=n, replace=False)
    return [samples[i] for i in sorted(idx)]


def _tensors(samples, pre: PreprocessConfig) -> np.ndarray:
    return np.stack([pre.apply(decode_image(s.path)) for s in samples])


def _random_images(n: int, pre: PreprocessConfig, seed: int) -> list[np.ndarray]:
    """Noise images of the model's input size, for timing when there is no dataset."""
    h, w = pre.input_size
    return list(np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8))


def _synthetic_jpegs(folder: Path, n: int = 4, size: int = 348) -> list[str]:
    """Smooth random pictures written as JPEGs, for the end-to-end path when there is no data."""
    import cv2

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
        img = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
        p = folder / f"synthetic_{i}.jpg"
        cv2.imwrite(str(p), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(str(p))
    return paths


class Calibration:
    """The calibration images our INT8 model was made with (as many as its metadata records,
    sampled from the train split as export samples them), decoded once, when first needed."""

    def __init__(self, dataset, fp32_meta: ModelMetadata, int8_meta):
        q = dict((int8_meta.quantization if int8_meta is not None else None) or {})
        self.dataset, self.preprocess = dataset, fp32_meta.preprocess
        self.n = int(q.get("calibration_images", 256))
        self.method = q.get("calibrate_method", "minmax")

    @functools.cached_property
    def images(self) -> np.ndarray:
        return _tensors(_sample(self.dataset.split("train"), self.n, seed=2), self.preprocess)


def _quantize_missing(cfg: BenchConfig, peers: dict[str, Peer], fp32_meta: ModelMetadata, calibration,
                      dataset, workdir: Path, notes: list) -> None:
    """Make the INT8 variants the user did not bring, with export.quantize_int8."""
    missing = [act for act, name in ACTIVATION_PEER.items() if name in cfg.peers and peers[name].path is None]
    if not missing:
        return
    fp32 = peers["ort_fp32"].path
    if fp32 is None:
        for act in missing:
            peers[ACTIVATION_PEER[act]].fail("skipped", "no fp32 model next to the INT8 one to quantize from")
        return
    if dataset is None:
        for act in missing:
            peers[ACTIVATION_PEER[act]].fail("skipped", "quantizing needs calibration images: pass --data "
                                             "(or --checkpoint of a model trained on local data)")
        return
    try:
        from skulens.export import quantize_int8, write_metadata
    except ImportError as exc:  # MissingExtraError is an ImportError
        for act in missing:
            peers[ACTIVATION_PEER[act]].fail("skipped", str(exc))
        return
    calib, method = calibration.images, calibration.method
    parent_sha = sha256_file(fp32)
    for act in missing:
        peer = peers[ACTIVATION_PEER[act]]
        out = workdir / f"{Path(fp32).stem}.int8-{act}s8.onnx"
        try:
            quantize_int8(fp32, out, calib, activation_type=act, calibrate_method=method)
            settings = {"format": "QDQ", "weights": "s8 per-channel symmetric", "activations": act,
                        "calibrate_method": method, "calibration_images": len(calib),
                        "made_by": "skulens bench (export.quantize_int8)"}
            base = {k: v for k, v in fp32_meta.__dict__.items() if k not in ("quantization", "parent_sha256")}
            write_metadata(out, ModelMetadata(**{**base, "quantization": settings, "parent_sha256": parent_sha}))
        except Exception as exc:
            peer.fail("failed", f"quantizing with {act} activations failed: {type(exc).__name__}: {exc}")
            continue
        peer.path, peer.origin = str(out), "quantized here"
        notes.append(f"{peer.name}: quantized here from {fp32} ({len(calib)} calibration images, {method})")


def prepare(cfg: BenchConfig, workdir: Path) -> Prepared:
    """Resolve every peer's model file and write the shared inputs into ``workdir``."""
    model = Path(cfg.model)
    meta = read_metadata(model)
    notes: list[str] = []
    peers = {name: Peer(name) for name in cfg.peers}
    for name in cfg.peers:
        if name in ACTIVATION_PEER.values():
            peers[name].precision = "int8 " + ("U8S8" if name.endswith("u8s8") else "S8S8")
    if "ort_fp32" not in peers:
        peers["ort_fp32"] = Peer("ort_fp32")  # the reference every output is checked against
    fp32_path, int8_meta = None, None
    if meta.quantization is None:
        fp32_path, fp32_meta = model, meta
        subject = "ort_fp32"
        sib = _int8_sibling(model)
        if sib.is_file():
            int8_meta = read_metadata(sib)
            act = (int8_meta.quantization or {}).get("activations", "u8")
            if ACTIVATION_PEER.get(act) in peers:
                peers[ACTIVATION_PEER[act]].path, peers[ACTIVATION_PEER[act]].origin = str(sib), "sibling"
    else:
        int8_meta = meta
        act = meta.quantization.get("activations", "u8")
        subject = ACTIVATION_PEER.get(act, "ort_int8_u8s8")
        if subject not in peers:
            peers[subject] = Peer(subject, precision="int8 " + act.upper() + "S8")
        peers[subject].path = str(model)
        sib = _fp32_sibling(model)
        fp32_meta = meta
        if sib is not None and sib.is_file():
            if meta.parent_sha256 and sha256_file(sib) != meta.parent_sha256:
                notes.append(f"{sib} is not the fp32 parent of {model} (sha256 differs); not used")
            else:
                fp32_path, fp32_meta = sib, read_metadata(sib)
    if fp32_path is not None:
        peers["ort_fp32"].path = str(fp32_path)
        peers["ort_fp32"].origin = "given" if subject == "ort_fp32" else "sibling"
    else:
        peers["ort_fp32"].fail("skipped", f"no fp32 model found next to {model} "
                               f"(expected {_fp32_sibling(model)})")
    if meta.labels != fp32_meta.labels:
        raise ModelError(f"{fp32_path} and {model} have different labels")
    peers[subject].origin = "given"

    # -- data ---------------------------------------------------------------------------------
    data = cfg.data
    if data is None and cfg.checkpoint:
        try:
            data = _checkpoint_dataset(cfg.checkpoint)
        except ImportError as exc:
            notes.append(f"cannot read the checkpoint's dataset: {exc}")
    dataset = None
    if data:
        try:
            dataset = load_dataset(data)
        except DatasetError as exc:
            if cfg.data:
                raise
            notes.append(f"the checkpoint's dataset is not readable here ({exc}); pass --data")
    calibration = Calibration(dataset, fp32_meta, int8_meta) if dataset is not None else None
    _quantize_missing(cfg, peers, fp32_meta, calibration, dataset, workdir, notes)

    pre = meta.preprocess
    targets = coarse_of = None
    if dataset is not None:
        samples = _sample(dataset.split(cfg.eval_split), cfg.eval_limit, seed=cfg.seed)

        def decoded():  # one at a time, again per contract: 500 decoded photos would hold ~180 MB
            return (decode_image(s.path) for s in samples)
        targets = label_mapping(meta.labels, dataset)[np.array([s.label for s in samples])]
        coarse_of = coarse_index(meta.labels, dataset)
        images = [str(s.path) for s in samples[:N_E2E_IMAGES]]
        inputs = "real images"
    else:
        noise = _random_images(min(cfg.eval_limit, 64), pre, cfg.seed)

        def decoded():
            return iter(noise)
        images = _synthetic_jpegs(workdir)
        inputs = "random images"
        notes.append("no dataset: timing on random images and synthetic JPEGs, no accuracy")
    x = pre.apply_batch(decoded())
    n_input = max(cfg.batch + cfg.e2e_batch)
    eval_npy, input_npy = workdir / "eval.npy", workdir / "input.npy"
    np.save(eval_npy, x)
    np.save(input_npy, x[:n_input])

    # -- peers that are not ONNX Runtime ------------------------------------------------------
    if "torch_eager" in peers:
        p = peers["torch_eager"]
        p.format, p.origin = "PyTorch eager", "checkpoint"
        if not cfg.checkpoint:
            p.fail("skipped", "needs --checkpoint (the .pt the model was exported from)")
        elif importlib.util.find_spec("torch") is None:
            p.fail("skipped", "torch is not installed: pip install 'skulens[train]'")
        elif not Path(cfg.checkpoint).is_file():
            p.fail("failed", f"{cfg.checkpoint}: no such checkpoint")
        else:
            p.path = str(cfg.checkpoint)
            torch_pre = _checkpoint_preprocess(cfg.checkpoint)
            if torch_pre != pre:  # e.g. float32 NCHW for PyTorch, uint8 NHWC pixels for ONNX
                tx = torch_pre.apply_batch(decoded())
                p.eval_npy, p.input_npy = workdir / "eval_torch.npy", workdir / "input_torch.npy"
                np.save(p.eval_npy, tx)
                np.save(p.input_npy, tx[:n_input])
                p.info["input"] = f"{torch_pre.dtype} {torch_pre.layout} (its training contract; same images)"
    if "opencv_dnn" in peers:
        p = peers["opencv_dnn"]
        p.format = "OpenCV DNN (fp32 ONNX)"
        import cv2

        p.info["opencv_version"] = cv2.__version__
        if not hasattr(cv2, "dnn"):
            p.fail("skipped", "this OpenCV build has no dnn module")
        elif fp32_path is None:
            p.fail("skipped", "needs the fp32 ONNX (OpenCV DNN cannot run this QDQ INT8 model)")
        else:
            p.path, p.origin = str(fp32_path), peers["ort_fp32"].origin
    _prepare_openvino(peers, subject, calibration, workdir, notes)
    for p in peers.values():
        if p.status == "ok" and p.path and os.path.isfile(p.path):
            weights = Path(p.path).with_suffix(".bin") if p.path.endswith(".xml") else None  # OpenVINO IR
            p.info["size_bytes"] = os.path.getsize(p.path) + (os.path.getsize(weights) if weights else 0)
    return Prepared(peers=peers, subject=subject, metadata=meta, preprocess=pre, eval_npy=eval_npy,
                    input_npy=input_npy, images=images, inputs=inputs, targets=targets,
                    coarse_of=coarse_of, dataset=str(data) if dataset is not None else None, notes=notes,
                    train_samples=list(dataset.splits.get("train") or []) if dataset is not None else [])


# -- OpenVINO ---------------------------------------------------------------------------------------
def _prepare_openvino(peers: dict[str, Peer], subject: str, calibration, workdir: Path, notes: list) -> None:
    """OpenVINO on our fp32 ONNX, on our INT8 QDQ ONNX, and on an NNCF-quantized copy of the fp32
    model (the same calibration images as ours); skipped, with the reason, without the extras."""
    wanted = [n for n in OPENVINO_PEERS if n in peers]
    formats = {"openvino_fp32": ("OpenVINO (fp32 ONNX)", "fp32"), "openvino_int8": ("OpenVINO (QDQ INT8 ONNX)", "int8"),
               "openvino_nncf": ("OpenVINO IR (NNCF INT8)", "int8 NNCF")}
    for name in wanted:
        peers[name].format, peers[name].precision = formats[name]
    if not wanted:
        return
    if importlib.util.find_spec("openvino") is None:
        for name in wanted:
            peers[name].fail("skipped", "openvino is not installed: pip install 'skulens[openvino]'")
        return
    fp32 = peers["ort_fp32"]
    if "openvino_fp32" in peers:
        p = peers["openvino_fp32"]
        if fp32.path is None:
            p.fail("skipped", "needs the fp32 ONNX next to the INT8 one")
        else:
            p.path, p.origin = fp32.path, fp32.origin
    if "openvino_int8" in peers:
        _pick_openvino_int8(peers["openvino_int8"], peers, subject)
    if "openvino_nncf" in peers:
        _quantize_nncf(peers["openvino_nncf"], fp32.path, calibration, workdir, notes)


def _pick_openvino_int8(peer: Peer, peers: dict[str, Peer], subject: str) -> None:
    """Our INT8 QDQ file: the model under test when it is INT8, else export's sibling, else one
    quantized here."""
    order = {"given": 0, "sibling": 1, "quantized here": 2}
    candidates = sorted((p for n, p in peers.items() if n in ORT_INT8_PEERS and p.path and p.status == "ok"),
                        key=lambda p: (p.name != subject, order.get(p.origin, 3)))
    if not candidates:
        peer.fail("skipped", "no INT8 QDQ ONNX of this model among the peers (benchmark the INT8 model, "
                  "or add an ORT INT8 peer)")
        return
    src = candidates[0]
    peer.path, peer.origin = src.path, src.origin
    peer.precision = src.precision + " QDQ"
    peer.info["same_file_as"] = src.name


def _quantize_nncf(peer: Peer, fp32: str | None, calibration, workdir: Path, notes: list) -> None:
    """NNCF's post-training INT8 quantization of the fp32 model, in a fresh process."""
    if importlib.util.find_spec("nncf") is None:
        peer.fail("skipped", "nncf is not installed: pip install 'skulens[nncf]'")
        return
    if fp32 is None:
        peer.fail("skipped", "NNCF quantizes the fp32 ONNX, and there is none next to the INT8 one")
        return
    if calibration is None:
        peer.fail("skipped", "quantizing needs calibration images: pass --data "
                  "(or --checkpoint of a model trained on local data)")
        return
    calib_npy, out = workdir / "nncf_calibration.npy", workdir / f"{Path(fp32).stem}.nncf-int8.xml"
    np.save(calib_npy, calibration.images)
    try:
        report = _procs.nncf_quantize_probe(fp32, str(calib_npy), str(out))
    except _procs.WorkerError as exc:
        peer.fail("failed", f"NNCF quantization failed: {exc}")
        return
    finally:
        calib_npy.unlink(missing_ok=True)
    peer.path, peer.origin = str(out), "quantized here"
    peer.info["nncf"] = {k: report[k] for k in ("nncf", "preset", "calibration_images", "seconds") if k in report}
    notes.append(f"{peer.name}: quantized here by NNCF {report.get('nncf')} from {fp32} "
                 f"({report.get('calibration_images')} calibration images, the ones of our INT8 model; "
                 f"{report.get('seconds', 0):.0f} s)")

"""Benchmark options (torch-free, so the CLI can build its flags without importing anything heavy).
Field names are exactly the keyword arguments of :class:`BenchConfig`; ``skulens bench`` and
``skulens bench`` build their flags from them."""
from __future__ import annotations

from dataclasses import dataclass

# Every peer the benchmark knows, in report order.
PEERS = ("ort_fp32", "ort_int8_u8s8", "ort_int8_s8s8", "openvino_fp32", "openvino_int8", "openvino_nncf",
         "torch_eager", "opencv_dnn")
ORT_PEERS = ("ort_fp32", "ort_int8_u8s8", "ort_int8_s8s8")
ORT_INT8_PEERS = ("ort_int8_u8s8", "ort_int8_s8s8")
# OpenVINO on our fp32 ONNX, on our QDQ INT8 ONNX, and on a copy of the fp32 model quantized by NNCF
OPENVINO_PEERS = ("openvino_fp32", "openvino_int8", "openvino_nncf")
# peers whose outputs must reproduce ORT fp32 (1e-3); the INT8 ones must agree on top-1
FP32_PEERS = ("ort_fp32", "openvino_fp32", "torch_eager", "opencv_dnn")
INT8_PEERS = ORT_INT8_PEERS + ("openvino_int8", "openvino_nncf")
# peers the SDK itself can run (end-to-end and cold-start timings), and with which backend; the
# NNCF peer's OpenVINO IR keeps our ONNX metadata, so ImageClassifier opens it with OpenVINO too
SDK_BACKEND = {"ort_fp32": "onnxruntime", "ort_int8_u8s8": "onnxruntime", "ort_int8_s8s8": "onnxruntime",
               "openvino_fp32": "openvino", "openvino_int8": "openvino", "openvino_nncf": "openvino"}


@dataclass
class BenchConfig:
    """What to benchmark and how hard.

    model: the ONNX file under test (fp32 or INT8); its fp32/INT8 siblings are found next to
        it (``m.onnx`` / ``m.int8.onnx``) or made with export's quantizer.
    data: evaluation/calibration data (default: the checkpoint's training data).
    checkpoint: the PyTorch checkpoint the model was exported from (enables the eager peer).
    threads, batch: the sweep; every peer runs every (threads, batch) configuration.
    peers: which peers to run (default: all of :data:`PEERS`; one that cannot run here is
        reported as skipped, with the reason, e.g. the extra to install).
    e2e_batch: batch sizes of the end-to-end (JPEG bytes -> top-k) measurement of ORT peers.
    rounds, round_time: interleaved rounds (A B C, C B A, ...) and seconds per config per round.
    warmup_time: seconds of warm-up per configuration after its first run.
    eval_split, eval_limit: accuracy of every peer on this many images of this split.
    top_k: results kept by the end-to-end path.
    int8_min_agreement: an INT8 peer whose top-1 agrees with ORT fp32 on fewer images than this
        is reported as wrong instead of being timed.
    export_check: also run export's activation-type check (choose_activation_type) here.
    profile: onnxruntime profiler + optimised-graph op types of each ORT model (batch 1, 1 thread).
    charts: write the PNG charts (needs matplotlib).
    baseline, tolerance: compare with a saved JSON; a speedup ratio of the model under test
        lower than baseline * (1 - tolerance), or a top-1 lower by more than
        ``accuracy_tolerance_pp`` points, is a regression (exit code 1).
    out: folder for bench.json, bench.md, the PNG charts and any INT8 model quantized here.
    seed: which evaluation images are sampled.
    cold_start_repeats: fresh interpreters timing ``import skulens`` + session + first result.
    """

    model: str
    data: str | None = None
    checkpoint: str | None = None
    threads: tuple[int, ...] = (1, 2)
    batch: tuple[int, ...] = (1, 8, 32)
    peers: tuple[str, ...] = PEERS
    e2e_batch: tuple[int, ...] = (1,)
    rounds: int = 8
    round_time: float = 0.2
    warmup_time: float = 0.3
    eval_split: str = "test"
    eval_limit: int = 500
    top_k: int = 5
    int8_min_agreement: float = 0.8
    export_check: bool = True
    profile: bool = True
    charts: bool = True
    baseline: str | None = None
    tolerance: float = 0.10
    accuracy_tolerance_pp: float = 1.0
    out: str = "bench"
    seed: int = 0
    cold_start_repeats: int = 3

    def __post_init__(self):
        self.threads = tuple(int(t) for t in self.threads)
        self.batch = tuple(int(b) for b in self.batch)
        self.e2e_batch = tuple(int(b) for b in self.e2e_batch)
        self.peers = tuple(self.peers)
        problems = []
        if not self.threads or min(self.threads) < 1:
            problems.append(f"threads must be >= 1, got {self.threads}")
        if not self.batch or min(self.batch) < 1:
            problems.append(f"batch sizes must be >= 1, got {self.batch}")
        if self.e2e_batch and min(self.e2e_batch) < 1:
            problems.append(f"e2e batch sizes must be >= 1, got {self.e2e_batch}")
        unknown = [p for p in self.peers if p not in PEERS]
        if unknown:
            problems.append(f"unknown peers {unknown}; known: {list(PEERS)}")
        if self.rounds < 2:
            problems.append(f"rounds must be >= 2 (ratios are taken round by round), got {self.rounds}")
        if self.round_time <= 0 or self.warmup_time < 0:
            problems.append("round_time must be > 0 and warmup_time >= 0")
        if self.eval_limit < 1 or self.top_k < 1 or self.cold_start_repeats < 0:
            problems.append("eval_limit and top_k must be >= 1, cold_start_repeats >= 0")
        if not 0 <= self.tolerance < 1 or not 0 <= self.int8_min_agreement <= 1:
            problems.append("tolerance must be in [0, 1) and int8_min_agreement in [0, 1]")
        if problems:
            raise ValueError("invalid BenchConfig: " + "; ".join(problems))


def parse_int_list(text: str) -> tuple[int, ...]:
    """"1,2, 4" -> (1, 2, 4); ValueError naming the bad item."""
    out = []
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        try:
            out.append(int(item))
        except ValueError:
            raise ValueError(f"expected comma-separated integers, got {item!r} in {text!r}") from None
    return tuple(out)


def parse_peers(text: str) -> tuple[str, ...]:
    """"fp32,int8,openvino" -> peer names; aliases: fp32, int8 (both ORT INT8), u8s8, s8s8,
    openvino / ov (the three OpenVINO peers), nncf, torch, pytorch, opencv; "all" or "": all."""
    if text.strip() in ("", "all"):
        return PEERS
    peers = tuple(p.strip() for p in text.split(",") if p.strip())
    groups = {"int8": ORT_INT8_PEERS, "openvino": OPENVINO_PEERS, "ov": OPENVINO_PEERS}
    aliases = {"fp32": "ort_fp32", "u8s8": "ort_int8_u8s8", "s8s8": "ort_int8_s8s8", "nncf": "openvino_nncf",
               "torch": "torch_eager", "pytorch": "torch_eager", "opencv": "opencv_dnn"}
    out: list[str] = []
    for p in peers:
        out += list(groups.get(p, (aliases.get(p, p),)))
    return tuple(dict.fromkeys(out))

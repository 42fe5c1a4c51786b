"""Reading the benchmark's timings: per-configuration summaries, paired speedups within each
(mode, threads, batch) group, the INT8 verdict, and which peer is fastest per group and how an
SDK user gets it."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import _cpu
from ._prepare import ACTIVATION_PEER, Prepared
from ._timing import paired_speedup, summarize
from .config import INT8_PEERS, PEERS, SDK_BACKEND, BenchConfig

NOISY_SPREAD = 1.5  # max/min of the per-round ratios above which a comparison is called unreliable
STAGES = ("decode", "preprocess", "inference", "postprocess")


def summarize_configs(configs: list[dict], rounds_by_id: dict, macs: int | None, ceiling: dict | None, cpu: dict):
    """Fill in each timed configuration's latency summary, per-round medians and spread, and
    (end-to-end) its stage shares or (model-only) its roofline figures."""
    for c in configs:
        rounds = rounds_by_id.get(c["id"])
        if c.get("status") != "ok" or not rounds:
            continue
        samples = [s for r in rounds for s in r["samples"]]
        c.update(summarize(samples, c["batch"]))
        c["round_p50_ms"] = [round(float(np.median(r["samples"])) * 1e3, 4) for r in rounds]
        c["round_spread"] = round(max(c["round_p50_ms"]) / max(min(c["round_p50_ms"]), 1e-9), 3)
        if c["mode"] == "e2e":
            c["stages_ms"] = {}
            for st in STAGES:
                v = np.asarray([s for r in rounds for s in r["stages"][st]])
                c["stages_ms"][st] = {"p50": float(np.median(v)) * 1e3, "mean": float(v.mean()) * 1e3}
            total = sum(s["mean"] for s in c["stages_ms"].values()) or 1.0
            for s in c["stages_ms"].values():
                s["share"] = s["mean"] / total
            cls = [s for r in rounds for s in r["classify"]]
            if cls:
                c["sdk_classify_ms"] = summarize(cls, c["batch"])["latency_ms"]
        elif macs:
            p50 = c["latency_ms"]["p50"] / 1e3
            gmacs = macs * c["batch"] / p50 / 1e9
            kind = "int8" if c["peer"] in INT8_PEERS else "fp32"
            peak = (cpu.get("peak_gmacs_per_core") or {}).get(kind)
            roof = {"gmacs": round(gmacs, 3), "gmacs_per_thread": round(gmacs / c["threads"], 3),
                    "precision": kind}
            if peak:
                roof["fraction_of_estimated_peak"] = round(gmacs / (peak * c["threads"]), 4)
            if ceiling and ceiling.get(f"{kind}_gmacs"):
                roof["fraction_of_measured_gemm_1thread"] = round(gmacs / c["threads"] / ceiling[f"{kind}_gmacs"], 4)
            c["roofline"] = roof


def pair_speedups(configs: list[dict], rounds_by_id: dict, subject: str) -> list[dict]:
    """Speedup of every configuration over every other in its group (same threads, batch)."""
    rank = {p: i for i, p in enumerate([subject] + [p for p in PEERS if p != subject])}
    ok = [c for c in configs if c.get("status") == "ok" and c["id"] in rounds_by_id]
    pairs = []
    for i, first in enumerate(ok):
        for second in ok[i + 1:]:
            if (first["mode"], first["threads"], first["batch"]) != (second["mode"], second["threads"], second["batch"]):
                continue
            a, b = (first, second) if rank[first["peer"]] < rank[second["peer"]] else (second, first)
            ra = [r["samples"] for r in rounds_by_id[a["id"]]]
            rb = [r["samples"] for r in rounds_by_id[b["id"]]]
            sp = paired_speedup(ra, rb)
            pairs.append({"id": f"{a['peer']}/{b['peer']}/{a['mode']}/t{a['threads']}/b{a['batch']}",
                          "a": a["peer"], "b": b["peer"], "mode": a["mode"], "threads": a["threads"],
                          "batch": a["batch"], **{k: round(v, 4) if isinstance(v, float) else v for k, v in sp.items()}})
    return pairs


def read_verdict(pairs: list[dict], cfg: BenchConfig, cpu: dict) -> dict:
    t, b = (1 if 1 in cfg.threads else min(cfg.threads)), (1 if 1 in cfg.batch else min(cfg.batch))
    speedups, spread = {}, 1.0
    for p in pairs:
        if (p["mode"], p["threads"], p["batch"]) != ("model", t, b):
            continue
        for act, peer in ACTIVATION_PEER.items():
            if {p["a"], p["b"]} == {peer, "ort_fp32"}:
                speedups[act] = p["speedup"] if p["a"] == peer else 1 / p["speedup"]
                spread = max(spread, p["max"] / p["min"])
    v = _cpu.int8_verdict(speedups, cpu)
    v.update(threads=t, batch=b, round_ratio_spread=round(spread, 3), reliable=spread <= NOISY_SPREAD)
    if speedups and spread > NOISY_SPREAD:
        v["text"] += (f" (unreliable: the ratio varied {spread:.1f}x between rounds; the machine was busy, "
                      "re-run on an idle machine)")
    return v


WITHIN = 0.05  # the SDK's default path is "as fast" as the fastest peer within this fraction


def _how_to_get(peer: str, subject: str, path: str | None) -> str:
    """How a user of the SDK gets the configuration of ``peer``."""
    name = Path(path).name if path else "?"
    if peer == subject:
        return f"the SDK's default: onnxruntime on {name}"
    if SDK_BACKEND.get(peer) == "onnxruntime":
        return f"the SDK's default backend on another file: {name}"
    if SDK_BACKEND.get(peer) == "openvino":
        made = " (the NNCF IR this benchmark wrote into its models/ folder)" if peer == "openvino_nncf" else ""
        return f"one option: ClassifierOptions(backend=\"openvino\") (--backend openvino) on {name}{made}"
    return "not an SDK path (the SDK runs skulens ONNX files with onnxruntime or OpenVINO)"


def fastest_per_group(configs: list[dict], pairs: list[dict], prep: Prepared) -> list[dict]:
    """Per model-only (threads, batch) group: the fastest peer (lowest lower-quartile latency, as
    the pairs compare) and how the SDK's default path (the model under test on onnxruntime)
    compares with it, from the interleaved paired ratio."""
    subject = prep.subject
    ratio = {(p["a"], p["b"], p["threads"], p["batch"]): p["speedup"] for p in pairs if p["mode"] == "model"}
    rows = []
    for t, b in sorted({(c["threads"], c["batch"]) for c in configs if c["mode"] == "model"}):
        timed = [c for c in configs if (c["mode"], c["threads"], c["batch"]) == ("model", t, b)
                 and c.get("status") == "ok" and "latency_ms" in c]
        if not timed:
            continue
        best = min(timed, key=lambda c: c["latency_ms"]["p25"])
        subj = next((c for c in timed if c["peer"] == subject), None)
        row = {"threads": t, "batch": b, "fastest": best["peer"], "fastest_p50_ms": best["latency_ms"]["p50"],
               "subject_p50_ms": subj["latency_ms"]["p50"] if subj else None,
               "how": _how_to_get(best["peer"], subject, prep.peers[best["peer"]].path)}
        if subj is not None:
            # speedup of the subject over the fastest (<= 1; 1 when it is the fastest)
            sp = 1.0 if best is subj else ratio.get((subject, best["peer"], t, b))
            row["subject_vs_fastest"] = sp
            row["within_5pct"] = sp is not None and sp >= 1.0 / (1.0 + WITHIN)
        rows.append(row)
    return rows

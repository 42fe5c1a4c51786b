"""The benchmark run: accuracy and output checks of every peer, cold start, then the threads x
batch sweep with one fresh process per configuration, interleaved round by round.

Result schema (``schema_version`` 1; keys are only ever added within a version):
  cpu            model, arch, features {name: bool}, int8_dot_product, peak estimates
  peers          {peer: status (ok|skipped|failed|wrong), reason, path, format, precision,
                 origin, size_bytes, accuracy {n, top1, top5, ...}, top1_agreement_with_fp32}
  configs        [{id "peer/mode/tT/bB", peer, mode (model|e2e), threads, batch, status,
                 reason, import_s, create_s, first_run_s, rss_*_mb, peak_rss_mb,
                 latency_ms {p25, p50, p90, p99, mean, std, min, max, n, p99_reliable},
                 throughput_ips, round_p50_ms, round_spread, roofline | stages_ms, sdk_classify_ms}]
  pairs          [{id "a/b/mode/tT/bB", a, b, mode, threads, batch, speedup (a over b), round_median, min,
                 max, rounds, percentile}]
  verdict        int8_faster, speedup, best_activation, text, reliable, export_check
  fastest        [{threads, batch, fastest, fastest_p50_ms, subject_p50_ms, subject_vs_fastest,
                 within_5pct, how}] per model-only group: is the SDK's default path (the model under
                 test on onnxruntime) the fastest, or how far, and how to get the fastest
  startup        interpreter_start_s, import_sdk_s, cold_start_threads1 {peer: {...}}
  settings, environment, machine_load, macs_per_image, gemm_ceiling, diagnostics, notes, charts,
  baseline_comparison (with --baseline)
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np

import skulens
from skulens.internal import accuracy_report

from . import _cpu, _graph, _procs
from ._analysis import fastest_per_group, pair_speedups, read_verdict, summarize_configs
from ._prepare import Prepared, prepare
from .config import FP32_PEERS, INT8_PEERS, OPENVINO_PEERS, PEERS, SDK_BACKEND, BenchConfig

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, disable=None, leave=False)


def _spec(prep: Prepared, peer: str, mode: str, threads: int, batch: int, top_k: int = 5) -> dict:
    p = prep.peers[peer]
    kind = ("torch" if peer == "torch_eager" else "opencv" if peer == "opencv_dnn"
            else "openvino" if peer in OPENVINO_PEERS else "ort")
    spec = {"peer": peer, "kind": kind, "mode": mode, "threads": threads, "batch": batch,
            "input": str(p.input_npy or prep.input_npy), "top_k": top_k}
    spec["checkpoint" if kind == "torch" else "path"] = p.path
    if mode == "e2e":  # through the SDK: ImageClassifier with this peer's backend
        spec["images"], spec["backend"] = prep.images, SDK_BACKEND[peer]
    return spec


def _check(name: str, got: np.ndarray, ref: np.ndarray, *, int8: bool) -> str | None:
    """Why ``got`` does not match ``ref`` (same rows), or None when it does."""
    if got.shape != ref.shape:
        return f"output shape {got.shape} != reference {ref.shape}"
    if not np.isfinite(got).all():
        return "non-finite outputs"
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    diff = float(np.abs(got - ref).max())
    tol = (5e-2 if int8 else 1e-3) * max(1.0, float(np.abs(ref).max()))
    if agree < 1.0 or diff > tol:
        return f"outputs differ from {name}: top-1 agreement {agree:.3f}, max |diff| {diff:.3g} (tolerance {tol:.3g})"
    return None


def _tile(rows: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([rows] * -(-n // len(rows)))[:n]


def _accuracy_phase(cfg: BenchConfig, prep: Prepared, work: Path, names: list[str]) -> dict[str, np.ndarray]:
    """Logits of every peer on the evaluation subset (batch 1), checked against ORT fp32."""
    logits: dict[str, np.ndarray] = {}
    order = ["ort_fp32"] + [n for n in names if n != "ort_fp32"]
    bar = _progress(len(order), "accuracy")
    for name in order:
        peer = prep.peers[name]
        if peer.status != "ok":
            continue
        try:
            w = _procs.Worker(_spec(prep, name, "model", max(cfg.threads), 1), work / f"eval_{name}.log")
            out = work / f"logits_{name}.npy"
            w.request({"cmd": "eval", "input": str(peer.eval_npy or prep.eval_npy), "out": str(out), "batch": 1})
            w.close()
            logits[name] = np.load(out)
        except _procs.WorkerError as exc:
            peer.fail("failed", str(exc))
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    ref = logits.get("ort_fp32")
    for name, lg in logits.items():
        peer = prep.peers[name]
        if prep.targets is not None:
            acc = accuracy_report(lg, prep.targets, prep.metadata.labels, coarse_of=prep.coarse_of)
            keys = ("n", "top1", "top5", "mean_class_top1", "coarse_top1", "coarse_top1_summed")
            peer.info["accuracy"] = {k: acc[k] for k in keys if k in acc}
        if ref is None or name == "ort_fp32":
            continue
        agree = float((lg.argmax(1) == ref.argmax(1)).mean())
        peer.info["top1_agreement_with_fp32"] = agree
        peer.info["max_abs_logit_diff_vs_fp32"] = float(np.abs(lg - ref).max())
        if name in INT8_PEERS:
            if agree < cfg.int8_min_agreement:
                peer.fail("wrong", f"top-1 agrees with ORT fp32 on only {agree:.1%} of the evaluation "
                          f"images (< {cfg.int8_min_agreement:.0%}): broken quantization, not timed")
        else:
            why = _check("ORT fp32", lg, ref, int8=False)
            if why:
                peer.fail("wrong", why + "; not timed")
    return logits


def _startup_phase(cfg: BenchConfig, prep: Prepared, names: list[str]) -> dict:
    out: dict = {"interpreter_start_s": _procs.interpreter_start_s()}
    if cfg.cold_start_repeats < 1:
        return out
    try:
        runs = [_procs.import_sdk_probe() for _ in range(cfg.cold_start_repeats)]
        out["import_sdk_s"] = float(np.median([r["import_s"] for r in runs]))
        out["import_sdk_s_min"] = float(min(r["import_s"] for r in runs))
        out["import_sdk_rss_mb"] = float(np.median([r["peak_rss_mb"] for r in runs]))
    except _procs.WorkerError as exc:
        out["import_sdk_error"] = str(exc)
    cold = {}
    for name in names:
        if name in SDK_BACKEND and prep.peers[name].status == "ok":
            try:
                runs = [_procs.cold_start_probe(prep.peers[name].path, prep.images[0], 1, cfg.top_k, SDK_BACKEND[name])
                        for _ in range(cfg.cold_start_repeats)]
                cold[name] = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
                cold[name]["total_s_min"] = float(min(r["total_s"] for r in runs))
            except _procs.WorkerError as exc:
                cold[name] = {"error": str(exc)}
    out["cold_start_threads1"] = cold
    return out


def _timing_phase(cfg: BenchConfig, prep: Prepared, work: Path, names: list[str],
                  logits: dict[str, np.ndarray]) -> tuple[list[dict], dict]:
    configs: list[dict] = []
    rounds_by_id: dict[str, list] = {}
    batches = sorted(set(cfg.batch) | set(cfg.e2e_batch))
    groups = [(t, b) for t in cfg.threads for b in batches]
    bar = _progress(len(groups) * cfg.rounds, "timing")
    n_input = len(np.load(prep.input_npy, mmap_mode="r"))
    for threads, batch in groups:
        members = []
        todo = [(n, "model") for n in names if batch in cfg.batch]
        todo += [(n, "e2e") for n in names if batch in cfg.e2e_batch and n in SDK_BACKEND]
        for name, mode in todo:
            cid = f"{name}/{mode}/t{threads}/b{batch}"
            entry = {"id": cid, "peer": name, "mode": mode, "threads": threads, "batch": batch}
            configs.append(entry)
            if prep.peers[name].status != "ok":
                entry.update(status=prep.peers[name].status, reason="peer " + prep.peers[name].status)
                continue
            try:
                w = _procs.Worker(_spec(prep, name, mode, threads, batch, cfg.top_k), work / f"{cid.replace('/', '_')}.log")
            except _procs.WorkerError as exc:
                entry.update(status="failed", reason=str(exc))
                continue
            entry.update(status="ok", **{k: w.ready[k] for k in w.ready if k != "event"})
            if mode == "model":
                try:  # never time garbage: check this configuration's own outputs first
                    out = work / f"out_{cid.replace('/', '_')}.npy"
                    w.request({"cmd": "outputs", "out": str(out)})
                    got = np.load(out)
                    refs = [("ORT fp32", logits.get("ort_fp32"))] if name in FP32_PEERS else []
                    refs.append((f"{name} at batch 1", logits.get(name)))
                    for ref_name, ref in refs:
                        why = ref is not None and _check(ref_name, got, _tile(ref[:n_input], batch), int8=name in INT8_PEERS)
                        if why:
                            entry.update(status="wrong", reason=why + "; not timed")
                            break
                except _procs.WorkerError as exc:
                    entry.update(status="failed", reason=str(exc))
            if entry["status"] != "ok":
                w.close()
                continue
            members.append((entry, w))
        for entry, w in members:
            w.request({"cmd": "warmup", "seconds": cfg.warmup_time})
        for r in range(cfg.rounds):
            for entry, w in (members if r % 2 == 0 else members[::-1]):  # A B C, C B A, ...
                if entry["status"] != "ok":
                    continue
                try:
                    rounds_by_id.setdefault(entry["id"], []).append(
                        w.request({"cmd": "run", "seconds": cfg.round_time}, timeout=cfg.round_time + 600))
                except _procs.WorkerError as exc:
                    entry.update(status="failed", reason=str(exc))
            if bar:
                bar.update(1)
        for entry, w in members:
            entry["peak_rss_mb"] = w.close().get("peak_rss_mb")
    if bar:
        bar.close()
    return configs, rounds_by_id


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _export_check(prep: Prepared, cfg: BenchConfig) -> dict | None:
    """Export's own activation-type check (choose_activation_type), run here for comparison."""
    if not (cfg.export_check and prep.train_samples and prep.peers["ort_fp32"].status == "ok"):
        return None
    try:
        from skulens.export import choose_activation_type
        from ._prepare import _sample, _tensors

        calib = _tensors(_sample(prep.train_samples, 32, seed=2), prep.preprocess)
        best, timings = choose_activation_type(prep.peers["ort_fp32"].path, calib)
        return {"export_would_choose": best, "timings_ms": timings}
    except Exception as exc:  # optional: report why it could not run
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}


def run_benchmark(cfg: BenchConfig) -> dict:
    """Run the whole benchmark; returns the result dict (also written to ``cfg.out``)."""
    from ._report import write_outputs

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cpu = _cpu.cpu_report()
    load_start = _load()
    if max(cfg.threads) > cpu["cpus_available"]:
        log.warning("threads %s exceed the %d CPUs available: oversubscribed", cfg.threads, cpu["cpus_available"])
    models_dir = out / "models"
    models_dir.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="skulens-bench-"))
    try:
        prep = prepare(cfg, models_dir)
        names = [p for p in PEERS if p in prep.peers and (p in cfg.peers or p == prep.subject)]
        log.info("peers: %s", ", ".join(f"{n} ({prep.peers[n].status})" for n in names))
        logits = _accuracy_phase(cfg, prep, work, names)
        startup = _startup_phase(cfg, prep, names)
        configs, rounds = _timing_phase(cfg, prep, work, names, logits)
        x1 = np.load(prep.input_npy)[:1]
        macs = ceiling = None
        diagnostics: dict = {}
        try:
            ref_path = prep.peers["ort_fp32"].path or prep.peers[prep.subject].path
            macs = _graph.count_macs(ref_path)
            ceiling = _graph.gemm_ceiling(1)
        except Exception as exc:  # MissingExtraError without onnx: no roofline
            diagnostics["roofline_skipped"] = f"{type(exc).__name__}: {exc}"
        for name in names:
            if name.startswith("ort_") and prep.peers[name].status == "ok":
                diagnostics[name] = _graph.diagnose(prep.peers[name].path, x1, 1, profile=cfg.profile)
        summarize_configs(configs, rounds, macs["macs"] if macs else None, ceiling, cpu)
        pairs = pair_speedups(configs, rounds, prep.subject)
        fastest = fastest_per_group(configs, pairs, prep)
        verdict = read_verdict(pairs, cfg, cpu)
        export_check = _export_check(prep, cfg)
        if export_check:
            if "export_would_choose" in export_check and verdict.get("best_activation"):
                export_check["agrees_with_this_benchmark"] = export_check["export_would_choose"] == verdict["best_activation"]
            verdict["export_check"] = export_check
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "schema_version": SCHEMA_VERSION,
        "tool": "skulens bench", "skulens_version": skulens.__version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": _environment(names),
        "machine_load": {"loadavg_1_5_15_start": load_start, "loadavg_1_5_15_end": _load(),
                         "busy": bool(load_start and load_start[0] > 0.5 * cpu["cpus_available"])},
        "cpu": cpu, "subject": prep.subject, "model": str(cfg.model),
        "settings": {"threads": list(cfg.threads), "batch": list(cfg.batch), "e2e_batch": list(cfg.e2e_batch),
                     "rounds": cfg.rounds, "round_time_s": cfg.round_time, "warmup_s": cfg.warmup_time,
                     "eval_split": cfg.eval_split, "eval_n": int(len(np.load(prep.eval_npy, mmap_mode="r")))
                     if prep.eval_npy.exists() else None, "inputs": prep.inputs, "dataset": prep.dataset,
                     "e2e_images": prep.images[:3], "top_k": cfg.top_k, "seed": cfg.seed},
        "peers": {n: {"status": prep.peers[n].status, "reason": prep.peers[n].reason, "path": prep.peers[n].path,
                      "format": prep.peers[n].format, "precision": prep.peers[n].precision,
                      "origin": prep.peers[n].origin, **prep.peers[n].info} for n in names},
        "macs_per_image": macs["macs"] if macs else None, "gemm_ceiling": ceiling,
        "startup": startup, "configs": configs, "pairs": pairs, "verdict": verdict, "fastest": fastest,
        "diagnostics": diagnostics, "notes": prep.notes,
    }
    write_outputs(result, cfg)
    return result


def _environment(names) -> dict:
    import cv2
    import onnxruntime

    env = {"python": platform.python_version(), "platform": platform.platform(), "numpy": np.__version__,
           "onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__}
    from importlib.metadata import PackageNotFoundError, version

    wanted = {"torch": "torch_eager" in names, "openvino": any(n in OPENVINO_PEERS for n in names),
              "nncf": "openvino_nncf" in names}
    for package in (p for p, used in wanted.items() if used):
        try:
            env[package] = version(package)
        except PackageNotFoundError:
            pass
    return env


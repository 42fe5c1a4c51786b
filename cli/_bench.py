"""CLI commands ``skulens bench`` (the runtime benchmark, with a compare-only mode),
``skulens robustness`` (accuracy under image corruptions) and ``skulens bench-table`` (the
accuracy / latency / size frontier of several models), all from runtime_bench.

Only the torch-free ``skulens.bench.config`` is imported to build the flags; the benchmark
itself runs its PyTorch peer in a separate process.
"""
from __future__ import annotations

import argparse
import json
import sys

from skulens.internal import add_dataclass_flags
from skulens import SkulensError

_LIST_FLAGS = ("threads", "batch", "e2e_batch", "peers")
QUICK = {"rounds": 4, "round_time": 0.1, "warmup_time": 0.1, "eval_limit": 200, "cold_start_repeats": 1}


def register(sub) -> None:
    from skulens.bench.config import PEERS, BenchConfig

    p = sub.add_parser("bench", help="accuracy, latency, throughput, memory and size of a model beside "
                       "its peers (ORT fp32/INT8, PyTorch, OpenCV DNN) on this CPU")
    p.add_argument("model", nargs="?", help="the ONNX model under test (fp32 or INT8)")
    add_dataclass_flags(p, BenchConfig, skip=("model",) + _LIST_FLAGS)
    p.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts (default: 1,2)")
    p.add_argument("--batch", default="1,8,32", help="comma-separated batch sizes (default: 1,8,32)")
    p.add_argument("--e2e-batch", default="1", help="batch sizes of the end-to-end JPEG -> top-k timing "
                   "(default: 1; empty string: none)")
    p.add_argument("--peers", default="all", help=f"comma-separated, from {', '.join(PEERS)} "
                   "(aliases: fp32, int8, u8s8, s8s8, torch, opencv; default: all)")
    p.add_argument("--quick", action="store_true", help="fewer rounds and images: " +
                   ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    p.add_argument("--compare", metavar="RESULT.json", help="only compare a saved result with --baseline "
                   "(no measurement)")
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the Markdown report")
    p.set_defaults(func=_bench)
    _register_robustness(sub)
    _register_bench_table(sub)


def _register_robustness(sub) -> None:
    p = sub.add_parser("robustness", help="top-1 of a model under lighting, angle, scale and sensor "
                       "corruptions, as a fraction of its clean top-1 (skulens.bench.robustness)")
    p.add_argument("model", help="the ONNX model under test (fp32 or INT8)")
    p.add_argument("--data", required=True, help="dataset folder (class folders or split lists)")
    p.add_argument("--split", default="test", help="dataset split to evaluate (default: test)")
    p.add_argument("--corruptions", help="comma-separated corruption names (default: all)")
    p.add_argument("--limit", type=int, help="evaluate only N images, evenly spaced through the split "
                   "(default: all)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random corruptions (default: 0)")
    p.add_argument("--out", default="robustness", help="folder for robustness.json/.md/.png "
                   "(default: robustness/)")
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the Markdown table")
    p.set_defaults(func=_robustness)


def _register_bench_table(sub) -> None:
    p = sub.add_parser("bench-table", help="accuracy, model-only and end-to-end latency (p50/p99), throughput, "
                       "memory and size of several exported models on each backend and thread count, side "
                       "by side in one table with the Pareto-optimal rows marked (skulens.bench.frontier)")
    p.add_argument("models", nargs="+", metavar="MODEL", help="skulens ONNX models to compare (fp32 or INT8)")
    p.add_argument("--data", help="dataset folder for accuracy and real JPEGs (default: none: no accuracy, "
                   "synthetic JPEGs)")
    p.add_argument("--split", default="test", help="dataset split to evaluate (default: test)")
    p.add_argument("--limit", type=int, help="evaluate only the first N images of the split (default: all)")
    p.add_argument("--threads", default="1", help="comma-separated intra-op thread counts; each gives its own "
                   "rows, timed in its own interleaved loop (default: 1)")
    p.add_argument("--backends", default="onnxruntime", help="comma-separated backends: onnxruntime, openvino "
                   "(pip install 'skulens[openvino]'; a backend not installed is skipped with a note) "
                   "(default: onnxruntime)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds over all rows "
                   "(default: 5)")
    p.add_argument("--e2e-images", type=int, default=8, help="JPEGs cycled by the end-to-end timing "
                   "(default: 8)")
    p.add_argument("--throughput-batch", default="8,32", help="comma-separated batch sizes of the model-only "
                   "throughput in images/s (default: 8,32; empty string: none)")
    p.add_argument("--rss", action=argparse.BooleanOptionalAction, default=True, help="peak RSS of each row, "
                   "measured in a fresh child process per row (default: --rss)")
    p.add_argument("--reuse-metadata-eval", action="store_true", help="take the onnxruntime rows' top-1 from "
                   "the eval stored in the model file when it covers the same whole split (default: measure)")
    p.add_argument("--out", default="frontier", help="folder for frontier.json/.md/.png (default: frontier/)")
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the Markdown table")
    p.set_defaults(func=_bench_table)


def _report(args, measure, write, markdown) -> int:
    """Run ``measure()`` (configuration problems become SkulensError), write its result files
    to ``--out``, print the Markdown table (or the JSON with ``--json``)."""
    try:
        result = measure()
    except ValueError as exc:  # ModelError / DatasetError are SkulensErrors and pass through as such
        if isinstance(exc, SkulensError):
            raise
        raise SkulensError(str(exc)) from None
    written = write(result, args.out)
    print(json.dumps(result, indent=2) if args.json else markdown(result), end="\n" if args.json else "")
    print("written: " + ", ".join(str(w) for w in written), file=sys.stderr)
    return 0


def _bench_table(args) -> int:
    from skulens.bench.frontier import frontier_table, markdown, write_table

    return _report(args, lambda: frontier_table(
        args.models, data=args.data, split=args.split, limit=args.limit, threads=args.threads,
        backends=args.backends, rounds=args.rounds, e2e_images=args.e2e_images,
        throughput_batch=args.throughput_batch, rss=args.rss, reuse_metadata_eval=args.reuse_metadata_eval),
        write_table, markdown)


def _robustness(args) -> int:
    from skulens.bench.robustness import evaluate_robustness, markdown, write_report

    return _report(args, lambda: evaluate_robustness(
        args.model, args.data, split=args.split, corruptions=args.corruptions, limit=args.limit,
        threads=args.threads, seed=args.seed), write_report, markdown)


def _bench(args) -> int:
    from skulens.bench._report import compare_with_baseline, load_json
    from skulens.bench.config import BenchConfig, parse_int_list, parse_peers

    if args.compare:
        if not args.baseline:
            raise SkulensError("--compare needs --baseline FILE")
        report = compare_with_baseline(load_json(args.compare), load_json(args.baseline),
                                       args.tolerance, args.accuracy_tolerance_pp)
        _print_comparison(report, as_json=args.json)
        return 0 if report["ok"] else 1
    if not args.model:
        raise SkulensError("bench needs a MODEL.onnx (or --compare RESULT.json --baseline FILE)")
    import dataclasses

    from skulens.bench import run_benchmark

    kwargs = {f.name: getattr(args, f.name) for f in dataclasses.fields(BenchConfig)
              if f.name not in _LIST_FLAGS and hasattr(args, f.name)}
    try:
        kwargs.update(threads=parse_int_list(args.threads), batch=parse_int_list(args.batch),
                      e2e_batch=parse_int_list(args.e2e_batch), peers=parse_peers(args.peers))
        if args.quick:  # shorter defaults; flags given explicitly still win
            defaults = {f.name: f.default for f in dataclasses.fields(BenchConfig)}
            kwargs.update({k: v for k, v in QUICK.items() if kwargs.get(k) == defaults[k]})
        cfg = BenchConfig(**kwargs)
    except ValueError as exc:
        raise SkulensError(str(exc)) from None
    result = run_benchmark(cfg)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        from skulens.bench._report import markdown

        print(markdown(result))
        print(f"written: {cfg.out}/bench.json, {cfg.out}/bench.md"
              + "".join(f", {cfg.out}/{c}" for c in result.get("charts", [])), file=sys.stderr)
    bc = result.get("baseline_comparison")
    return 0 if not bc or bc["ok"] else 1


def _print_comparison(report: dict, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
        return
    for r in report["rows"]:
        print(f"{'REGRESSED' if r['regressed'] else 'ok':9} {r['id']}: {r['baseline']} -> {r['current']}"
              + (f"  ({r['why']})" if r.get("why") else ""))
    print(f"{'OK' if report['ok'] else 'REGRESSION'}: {len(report['regressions'])} of {report['checked']} "
          f"checks regressed (tolerance {report['tolerance']:.0%})")

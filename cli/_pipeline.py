"""CLI commands of the core pipeline: quickstart, train, export, predict, eval."""
from __future__ import annotations

import dataclasses
import json
import sys

from skulens.internal import add_dataclass_flags, dataclass_from_args
from skulens import ClassifierOptions


def register(sub) -> None:
    from skulens.export.config import ExportConfig
    from skulens.training.config import TrainConfig

    p = sub.add_parser("quickstart", help="the whole pipeline offline: demo catalogue (or --data), "
                       "train, export fp32 + INT8, evaluate, classify, time")
    p.add_argument("--data", help="a real dataset instead of the generated demo catalogue")
    p.add_argument("--out", default="runs/quickstart", help="output folder (default: runs/quickstart)")
    p.add_argument("--model", default=None, help="model from the registry (default: the train default)")
    p.add_argument("--epochs", type=int, default=None, help="default: 20 on the demo, the train default on --data")
    p.add_argument("--input-size", type=int, default=None, help="default: 64 on the demo, the train default on --data")
    p.add_argument("--per-class", type=int, default=50, help="demo images per class (default: 50)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_quickstart)

    p = sub.add_parser("train", help="train a classifier (flags = skulens.training.TrainConfig fields)")
    add_dataclass_flags(p, TrainConfig)
    p.set_defaults(func=_train)

    p = sub.add_parser("export", help="checkpoint -> ONNX (+ INT8 with --int8) with metadata and report")
    add_dataclass_flags(p, ExportConfig, positional=("checkpoint",))
    p.set_defaults(func=_export)

    p = sub.add_parser("predict", help="classify images with an exported model")
    p.add_argument("model")
    p.add_argument("images", nargs="*", metavar="IMAGE")
    _classifier_flags(p)
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    from ._stream import add_stream_flags
    add_stream_flags(p)
    p.set_defaults(func=_predict)

    p = sub.add_parser("eval", help="accuracy of an exported model on a dataset split")
    p.add_argument("model")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=None, help="only the first N images of the split")
    _classifier_flags(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_eval)


def _classifier_flags(p) -> None:
    add_dataclass_flags(p, ClassifierOptions, skip=("providers",))
    p.add_argument("--providers", default="CPUExecutionProvider",
                   help="comma-separated onnxruntime execution providers")


def _options(args) -> ClassifierOptions:
    return dataclass_from_args(ClassifierOptions, args, providers=tuple(args.providers.split(",")))


def _train(args) -> int:
    from skulens.training import TrainConfig, train

    metrics = train(dataclass_from_args(TrainConfig, args))
    print(json.dumps({k: v for k, v in metrics.items() if k != "eval"} |
                     {"eval": {k: v for k, v in metrics.get("eval", {}).items() if k != "per_class"}}, indent=2))
    return 0


def _export(args) -> int:
    from skulens.export import ExportConfig, export

    report = export(dataclass_from_args(ExportConfig, args))
    print(json.dumps(report, indent=2))
    return 0


def _predict(args) -> int:
    from skulens import ImageClassifier
    from skulens import ImageError
    from ._stream import predict_stream, wants_stream

    if wants_stream(args):
        return predict_stream(args, _options(args))
    failures = 0
    with ImageClassifier.from_path(args.model, _options(args)) as clf:
        for image in args.images:
            try:
                result = clf.classify(image)
            except ImageError as exc:
                failures += 1
                print(json.dumps({"source": image, "error": str(exc)}) if args.json
                      else f"{image}: error: {exc}", file=sys.stdout if args.json else sys.stderr)
                continue
            if args.json:
                print(json.dumps(result.to_dict()))
            else:
                cats = ", ".join(f"{c.label} {c.score:.3f}" for c in result.categories) or "(below threshold)"
                print(f"{image}: unknown product (nearest: {cats})" if result.unknown else f"{image}: {cats}")
    return 1 if failures else 0


def _eval(args) -> int:
    from skulens import ImageClassifier
    from skulens import load_dataset
    from skulens.internal import evaluate

    dataset = load_dataset(args.data)
    with ImageClassifier.from_path(args.model, _options(args)) as clf:
        report = evaluate(clf, dataset, split=args.split, limit=args.limit)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        line = f"{args.model} on {args.split} (n={report['n']}): top-1 {report['top1']:.4f}  top-5 {report['top5']:.4f}"
        if "coarse_top1" in report:
            line += f"  coarse top-1 {report['coarse_top1']:.4f}"
        print(line)
    return 0


def _quickstart(args) -> int:
    from skulens.cli.quickstart import run_quickstart

    return run_quickstart(data=args.data, out=args.out, model=args.model, epochs=args.epochs,
                          input_size=args.input_size, per_class=args.per_class, seed=args.seed)

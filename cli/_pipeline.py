"""CLI commands of the core pipeline: quickstart, train, export, predict, eval."""
from __future__ import annotations

import json
import sys

from skulens.internal import add_dataclass_flags, dataclass_from_args, field_help
from skulens import ClassifierOptions

from ._main import expand_images, require_checkpoint, require_model


def register(sub) -> None:
    from skulens.export.config import ExportConfig
    from skulens.training.config import AverageConfig, SoupConfig, TrainConfig

    p = sub.add_parser("quickstart", help="the whole pipeline offline: demo catalogue (or --data), "
                       "train, export fp32 + INT8, evaluate, classify, time")
    p.add_argument("--data", help="a real dataset instead of the generated demo catalogue")
    p.add_argument("--out", default="runs/quickstart", help="output folder (default: runs/quickstart)")
    p.add_argument("--model", default=None, help="model from the registry (default: the train default)")
    p.add_argument("--epochs", type=int, default=None, help="default: 20 on the demo, the train default on --data")
    p.add_argument("--input-size", type=int, default=None, help="default: 64 on the demo, the train default on --data")
    p.add_argument("--per-class", type=int, default=50, help="demo images per class (default: 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of the demo images and of training (default: 0)")
    p.add_argument("--gan-seconds", type=float, default=60.0,
                   help="training time of the conditional GAN step (default: 60; 0 = skip the GAN)")
    p.set_defaults(func=_quickstart)

    p = sub.add_parser("train", help="train a classifier (flags = skulens.training.TrainConfig fields)")
    add_dataclass_flags(p, TrainConfig)
    p.set_defaults(func=_train)

    p = sub.add_parser("average", help="average the weights of fine-tuned runs into one model (a 'model soup')",
                       description="One classifier whose weights are the mean of several runs fine-tuned from the "
                       "same pretrained weights (e.g. seeds), at the size and speed of one; it can be more accurate "
                       "than each run (measured on Grocery in the README: +3.6 pp on val; on test +0.4 pp for two "
                       "seeds, +1.0 pp for four). Export the result like a best.pt.")
    checkpoints = AverageConfig.__dataclass_fields__["checkpoints"]  # a list: added here, not by add_dataclass_flags
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help=field_help(checkpoints))
    add_dataclass_flags(p, AverageConfig)
    p.set_defaults(func=_average)

    p = sub.add_parser("soup", help="train several seeds of one recipe and average them into one model",
                       description="skulens train's flags, run for --members seeds (--seed, --seed + 1, ...) into "
                       "--out/seedS, the later ones forked from the first run's epoch --fork-at when it is set, "
                       "then averaged into --out/soup.pt (skulens average). Run it again to continue an "
                       "interrupted soup: finished runs are kept, the interrupted one resumed.")
    add_dataclass_flags(p, TrainConfig)
    add_dataclass_flags(p, SoupConfig)
    p.set_defaults(func=_soup)

    p = sub.add_parser("export", help="checkpoint -> ONNX (+ INT8 with --int8) with metadata and report")
    add_dataclass_flags(p, ExportConfig, positional=("checkpoint",))
    p.set_defaults(func=_export)

    p = sub.add_parser("predict", help="classify images with an exported model",
                       description="Classify image files, folders of images or glob patterns (or a video "
                       "or camera) with an exported .onnx model. A bad image is reported and skipped; the "
                       "exit status is 1 when any failed.")
    p.add_argument("model", help="an exported model .onnx (fp32 or INT8), not a training checkpoint")
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help="image files, folders (searched recursively for " + ", ".join(sorted(_suffixes()))
                   + ") or quoted glob patterns such as 'shelf/**/*.jpg'")
    _classifier_flags(p)
    p.add_argument("--json", action="store_true", help="one JSON object per image (errors too, with an "
                   "\"error\" field) instead of text")
    from ._stream import add_stream_flags
    add_stream_flags(p)
    p.set_defaults(func=_predict)

    p = sub.add_parser("eval", help="accuracy of an exported model on a dataset split",
                       description="Top-1, top-5, mean per-class accuracy, macro F1 and (with coarse groups) "
                       "coarse top-1 of an exported model on a dataset split. With --out: per-class "
                       "precision/recall/F1 (CSV, Markdown), the confusion matrix (CSV, PNG) and copies of "
                       "the misclassified photos.")
    p.add_argument("model", help="an exported model .onnx (fp32 or INT8)")
    p.add_argument("--data", required=True, help="dataset folder (class folders or split lists)")
    p.add_argument("--split", default="test", help="dataset split to evaluate (default: test)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images of the split")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="also write per_class.csv/.md, confusion.csv/.png, misclassified.csv and "
                   "misclassified/ (copies named <true>_as_<pred>__<file>) to this folder")
    _classifier_flags(p)
    p.add_argument("--json", action="store_true", help="print the JSON report instead of text")
    p.set_defaults(func=_eval)


def _classifier_flags(p) -> None:
    add_dataclass_flags(p, ClassifierOptions, skip=("providers",))
    p.add_argument("--providers", default="CPUExecutionProvider",
                   help="comma-separated onnxruntime execution providers")


def _suffixes():
    from skulens.internal import IMAGE_SUFFIXES

    return IMAGE_SUFFIXES


def printable(text: str) -> str:
    """``text`` safe for a terminal: control characters (ANSI escapes, carriage returns, bidi
    overrides...) as Python escapes (``\\x1b``), everything else, non-ASCII letters included, as is.
    Labels come from the model file, which may not be trusted."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _options(args) -> ClassifierOptions:
    return dataclass_from_args(ClassifierOptions, args, providers=tuple(args.providers.split(",")))


def _train(args) -> int:
    from skulens.training import TrainConfig, train

    metrics = train(dataclass_from_args(TrainConfig, args))
    print(json.dumps({k: v for k, v in metrics.items() if k != "eval"} |
                     {"eval": {k: v for k, v in metrics.get("eval", {}).items() if k != "per_class"}}, indent=2))
    return 0


def _average(args) -> int:
    for path in args.checkpoints:
        require_checkpoint(path, "average", takes="the best.pt of skulens train runs")
    from skulens.training import AverageConfig, average

    out = average(dataclass_from_args(AverageConfig, args, checkpoints=tuple(args.checkpoints)))
    print(f"{out}: the mean of {len(args.checkpoints)} runs' weights; export it with: skulens export {out} "
          "--out MODEL.onnx [--int8]")
    return 0


def _soup(args) -> int:
    from skulens.training import SoupConfig, TrainConfig, train_soup

    summary = train_soup(dataclass_from_args(TrainConfig, args), dataclass_from_args(SoupConfig, args))
    print(json.dumps(summary, indent=2))
    print(f"export it with: skulens export {summary['soup']} --out MODEL.onnx [--int8]")
    return 0


def _export(args) -> int:
    require_checkpoint(args.checkpoint)  # before torch (and its message about an ONNX file) is loaded
    from skulens.export import ExportConfig, export

    report = export(dataclass_from_args(ExportConfig, args))
    print(json.dumps(report, indent=2))
    return 0


def _predict(args) -> int:
    from skulens import ImageClassifier
    from skulens import ImageError
    from ._stream import predict_stream, wants_stream

    require_model(args.model)
    if wants_stream(args):
        return predict_stream(args, _options(args))
    inputs = expand_images(args.images, _suffixes())
    failures = 0
    with ImageClassifier.from_path(args.model, _options(args)) as clf:
        for image, problem in inputs:
            try:
                if problem:
                    raise ImageError(f"{image}: {problem}")
                result = clf.classify(image)
            except ImageError as exc:  # report it, go on with the next image
                failures += 1
                print(json.dumps({"source": image, "error": str(exc)}) if args.json
                      else f"skulens: error: {exc}", file=sys.stdout if args.json else sys.stderr, flush=True)
                continue
            if args.json:
                print(json.dumps(result.to_dict()))
            else:
                cats = ", ".join(f"{printable(c.label)} {c.score:.3f}" for c in result.categories) or "(below threshold)"
                where = printable(str(image))
                group = f"  [{printable(result.coarse.label)} {result.coarse.score:.3f}]" if result.coarse else ""
                print(f"{where}: unknown product (nearest: {cats})" if result.unknown else f"{where}: {cats}{group}")
    if failures:
        print(f"skulens: {failures} of {len(inputs)} images could not be classified", file=sys.stderr)
    return 1 if failures else 0


def _eval(args) -> int:
    from pathlib import Path

    from skulens import ImageClassifier
    from skulens import load_dataset
    from skulens.internal import eval_summary_line, evaluate, write_eval_report

    require_model(args.model)
    dataset = load_dataset(args.data)
    with ImageClassifier.from_path(args.model, _options(args)) as clf:
        report = evaluate(clf, dataset, split=args.split, limit=args.limit, details=bool(args.out))
    if args.out:
        written = write_eval_report(report, args.out, model=Path(args.model).name)
        report.pop("details")
        print("written: " + ", ".join(str(w) for w in written), file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(eval_summary_line(report, args.model))
        worst = sorted(report["per_class"].items(), key=lambda kv: (kv[1]["f1"], kv[0]))[:5]
        if worst and worst[0][1]["f1"] < 1:
            print("weakest classes (F1, precision, recall): " + "; ".join(
                f"{label} {v['f1']:.2f} {v['precision']:.2f} {v['recall']:.2f}" for label, v in worst))
    return 0


def _quickstart(args) -> int:
    from skulens.cli.quickstart import run_quickstart

    return run_quickstart(data=args.data, out=args.out, model=args.model, epochs=args.epochs,
                          input_size=args.input_size, per_class=args.per_class, seed=args.seed,
                          gan_seconds=args.gan_seconds)

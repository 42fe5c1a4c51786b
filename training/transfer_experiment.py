"""Does transfer learning pay? Train on one half of the classes, fine-tune to the other half,
and compare with training from scratch on the same budget (same epochs, same recipe).

    python -m skulens.training.transfer_experiment --data ../shared/datasets/grocery-store/dataset \
        --out runs/transfer --source-epochs 40 --target-epochs 15

Writes ``summary.json`` with the target-half test top-1 of: scratch, init-from (full fine-tune),
init-from with the backbone frozen for the first epochs, and (``--imagenet-model``, where its
weights are installed) the ImageNet-pretrained model fine-tuned with its own recipe.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from skulens import load_dataset

from skulens.internal import subset, write_split_lists

from .config import TrainConfig, pretrained_installed
from .trainer import train


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="runs/transfer")
    p.add_argument("--model", default="edge_resnet_patch", help="the from-scratch model of the source/target arms")
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--imagenet-model", default="efficientnet_lite0",
                   help="arm 'imagenet': this model from ImageNet weights, fine-tuned on the target half ('' = none)")
    p.add_argument("--ema-decay", type=float, default=0.0, help="0: these runs are too short for an EMA")
    p.add_argument("--source-epochs", type=int, default=40)
    p.add_argument("--target-epochs", type=int, default=15)
    p.add_argument("--freeze-epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arms", default="scratch,init_from,init_from_frozen_first,imagenet",
                   help="comma-separated arms to run (the source model is trained only for the init_from arms)")
    args = p.parse_args(argv)
    wanted = [a for a in args.arms.split(",") if a]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    ds = load_dataset(args.data)
    half = len(ds.classes) // 2
    source = write_split_lists(subset(ds, range(half)), out / "data_source")
    target = write_split_lists(subset(ds, range(half, len(ds.classes))), out / "data_target")
    common = dict(model=args.model, pretrained=False, input_size=args.input_size, seed=args.seed, ema_decay=args.ema_decay)

    src_ckpt = out / "source" / "best.pt"
    if not src_ckpt.is_file() and any(a.startswith("init_from") for a in wanted):
        train(TrainConfig(data=str(source), out=str(out / "source"), epochs=args.source_epochs, **common))
    arms = {
        "scratch": {},
        "init_from": {"init_from": str(src_ckpt)},
        "init_from_frozen_first": {"init_from": str(src_ckpt), "freeze_backbone": args.freeze_epochs},
    }
    configs = {name: TrainConfig(data=str(target), out=str(out / name), epochs=args.target_epochs, **common, **extra)
               for name, extra in arms.items() if name in wanted}
    if "imagenet" in wanted and args.imagenet_model and pretrained_installed(args.imagenet_model):
        configs["imagenet"] = TrainConfig(data=str(target), out=str(out / "imagenet"), model=args.imagenet_model,
                                          pretrained=True, seed=args.seed)
    results = {}
    for name, cfg in configs.items():
        m = train(cfg)
        results[name] = {"test_top1": m["eval"]["top1"], "test_coarse_top1": m["eval"].get("coarse_top1"),
                         "train_seconds": m["train_seconds"], "cpu_seconds": m["cpu_seconds"]}
        logging.info("%s: %s", name, results[name])
    summary = {"classes_source": half, "classes_target": len(ds.classes) - half, "args": vars(args),
               "results": results}
    for arm in ("init_from", "imagenet"):
        if arm in results and "scratch" in results:
            summary[f"gain_pp_{arm}_vs_scratch"] = round(100 * (results[arm]["test_top1"] - results["scratch"]["test_top1"]), 2)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

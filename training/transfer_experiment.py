"""Does transfer learning pay? Train on one half of the classes, fine-tune to the other half,
and compare with training from scratch on the same budget (same epochs, same recipe).

    python -m training.transfer_experiment --data ../shared/datasets/grocery-store/dataset \
        --out runs/transfer --source-epochs 40 --target-epochs 15

Writes ``summary.json`` with the target-half test top-1 of: scratch, init-from (full fine-tune),
and init-from with the backbone frozen for the first epochs.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from sdk._dataset import load_dataset, subset, write_split_lists

from .config import TrainConfig
from .trainer import train


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="runs/transfer")
    p.add_argument("--model", default=TrainConfig.model)
    p.add_argument("--input-size", type=int, default=TrainConfig.input_size)
    p.add_argument("--ema-decay", type=float, default=0.0, help="0: these runs are too short for an EMA")
    p.add_argument("--source-epochs", type=int, default=40)
    p.add_argument("--target-epochs", type=int, default=15)
    p.add_argument("--freeze-epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    ds = load_dataset(args.data)
    half = len(ds.classes) // 2
    source = write_split_lists(subset(ds, range(half)), out / "data_source")
    target = write_split_lists(subset(ds, range(half, len(ds.classes))), out / "data_target")
    common = dict(model=args.model, input_size=args.input_size, seed=args.seed, ema_decay=args.ema_decay)

    src_ckpt = out / "source" / "best.pt"
    if not src_ckpt.is_file():
        train(TrainConfig(data=str(source), out=str(out / "source"), epochs=args.source_epochs, **common))
    arms = {
        "scratch": {},
        "init_from": {"init_from": str(src_ckpt)},
        "init_from_frozen_first": {"init_from": str(src_ckpt), "freeze_backbone": args.freeze_epochs},
    }
    results = {}
    for name, extra in arms.items():
        m = train(TrainConfig(data=str(target), out=str(out / name), epochs=args.target_epochs, **common, **extra))
        results[name] = {"test_top1": m["eval"]["top1"], "test_coarse_top1": m["eval"].get("coarse_top1"),
                         "train_seconds": m["train_seconds"], "cpu_seconds": m["cpu_seconds"]}
        logging.info("%s: %s", name, results[name])
    summary = {"classes_source": half, "classes_target": len(ds.classes) - half, "args": vars(args),
               "results": results,
               "gain_pp_init_from_vs_scratch": round(100 * (results["init_from"]["test_top1"]
                                                            - results["scratch"]["test_top1"]), 2)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

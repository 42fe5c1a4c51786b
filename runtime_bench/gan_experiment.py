"""The whole GAN measurement in one reproducible command (each step is skipped when its output
exists, so an interrupted run continues):

    nice -n 10 python -m skulens.bench.gan_experiment --data ../shared/datasets/grocery-store/dataset \
        --out runs/gan_exp

1. subsets: ``--classes`` of the dataset (all train/val/test images) and a low-data copy with
   ``--per-class`` real train images per class (same val/test);
2. the feature classifier: ``skulens train`` recipe on the class subset;
3. GAN on the class subset (FID, CAS, latency) and a second GAN trained ONLY on the low-data
   subset (the augmentation experiment must not leak the other real images through the GAN);
4. export both (the first with INT8 behind the quality gate);
5. ``skulens gan eval`` -> ``eval/gan_eval.json`` + ``eval/gan_eval.png``.
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from pathlib import Path

from skulens import load_dataset

from skulens.internal import subset, write_split_lists

DEFAULT_CLASSES = ("Granny-Smith,Royal-Gala,Banana,Kiwi,Lemon,Orange,Satsumas,Arla-Medium-Fat-Milk,"
                   "Carrots,Brown-Cap-Mushroom")


def _cpu_seconds() -> float:
    r, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="runs/gan_exp")
    p.add_argument("--classes", default=DEFAULT_CLASSES, help="comma-separated class names")
    p.add_argument("--per-class", type=int, default=10, help="real train images per class, low-data arm")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--classifier-model", default="edge_resnet_tiny")
    p.add_argument("--classifier-epochs", type=int, default=40)
    p.add_argument("--gan-steps", type=int, default=2000, help="GAN optimiser steps (class subset)")
    p.add_argument("--lowdata-gan-steps", type=int, default=1000)
    p.add_argument("--g-width", type=int, default=128)
    p.add_argument("--d-width", type=int, default=32)
    p.add_argument("--lowdata-epochs", type=int, default=60)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "torch._export", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from skulens.export import ExportConfig, export_generator
    from skulens.training import TrainConfig, train

    from skulens.training.gan.config import GanConfig, GanEvalConfig
    from skulens.training.gan.evaluate import evaluate_gan
    from skulens.training.gan.trainer import train_gan

    out = Path(args.out)
    steps: dict = {}
    t0, c0 = time.perf_counter(), _cpu_seconds()

    def timed(name, fn):
        t, c = time.perf_counter(), _cpu_seconds()
        res = fn()
        steps[name] = {"wall_s": round(time.perf_counter() - t, 1), "cpu_s": round(_cpu_seconds() - c, 1)}
        logging.info("step %s: %s", name, steps[name])
        return res

    ds = load_dataset(args.data)
    names = [c.strip() for c in args.classes.split(",") if c.strip()]
    ids = [ds.classes.index(n) for n in names]
    data = out / "data"
    if not (data / "train.txt").is_file():
        write_split_lists(subset(ds, ids), data)
    low = out / "data_low"
    if not (low / "train.txt").is_file():
        full = load_dataset(data)
        write_split_lists(subset(full, range(len(full.classes)), per_class={"train": args.per_class},
                                 seed=args.seed), low)

    clf = out / "classifier" / "best.pt"
    if not clf.is_file():
        timed("classifier", lambda: train(TrainConfig(
            data=str(data), out=str(clf.parent), model=args.classifier_model, input_size=args.image_size,
            epochs=args.classifier_epochs, batch_size=32, lr=0.05, seed=args.seed, num_workers=0, threads=1)))

    common = dict(image_size=args.image_size, g_width=args.g_width, d_width=args.d_width, batch_size=32,
                  ema_decay=0.995, threads=1, seed=args.seed, steps_per_epoch=50, classifier=str(clf))
    for name, src, n_steps in (("gan", data, args.gan_steps), ("gan_low", low, args.lowdata_gan_steps)):
        ckpt = out / name / "last.pt"
        if not (out / name / "metrics.json").is_file():
            timed(f"{name}_train", lambda src=src, n=n_steps, name=name: train_gan(GanConfig(
                data=str(src), out=str(out / name), epochs=max(1, n // 50), resume=True, **common)))
        onnx_path = out / f"{name}.onnx"
        if not onnx_path.is_file():
            timed(f"{name}_export", lambda ckpt=ckpt, o=onnx_path, q=name == "gan": export_generator(
                ExportConfig(checkpoint=str(ckpt), out=str(o), int8=q)))

    result = timed("eval", lambda: evaluate_gan(GanEvalConfig(
        generator=str(out / "gan.onnx"), data=str(data), classifier=str(clf), out=str(out / "eval"),
        lowdata_data=str(low), lowdata_generator=str(out / "gan_low.onnx"), seeds=args.seeds,
        lowdata_epochs=args.lowdata_epochs, seed=args.seed)))
    summary = {"args": vars(args), "steps": steps, "total_wall_s": round(time.perf_counter() - t0, 1),
               "total_cpu_s_this_invocation": round(_cpu_seconds() - c0, 1), "eval": str(out / "eval" / "gan_eval.json"),
               "fid": {k: v for k, v in result["fid"].items() if k != "definition"},
               "cas": result.get("cas", {}).get("fraction_of_real"),
               "lowdata_gain_pp": result.get("lowdata", {}).get("gain_pp")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

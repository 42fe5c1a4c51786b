"""The whole GAN measurement in one reproducible command (each step is skipped when its output
exists, so an interrupted run continues):

    nice -n 10 python -m skulens.bench.gan_experiment --data ../shared/datasets/grocery-store/dataset \
        --out runs/gan64

1. data: the dataset (or ``--classes`` of it) and a low-data copy with ``--per-class`` real train
   images per class (same val/test);
2. GANs, each for the same training time (``--gan-minutes``): the projected GAN (frozen ImageNet
   Lite0 discriminator features) and the DCGAN baseline on all the data, and a projected GAN
   trained ONLY on the low-data subset (the augmentation experiment must not leak the other real
   images through the GAN);
3. export (the projected GAN with INT8 behind the quality gate);
4. the CAS / low-data classifier: the pretrained EfficientNet-Lite0 recipe at the GAN's resolution
   on the real train split (its test top-1 is the real-data reference);
5. ``skulens gan eval``: FID/KID in ImageNet Lite0 features for both GANs (one table), CAS, the
   low-data arms and latency for the projected one -> ``summary.json`` and ``summary.md``.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from skulens import load_dataset

from skulens.internal import atomic_write, cpu_seconds, subset, write_split_lists

GRID_CLASSES = ("Granny-Smith,Banana,Kiwi,Lemon,Orange,Pomegranate,Watermelon,Pineapple,Tropicana-Apple-Juice,"
                "Arla-Standard-Milk,Oatly-Oat-Milk,Aubergine,Carrots,Cucumber,Red-Bell-Pepper,Vine-Tomato")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="runs/gan64")
    p.add_argument("--classes", default="", help="comma-separated class names ('' = all)")
    p.add_argument("--per-class", type=int, default=5, help="real train images per class, low-data arm")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--gan-minutes", type=float, default=45.0, help="training time of each full-data GAN")
    p.add_argument("--lowdata-gan-minutes", type=float, default=15.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads per GAN (the two full-data GANs "
                   "can run side by side: python -m ... --only projected & ... --only dcgan)")
    p.add_argument("--only", default="", help="train only this GAN (projected, dcgan, projected_low) and stop")
    p.add_argument("--no-dcgan", action="store_true", help="skip the DCGAN baseline (e.g. a second projected "
                   "recipe compared with a baseline measured before)")
    p.add_argument("--no-lowdata", action="store_true", help="skip the low-data GAN and arms (FID, CAS, latency only)")
    p.add_argument("--class-guidance", type=float, default=0.0,
                   help="classifier-guidance weight of the projected GANs (skulens gan train --class-guidance)")
    p.add_argument("--classifier", default="", help="reuse this CAS / low-data classifier checkpoint "
                   "(the pretrained recipe at the GAN's resolution) instead of training one")
    p.add_argument("--classifier-epochs", type=int, default=12)
    p.add_argument("--lowdata-epochs", type=int, default=30)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid-classes", default=GRID_CLASSES)
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
    t0, c0 = time.perf_counter(), cpu_seconds()

    def timed(name, fn):
        t, c = time.perf_counter(), cpu_seconds()
        res = fn()
        steps[name] = {"wall_s": round(time.perf_counter() - t, 1), "cpu_s": round(cpu_seconds() - c, 1)}
        logging.info("step %s: %s", name, steps[name])
        return res

    ds = load_dataset(args.data)
    data = Path(args.data)
    if args.classes:
        data = out / "data"
        if not (data / "train.txt").is_file():
            write_split_lists(subset(ds, [ds.classes.index(n.strip()) for n in args.classes.split(",")]), data)
    low = out / "data_low"
    if not (low / "train.txt").is_file():
        full = load_dataset(data)
        write_split_lists(subset(full, range(len(full.classes)), per_class={"train": args.per_class},
                                 seed=args.seed), low)

    common = dict(image_size=args.image_size, batch_size=args.batch_size, steps_per_epoch=50, epochs=100000,
                  threads=args.threads, seed=args.seed, grid_classes=args.grid_classes, resume=True)
    projected = dict(discriminator="projected", lr_d=2e-4, class_guidance=args.class_guidance)
    gans = {"projected": (data, args.gan_minutes, projected),
            "dcgan": (data, args.gan_minutes, dict(discriminator="dcgan")),
            "projected_low": (low, args.lowdata_gan_minutes, projected)}
    for name, (src, minutes, extra) in gans.items():
        if ((args.only and name != args.only) or (args.no_dcgan and name == "dcgan")
                or (args.no_lowdata and name == "projected_low")):
            continue
        if not (out / name / "metrics.json").is_file():
            timed(f"{name}_train", lambda src=src, m=minutes, name=name, extra=extra: train_gan(GanConfig(
                data=str(src), out=str(out / name), max_minutes=m, **common, **extra)))
        onnx_path = out / f"{name}.onnx"
        if not onnx_path.is_file():
            timed(f"{name}_export", lambda name=name, o=onnx_path: export_generator(ExportConfig(
                checkpoint=str(out / name / "last.pt"), out=str(o), int8=name == "projected")))
    if args.only:
        return 0

    clf = Path(args.classifier) if args.classifier else out / "classifier" / "best.pt"
    if not clf.is_file():  # the pretrained recipe at the GAN's resolution
        timed("classifier", lambda: train(TrainConfig(
            data=str(data), out=str(clf.parent), input_size=args.image_size, train_size=args.image_size,
            epochs=args.classifier_epochs, seed=args.seed, num_workers=0, threads=args.threads)))

    evals = {}
    for name in ("projected",) + (() if args.no_dcgan else ("dcgan",)):
        full = name == "projected"
        evals[name] = timed(f"{name}_eval", lambda name=name, full=full: evaluate_gan(GanEvalConfig(
            generator=str(out / f"{name}.onnx"), data=str(data), classifier=str(clf), out=str(out / f"eval_{name}"),
            cas=full, latency=full, sample_classes=args.grid_classes, seeds=args.seeds, seed=args.seed,
            lowdata_epochs=args.lowdata_epochs, threads=args.threads,
            **(dict(lowdata_data=str(low), lowdata_generator=str(out / "projected_low.onnx"))
               if full and not args.no_lowdata else {}))))
    summary = {"args": vars(args), "steps": steps, "total_wall_s": round(time.perf_counter() - t0, 1),
               "total_cpu_s_this_invocation": round(cpu_seconds() - c0, 1),
               "gan_training": {n: _training(out / n) for n in gans if (out / n / "metrics.json").is_file()},
               "fid": {n: {k: v for k, v in e["fid"].items() if k not in ("definition", "features")}
                       for n, e in evals.items()},
               "kid": {n: {k: v for k, v in e["kid"].items() if k != "definition"} for n, e in evals.items()},
               "within_class_spread": {n: {k: v for k, v in e["within_class_spread"].items() if k != "definition"}
                                       for n, e in evals.items() if "within_class_spread" in e},
               "cas": evals["projected"].get("cas"), "lowdata": evals["projected"].get("lowdata"),
               "latency": evals["projected"].get("latency")}
    if "dcgan" in evals:
        fp, fd = (summary["fid"][n]["generated_vs_real_test"] for n in ("projected", "dcgan"))
        summary["fid_dcgan_over_projected"] = fd / fp
    atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))
    atomic_write(out / "summary.md", lambda tmp: Path(tmp).write_text(_markdown(summary)))
    print(_markdown(summary))
    return 0


def _training(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    return {k: m.get(k) for k in ("model", "steps", "train_seconds", "n_train", "g_params", "d_params",
                                  "d_frozen_params")}


def _markdown(s: dict) -> str:
    threads = s["args"]["threads"]
    rows = [f"| GAN | training (wall, {threads} thread{'s' if threads > 1 else ''}) | steps | FID vs real test "
            "| KID vs real test (x1000) | within-class spread (real 1.0) |",
            "|---|---|---:|---:|---:|---:|"]
    f0 = s["fid"]["projected"]
    for n in [n for n in ("dcgan", "projected") if n in s["fid"]]:
        t, f, k = s["gan_training"][n], s["fid"][n], s["kid"][n]["generated_vs_real_test"]
        spread = s.get("within_class_spread", {}).get(n)
        rows.append(f"| {n} ({t['model']}) | {t['train_seconds'] / 60:.1f} min | {t['steps']} | "
                    f"{f['generated_vs_real_test']:.1f} | {1e3 * k['mean']:.1f} ± {1e3 * k['std']:.1f} | "
                    + (f"{spread['ratio']:.2f} |" if spread else "|"))
    kf = s["kid"]["projected"]["real_train_vs_real_test"]
    rows.append(f"| floor: real train vs real test | | | {f0['real_train_vs_real_test']:.1f} | "
                f"{1e3 * kf['mean']:.1f} ± {1e3 * kf['std']:.1f} | |")
    if "fid_dcgan_over_projected" in s:
        rows.append(f"\nFID ratio DCGAN / projected: **{s['fid_dcgan_over_projected']:.2f}x** "
                    f"({f0['n_per_set']} images per set).")
    if s.get("cas"):
        c = s["cas"]
        rows.append(f"CAS: {100 * c['top1_generated_only']:.1f} % on real test, {100 * c['fraction_of_real']:.0f} % "
                    f"of the real-data recipe ({100 * c['top1_real_recipe']:.1f} %)"
                    + (f"; on real val {100 * c['top1_real_val']:.1f} %." if "top1_real_val" in c else "."))
    if s.get("lowdata"):
        lo = s["lowdata"]["arms"]
        rows.append(f"Low data ({s['args']['per_class']} real per class): real only {100 * lo['real_only']['mean']:.1f} "
                    f"± {100 * lo['real_only']['std']:.1f} %, real + GAN {100 * lo['real_plus_gan']['mean']:.1f} ± "
                    f"{100 * lo['real_plus_gan']['std']:.1f} %: **{s['lowdata']['gain_pp']:+.1f} pp**.")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

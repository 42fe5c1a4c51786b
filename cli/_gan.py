"""CLI commands of the conditional GAN: ``gan train``, ``gan eval`` and ``generate``.

``skulens export GAN_CKPT`` exports generators too (dispatch on the checkpoint's kind).
"""
from __future__ import annotations

import json
import math

from skulens.internal import add_dataclass_flags, dataclass_from_args


def register(sub) -> None:
    from skulens.training.gan.config import GanConfig, GanEvalConfig

    p = sub.add_parser("gan", help="class-conditional GAN: train it, measure what it buys the classifier")
    gsub = p.add_subparsers(dest="gan_command", required=True, metavar="GAN_COMMAND")
    t = gsub.add_parser("train", help="train a conditional GAN (flags = skulens.training.gan.GanConfig fields)")
    add_dataclass_flags(t, GanConfig)
    t.set_defaults(func=_gan_train)
    e = gsub.add_parser("eval", help="FID (classifier features), CAS, low-data augmentation, latency "
                        "-> gan_eval.json + gan_eval.png (gan_eval_add.* with --gan-mode add)")
    add_dataclass_flags(e, GanEvalConfig, positional=("generator",))
    e.set_defaults(func=_gan_eval)

    g = sub.add_parser("generate", help="generate images of one class with a generator .onnx")
    g.add_argument("model", help="an exported generator .onnx (skulens export GAN_CHECKPOINT)")
    g.add_argument("--label", required=True, help="class name (or index)")
    g.add_argument("--n", type=int, default=16, help="how many images (default: 16)")
    g.add_argument("--seed", type=int, default=0, help="same seed, same images (default: 0)")
    g.add_argument("--out", default="grid.png", help="PNG grid of the images (default: grid.png)")
    g.add_argument("--scale", type=int, default=0, help="integer upscaling of each tile (0 = to ~64 px)")
    g.add_argument("--num-threads", type=int, default=0, help="onnxruntime threads (default: 0 = all cores)")
    g.add_argument("--latent-scale", type=float, default=1.0, help="latent drawn from N(0, s^2): < 1 more typical "
                   "and alike images, > 1 more varied and less faithful (default: 1, as trained)")
    g.set_defaults(func=_generate)


def _gan_train(args) -> int:
    from skulens.training.gan import GanConfig, train_gan

    metrics = train_gan(dataclass_from_args(GanConfig, args))
    print(json.dumps({k: v for k, v in metrics.items() if k != "class_counts"}, indent=2))
    return 0


def _gan_eval(args) -> int:
    from skulens.training.gan import evaluate_gan
    from skulens.training.gan.config import GanEvalConfig

    result = evaluate_gan(dataclass_from_args(GanEvalConfig, args))
    short = {k: v for k, v in result.items() if k not in ("setup",)}
    if "fid" in result:
        short["fid"] = {k: v for k, v in result["fid"].items() if k != "definition"}
    if result.get("cas", {}).get("per_class"):  # 81 classes in the file; here the ones taught least
        per_class = result["cas"]["per_class"]
        gap = {k: (v["real_top1"] or 0) - v["cas_top1"] for k, v in per_class.items()}
        short["cas"] = {**result["cas"], "per_class": f"{len(per_class)} classes, in the saved gan_eval json",
                        "least_taught": sorted(gap, key=gap.get, reverse=True)[:5]}
        groups = result["cas"].get("per_coarse") or {}
        if groups:  # the coarse groups the generated images teach least, as a fraction of real
            frac = {k: v["fraction_of_real"] for k, v in groups.items() if v["fraction_of_real"] is not None}
            short["cas"]["per_coarse"] = f"{len(groups)} groups, in the saved gan_eval json"
            short["cas"]["least_taught_groups"] = {k: round(frac[k], 3) for k in sorted(frac, key=frac.get)[:5]}
    print(json.dumps(short, indent=2))
    return 0


def _generate(args) -> int:
    from skulens import GeneratorOptions, ImageGenerator
    from skulens.internal import GenerationError, make_grid, write_png

    from ._main import require_model

    require_model(args.model)
    label = int(args.label) if args.label.isdigit() else args.label
    try:
        options = GeneratorOptions(num_threads=args.num_threads, latent_scale=args.latent_scale)
    except ValueError as exc:
        raise GenerationError(f"--num-threads / --latent-scale: {exc}") from None
    with ImageGenerator.from_path(args.model, options) as gen:
        if isinstance(label, int) and str(label) in gen.labels:  # a label that looks like a number
            label = str(label)
        images = gen.generate(label, n=args.n, seed=args.seed)
        scale = args.scale or max(1, 64 // gen.output_size[0])
        if scale < 1:
            raise GenerationError(f"--scale must be >= 1, got {scale}")
        name = gen.labels[gen.label_index(label)]
    path = write_png(args.out, make_grid(list(images), ncol=math.ceil(math.sqrt(len(images))), scale=scale))
    print(f"{path}: {len(images)} images of {name!r} ({images.shape[1]}x{images.shape[2]}, seed {args.seed})")
    return 0

"""What does the GAN buy the classifier? ``skulens gan eval`` -> gan_eval.json + gan_eval.png
(gan_eval_add.* when the low-data arm runs with ``--gan-mode add``; a suffix _z<s> / _p<n> on the
summaries, the sample grid and the runs that differ when the images are drawn with another
``--latent-scale`` or ``--gan-pool``, so variants share one --out and its real-only runs).

1. FID in the classifier's feature space (see :mod:`skulens.training.gan.metrics`): generated images
   (as many per class as the real train split has, fixed seeds) vs real test, beside real
   train vs real test (the floor a perfect generator of *train-like* images would reach).
2. Classification Accuracy Score (Ravuri & Vinyals 2019): the classifier recipe (the given
   classifier checkpoint's own TrainConfig) trained on generated images only (train and val
   generated, same counts as real unless ``cas_per_real``), tested on the real test split, as a
   fraction of the same recipe's real-data test top-1.
3. Low-data augmentation: the recipe on ``lowdata_data`` (e.g. 10 real images per class) with
   and without ``--gan-augment`` (a generator trained only on that subset), classical
   augmentation in both arms, ``seeds`` seeds, mean +- std test top-1; beside it, top-1 on the
   ``data`` train photos the subset left out (``heldout_*``), for choosing variants off the test split.
4. Generator latency through the SDK (ImageGenerator.generate, uint8 out), fp32 vs INT8,
   batch 1 and 16, 1 thread, interleaved rounds.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np

from skulens import GeneratorOptions, ImageGenerator, decode_image, load_dataset
from skulens.internal import Dataset, Sample, atomic_write, write_png, write_split_lists

from ..augment import AugmentConfig

from ..checkpoint import load_checkpoint
from ..config import TrainConfig, resolve, steps_per_epoch, synthetic_batch_size
from .config import GanConfigError, GanEvalConfig
from .eval_report import generator_latency, per_group, plot_summary, sample_grid
from .metrics import FeatureExtractor, ImageNetFeatures, frechet_distance, kernel_distance, within_class_spread

log = logging.getLogger(__name__)

FID_DEFINITION = (
    "Frechet distance ||mu1-mu2||^2 + Tr(S1+S2-2(S1 S2)^1/2) between Gaussian fits (mean, unbiased "
    "covariance) of float64 features (see 'features'). Sets of the same size n = min(train, test): random "
    "subsets of the real splits; generated: the test subset's count per class, latents from numpy "
    "default_rng(seed*1000 + class). Tr(sqrt) via eigenvalues of S1^1/2 S2 S1^1/2. Not comparable with "
    "Inception FID, and biased upwards for small sets: compare only with the floor computed here.")
KID_DEFINITION = ("unbiased MMD^2, kernel (x.y/d + 1)^3, mean and std over 50 random subsets of "
                  "min(1000, n) per side; same features and sets as FID")
SPREAD_DEFINITION = ("diversity within a class: mean pairwise cosine distance of the FID features of the "
                     "images of one class, averaged over classes; generated and real test sets have the "
                     "same per-class counts; ratio = generated / real (1 = as varied as real photos)")
CLASSIFIER_SPACE = ("the given skulens classifier's model.features(x) (pooled activations before dropout and "
                    "the head), every image through its own preprocessing contract")


def recipe(classifier_ckpt: dict, **overrides) -> TrainConfig:
    """The TrainConfig a classifier checkpoint was trained with, with ``overrides``."""
    saved = dict(classifier_ckpt.get("train_config") or {})
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    kw = {k: v for k, v in saved.items() if k in names}
    if isinstance(kw.get("augment"), dict):
        kw["augment"] = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v
                                         for k, v in kw["augment"].items()})
    kw.update(overrides)
    return TrainConfig(**kw)


def _gen_options(cfg: GanEvalConfig) -> GeneratorOptions:
    return GeneratorOptions(num_threads=cfg.threads, latent_scale=cfg.latent_scale)


def _generate_matched(gen: ImageGenerator, classes, counts, seed: int):
    images, labels = [], []
    for c, name in enumerate(classes):
        if counts.get(c, 0):
            images += list(gen.generate(name, n=counts[c], seed=seed * 1000 + c))
            labels += [c] * counts[c]
    return images, np.array(labels, dtype=np.int64)


def _write_generated(images, labels, folder: Path, prefix: str) -> list[Sample]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (im, y) in enumerate(zip(images, labels)):
        p = write_png(folder / f"{prefix}_{int(y):03d}_{i:05d}.png", im)
        out.append(Sample(p, int(y)))
    return out


def _fid(cfg, ds, train_s, test_s, size: int, clf) -> dict:
    """FID and KID of generated vs real test, beside the floor real train vs real test, on sets of
    the same size n = min(train, test) (random subsets; generated: the test subset's class counts)."""
    rng = np.random.default_rng(cfg.seed)
    n = min(len(train_s), len(test_s))
    test_sub = [test_s[i] for i in sorted(rng.choice(len(test_s), n, replace=False))]
    train_sub = [train_s[i] for i in sorted(rng.choice(len(train_s), n, replace=False))]
    with ImageGenerator.from_path(cfg.generator, _gen_options(cfg)) as gen:
        generated, y_gen = _generate_matched(gen, ds.classes, Counter(s.label for s in test_sub), cfg.seed)
    if cfg.feature_space == "imagenet":
        extract = ImageNetFeatures(size)
        space = extract.description
        feats = {k: extract(v) for k, v in (("gen", generated), ("test", [decode_image(s.path) for s in test_sub]),
                                             ("train", [decode_image(s.path) for s in train_sub]))}
    else:
        space = CLASSIFIER_SPACE
        feats = {k: clf(v)[0] for k, v in (("gen", generated), ("test", [decode_image(s.path) for s in test_sub]),
                                            ("train", [decode_image(s.path) for s in train_sub]))}
    log.info("features (%s space): %d generated, %d real test, %d real train", cfg.feature_space, n, n, n)
    pairs = {"generated_vs_real_test": ("gen", "test"), "real_train_vs_real_test": ("train", "test"),
             "generated_vs_real_train": ("gen", "train")}
    fid = {name: frechet_distance(feats[a], feats[b]) for name, (a, b) in pairs.items()}
    kid = {name: kernel_distance(feats[a], feats[b], seed=cfg.seed) for name, (a, b) in pairs.items()}
    fid.update(n_per_set=n, feature_space=cfg.feature_space, features=space, definition=FID_DEFINITION,
               feature_dim=int(feats["gen"].shape[1]))
    fid["ratio_to_floor"] = fid["generated_vs_real_test"] / max(fid["real_train_vs_real_test"], 1e-12)
    res = {"fid": fid, "kid": {**{k: {"mean": m, "std": sd} for k, (m, sd) in kid.items()},
                               "definition": KID_DEFINITION}}
    y_test = np.array([s.label for s in test_sub])
    if np.bincount(y_test).max() >= 2:  # else no class has a pair to compare (a tiny test split)
        spread = {"generated": within_class_spread(feats["gen"], y_gen),
                  "real_test": within_class_spread(feats["test"], y_test)}
        spread.update(ratio=spread["generated"] / max(spread["real_test"], 1e-12), definition=SPREAD_DEFINITION)
        res["within_class_spread"] = spread
        log.info("within-class spread: generated %.3f, real test %.3f", spread["generated"], spread["real_test"])
    if clf is not None:
        res["classifier_on_generated_top1"] = float((clf(generated)[1].argmax(1) == y_gen).mean())
    log.info("FID gen-vs-test %.3f, floor train-vs-test %.3f; KID %.4f (floor %.4f)", fid["generated_vs_real_test"],
             fid["real_train_vs_real_test"], kid["generated_vs_real_test"][0], kid["real_train_vs_real_test"][0])
    return res


def _check_classes(ds: Dataset, extract: FeatureExtractor | None, gen_labels) -> None:
    if extract is not None and list(extract.labels) != list(ds.classes):
        raise GanConfigError(f"the classifier's labels {extract.labels[:5]}... differ from the dataset's "
                             f"{ds.classes[:5]}...: train the classifier on --data")
    missing = [c for c in ds.classes if c not in gen_labels]
    if missing:
        raise GanConfigError(f"the generator does not know dataset classes {missing[:5]}")


def synthetic_per_epoch(mode: str, counts, ratio: float, batch: int) -> int:
    """Generated images a real + GAN run draws per epoch from real per-class ``counts``: mix, one per
    slot (round(ratio * count) a class); add, a batch of round(ratio * real batch) per real batch."""
    if mode == "add":
        n = sum(counts)
        return steps_per_epoch(n, batch) * synthetic_batch_size(ratio, batch, n)
    return sum(round(ratio * c) for c in counts)


def evaluate_gan(cfg: GanEvalConfig) -> dict:
    from ..trainer import train

    t0 = time.perf_counter()
    out, name = Path(cfg.out), summary_name(cfg)    # name: of the summary files (gan_eval[_add])
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(cfg.data)
    clf_ckpt = load_checkpoint(cfg.classifier) if cfg.classifier else None
    clf = FeatureExtractor(cfg.classifier) if cfg.classifier else None
    train_s, test_s = ds.split("train"), ds.split("test")
    with ImageGenerator.from_path(cfg.generator, _gen_options(cfg)) as gen:
        _check_classes(ds, clf, gen.labels)
        gen_meta = gen.metadata
        size = gen.output_size[0]
    result: dict = {
        "setup": {"generator": cfg.generator, "data": cfg.data, "classifier": cfg.classifier,
                  "classes": list(ds.classes), "generator_output": gen_meta.generator,
                  "generator_training": gen_meta.metrics.get("training"), "config": cfg.to_dict(),
                  **({"classifier_model": clf_ckpt["model_name"],
                      "classifier_input": clf_ckpt["preprocess"]["input_size"]} if clf_ckpt else {})}}
    if clf is not None and (cfg.cas or cfg.fid):
        y_test = np.array([s.label for s in test_s])
        _, l_te = clf([decode_image(s.path) for s in test_s])
        result["classifier_on_real_test_top1"] = float((l_te.argmax(1) == y_test).mean())
        real_hits = l_te.argmax(1) == y_test    # [N] per photo: for CAS per class
    if cfg.fid:
        result.update(_fid(cfg, ds, train_s, test_s, size, clf))
        _save(out, result, name)

    base_overrides = dict(threads=cfg.threads or 1, num_workers=0, resume=False, gan_augment=None)
    if cfg.cas:
        with ImageGenerator.from_path(cfg.generator, _gen_options(cfg)) as gen:
            counts = {c: max(1, round(cfg.cas_per_real * n)) for c, n in Counter(s.label for s in train_s).items()}
            gen_train, y_gen = _generate_matched(gen, ds.classes, counts, cfg.seed)
            val_counts = Counter(s.label for s in ds.splits.get("val") or [])
            gen_val, y_gen_val = _generate_matched(gen, ds.classes, {c: max(2, val_counts.get(c, 0))
                                                                    for c in range(len(ds.classes))}, cfg.seed + 1)
        result["cas"] = _cas(cfg, ds, clf_ckpt, gen_train, y_gen, gen_val, y_gen_val, out, base_overrides, train,
                             real_top1=result["classifier_on_real_test_top1"],
                             real_per_class={ds.classes[c]: float(real_hits[y_test == c].mean())
                                             for c in np.unique(y_test)})
        _save(out, result, name)
    if cfg.lowdata_data:
        result["lowdata"] = _lowdata(cfg, clf_ckpt, out, base_overrides, train)
        _save(out, result, name)
    if cfg.latency:
        result["latency"] = generator_latency(cfg)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    _save(out, result, name)
    plot_summary(out, result, name)
    sample_grid(out, ds, test_s, cfg, _gen_options(cfg), _latent_suffix(cfg))
    return result


def _train_once(rcfg: TrainConfig, train) -> dict:
    """``train(rcfg)``, where an interrupted evaluation left it: a finished run of the same
    config (its metrics.json has the test figures) is read back, a finished run of another config
    is refused (GanConfigError), a run with a last.pt is resumed, else trained afresh."""
    folder = Path(rcfg.out)
    done = folder / "metrics.json"
    if done.is_file():
        m = json.loads(done.read_text())
        defaults = TrainConfig(data=rcfg.data).to_dict()

        def settings(config: dict) -> dict:  # what decides the result, not how or where the run was started
            config = {**defaults, **config}  # a field added since the run had its default then
            # out: an evaluation folder moved or copied; threads: how fast, not what is trained
            return {k: v for k, v in json.loads(json.dumps(config)).items()
                    if k not in ("resume", "exist_ok", "out", "threads")}

        if "eval" in m and settings(m.get("config", {})) == settings(rcfg.to_dict()):
            log.info("%s: finished earlier, its figures are reused", folder)
            return m
        if "eval" in m:  # resuming it would continue another configuration's run
            raise GanConfigError(f"{folder} holds a finished run of other settings (another --lowdata-epochs, "
                                 "--gan-ratio, classifier...): give another --out")
    if (folder / "last.pt").is_file():
        log.info("%s: resuming the interrupted run", folder)
        rcfg = dataclasses.replace(rcfg, resume=True)
    return train(rcfg)


def _equal_step_schedule(rcfg: TrainConfig, per_real: float) -> dict:
    """Epochs and warm-up for a generated set ``per_real`` times CAS's size that keep CAS's optimiser
    steps: epochs / per_real (at least 1) and the warm-up's steps unchanged."""
    epochs = max(1, round(rcfg.epochs / per_real))
    return {"epochs": epochs, "warmup_epochs": min(rcfg.warmup_epochs / per_real, float(epochs))}


def _cas(cfg, ds, clf_ckpt, gen_train, y_gen, gen_val, y_gen_val, out, base, train, real_top1,
         real_per_class: dict) -> dict:
    # its own folder per set size: a finished run is reused by its config, which the size does not change
    # (and per latent scale: the generated images differ, the training config does not)
    folder = out / (("cas" if cfg.cas_per_real == 1 else f"cas_x{cfg.cas_per_real:g}"
                     + ("_equal_steps" if cfg.cas_equal_steps else "")) + _latent_suffix(cfg))
    splits = {"train": _write_generated(gen_train, y_gen, folder / "generated", "train"),
              "val": _write_generated(gen_val, y_gen_val, folder / "generated", "val"),
              "test": list(ds.split("test"))}
    data = write_split_lists(Dataset(ds.root, list(ds.classes), splits, layout="split_lists"), folder / "data")
    rcfg = recipe(clf_ckpt, data=str(data), out=str(folder / "run"), seed=cfg.seed, **base)
    if cfg.cas_equal_steps:  # every size-derived setting as CAS at 1x (the real split's size) would have it
        at_1x = resolve(rcfg, n_train=len(ds.split("train")))
        rcfg = dataclasses.replace(at_1x, **_equal_step_schedule(at_1x, cfg.cas_per_real))
    m = _train_once(rcfg, train)
    cas = {"top1_generated_only": m["eval"]["top1"], "top1_real_recipe": real_top1,
           "n_generated_train": len(y_gen), "per_real": cfg.cas_per_real, "n_generated_val": len(y_gen_val),
           "equal_steps": cfg.cas_equal_steps, "epochs": rcfg.epochs,
           "n_real_test": m["eval"]["n"],
           "recipe": {k: v for k, v in rcfg.to_dict().items() if k not in ("augment",)},
           "real_top1_source": "the given classifier (same recipe, trained on the real train split) on the "
                               "same real test split"}
    cas["fraction_of_real"] = cas["top1_generated_only"] / real_top1 if real_top1 else None
    # which products the generated images teach: each class's real test photos, the two classifiers
    cas["per_class"] = {name: {"n": v["n"], "cas_top1": v["top1"], "real_top1": real_per_class.get(name)}
                        for name, v in m["eval"].get("per_class", {}).items()}
    if ds.coarse_labels:  # the same, pooled by the dataset's coarse groups (which kinds of product)
        cas["per_coarse"] = per_group(cas["per_class"], dict(zip(ds.classes, ds.coarse_labels)))
    val = list(ds.splits.get("val") or [])
    if val:  # the same model on the real val split: for choosing GAN recipes without the test split
        _, logits = FeatureExtractor(folder / "run" / "best.pt")([decode_image(s.path) for s in val])
        cas["top1_real_val"] = float((logits.argmax(1) == np.array([s.label for s in val])).mean())
        cas["n_real_val"] = len(val)
    cas["goal"] = ">= 0.50 of real-data accuracy"
    log.info("CAS: %.3f top-1 on real test (real-data recipe %.3f)", m["eval"]["top1"], real_top1 or float("nan"))
    return cas


def _lowdata(cfg, clf_ckpt, out, base, train) -> dict:
    low = load_dataset(cfg.lowdata_data)
    n_real = len(low.split("train"))
    with ImageGenerator.from_path(cfg.lowdata_generator) as g:
        seen = (g.metadata.metrics.get("training") or {}).get("n_train")
    ref = recipe(clf_ckpt, data=cfg.lowdata_data, **base)
    counts = Counter(s.label for s in low.split("train"))
    n_syn = synthetic_per_epoch("mix", counts.values(), cfg.gan_ratio, ref.batch_size)
    epochs_gan = cfg.lowdata_epochs
    if cfg.equal_steps and cfg.gan_mode == "mix":  # add mode keeps the real arm's steps by construction
        epochs_gan = max(1, round(cfg.lowdata_epochs * steps_per_epoch(n_real, ref.batch_size)
                                  / steps_per_epoch(n_real + n_syn, ref.batch_size)))
    arms = {"real_only": dict(epochs=cfg.lowdata_epochs),
            "real_plus_gan": dict(epochs=epochs_gan, gan_augment=cfg.lowdata_generator,
                                  gan_augment_ratio=cfg.gan_ratio, gan_augment_mode=cfg.gan_mode,
                                  gan_augment_bn=cfg.gan_bn, gan_augment_epochs=cfg.gan_epochs,
                                  gan_augment_latent_scale=cfg.latent_scale, gan_augment_pool=cfg.gan_pool)}
    runs = {name: [] for name in arms}
    heldout = _HeldOut(heldout_photos(load_dataset(cfg.data), low))
    for seed in range(cfg.seed, cfg.seed + cfg.seeds):
        for name, extra in arms.items():
            folder = name + ("" if name == "real_only" else ("_add" if cfg.gan_mode == "add" else "")
                             + _sampling_suffix(cfg))
            rcfg = recipe(clf_ckpt, data=cfg.lowdata_data, out=str(out / "lowdata" / f"{folder}_seed{seed}"),
                          seed=seed, **{**base, **extra})
            m = _train_once(rcfg, train)
            runs[name].append({"seed": seed, "test_top1": m["eval"]["top1"], "epochs": rcfg.epochs,
                               "val_top1": _last_val_top1(Path(rcfg.out)),
                               "heldout_top1": heldout.top1(Path(rcfg.out) / "best.pt"),
                               "best_epoch": m["best_epoch"], "train_seconds": m["train_seconds"]})
            log.info("low-data %s seed %d: test top-1 %.3f", name, seed, m["eval"]["top1"])
    summary = {}
    for name, rs in runs.items():
        v = np.array([r["test_top1"] for r in rs])
        summary[name] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                         "runs": rs}
        if heldout.samples:
            summary[name]["heldout_mean"] = float(np.mean([r["heldout_top1"] for r in rs]))
    gain = 100 * (summary["real_plus_gan"]["mean"] - summary["real_only"]["mean"])
    diffs = [100 * (b["test_top1"] - a["test_top1"]) for a, b in zip(runs["real_only"], runs["real_plus_gan"])]
    held_diffs = [100 * (b["heldout_top1"] - a["heldout_top1"])
                  for a, b in zip(runs["real_only"], runs["real_plus_gan"])] if heldout.samples else []
    held_gain = round(float(np.mean(held_diffs)), 2) if held_diffs else None
    return {"data": cfg.lowdata_data, "generator": cfg.lowdata_generator, "n_real_train": n_real,
            "real_per_class": dict(sorted(Counter(counts.values()).items())),
            "n_synthetic_per_epoch": synthetic_per_epoch(cfg.gan_mode, counts.values(), cfg.gan_ratio, ref.batch_size),
            "gan_ratio": cfg.gan_ratio, "gan_mode": cfg.gan_mode, "latent_scale": cfg.latent_scale,
            "gan_pool": cfg.gan_pool, "gan_bn": cfg.gan_bn, "gan_epochs": cfg.gan_epochs,
            "generator_n_train": seen, "generator_saw_only_lowdata_images": seen == n_real,
            "equal_steps": cfg.equal_steps, "epochs": {"real_only": cfg.lowdata_epochs, "real_plus_gan": epochs_gan},
            "arms": summary, "gain_pp": round(gain, 2), "paired_gain_pp": [round(d, 2) for d in diffs],
            "n_heldout": len(heldout.samples), "heldout_gain_pp": held_gain,
            "paired_heldout_gain_pp": [round(d, 2) for d in held_diffs],
            "goal": ">= +2 pp at 5 real photos per class", "n_test": len(low.split("test"))}


def heldout_photos(full: Dataset, low: Dataset) -> list[Sample]:
    """The train photos of ``full`` that the low-data subset ``low`` left out, of ``low``'s classes
    (labelled with ``low``'s ids): a validation set from the subset's own stores, all its classes,
    to choose a GAN variant on without the test split (Grocery's val: 296 photos of 60 classes)."""
    ids = {name: i for i, name in enumerate(low.classes)}
    used = {Path(s.path).resolve() for s in low.split("train")}
    return [Sample(s.path, ids[full.classes[s.label]], s.coarse) for s in full.split("train")
            if full.classes[s.label] in ids and Path(s.path).resolve() not in used]


class _HeldOut:
    """Top-1 of low-data runs' checkpoints on the held-out photos, decoded once per contract."""

    def __init__(self, samples: list[Sample]):
        self.samples, self.y, self._decoded = samples, np.array([s.label for s in samples]), {}

    def top1(self, checkpoint: Path) -> float | None:
        if not self.samples:
            return None
        extract = FeatureExtractor(checkpoint)
        key = json.dumps(extract.preprocess.to_dict(), sort_keys=True)
        if key not in self._decoded:  # decoded as the SDK decodes for that contract
            self._decoded[key] = [decode_image(s.path, preprocess=extract.preprocess) for s in self.samples]
        _, logits = extract(self._decoded[key])
        return float((logits.argmax(1) == self.y).mean())


def _last_val_top1(run: Path) -> float | None:
    """The run's last-epoch val top-1 (None without a val split), from its metrics.json history."""
    history = json.loads((run / "metrics.json").read_text()).get("history") or [{}]
    return history[-1].get("val_top1")


def summary_name(cfg: GanEvalConfig) -> str:
    """gan_eval, gan_eval_add for the low-data arm in add mode, then _sampling_suffix (_z<s>, _p<pool>,
    _sepbn, _e<N>): the modes and variants can share one --out (and its real-only runs)."""
    return "gan_eval" + ("_add" if cfg.lowdata_data and cfg.gan_mode == "add" else "") + _sampling_suffix(cfg)


def _latent_suffix(cfg: GanEvalConfig) -> str:
    """'' for latents from N(0, 1), else _z<latent scale>: what CAS, FID and the sample grid depend on."""
    return "" if cfg.latent_scale == 1 else f"_z{cfg.latent_scale:g}"


def _sampling_suffix(cfg: GanEvalConfig) -> str:
    """_latent_suffix, then for the low-data arm _p<pool> for another pool of generated images and
    _sepbn where they are normalised on their own, _e<N> where they join only the first N epochs."""
    if not cfg.lowdata_data:
        return _latent_suffix(cfg)
    return (_latent_suffix(cfg) + ("" if cfg.gan_pool == 4 else f"_p{cfg.gan_pool}")
            + ("_sepbn" if cfg.gan_bn == "separate" else "") + (f"_e{cfg.gan_epochs}" if cfg.gan_epochs else ""))


def _save(out: Path, result: dict, name: str) -> None:
    atomic_write(out / f"{name}.json", lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2)))

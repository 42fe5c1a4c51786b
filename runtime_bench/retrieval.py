"""New products without retraining: gallery retrieval and "unknown" rejection, measured.

    python -m skulens.bench.retrieval --data ../shared/datasets/grocery-store/dataset --out runs/retrieval

Protocol. The embedding model is trained on half of the classes only (41 of Grocery's 81);
the other 40 are new products. ``--new-classes first`` (the default) takes the first 40 ids as
new, as ``skulens.training.transfer_experiment``'s source half: for Grocery that is every loose
fruit (and 12 cartons), so the model never saw a fruit and must tell apple and citrus varieties
apart from features learnt on packages and vegetables. ``--new-classes random:S`` draws the 40
new products at random (numpy seed S), the case of a shop adding products like those it has.
Galleries enrol k = 1, 5 or all train-split photos per product; queries are the test-split
photos (other stores). Reported through the SDK (INT8 model, ProductGallery):

- recall@1 / recall@5 on the 40 new products alone and on all 81 mixed (k = 1 and 5 are
  averaged over ``--draws`` random draws of the enrolled photos);
- unknown rejection with the 40 new products kept out of a gallery of the 41 known ones:
  AUROC of the top similarity (known test photos vs new ones), and at the gallery's own
  calibrated threshold (``ProductGallery.calibrate``, never the test split) the precision of the
  accepted answers and the known-class accuracy kept; the same for the classifier's softmax
  with its validation-calibrated threshold; and the AUROC of other unknown scores (nearest
  photo, margin, logits, energy, Mahalanobis; :mod:`._unknown_scores`).

``--queries val`` queries with the validation split's photos instead (Grocery: 145 photos of 29
of the new products, 151 of 31 known ones), to choose a recipe without looking at the test
split; the classifier's softmax threshold was calibrated on those known photos, so its figures
are optimistic there.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from skulens import ClassifierOptions, ImageClassifier, ProductGallery, load_dataset
from skulens.internal import atomic_write, auroc, selective_report, softmax, subset, write_split_lists

from ._files import write_result_files
from ._unknown_scores import unknown_score_aurocs

log = logging.getLogger("skulens.bench.retrieval")  # also when run as __main__


def _embed_all(model_path, samples, threads) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings [N, D], logits [N, K]) of ``samples`` through the SDK."""
    with ImageClassifier.from_path(model_path, ClassifierOptions(num_threads=threads, max_batch=32)) as clf:
        paths = [s.path for s in samples]
        emb, logits = [], []
        for start in range(0, len(paths), 32):
            batch = np.stack([clf.preprocess(p) for p in paths[start:start + 32]])
            lg, em = clf.run_logits_and_embedding(batch)
            logits.append(lg)
            emb.append(em)
        return np.concatenate(emb), np.concatenate(logits)


def _gallery(spec, vectors, labels, names, scoring="mean") -> ProductGallery:
    g = ProductGallery("experiment", spec, backend="exact", scoring=scoring)
    for c in np.unique(labels):
        m = labels == c
        g.add_embeddings(names[c], vectors[m], [f"{c}:{i}" for i in np.flatnonzero(m)], [""] * int(m.sum()))
    return g


def _recall(g: ProductGallery, queries, q_labels, names, k=5) -> dict:
    hits = g.search(queries, k)
    truth = [names[c] for c in q_labels]
    r1 = np.mean([bool(h) and h[0][0] == t for h, t in zip(hits, truth)])
    r5 = np.mean([t in [lab for lab, _ in h] for h, t in zip(hits, truth)])
    return {"recall@1": float(r1), "recall@5": float(r5), "queries": len(truth)}


def _pick(labels, classes, k, rng) -> np.ndarray:
    """Indices of ``k`` random photos (all where k is None) of each class in ``classes``."""
    out = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        out.append(idx if k is None or len(idx) <= k else rng.choice(idx, k, replace=False))
    return np.sort(np.concatenate(out))


def class_split(spec: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(new, known) class ids: ``first`` -> the first n // 2 ids are new; ``random:S`` -> n // 2
    ids drawn with numpy seed S."""
    half = n_classes // 2
    if spec == "first":
        new = np.arange(half)
    elif spec.startswith("random:") and spec[7:].isdigit():
        new = np.sort(np.random.default_rng(int(spec[7:])).choice(n_classes, half, replace=False))
    else:
        raise ValueError(f"--new-classes must be 'first' or 'random:SEED' (e.g. random:0), got {spec!r}")
    return new, np.setdiff1d(np.arange(n_classes), new)


def retrieval_metrics(spec, train_emb, train_y, test_emb, test_y, test_logits, names, new, known,
                      model_labels, model_unknown: dict | None, shots=(1, 5, None), draws=5, seed=0) -> dict:
    """Every figure of the protocol from precomputed embeddings (see the module docstring)."""
    res: dict = {"new_products": {}, "all_products": {}}
    for k, scoring in [(k, sc) for k in shots for sc in ("mean", "max")]:
        key = ("all" if k is None else str(k)) + ("" if scoring == "mean" else " (max)")
        for scope, classes in (("new_products", new), ("all_products", np.r_[new, known])):
            runs = []
            for d in range(1 if k is None else draws):
                idx = _pick(train_y, classes, k, np.random.default_rng(seed + d))
                g = _gallery(spec, train_emb[idx], train_y[idx], names, scoring)
                q = np.isin(test_y, classes)
                runs.append(_recall(g, test_emb[q], test_y[q], names))
            res[scope][key] = {m: float(np.mean([r[m] for r in runs])) for m in ("recall@1", "recall@5")}
            res[scope][key]["queries"], res[scope][key]["draws"] = runs[0]["queries"], len(runs)
    # unknown rejection: a gallery of the known products only, calibrated on itself
    g = _gallery(spec, train_emb[np.isin(train_y, known)], train_y[np.isin(train_y, known)], names)
    g.calibrate()
    hits = g.search(test_emb, 1)
    top = np.array([h[0][1] for h in hits])
    is_known = np.isin(test_y, known)
    correct = np.array([h[0][0] == names[c] for h, c in zip(hits, test_y)]) & is_known
    res["unknown_retrieval"] = {"auroc": auroc(top[is_known], top[~is_known]),
                                "calibration": g.unknown,
                                "at_threshold": selective_report(top, correct, g.unknown_threshold),
                                "known_accuracy_no_threshold": float(correct[is_known].mean()),
                                "known_accuracy_kept": selective_report(top[is_known], correct[is_known],
                                                                        g.unknown_threshold)["accuracy_kept"]}
    # the classifier's softmax (it knows only the known classes: output index = known position)
    p = softmax(test_logits.astype(np.float32))
    pos = {name: i for i, name in enumerate(model_labels)}
    cls_correct = np.array([pos.get(names[c], -1) == a for c, a in zip(test_y, p.argmax(1))])
    t = model_unknown["threshold"] if model_unknown else None
    res["unknown_classifier"] = {"auroc": auroc(p.max(1)[is_known], p.max(1)[~is_known]), "calibration": model_unknown,
                                 "at_threshold": selective_report(p.max(1), cls_correct, t),
                                 "known_accuracy_no_threshold": float(cls_correct[is_known].mean()),
                                 "known_accuracy_kept": selective_report(p.max(1)[is_known], cls_correct[is_known],
                                                                         t)["accuracy_kept"]}
    # other unknown scores, AUROC only (enrolled: every known photo, as the rejection gallery above)
    res["unknown_scores_auroc"] = unknown_score_aurocs(train_emb, train_y, test_emb, test_y, test_logits, known)
    return res


def _describe(spec: dict) -> str:
    colour, source = spec.get("colour"), spec["source"]
    if source == "wccn":
        source = f"pooled, whitened within products (shrinkage {spec['wccn_shrinkage']:g})"
    return f"{spec['dim']}-d {source}" + (f" + colour x{colour['weight']:g}" if colour else "")


def _markdown(summary) -> str:
    lines = ["| model | embedding | scope | k (scoring) | recall@1 | recall@5 |", "|---|---|---|---|---|---|"]
    for name, r in summary["models"].items():
        for scope in ("new_products", "all_products"):
            for k, v in r[scope].items():
                lines.append(f"| {name} | {_describe(r['embedding'])} | {scope} | {k} | "
                             f"{v['recall@1']:.3f} | {v['recall@5']:.3f} |")
    lines += ["", "| model | rejection | AUROC | threshold | precision | coverage | known acc. kept (no threshold) |",
              "|---|---|---|---|---|---|---|"]
    for name, r in summary["models"].items():
        for key in ("unknown_retrieval", "unknown_classifier"):
            u = r[key]
            at = u["at_threshold"]
            thr = "none" if at["threshold"] is None else f"{at['threshold']:.4f}"
            prec = "-" if at["precision"] is None else f"{at['precision']:.3f}"
            lines.append(f"| {name} | {key.split('_')[1]} | {u['auroc']:.3f} | {thr} | {prec} | {at['coverage']:.3f} | "
                         f"{u['known_accuracy_kept']:.3f} ({u['known_accuracy_no_threshold']:.3f}) |")
    scores = [name for name, r in summary["models"].items() if "unknown_scores_auroc" in r]
    if scores:  # the other unknown scores: one row per score, one column per model
        lines += ["", "| unknown score (AUROC) | " + " | ".join(scores) + " |", "|---|" + "---|" * len(scores)]
        for key in summary["models"][scores[0]]["unknown_scores_auroc"]:
            lines.append(f"| {key} | " + " | ".join(f"{summary['models'][m]['unknown_scores_auroc'][key]:.3f}"
                                                    for m in scores) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from skulens.export.config import TTA_CHOICES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the Grocery dataset folder (split lists + classes.csv)")
    p.add_argument("--out", default="runs/retrieval", help="output folder (default: runs/retrieval)")
    p.add_argument("--checkpoint", default=None, help="a classifier already trained on the known half "
                   "(default: train efficientnet_lite0 on it here)")
    p.add_argument("--new-classes", default="first", help="which half of the classes are new products: "
                   "first (the first ids; Grocery: every loose fruit) or random:SEED")
    p.add_argument("--dims", default="0,256", help="embedding dims to export and compare (0: pooled features)")
    p.add_argument("--colours", default="0", help="colour-histogram weights to export and compare, e.g. 0,1 "
                   "(skulens export --embedding-colour; 0: the CNN features only)")
    p.add_argument("--whiten", default="0", help="within-product whitening shrinkages to export and compare, "
                   "e.g. 0,0.3 (skulens export --embedding-whiten; 0: off; only with dim 0)")
    p.add_argument("--input-size", type=int, default=0, help="export input size (skulens export --input-size; "
                   "0: as trained)")
    p.add_argument("--tta", choices=TTA_CHOICES, default="none", help="skulens export --tta")
    p.add_argument("--draws", type=int, default=5, help="random draws of the enrolled photos for k = 1 and 5")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reexport", action="store_true", help="export again even where the models exist")
    p.add_argument("--fp32", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure the fp32 model of each full-dimension variant (--no-fp32: INT8 only, "
                        "half the embedding time of a sweep)")
    p.add_argument("--queries", choices=("test", "val"), default="test",
                   help="split whose photos query the galleries: test (report) or val (choose a recipe)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    for ours in ("skulens",):  # not the quantizer's per-tensor lines
        logging.getLogger(ours).setLevel(logging.INFO)
    out = Path(args.out)
    ds = load_dataset(args.data)
    try:
        new, known = class_split(args.new_classes, len(ds.classes))
    except ValueError as exc:
        p.error(str(exc))
    ckpt = Path(args.checkpoint or out / "train" / "best.pt")
    if ckpt.is_file():  # a model of another split (or an --out reused for one) measures another protocol
        from skulens.training.checkpoint import load_checkpoint

        if list(load_checkpoint(ckpt)["labels"]) != [ds.classes[c] for c in known]:
            p.error(f"{ckpt} was not trained on the known classes of --new-classes {args.new_classes}")
    known_data = write_split_lists(subset(ds, known), out / "data_known")
    if args.checkpoint is None:
        from skulens.training import TrainConfig, train

        if not ckpt.is_file():
            train(TrainConfig(data=str(known_data), out=str(ckpt.parent), model="efficientnet_lite0",
                              pretrained=True, seed=args.seed))
    from skulens.export import ExportConfig, export_classifier

    train_s, test_s = ds.split("train"), ds.split(args.queries)
    suffix = "" if args.queries == "test" else f"_{args.queries}"  # of the result and cache files
    train_y, test_y = np.array([s.label for s in train_s]), np.array([s.label for s in test_s])
    summary = {"protocol": {"known_classes": len(known), "new_classes": len(new), "checkpoint": str(ckpt),
                            "split": args.new_classes, "new_class_names": [ds.classes[c] for c in new],
                            "train_photos": len(train_s), "queries": args.queries,
                            f"{args.queries}_photos": len(test_s)}, "models": {}}
    variants = [(int(d), float(c), float(w)) for d in args.dims.split(",") if d for c in args.colours.split(",") if c
                for w in args.whiten.split(",") if w and not (float(w) and int(d))]
    for dim, colour, whiten in variants:
        name = f"d{dim}" + (f"_c{colour:g}" if colour else "") + (f"_w{whiten:g}" if whiten else "")
        onnx_path = out / f"model_{name}.onnx"
        report_path = out / f"model_{name}.report.json"
        if report_path.is_file() and not args.reexport:
            report = json.loads(report_path.read_text())
        else:
            report = export_classifier(ExportConfig(checkpoint=str(ckpt), out=str(onnx_path), int8=True,
                                                    data=str(known_data), embedding_dim=dim,
                                                    embedding_colour=colour, embedding_whiten=whiten,
                                                    input_size=args.input_size,
                                                    tta=args.tta, threads=args.threads))
        for tag, path in (("int8", report["int8"]["path"]), ("fp32", report["fp32"]["path"])):
            if tag == "fp32" and (dim != 0 or not args.fp32):
                continue
            cache = out / f"embeddings_{name}_{tag}{suffix}.npz"  # reused while the model file is unchanged
            sha = report[tag]["sha256"]
            if cache.is_file() and str(np.load(cache)["sha256"]) == sha:
                z = np.load(cache)
                tr_emb, te_emb, te_logits = z["train"], z["test"], z["test_logits"]
            else:
                log.info("embedding %s photos with %s", len(train_s) + len(test_s), path)
                tr_emb, _ = _embed_all(path, train_s, args.threads)
                te_emb, te_logits = _embed_all(path, test_s, args.threads)
                atomic_write(cache, lambda tmp: np.savez(open(tmp, "wb"), train=tr_emb, test=te_emb,
                                                         test_logits=te_logits, sha256=np.array(sha)))
            with ImageClassifier.from_path(path) as clf:
                spec, unknown, model_labels = clf.embedding_spec, clf.metadata.unknown, clf.labels
            r = retrieval_metrics(spec, tr_emb, train_y, te_emb, test_y, te_logits, ds.classes, new, known,
                                  model_labels, unknown,
                                  draws=args.draws, seed=args.seed)
            summary["models"][f"{name}_{tag}"] = dict(r, embedding=spec, path=str(path))
            log.info("%s %s: new k=5 recall@1 %.3f (%s queries)", name, tag, r["new_products"]["5"]["recall@1"],
                     args.queries)
    write_result_files(out, "retrieval" + suffix, summary, _markdown(summary), lambda *_: False)
    print(_markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

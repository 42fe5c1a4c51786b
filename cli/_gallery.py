"""CLI: product galleries (enrol new products by photos, no retraining).

    skulens gallery create MODEL --data PATH --out shop.gallery   # every class folder a product
    skulens gallery add shop.gallery MODEL --label "New Cola 0.5l" IMAGE...
    skulens gallery remove shop.gallery --label "New Cola 0.5l"
    skulens gallery list shop.gallery
    skulens predict MODEL --gallery shop.gallery IMAGE...
"""
from __future__ import annotations

import json
import logging
import time

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("gallery", help="product galleries: enrol products by a few photos, classify by retrieval")
    gsub = p.add_subparsers(dest="gallery_command", required=True, metavar="ACTION")

    c = gsub.add_parser("create", help="a new gallery from a dataset's photos (one product per class)")
    c.add_argument("model", help="an exported skulens model with an embedding output")
    c.add_argument("--data", required=True, help="dataset folder (class folders or split lists)")
    c.add_argument("--split", default="train", help="which split's photos to enrol (default: train)")
    c.add_argument("--per-class", type=int, default=None, help="at most this many photos per product (default: all)")
    c.add_argument("--out", required=True, help="the gallery file to write")
    c.add_argument("--target-precision", type=float, default=0.95,
                   help="calibrate the 'unknown' similarity threshold for this precision (default: 0.95)")
    c.add_argument("--threads", type=int, default=0, help="onnxruntime threads (default: 0 = all cores)")
    c.set_defaults(func=_create)

    a = gsub.add_parser("add", help="enrol a product's photos (an image already enrolled is detected)")
    a.add_argument("gallery", help="the gallery file (updated atomically)")
    a.add_argument("model", help="the model the gallery was made with")
    a.add_argument("--label", required=True, help="the product's name")
    a.add_argument("images", nargs="+", metavar="IMAGE", help="photos of the product: files, folders "
                   "(searched recursively) or quoted glob patterns; an unreadable photo is reported and skipped")
    a.add_argument("--recalibrate", action="store_true", help="re-choose the 'unknown' threshold afterwards")
    a.add_argument("--threads", type=int, default=0, help="onnxruntime threads (default: 0 = all cores)")
    a.set_defaults(func=_add)

    r = gsub.add_parser("remove", help="delist a product")
    r.add_argument("gallery", help="the gallery file (updated atomically)")
    r.add_argument("--label", required=True, help="the product's name")
    r.set_defaults(func=_remove)

    ls = gsub.add_parser("list", help="the products of a gallery, with their photo counts")
    ls.add_argument("gallery", help="the gallery file")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=_list)

    cal = gsub.add_parser("calibrate", help="re-choose the 'unknown' threshold from the gallery's photos")
    cal.add_argument("gallery", help="the gallery file (updated atomically)")
    cal.add_argument("--target-precision", type=float, default=0.95,
                     help="choose the threshold that reaches this precision on the gallery's own photos "
                     "(default: 0.95)")
    cal.set_defaults(func=_calibrate)


def _classifier(model, threads):
    from skulens import ClassifierOptions, ImageClassifier

    from ._main import require_model

    require_model(model)
    return ImageClassifier.from_path(model, ClassifierOptions(num_threads=threads))


def _create(args) -> int:
    from skulens import load_dataset
    from skulens import GalleryError
    from skulens import ProductGallery

    ds = load_dataset(args.data)
    samples = ds.split(args.split)
    with _classifier(args.model, args.threads) as clf:
        gallery = ProductGallery.for_model(clf)
        for c, name in enumerate(ds.classes):
            paths = [s.path for s in samples if s.label == c][:args.per_class]
            if paths:
                rep = gallery.add(clf, name, paths)
                log.info("%s: %d photos%s", name, rep.added, f" ({len(rep.duplicates)} duplicates)" if rep.duplicates else "")
    if not len(gallery):
        raise GalleryError(f"{args.data}: no photos in split {args.split!r}")
    _calibrated(gallery, args.target_precision)
    gallery.save(args.out)
    print(f"{args.out}: {len(gallery.products())} products, {len(gallery)} photos, "
          f"unknown threshold {gallery.unknown_threshold}")
    return 0


def _calibrated(gallery, target) -> None:
    if gallery.calibrate(target) is None:
        log.warning("no 'unknown' threshold: the gallery needs 2+ products and a product with 2+ photos, "
                    "and a threshold reaching %.0f %% precision", 100 * target)


def _readable(images, clf) -> tuple[list[str], int]:
    """The photos that decode (folders and patterns expanded); the others are reported."""
    import sys

    from skulens import ImageError
    from skulens.internal import IMAGE_SUFFIXES

    from ._main import expand_images

    good, bad = [], 0
    for image, problem in expand_images(images, IMAGE_SUFFIXES):
        try:
            if problem:
                raise ImageError(f"{image}: {problem}")
            clf.decode(image)
            good.append(image)
        except ImageError as exc:
            bad += 1
            print(f"skulens: error: {exc} (skipped)", file=sys.stderr)
    return good, bad


def _add(args) -> int:
    from skulens import GalleryError, ProductGallery

    gallery = ProductGallery.load(args.gallery)
    with _classifier(args.model, args.threads) as clf:
        images, failed = _readable(args.images, clf)
        if not images:
            raise GalleryError(f"{args.label}: none of the {failed} given photos could be read; nothing enrolled")
        t0 = time.perf_counter()
        rep = gallery.add(clf, args.label, images)
    if args.recalibrate:
        _calibrated(gallery, gallery.unknown["target_precision"] if gallery.unknown else 0.95)
    gallery.save(args.gallery)
    for d in rep.duplicates:
        print(f"{d}: already enrolled as {rep.label!r}, skipped")
    print(f"{rep.label}: {rep.added} photos added in {time.perf_counter() - t0:.3f} s; "
          f"{gallery.products()[rep.label]} in the gallery"
          + (f"; {failed} unreadable photos skipped" if failed else ""))
    return 1 if failed else 0


def _remove(args) -> int:
    from skulens import ProductGallery

    gallery = ProductGallery.load(args.gallery)
    n = gallery.remove(args.label)
    gallery.save(args.gallery)
    print(f"{args.label}: {n} photos removed")
    return 0


def _list(args) -> int:
    from skulens import ProductGallery

    gallery = ProductGallery.load(args.gallery)
    products = gallery.products()
    if args.json:
        print(json.dumps({"model_sha256": gallery.model_sha256, "model_name": gallery.model_name,
                          "embedding": gallery.embedding, "unknown": gallery.unknown, "products": products}, indent=2))
    else:
        print(f"{len(products)} products, {len(gallery)} photos; model {gallery.model_name} "
              f"{gallery.model_sha256[:12]}; {gallery.dim}-d embedding; unknown threshold {gallery.unknown_threshold}")
        for label, n in products.items():
            print(f"  {label}: {n}")
    return 0


def _calibrate(args) -> int:
    from skulens import ProductGallery

    gallery = ProductGallery.load(args.gallery)
    _calibrated(gallery, args.target_precision)
    gallery.save(args.gallery)
    print(f"{args.gallery}: unknown threshold {gallery.unknown_threshold} ({gallery.unknown})")
    return 0

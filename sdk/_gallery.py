"""ProductGallery: recognise products by retrieval, so new products need photos, not retraining.

A gallery holds a few embeddings per product, made by one exported model (its ``embedding``
output). A query image's embedding is compared with all of them (cosine similarity); each
product scores its best-matching photo, and the top-k products are the answer. Below the
gallery's calibrated similarity threshold the answer is "unknown": none of these products.

    gallery = ProductGallery.for_model(clf)
    gallery.add(clf, "New Cola 0.5l", ["cola1.jpg", "cola2.jpg"])
    gallery.calibrate()                      # the "unknown" threshold, from the gallery itself
    gallery.save("shop.gallery")             # atomic; records the model's sha256

The file is an ``.npz`` archive (read with ``allow_pickle=False``): ``vectors`` float32 [N, D]
and ``header``, UTF-8 JSON with the model's sha256 and embedding spec, the entries (label,
image sha256, source) and the threshold. A gallery refuses any other model than its own.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ._errors import GalleryError
from ._image import decode_image
from ._io import atomic_write
from ._unknown import DEFAULT_TARGET_PRECISION, threshold_for_precision

FORMAT, VERSION = "skulens-gallery", 1
MAX_LABEL_CHARS = 200
SCORINGS = ("mean", "max")  # a product scores its photos' mean embedding, or its best photo


@dataclass(frozen=True)
class AddReport:
    """What :meth:`ProductGallery.add` did: entries added, and duplicates skipped (their sources)."""

    label: str
    added: int
    duplicates: tuple[str, ...] = ()


def image_sha256(image) -> str:
    """Identity of an image for duplicate detection: sha256 of its decoded pixels and shape."""
    pixels = np.ascontiguousarray(decode_image(image))
    return hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).hexdigest()


def check_label(label) -> str:
    if not isinstance(label, str) or not label.strip():
        raise GalleryError(f"a product label must be a non-empty string, got {label!r}")
    label = label.strip()
    if len(label) > MAX_LABEL_CHARS or any(ord(c) < 32 for c in label):
        raise GalleryError(f"product label {label[:40]!r}...: at most {MAX_LABEL_CHARS} printable characters")
    return label


class ProductGallery:
    """Embeddings of product photos, bound to the model that made them."""

    def __init__(self, model_sha256: str, embedding: dict, *, model_name: str = "", vectors=None,
                 entries: Sequence[dict] = (), unknown: dict | None = None, backend: str = "auto",
                 scoring: str = "mean"):
        self.model_sha256, self.embedding, self.model_name = model_sha256, dict(embedding), model_name
        self.dim = int(embedding["dim"])
        self.vectors = (np.zeros((0, self.dim), np.float32) if vectors is None
                        else np.ascontiguousarray(vectors, dtype=np.float32))
        self.entries = [dict(e) for e in entries]
        self._by_sha = {e["image_sha256"]: e["label"] for e in self.entries}
        self.unknown = unknown
        self.backend = backend
        if scoring not in SCORINGS:
            raise GalleryError(f"gallery scoring must be one of {SCORINGS}, got {scoring!r}")
        self.scoring = scoring
        self._edited()
        if self.vectors.ndim != 2 or self.vectors.shape[1] != self.dim or len(self.vectors) != len(self.entries):
            raise GalleryError(f"gallery vectors {self.vectors.shape} do not match {len(self.entries)} entries "
                               f"of dimension {self.dim}")

    @property
    def vectors(self) -> np.ndarray:
        """The enrolled embeddings [N, D] (a view; replaced, not modified, by edits)."""
        return self._buf[:self._n]

    @vectors.setter
    def vectors(self, value) -> None:
        self._buf = np.ascontiguousarray(value, dtype=np.float32)
        self._n = len(self._buf)

    def _append(self, rows: np.ndarray) -> None:
        """Amortised O(rows) append: the buffer grows by doubling, so enrolling into a large
        gallery does not copy it."""
        need = self._n + len(rows)
        if need > len(self._buf):
            grown = np.empty((max(need, 2 * len(self._buf), 64), self.dim), np.float32)
            grown[:self._n] = self._buf[:self._n]
            self._buf = grown
        self._buf[self._n:need] = rows
        self._n = need

    # -- construction and files ----------------------------------------------------------------
    @classmethod
    def for_model(cls, classifier, backend: str = "auto", scoring: str = "mean") -> "ProductGallery":
        """An empty gallery for ``classifier`` (an ImageClassifier whose model has an embedding)."""
        spec = classifier.embedding_spec
        if spec is None:
            raise GalleryError(f"{classifier.path}: this model has no embedding output; re-export it "
                               "with a current skulens (`skulens export`, embedding on by default)")
        return cls(classifier.model_sha256, spec, model_name=classifier.metadata.model_name, backend=backend,
                   scoring=scoring)

    @classmethod
    def load(cls, path, backend: str = "auto") -> "ProductGallery":
        """Read a gallery file; GalleryError for a missing, truncated, tampered or foreign file."""
        path = Path(os.fspath(path))
        if not path.is_file():
            raise GalleryError(f"{path}: no such gallery file")
        try:
            with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
                if set(z.files) != {"vectors", "header"}:
                    raise GalleryError(f"{path}: not a skulens gallery (arrays {sorted(z.files)})")
                vectors, raw = z["vectors"], z["header"]
            header = json.loads(raw.tobytes().decode("utf-8"))
        except GalleryError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, UnicodeDecodeError) as exc:
            raise GalleryError(f"{path}: not a readable skulens gallery ({type(exc).__name__}: {exc})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise GalleryError(f"{path}: not a skulens gallery file")
        if header.get("version") != VERSION:
            raise GalleryError(f"{path}: gallery format version {header.get('version')} is not supported "
                               f"(this skulens reads {VERSION})")
        if vectors.dtype != np.float32 or vectors.ndim != 2:
            raise GalleryError(f"{path}: gallery vectors must be float32 [N, D], got {vectors.dtype} {vectors.shape}")
        if len(vectors) and (not np.isfinite(vectors).all()
                             or np.abs(np.linalg.norm(vectors, axis=1) - 1).max() > 1e-3):
            raise GalleryError(f"{path}: gallery vectors are not finite unit vectors (tampered file?)")
        try:
            entries = header["entries"]
            for e in entries:
                check_label(e["label"])
                if not isinstance(e["image_sha256"], str):
                    raise TypeError("image_sha256")
            return cls(header["model_sha256"], header["embedding"], model_name=header.get("model_name", ""),
                       vectors=vectors, entries=entries, unknown=header.get("unknown"), backend=backend,
                       scoring=header.get("scoring", "mean"))
        except (KeyError, TypeError) as exc:
            raise GalleryError(f"{path}: gallery header is incomplete ({exc})") from None

    def save(self, path) -> Path:
        """Write atomically: readers see the old gallery or the new one, never a half-written file."""
        header = {"format": FORMAT, "version": VERSION, "model_sha256": self.model_sha256,
                  "model_name": self.model_name, "embedding": self.embedding, "unknown": self.unknown,
                  "scoring": self.scoring,
                  "saved_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  "entries": self.entries}
        raw = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)

        def write(tmp):
            buf = io.BytesIO()
            np.savez(buf, vectors=self.vectors, header=raw)
            Path(tmp).write_bytes(buf.getvalue())

        return atomic_write(path, write)

    def check_model(self, classifier) -> None:
        """GalleryError unless ``classifier`` runs the very model this gallery was made with."""
        if classifier.model_sha256 != self.model_sha256:
            raise GalleryError(f"{classifier.path}: this gallery was made with another model "
                               f"(sha256 {self.model_sha256[:12]}..., this one {classifier.model_sha256[:12]}...); "
                               "embeddings of different models are not comparable: rebuild the gallery "
                               "with `skulens gallery create`")
        if classifier.embedding_spec is None or int(classifier.embedding_spec["dim"]) != self.dim:
            raise GalleryError(f"{classifier.path}: the model's embedding does not match the gallery's")

    # -- editing -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def products(self) -> dict[str, int]:
        """Product label -> number of photos, in enrolment order (a copy; kept between edits)."""
        if self._products is None:
            counts: dict[str, int] = {}
            for e in self.entries:
                counts[e["label"]] = counts.get(e["label"], 0) + 1
            self._products = counts
        return dict(self._products)

    def product_index(self, label: str) -> int:
        """Position of ``label`` in :meth:`products` (a result's ``Category.index``)."""
        if self._positions is None:
            self._positions = {label: i for i, label in enumerate(self.products())}
        return self._positions[label]

    def _edited(self) -> None:
        """Forget everything derived from the entries (index, counts, positions)."""
        self._index = self._products = self._positions = None

    def label_of_image(self, sha: str) -> str | None:
        """The product an image (by :func:`image_sha256`) is enrolled as, or None."""
        return self._by_sha.get(sha)

    def add(self, classifier, label: str, images: Iterable) -> AddReport:
        """Embed ``images`` (paths, bytes or arrays) with ``classifier`` and enrol them as ``label``.
        An image already in the gallery is skipped under the same label and refused under another."""
        self.check_model(classifier)
        images = list(images)
        if not images:
            raise GalleryError(f"no images given for product {label!r}")
        sources = [os.fspath(im) if isinstance(im, (str, os.PathLike)) else f"<image {i}>"
                   for i, im in enumerate(images)]
        # decoded once, as classify decodes them (reduced-scale JPEGs where the contract allows)
        pixels = [classifier.decode(im) for im in images]
        return self.add_embeddings(label, classifier.embed_batch(pixels), [image_sha256(p) for p in pixels], sources)

    def add_embeddings(self, label: str, vectors: np.ndarray, shas: Sequence[str],
                       sources: Sequence[str]) -> AddReport:
        """Enrol precomputed embeddings [n, D] (unit vectors of this gallery's model)."""
        label = check_label(label)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or not len(vectors) == len(shas) == len(sources):
            raise GalleryError(f"embeddings {vectors.shape} do not match {len(shas)} images of dimension {self.dim}")
        if not np.isfinite(vectors).all() or (len(vectors) and np.abs(np.linalg.norm(vectors, axis=1) - 1).max() > 1e-3):
            raise GalleryError("embeddings must be finite unit vectors (the model's embedding output)")
        known = self._by_sha
        keep, dupes, fresh = [], [], set()
        for i, sha in enumerate(shas):
            if sha in known:
                if known[sha] != label:
                    raise GalleryError(f"{sources[i]}: this image is already enrolled as {known[sha]!r}; "
                                       f"remove it there before enrolling it as {label!r}")
                dupes.append(sources[i])
            elif sha in fresh:
                dupes.append(sources[i])  # the same photo twice in one request
            else:
                keep.append(i)
                fresh.add(sha)
        if keep:
            for i in keep:
                known[shas[i]] = label
            self._append(vectors[keep])
            self.entries += [{"label": label, "image_sha256": shas[i], "source": str(sources[i])} for i in keep]
            self._edited()
        return AddReport(label, len(keep), tuple(dupes))

    def remove(self, label: str) -> int:
        """Delist a product; returns the number of photos removed (GalleryError if it has none)."""
        keep = [i for i, e in enumerate(self.entries) if e["label"] != label]
        removed = len(self.entries) - len(keep)
        if not removed:
            raise GalleryError(f"no product {label!r} in this gallery")
        self.vectors = self.vectors[keep]
        self.entries = [self.entries[i] for i in keep]
        self._by_sha = {e["image_sha256"]: e["label"] for e in self.entries}
        self._edited()
        return removed

    # -- search ----------------------------------------------------------------------------------
    def _prototypes(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Product labels, per-product sums of embeddings [P, D] and photo counts [P]."""
        labels = list(self.products())
        pid = {label: i for i, label in enumerate(labels)}
        rows = np.array([pid[e["label"]] for e in self.entries], dtype=np.int64)
        sums = np.zeros((len(labels), self.dim), np.float64)
        np.add.at(sums, rows, self.vectors)
        return labels, sums, np.bincount(rows, minlength=len(labels))

    def _search_index(self):
        """(index, labels of its rows): one unit vector per product ("mean": the normalised mean
        of its photos) or one per photo ("max")."""
        if self._index is None:
            from ._search import build_index

            if self.scoring == "mean":
                labels, sums, _ = self._prototypes()
                vecs = (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).astype(np.float32)
            else:
                labels, vecs = [e["label"] for e in self.entries], self.vectors
            # an HNSW graph is built on every core (100 k x 1280: 254 s on one); exact needs no build
            kw = {} if self.backend == "exact" else {"build_threads": os.cpu_count() or 1}
            self._index = (build_index(vecs, backend=self.backend, **kw), labels)
        return self._index

    def search(self, embeddings: np.ndarray, k: int = 5) -> list[list[tuple[str, float]]]:
        """Top-``k`` products per query embedding [Q, D]: (label, cosine similarity), best first.
        A product's score is the similarity to the mean of its photos (``scoring="mean"``, the
        default: measured better from 5 photos up) or to its best-matching photo ("max")."""
        if not self.entries:
            raise GalleryError("the gallery is empty: enrol products with `skulens gallery add`")
        q = np.asarray(embeddings, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise GalleryError(f"query embeddings must be [Q, {self.dim}], got {q.shape}")
        index, labels = self._search_index()
        n = k if self.scoring == "mean" else min(len(labels), 8 * k + 32)  # enough photos for k products
        scores, ids = index.search(q, n)
        out = []
        for srow, irow in zip(scores, ids):
            best: dict[str, float] = {}
            for sc, i in zip(srow, irow):
                if i >= 0 and labels[i] not in best:
                    best[labels[i]] = float(sc)
                    if len(best) == k:
                        break
            out.append(list(best.items()))
        return out

    @property
    def unknown_threshold(self) -> float | None:
        return float(self.unknown["threshold"]) if self.unknown else None

    def calibrate(self, target_precision: float = DEFAULT_TARGET_PRECISION, max_queries: int = 2000,
                  seed: int = 0) -> dict | None:
        """Choose the similarity below which an answer is "unknown", from the gallery itself:
        each sampled photo is a known query against the rest of the gallery (leave one out) and
        an unknown query against the other products (leave its product out), a 1:1 mix; the
        threshold is the lowest that keeps ``target_precision``. None (and no threshold) when
        the gallery is too small (fewer than 2 products, or no product with 2 photos)."""
        labels, sums, counts = self._prototypes()
        if len(labels) < 2 or counts.max() < 2:
            self.unknown = None
            return None
        pid = {label: i for i, label in enumerate(labels)}
        rows = np.array([pid[e["label"]] for e in self.entries], dtype=np.int64)
        idx = np.arange(len(rows))
        if len(idx) > max_queries:
            idx = np.sort(np.random.default_rng(seed).choice(idx, max_queries, replace=False))
        protos = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
        scores, correct = [], []
        for start in range(0, len(idx), 256):
            qi = idx[start:start + 256]
            v, own = self.vectors[qi].astype(np.float64), rows[qi]
            if self.scoring == "mean":
                sims = v @ protos.T  # [q, P]; its own product's mean without the photo itself
                rest = sums[own] - v
                sims[np.arange(len(qi)), own] = np.einsum("qd,qd->q", v, rest) / np.maximum(
                    np.linalg.norm(rest, axis=1), 1e-12)
            else:
                photo = v @ self.vectors.T.astype(np.float64)  # [q, N]
                photo[np.arange(len(qi)), qi] = -np.inf
                sims = np.full((len(qi), len(labels)), -np.inf)
                for c in range(len(labels)):
                    sims[:, c] = photo[:, rows == c].max(1)
            sibling = counts[own] > 1
            own_score = sims[np.arange(len(qi)), own]
            sims[np.arange(len(qi)), own] = -np.inf
            other = sims.max(1)  # unknown: its product left out
            scores += [np.maximum(own_score, other)[sibling], other]
            correct += [(own_score > other)[sibling], np.zeros(len(qi), bool)]
        scores, correct = np.concatenate(scores), np.concatenate(correct)
        t = threshold_for_precision(scores, correct, target_precision)
        if t is None:
            self.unknown = None
            return None
        accepted = scores >= t
        self.unknown = {"score": "cosine", "scoring": self.scoring, "threshold": round(t, 6),
                        "target_precision": target_precision,
                        "method": "leave-one-out on the gallery, known:unknown 1:1", "queries": int(len(scores)),
                        "calibration_precision": round(float(correct[accepted].mean()), 4)}
        return self.unknown

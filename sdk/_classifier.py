"""ImageClassifier: the SDK's task object for product classification with an ONNX model."""
from __future__ import annotations

import logging
import os
from functools import cached_property
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

import numpy as np

from ._config import option
from ._errors import ModelError
from ._image import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS, decode_image
from ._io import sha256_file
from ._metadata import ModelMetadata
from ._session import BACKENDS, OnnxTask, check_backend, open_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassifierOptions:
    """How to run a classifier.

    num_threads: onnxruntime intra-op threads (0 = onnxruntime's default: all cores).
    top_k: how many categories each result keeps (after ``score_threshold``).
    score_threshold: drop categories scoring below this probability.
    providers: onnxruntime execution providers, in order of preference.
    max_pixels: images larger than this are refused before decoding.
    max_aspect_ratio: images more elongated than this (longer / shorter side) are refused
        before decoding.
    max_batch: the largest batch sent to the model at once by ``classify_batch``.
    gallery: a product gallery file (``skulens gallery create``): classify by retrieval among
        its products (scores are cosine similarities) instead of by the model's own labels.
    reject_unknown: mark a result ``unknown`` when its top score is below the calibrated
        threshold of the model (softmax) or of the gallery (similarity).
    unknown_threshold: use this threshold instead of the calibrated one.
    backend: what runs the model: "onnxruntime" (default) or "openvino" (``pip install
        'skulens[openvino]'``; same results API, ``num_threads`` sets its inference threads,
        ``providers`` do not apply).
    reduced_decode: overrides the contract's ``reduced_decode`` (None: the model's own): 0
        decodes JPEGs in full; r >= 1 decodes them at the strongest 1/2, 1/4 or 1/8 scale that
        keeps r times the pixels the contract's resize needs.
    """

    num_threads: int = option(0, "onnxruntime intra-op threads (0 = onnxruntime's default: all cores)")
    top_k: int = option(5, "categories kept per result (after --score-threshold)")
    score_threshold: float = option(0.0, "drop categories scoring below this probability (0..1)")
    providers: tuple[str, ...] = option(("CPUExecutionProvider",), "onnxruntime execution providers, in "
                                        "order of preference")
    max_pixels: int = option(DEFAULT_MAX_PIXELS, "images larger than this (width x height) are refused "
                             "before decoding")
    max_aspect_ratio: float = option(DEFAULT_MAX_ASPECT_RATIO, "images more elongated than this (longer side "
                                     "/ shorter side) are refused before decoding")
    max_batch: int = option(32, "the largest batch sent to the model at once")
    gallery: str | None = option(None, "a product gallery file (skulens gallery create): classify by "
                                 "retrieval among its products (cosine similarity) instead of the model's labels")
    reject_unknown: bool = option(True, "mark a result 'unknown' when its top score is below the calibrated "
                                  "threshold of the model (softmax) or of the gallery (similarity)")
    unknown_threshold: float | None = option(None, "use this 'unknown' threshold instead of the calibrated one")
    backend: str = option("onnxruntime", "what runs the model: onnxruntime, or OpenVINO (pip install "
                          "'skulens[openvino]'; same results, --num-threads sets its threads)", choices=BACKENDS)
    reduced_decode: float | None = option(None, "JPEG decoding at 1/2, 1/4 or 1/8 scale: 0 = always in full, "
                                          "r >= 1 = keep r x the pixels the model's resize needs "
                                          "(default: the model's contract)")

    def __post_init__(self):
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if self.max_batch < 1 or self.max_pixels < 1 or self.num_threads < 0 or not self.max_aspect_ratio >= 1:
            raise ValueError("max_batch, max_pixels and max_aspect_ratio must be >= 1 and num_threads >= 0")
        check_backend(self.backend)
        if self.backend != "onnxruntime" and tuple(self.providers) != ("CPUExecutionProvider",):
            raise ValueError(f"providers are onnxruntime's; backend {self.backend!r} does not take them")
        if self.reduced_decode is not None and not (self.reduced_decode == 0 or self.reduced_decode >= 1):
            raise ValueError(f"reduced_decode must be 0 (decode in full) or >= 1, got {self.reduced_decode}")


@dataclass(frozen=True)
class Category:
    """One class in a result: its label, index in the model's output, and softmax score."""

    label: str
    index: int
    score: float


@dataclass(frozen=True)
class ClassificationResult:
    """Categories sorted by descending score (possibly empty if all fall below the threshold).
    ``unknown``: the top score is below the "none of these" threshold (the categories are kept,
    for inspection, but the input is most likely none of them)."""

    categories: tuple[Category, ...]
    source: str | None = None
    extra: dict = field(default_factory=dict, compare=False)
    unknown: bool = False
    coarse: Category | None = None  # the top product's coarse group (e.g. "Apple"), scored by its total probability

    @property
    def top(self) -> Category | None:
        return self.categories[0] if self.categories else None

    def to_dict(self) -> dict:
        out = {"source": self.source, "unknown": self.unknown,
               "categories": [{"label": c.label, "index": c.index, "score": round(c.score, 6)}
                              for c in self.categories]}
        if self.coarse is not None:
            out["coarse"] = {"label": self.coarse.label, "index": self.coarse.index,
                             "score": round(self.coarse.score, 6)}
        return out


# the input element type per contract dtype, as onnxruntime and Triton name it
_INPUT_TYPES = {"float32": ("tensor(float)", "TYPE_FP32"), "uint8": ("tensor(uint8)", "TYPE_UINT8")}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def coarse_groups(coarse_labels) -> tuple[tuple[str, ...], np.ndarray]:
    """(group names in first-seen order, group index of each class [K], -1 where it has none)
    from one coarse label per class ("" = none)."""
    names = tuple(dict.fromkeys(c for c in coarse_labels if c))
    index = {name: i for i, name in enumerate(names)}
    return names, np.array([index.get(c, -1) for c in coarse_labels], dtype=np.int64)


class ImageClassifier(OnnxTask):
    """Classify product images with a skulens ONNX model.

    >>> with ImageClassifier.from_path("model.onnx") as clf:
    ...     result = clf.classify("photo.jpg")
    ...     print(result.top.label, result.top.score)
    """

    def __init__(self, session, metadata: ModelMetadata, options: ClassifierOptions, path=None):
        self._session = session
        self.metadata = metadata
        self.options = options
        self.path = path
        self.labels = metadata.labels
        self.preprocess_config = metadata.preprocess
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1:
            raise ModelError(f"{path}: a classifier needs exactly one input, found {len(inputs)}")
        self._input_name = inputs[0].name
        by_name = {o.name: o for o in outputs}
        logits_out = by_name.get("logits", outputs[0])
        self._output_name = logits_out.name
        self.embedding_spec = metadata.embedding
        if self.embedding_spec is not None:
            emb = by_name.get(self.embedding_spec["output"])
            dim = emb.shape[-1] if emb is not None and emb.shape else None
            if emb is None or (isinstance(dim, int) and dim != self.embedding_spec["dim"]):
                raise ModelError(f"{path}: metadata declares a {self.embedding_spec['dim']}-d embedding output "
                                 f"{self.embedding_spec['output']!r} that the model does not have")
        self._model_sha256 = None
        n_out = logits_out.shape[-1] if logits_out.shape else None
        if isinstance(n_out, int) and n_out != len(self.labels):
            raise ModelError(f"{path}: metadata lists {len(self.labels)} labels but the model "
                             f"outputs {n_out} scores")
        want = _INPUT_TYPES[self.preprocess_config.dtype]
        got_type = getattr(inputs[0], "type", None)
        if got_type is not None and got_type not in want:
            raise ModelError(f"{path}: model input type {got_type} does not match the preprocessing "
                             f"contract's dtype {self.preprocess_config.dtype!r} (expects {want[0]})")
        expected = list(self.preprocess_config.tensor_shape)
        got = inputs[0].shape[1:]
        if all(isinstance(v, int) for v in got) and list(got) != expected:
            raise ModelError(f"{path}: model input shape {got} does not match the preprocessing "
                             f"contract {expected}")
        self.coarse_labels, self._group_of = (coarse_groups(metadata.coarse_labels) if metadata.coarse_labels
                                              else ((), None))
        self.gallery = None
        if options.gallery:
            from ._gallery import ProductGallery

            self.use_gallery(ProductGallery.load(options.gallery))

    @property
    def model_sha256(self) -> str:
        """sha256 of the model file (what a gallery is bound to)."""
        if self._model_sha256 is None:
            if not self.path:
                raise ModelError("this classifier was not opened from a file; its model has no sha256")
            self._model_sha256 = sha256_file(self.path)
        return self._model_sha256

    def use_gallery(self, gallery) -> None:
        """Classify by retrieval among ``gallery``'s products (None: by the model's labels again).
        GalleryError when the gallery was made with another model."""
        if gallery is not None:
            gallery.check_model(self)
        self.gallery = gallery

    @property
    def unknown_threshold(self) -> float | None:
        """The score below which results are ``unknown`` (None: never)."""
        if not self.options.reject_unknown:
            return None
        if self.options.unknown_threshold is not None:
            return self.options.unknown_threshold
        rule = self.gallery.unknown if self.gallery is not None else self.metadata.unknown
        return float(rule["threshold"]) if rule else None

    @classmethod
    def from_path(cls, path, options: ClassifierOptions | None = None) -> "ImageClassifier":
        options = options or ClassifierOptions()
        session, meta = open_model(path, num_threads=options.num_threads, providers=options.providers,
                                   expect_kind="classifier", backend=options.backend)
        return cls(session, meta, options, path=str(path))

    # -- the pipeline --------------------------------------------------------------------------
    def decode(self, image, *, reduced: bool = True) -> np.ndarray:
        """Decode one image (path, bytes or array) under this classifier's size limits; JPEGs at
        the reduced scale its contract allows, or in full with ``reduced=False``."""
        return decode_image(image, max_pixels=self.options.max_pixels, max_aspect_ratio=self.options.max_aspect_ratio,
                            preprocess=self.decode_contract if reduced else None)

    def preprocess(self, image) -> np.ndarray:
        """Decode (if needed) and preprocess one image -> the contract's tensor, no batch axis."""
        return self.preprocess_config.apply(self.decode(image))

    @cached_property
    def decode_contract(self):
        """The contract JPEGs are decoded for: the model's, with ``options.reduced_decode`` if set."""
        if self.options.reduced_decode is None:
            return self.preprocess_config
        return replace(self.preprocess_config, reduced_decode=self.options.reduced_decode)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Model-only: a preprocessed batch (the contract's layout and dtype) -> what results are
        made from: logits [N, num_classes], or with a gallery the embeddings [N, D]."""
        if self.gallery is not None:
            return self.run_embedding(batch)
        return self.run_logits(batch)

    def run_logits(self, batch: np.ndarray) -> np.ndarray:
        session = self._require_open()
        return session.run([self._output_name], {self._input_name: batch})[0]

    def run_embedding(self, batch: np.ndarray) -> np.ndarray:
        """A preprocessed batch -> L2-normalised embeddings [N, D] (ModelError without one)."""
        session = self._require_open()
        return session.run([self._embedding_output()], {self._input_name: batch})[0]

    def run_logits_and_embedding(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A preprocessed batch -> (logits [N, K], embeddings [N, D]) from one model call."""
        session = self._require_open()
        logits, emb = session.run([self._output_name, self._embedding_output()], {self._input_name: batch})
        return logits, emb

    def _embedding_output(self) -> str:
        if self.embedding_spec is None:
            raise ModelError(f"{self.path}: this model has no embedding output; re-export it with a "
                             "current skulens (`skulens export`)")
        return self.embedding_spec["output"]

    def postprocess(self, outputs: np.ndarray, sources: Sequence = ()) -> list[ClassificationResult]:
        """The output of :meth:`run` -> one result per image."""
        if self.gallery is not None:
            return self._gallery_results(outputs, sources)
        probs = softmax(outputs.astype(np.float32))
        k = min(self.options.top_k, probs.shape[1])
        threshold = self.unknown_threshold
        results = []
        for i, p in enumerate(probs):
            idx = np.argpartition(-p, k - 1)[:k]
            idx = idx[np.argsort(-p[idx], kind="stable")]
            cats = tuple(Category(self.labels[j], int(j), float(p[j])) for j in idx
                         if p[j] >= self.options.score_threshold)
            src = sources[i] if i < len(sources) else None
            results.append(ClassificationResult(cats, source=src, coarse=self.coarse_answer(p, idx[0]),
                                                unknown=threshold is not None and float(p[idx[0]]) < threshold))
        return results

    def coarse_answer(self, probs: np.ndarray, top: int | None = None) -> Category | None:
        """The coarse group of the answered class ``top`` (default: the most probable), scored by
        the group's total probability, from one image's class probabilities [K] (None when that
        class has no coarse group). The group is that of the answer, not the group with the most
        probability: summed probabilities favour large groups (on the Grocery test split that
        lost 1.6 pp, see the README)."""
        if not self.coarse_labels:
            return None
        top = int(np.argmax(probs)) if top is None else int(top)
        j = int(self._group_of[top])
        if j < 0:
            return None
        return Category(self.coarse_labels[j], j, float(probs[self._group_of == j].sum()))

    def _gallery_results(self, embeddings, sources) -> list[ClassificationResult]:
        threshold = self.unknown_threshold
        results = []
        for i, hits in enumerate(self.gallery.search(embeddings, self.options.top_k)):
            cats = tuple(Category(label, self.gallery.product_index(label), score) for label, score in hits
                         if score >= self.options.score_threshold)
            src = sources[i] if i < len(sources) else None
            results.append(ClassificationResult(cats, source=src, extra={"by": "gallery"},
                                                unknown=threshold is not None and (not hits or hits[0][1] < threshold)))
        return results

    def classify(self, image) -> ClassificationResult:
        """Classify one image: a file path, encoded bytes, or a uint8 BGR/GRAY/BGRA array."""
        x = self.preprocess(image)[None]
        return self.postprocess(self.run(x), [_source_name(image)])[0]

    def classify_batch(self, images: Iterable) -> list[ClassificationResult]:
        """Classify many images; they are sent to the model in batches of ``max_batch``."""
        images = list(images)
        outputs = self.embed_batch(images) if self.gallery is not None else self.logits_batch(images)
        return self.postprocess(outputs, [_source_name(im) for im in images])

    def logits_batch(self, images: Iterable) -> np.ndarray:
        """Raw logits [N, num_classes] for many images, run in batches of ``max_batch``."""
        return self._batched(images, self.run_logits, len(self.labels))

    def embed(self, image) -> np.ndarray:
        """The L2-normalised embedding [D] of one image (ModelError if the model has none)."""
        return self.run_embedding(self.preprocess(image)[None])[0]

    def embed_batch(self, images: Iterable) -> np.ndarray:
        """Embeddings [N, D] of many images, run in batches of ``max_batch``."""
        dim = self.embedding_spec["dim"] if self.embedding_spec else 0
        return self._batched(images, self.run_embedding, dim)

    def _batched(self, images, fn, width: int) -> np.ndarray:
        images = list(images)
        out = []
        for start in range(0, len(images), self.options.max_batch):
            chunk = images[start:start + self.options.max_batch]
            out.append(fn(np.stack([self.preprocess(im) for im in chunk])))
        return np.concatenate(out) if out else np.zeros((0, width), np.float32)


def _source_name(image) -> str | None:
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else None

"""ImageClassifier: the SDK's task object for product classification with an ONNX model."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from ._errors import ModelError
from ._image import DEFAULT_MAX_PIXELS, decode_image
from ._metadata import ModelMetadata
from ._session import OnnxTask, open_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassifierOptions:
    """How to run a classifier.

    num_threads: onnxruntime intra-op threads (0 = onnxruntime's default: all cores).
    top_k: how many categories each result keeps (after ``score_threshold``).
    score_threshold: drop categories scoring below this probability.
    providers: onnxruntime execution providers, in order of preference.
    max_pixels: images larger than this are refused before decoding.
    max_batch: the largest batch sent to the model at once by ``classify_batch``.
    """

    num_threads: int = 0
    top_k: int = 5
    score_threshold: float = 0.0
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_batch: int = 32

    def __post_init__(self):
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if self.max_batch < 1 or self.max_pixels < 1 or self.num_threads < 0:
            raise ValueError("max_batch and max_pixels must be >= 1 and num_threads >= 0")


@dataclass(frozen=True)
class Category:
    """One class in a result: its label, index in the model's output, and softmax score."""

    label: str
    index: int
    score: float


@dataclass(frozen=True)
class ClassificationResult:
    """Categories sorted by descending score (possibly empty if all fall below the threshold)."""

    categories: tuple[Category, ...]
    source: str | None = None
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def top(self) -> Category | None:
        return self.categories[0] if self.categories else None

    def to_dict(self) -> dict:
        return {"source": self.source,
                "categories": [{"label": c.label, "index": c.index, "score": round(c.score, 6)}
                               for c in self.categories]}


# the input element type per contract dtype, as onnxruntime and Triton name it
_INPUT_TYPES = {"float32": ("tensor(float)", "TYPE_FP32"), "uint8": ("tensor(uint8)", "TYPE_UINT8")}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


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
        self._output_name = outputs[0].name
        n_out = outputs[0].shape[-1] if outputs[0].shape else None
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

    @classmethod
    def from_path(cls, path, options: ClassifierOptions | None = None) -> "ImageClassifier":
        options = options or ClassifierOptions()
        session, meta = open_model(path, num_threads=options.num_threads,
                                   providers=options.providers, expect_kind="classifier")
        return cls(session, meta, options, path=str(path))

    # -- the pipeline --------------------------------------------------------------------------
    def preprocess(self, image) -> np.ndarray:
        """Decode (if needed) and preprocess one image -> the contract's tensor, no batch axis."""
        img = decode_image(image, max_pixels=self.options.max_pixels)
        return self.preprocess_config.apply(img)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Model-only: a preprocessed batch (the contract's layout and dtype) -> logits [N, num_classes]."""
        session = self._require_open()
        return session.run([self._output_name], {self._input_name: batch})[0]

    def postprocess(self, logits: np.ndarray, sources: Sequence = ()) -> list[ClassificationResult]:
        probs = softmax(logits.astype(np.float32))
        k = min(self.options.top_k, probs.shape[1])
        results = []
        for i, p in enumerate(probs):
            idx = np.argpartition(-p, k - 1)[:k]
            idx = idx[np.argsort(-p[idx], kind="stable")]
            cats = tuple(Category(self.labels[j], int(j), float(p[j])) for j in idx
                         if p[j] >= self.options.score_threshold)
            src = sources[i] if i < len(sources) else None
            results.append(ClassificationResult(cats, source=src))
        return results

    def classify(self, image) -> ClassificationResult:
        """Classify one image: a file path, encoded bytes, or a uint8 BGR/GRAY/BGRA array."""
        x = self.preprocess(image)[None]
        return self.postprocess(self.run(x), [_source_name(image)])[0]

    def classify_batch(self, images: Iterable) -> list[ClassificationResult]:
        """Classify many images; they are sent to the model in batches of ``max_batch``."""
        images = list(images)
        return self.postprocess(self.logits_batch(images), [_source_name(im) for im in images])

    def logits_batch(self, images: Iterable) -> np.ndarray:
        """Raw logits [N, num_classes] for many images, run in batches of ``max_batch``."""
        images = list(images)
        out = []
        for start in range(0, len(images), self.options.max_batch):
            chunk = images[start:start + self.options.max_batch]
            out.append(self.run(np.stack([self.preprocess(im) for im in chunk])))
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)


def _source_name(image) -> str | None:
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else None

"""ImageGenerator: the SDK's task object for a class-conditional image generator (ONNX).

The model takes ``z`` [batch, z_dim] float32 and ``label`` [batch] int64 and returns images
[batch, C, H, W] in the value range and channel order written in its metadata. The latent
vectors are drawn here with numpy (``np.random.default_rng(seed)``), so the same seed gives
the same images on every machine and every onnxruntime build.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ._errors import ModelError, SkulensError
from ._io import atomic_write_bytes
from ._metadata import ModelMetadata
from ._session import OnnxTask, open_model


class GenerationError(SkulensError, ValueError):
    """A generation request cannot be served: unknown label, n <= 0, bad seed."""


@dataclass(frozen=True)
class GeneratorOptions:
    """num_threads: onnxruntime intra-op threads (0 = default); max_batch: the largest batch
    sent to the model at once (results do not depend on it); latent_scale: the latent is drawn
    from N(0, latent_scale^2) ("temperature"): below 1 the samples are more typical of their class
    and alike, above 1 more varied and less faithful (1 = the distribution the generator trained on)."""

    num_threads: int = 0
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    max_batch: int = 64
    latent_scale: float = 1.0

    def __post_init__(self):
        if self.num_threads < 0 or self.max_batch < 1:
            raise ValueError("num_threads must be >= 0 and max_batch >= 1")
        if not (isinstance(self.latent_scale, (int, float)) and 0 < self.latent_scale <= 10):
            raise ValueError(f"latent_scale must be in (0, 10], got {self.latent_scale!r}")


class ImageGenerator(OnnxTask):
    """Generate product images of a given class.

    >>> with ImageGenerator.from_path("gen.onnx") as gen:
    ...     images = gen.generate("Granny-Smith", n=16, seed=0)   # [16, H, W, 3] BGR uint8
    """

    def __init__(self, session, metadata: ModelMetadata, options: GeneratorOptions, path=None):
        self._session, self.metadata, self.options, self.path = session, metadata, options, path
        self.labels = metadata.labels
        g = metadata.generator
        if not isinstance(g, dict):
            raise ModelError(f"{path}: generator metadata has no 'generator' section")
        try:
            self.z_dim = int(g["z_dim"])
            self.output_size = tuple(int(v) for v in g["output_size"])  # (height, width)
            self.channel_order = str(g["channel_order"])
            self.value_range = tuple(float(v) for v in g["value_range"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{path}: incomplete generator metadata ({exc!r})") from None
        if self.channel_order not in ("RGB", "BGR", "GRAY") or self.value_range[1] <= self.value_range[0]:
            raise ModelError(f"{path}: unsupported channel order {self.channel_order!r} or value "
                             f"range {self.value_range}")
        names = {i.name for i in session.get_inputs()}
        if names != {"z", "label"}:
            raise ModelError(f"{path}: a generator needs inputs 'z' and 'label', found {sorted(names)}")
        self._output_name = session.get_outputs()[0].name

    @classmethod
    def from_path(cls, path, options: GeneratorOptions | None = None) -> "ImageGenerator":
        options = options or GeneratorOptions()
        session, meta = open_model(path, num_threads=options.num_threads, providers=options.providers,
                                   expect_kind="generator")
        return cls(session, meta, options, path=str(path))

    @property
    def channels(self) -> int:
        return 1 if self.channel_order == "GRAY" else 3

    def label_index(self, label_or_index) -> int:
        """A label name or an index -> the model's class index (GenerationError if unknown)."""
        if isinstance(label_or_index, (int, np.integer)) and not isinstance(label_or_index, bool):
            if 0 <= int(label_or_index) < len(self.labels):
                return int(label_or_index)
            raise GenerationError(f"class index {label_or_index} is out of range: the model has "
                                  f"{len(self.labels)} classes (0..{len(self.labels) - 1})")
        if isinstance(label_or_index, str) and label_or_index in self.labels:
            return self.labels.index(label_or_index)
        close = [x for x in self.labels if str(label_or_index).lower() in x.lower()][:5]
        raise GenerationError(f"unknown label {label_or_index!r}; the model knows {len(self.labels)} "
                              f"labels" + (f", e.g. {close}" if close else f": {list(self.labels[:10])}"))

    def latent(self, n: int, seed: int | None = None) -> np.ndarray:
        """``n`` latent vectors [n, z_dim] float32 from N(0, latent_scale^2) (options), drawn with
        numpy's default_rng(seed)."""
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0:
            raise GenerationError(f"n must be a positive integer, got {n!r}")
        if seed is not None and (not isinstance(seed, (int, np.integer)) or seed < 0):
            raise GenerationError(f"seed must be a non-negative integer or None, got {seed!r}")
        z = np.random.default_rng(seed).standard_normal((int(n), self.z_dim))
        return (z * self.options.latent_scale).astype(np.float32)

    def run(self, z: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Model only: z [N, z_dim] float32, labels [N] int64 -> raw output [N, C, H, W]."""
        session = self._require_open()
        z = np.ascontiguousarray(z, dtype=np.float32)
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        outs = []
        for i in range(0, len(z), self.options.max_batch):
            j = i + self.options.max_batch
            outs.append(session.run([self._output_name], {"z": z[i:j], "label": labels[i:j]})[0])
        return np.concatenate(outs)

    def to_images(self, raw: np.ndarray) -> np.ndarray:
        """Raw output [N, C, H, W] -> uint8 OpenCV images: [N, H, W, 3] BGR or [N, H, W] gray."""
        lo, hi = self.value_range
        x = (raw.astype(np.float32) - lo) * (255.0 / (hi - lo))
        x = np.clip(np.rint(x), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        if self.channel_order == "GRAY":
            return np.ascontiguousarray(x[..., 0])
        if self.channel_order == "RGB":
            x = x[..., ::-1]
        return np.ascontiguousarray(x)

    def generate_raw(self, label_or_index, n: int = 1, seed: int | None = None) -> np.ndarray:
        z = self.latent(n, seed)
        labels = np.full(len(z), self.label_index(label_or_index), np.int64)
        return self.run(z, labels)

    def generate(self, label_or_index, n: int = 1, seed: int | None = None) -> np.ndarray:
        """``n`` images of one class: uint8 [n, H, W, 3] BGR (or [n, H, W] gray), OpenCV
        conventions. The same ``seed`` gives the same images; ``seed=None`` draws fresh noise."""
        return self.to_images(self.generate_raw(label_or_index, n, seed))


def make_grid(images, ncol: int | None = None, pad: int = 2, scale: int = 1, row_labels=None) -> np.ndarray:
    """Tile uint8 OpenCV images (all the same size) into one BGR image; optional row labels."""
    images = [im if im.ndim == 3 else cv2.cvtColor(im, cv2.COLOR_GRAY2BGR) for im in images]
    if not images:
        raise GenerationError("no images to tile")
    n = len(images)
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    h, w = images[0].shape[:2]
    h, w = h * scale, w * scale
    margin = 0
    if row_labels:
        margin = 8 + 7 * min(24, max(len(s) for s in row_labels))
    grid = np.full((nrow * (h + pad) + pad, margin + ncol * (w + pad) + pad, 3), 255, np.uint8)
    for k, im in enumerate(images):
        r, c = divmod(k, ncol)
        if scale != 1:
            im = cv2.resize(im, (w, h), interpolation=cv2.INTER_NEAREST)
        y, x = pad + r * (h + pad), margin + pad + c * (w + pad)
        grid[y:y + h, x:x + w] = im
    for r, text in enumerate(row_labels or []):
        cv2.putText(grid, str(text)[:24], (4, pad + r * (h + pad) + h // 2 + 4), cv2.FONT_HERSHEY_SIMPLEX,
                    0.35, (0, 0, 0), 1, cv2.LINE_AA)
    return grid


def write_png(path, image: np.ndarray) -> Path:
    """Encode ``image`` as PNG and write it atomically."""
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise GenerationError(f"{path}: cannot encode image as PNG")
    return atomic_write_bytes(path, buf.tobytes())

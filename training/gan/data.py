"""Real images for GAN training: decoded once, centre-cropped and area-resized to the GAN's
resolution, kept in memory as a uint8 tensor [N, C, S, S] (RGB or gray)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from skulens import DatasetError, PreprocessConfig, load_dataset

from ..data import load_images

log = logging.getLogger(__name__)


@dataclass
class RealImages:
    images: torch.Tensor      # uint8 [N, C, S, S] in the GAN's colour order (RGB or gray)
    labels: torch.Tensor      # int64 [N], indices into ``classes``
    classes: list[str]
    source: str

    def __len__(self):
        return len(self.labels)

    def counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()


def crop_contract(size: int, channels: int) -> PreprocessConfig:
    """The geometric + colour part of the preprocessing contract applied to real GAN images."""
    order = "GRAY" if channels == 1 else "RGB"
    return PreprocessConfig(input_size=(size, size), color_order=order, resize="shorter_side_crop",
                            interpolation="area", mean=(0.5,) * channels, std=(0.5,) * channels)


def to_tensor(bgr_images, size: int, channels: int) -> torch.Tensor:
    """OpenCV uint8 images (any size, gray/BGR/BGRA) -> uint8 [N, C, size, size] RGB or gray."""
    contract = crop_contract(size, channels)
    out = np.empty((len(bgr_images), channels, size, size), np.uint8)
    for i, img in enumerate(bgr_images):
        out[i] = contract.to_model_colors(contract.resize_and_crop(img)).transpose(2, 0, 1)
    return torch.from_numpy(out)


def from_arrays(x: np.ndarray, y: np.ndarray, classes, size: int, channels: int,
                source: str = "arrays") -> RealImages:
    """Arrays (x [N, H, W] gray or [N, H, W, 3] **RGB** uint8, y [N]) -> RealImages."""
    x, y = np.asarray(x), np.asarray(y).astype(np.int64)
    if x.dtype != np.uint8 or x.ndim not in (3, 4) or len(x) != len(y) or not len(x):
        raise DatasetError(f"{source}: expected uint8 images [N, H, W(, 3)] and N labels, "
                           f"got {x.dtype} {x.shape} and {y.shape}")
    if y.min() < 0 or y.max() >= len(classes):
        raise DatasetError(f"{source}: labels must be in [0, {len(classes)}), got {y.min()}..{y.max()}")
    bgr = [im if im.ndim == 2 else np.ascontiguousarray(im[:, :, ::-1]) for im in x]
    return RealImages(to_tensor(bgr, size, channels), torch.from_numpy(y), list(classes), source)


def _load_npz(path: Path, size: int, channels: int) -> RealImages:
    try:
        d = np.load(path, allow_pickle=False)
        x, y = d["x"], d["y"]
        labels = [str(v) for v in d["labels"]] if "labels" in d else [str(i) for i in range(int(y.max()) + 1)]
    except (OSError, KeyError, ValueError) as exc:
        raise DatasetError(f"{path}: expected an .npz with arrays 'x' and 'y' ({exc})") from exc
    return from_arrays(x, y, labels, size, channels, source=str(path))


def load_real(data, size: int, channels: int, split: str = "train", progress=None) -> RealImages:
    """Training images of a dataset folder (its ``split``) or of an .npz file."""
    path = Path(data)
    if path.suffix == ".npz":
        return _load_npz(path, size, channels)
    dataset = load_dataset(path)
    samples = dataset.split(split)
    images = load_images(samples, short_side=size, progress=progress)
    labels = torch.tensor([s.label for s in samples], dtype=torch.int64)
    return RealImages(to_tensor(images, size, channels), labels, list(dataset.classes), str(path))


def parse_classes(spec: str | None, classes: list[str]) -> list[int]:
    """"a,b,3" (names or ids) -> class indices; None/"" -> all."""
    if not spec:
        return list(range(len(classes)))
    index = {c: i for i, c in enumerate(classes)}
    out = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if item in index:
            out.append(index[item])
        elif item.isdigit() and int(item) < len(classes):
            out.append(int(item))
        else:
            raise DatasetError(f"unknown class {item!r} (have {len(classes)} classes, e.g. {classes[:5]})")
    if len(set(out)) != len(out):
        raise DatasetError(f"class list {spec!r} names a class twice")
    return out


def select_classes(real: RealImages, keep: list[int]) -> RealImages:
    """Keep only classes ``keep`` (in that order), renumbered 0..len(keep)-1."""
    if keep == list(range(len(real.classes))):
        return real
    remap = torch.full((len(real.classes),), -1, dtype=torch.int64)
    remap[torch.tensor(keep)] = torch.arange(len(keep))
    new = remap[real.labels]
    mask = new >= 0
    return RealImages(real.images[mask], new[mask], [real.classes[i] for i in keep], real.source)

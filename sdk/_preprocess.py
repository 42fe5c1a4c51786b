"""The preprocessing contract: one frozen dataclass that training, export and the SDK share.

Training's eval transform is :meth:`PreprocessConfig.apply`; export writes :meth:`to_json`
into the ONNX metadata; the SDK reads it back with :meth:`from_json` and calls ``apply``.
Input images follow OpenCV conventions: uint8 HxW (gray), HxWx3 (BGR) or HxWx4 (BGRA).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np

from ._errors import ImageError, ModelError

_INTERP = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
}
_COLOR_ORDERS = ("RGB", "BGR", "GRAY")
_RESIZE_MODES = ("shorter_side_crop", "direct")
_LAYOUTS = ("NCHW", "NHWC")
_DTYPES = ("float32", "uint8")
# libjpeg decodes a JPEG directly at 1/8, 1/4 or 1/2 of its size by scaling in the DCT domain
JPEG_SCALES = (8, 4, 2)


def check_image_array(image) -> None:
    """Raise ImageError unless ``image`` is a uint8 HxW, HxWx1, HxWx3 or HxWx4 numpy array."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f"expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ImageError(f"expected a uint8 image, got dtype {image.dtype} "
                         "(16-bit and float images must be converted to 8-bit first)")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))):
        raise ImageError(f"unsupported image shape {image.shape}: expected HxW, HxWx3 (BGR) or HxWx4 (BGRA)")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError(f"image has no pixels (shape {image.shape})")


# A shorter-side resize of a very elongated image would allocate the whole resized strip (a
# 1 x 100000 image at 224 px: 15 GB) to keep a 224 x 224 crop of it. Past this many times the
# crop's area, only the source rows/columns under the crop (and a margin) are resized: cost
# bounded by the output for any shape; ordinary photos (up to ~12:1) take the plain path.
_CROP_FIRST = 16


def _source_span(n: int, resized: int, start: int, keep: int):
    """One axis of the crop-first path: the source range [a, b) under the output window
    [start, start + keep) of an axis of ``n`` pixels resized to ``resized``, two source pixels of
    margin each side; returns ((a, b), (size to resize [a, b) to, the window's start in it))."""
    if resized <= keep:  # nothing cropped on this axis
        return (0, n), (resized, start)
    scale = resized / n
    a = max(0, int(start / scale) - 2)
    b = min(n, int(-(-(start + keep) // scale)) + 2)
    size = max(keep, round((b - a) * scale))
    return (a, b), (size, min(max(0, round(start - a * scale)), size - keep))


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything needed to turn a decoded image into the model's input tensor.

    input_size: (height, width) of the tensor.
    color_order: channel order the model expects ("RGB", "BGR" or "GRAY").
    resize: "shorter_side_crop" resizes the shorter side to ``input / crop_fraction`` and
        centre-crops; "direct" resizes to ``input_size`` ignoring aspect ratio.
    crop_fraction: fraction of the resized image kept by the centre crop (1.0 = no margin).
    interpolation: OpenCV interpolation name ("area", "linear", "cubic", "nearest").
    mean, std: per channel, applied after scaling pixels to [0, 1], in ``color_order``.
    layout: "NCHW" or "NHWC" of the batched tensor.
    dtype: "float32": the tensor is normalised here, ``(pixel / 255 - mean) / std``;
        "uint8": the tensor holds the resized pixels and the model normalises them itself
        (export folds ``mean``/``std`` into its first convolution), which spares the caller
        the float conversion and the INT8 model its input quantization.
    reduced_decode: 0 decodes JPEGs in full. A value r >= 1 lets the SDK decode a JPEG at
        1/8, 1/4 or 1/2 scale (libjpeg's DCT scaling, several times faster than decoding a
        camera frame in full): the strongest reduction whose decoded image still has at least
        r times the pixels, per side, that the resize rule scales it to (:meth:`decode_scale`).
        Contracts written before this field existed load as 0, a full decode, which is what
        they meant; 0 is not written out, so such contracts stay readable by older skulens.
    """

    # the reduced_decode recommended for new contracts: on Grocery val photos as 1080p / 12 MP
    # JPEGs, top-1 as with a full decode and pixels within 0.8 levels of it on average (ratio 1
    # differs by up to 2.6 levels and loses 1.35 pp for 128 px models on 348 px photos)
    RECOMMENDED_REDUCED_DECODE: ClassVar[float] = 2.0

    input_size: tuple[int, int] = (64, 64)
    color_order: str = "RGB"
    resize: str = "shorter_side_crop"
    crop_fraction: float = 1.0
    interpolation: str = "area"
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.25, 0.25, 0.25)
    layout: str = "NCHW"
    dtype: str = "float32"
    reduced_decode: float = 0.0

    def __post_init__(self):
        h, w = (int(v) for v in self.input_size)
        object.__setattr__(self, "input_size", (h, w))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "reduced_decode", float(self.reduced_decode))
        problems = []
        if h <= 0 or w <= 0:
            problems.append(f"input_size must be positive, got {self.input_size}")
        if self.color_order not in _COLOR_ORDERS:
            problems.append(f"color_order must be one of {_COLOR_ORDERS}, got {self.color_order!r}")
        if self.resize not in _RESIZE_MODES:
            problems.append(f"resize must be one of {_RESIZE_MODES}, got {self.resize!r}")
        if not 0.0 < float(self.crop_fraction) <= 1.0:
            problems.append(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if self.interpolation not in _INTERP:
            problems.append(f"interpolation must be one of {tuple(_INTERP)}, got {self.interpolation!r}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            problems.append(f"mean/std need {self.channels} values for {self.color_order}")
        if any(s <= 0 for s in self.std):
            problems.append("std values must be positive")
        if self.layout not in _LAYOUTS:
            problems.append(f"layout must be one of {_LAYOUTS}, got {self.layout!r}")
        if self.dtype not in _DTYPES:
            problems.append(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if not (self.reduced_decode == 0 or self.reduced_decode >= 1):
            problems.append(f"reduced_decode must be 0 (decode in full) or >= 1, got {self.reduced_decode}")
        if problems:
            raise ValueError("invalid PreprocessConfig: " + "; ".join(problems))

    # -- derived -----------------------------------------------------------------------------
    @property
    def channels(self) -> int:
        return 1 if self.color_order == "GRAY" else 3

    @property
    def tensor_shape(self) -> tuple[int, int, int]:
        """Shape of one preprocessed image (no batch axis)."""
        h, w = self.input_size
        return (self.channels, h, w) if self.layout == "NCHW" else (h, w, self.channels)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) an image of that size is resized to, before the centre crop."""
        th, tw = self.input_size
        if self.resize == "direct":
            return th, tw
        # Scale so the crop window (input_size / crop_fraction) fits the image.
        scale = max(th / (height * self.crop_fraction), tw / (width * self.crop_fraction))
        return max(th, round(height * scale)), max(tw, round(width * scale))

    def decode_scale(self, width: int, height: int) -> int:
        """The JPEG decoding scale denominator (8, 4 or 2; 1 = full size) for a photo of
        ``width`` x ``height`` (as displayed, after its EXIF orientation): the largest whose
        decoded image, ``ceil(side / scale)`` as libjpeg rounds it, keeps ``reduced_decode``
        times the pixels, per side, of :meth:`resized_size`."""
        if not self.reduced_decode:
            return 1
        rh, rw = self.resized_size(height, width)
        for scale in JPEG_SCALES:
            if -(-height // scale) >= self.reduced_decode * rh and -(-width // scale) >= self.reduced_decode * rw:
                return scale
        return 1

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if not self.reduced_decode:
            del d["reduced_decode"]  # the meaning of a contract without it: older readers accept it
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ModelError(f"preprocessing contract has unknown fields {sorted(unknown)}: "
                             "the model was written by a newer skulens")
        try:
            return cls(**d)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"invalid preprocessing contract: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> "PreprocessConfig":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"preprocessing contract is not valid JSON: {exc}") from exc
        if not isinstance(d, dict):
            raise ModelError("preprocessing contract must be a JSON object")
        return cls.from_dict(d)

    # -- the transform -----------------------------------------------------------------------
    def to_model_colors(self, image: np.ndarray) -> np.ndarray:
        """uint8 GRAY/BGR/BGRA image -> HxWxC uint8 in ``color_order`` (C = self.channels)."""
        if image.dtype != np.uint8:
            raise ImageError(f"expected a uint8 image, got dtype {image.dtype}")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.ndim == 2:
            code = None if self.channels == 1 else (
                cv2.COLOR_GRAY2RGB if self.color_order == "RGB" else cv2.COLOR_GRAY2BGR)
        elif image.ndim == 3 and image.shape[2] == 3:
            code = {"RGB": cv2.COLOR_BGR2RGB, "BGR": None, "GRAY": cv2.COLOR_BGR2GRAY}[self.color_order]
        elif image.ndim == 3 and image.shape[2] == 4:
            code = {"RGB": cv2.COLOR_BGRA2RGB, "BGR": cv2.COLOR_BGRA2BGR,
                    "GRAY": cv2.COLOR_BGRA2GRAY}[self.color_order]
        else:
            raise ImageError(f"unsupported image shape {image.shape}: expected HxW, HxWx3 or HxWx4")
        out = image if code is None else cv2.cvtColor(image, code)
        return out[:, :, None] if out.ndim == 2 else out

    def resize_and_crop(self, image: np.ndarray) -> np.ndarray:
        """Geometric part of the contract on any uint8 image (colour order untouched)."""
        h, w = image.shape[:2]
        if h < 1 or w < 1:
            raise ImageError(f"image has no pixels (shape {image.shape})")
        th, tw = self.input_size
        rh, rw = self.resized_size(h, w)
        y0, x0 = (rh - th) // 2, (rw - tw) // 2
        if rh * rw > _CROP_FIRST * th * tw:  # an extreme aspect ratio: resize only what the crop keeps
            (a, b), (rh, y0) = _source_span(h, rh, y0, th)
            (c, d), (rw, x0) = _source_span(w, rw, x0, tw)
            image = image[a:b, c:d]
        out = image if (rh, rw) == image.shape[:2] else cv2.resize(
            image, (rw, rh), interpolation=_INTERP[self.interpolation])
        out = out[y0:y0 + th, x0:x0 + tw]
        return out.reshape(th, tw, -1)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Preprocess one uint8 OpenCV image into a ``dtype`` tensor of shape ``tensor_shape``."""
        check_image_array(image)
        img = self.resize_and_crop(image)
        img = self.to_model_colors(img)  # HxWxC uint8, model colour order
        if self.dtype == "uint8":
            return np.ascontiguousarray(img.transpose(2, 0, 1) if self.layout == "NCHW" else img)
        x = img.astype(np.float32)
        x *= np.float32(1.0 / 255.0)
        x -= np.asarray(self.mean, dtype=np.float32)
        x /= np.asarray(self.std, dtype=np.float32)
        if self.layout == "NCHW":
            x = x.transpose(2, 0, 1)
        return np.ascontiguousarray(x)

    def apply_batch(self, images) -> np.ndarray:
        return np.stack([self.apply(im) for im in images])

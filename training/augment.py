"""Training augmentation on uint8 OpenCV images (runs *before* the preprocessing contract).

Aimed at the three real-world problems of shop photos:
- angle: rotation + perspective jitter, optional horizontal flip;
- scale: random resized crop, zooming in and, some of the time, out (the product small in the
  frame, the rest of the frame the photo's own surroundings, mirrored or smeared); all geometry is
  one cv2.warpPerspective, so it is cheap;
- lighting: brightness / contrast / gamma (one LUT), white-balance gain, saturation;
plus sensor problems: Gaussian blur, Gaussian noise, JPEG re-compression.
Hue is never shifted: colour is what tells a Granny Smith from a Golden Delicious.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from skulens.internal import option


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation, drawn afresh for every image and epoch (Python only: pass
    ``TrainConfig(augment=AugmentConfig(...))``; ``AugmentConfig.none()`` turns it off)."""
    scale: tuple[float, float] = option((0.30, 1.0), "random resized crop: area range as a fraction of the image")
    ratio: tuple[float, float] = option((0.75, 1.333), "random resized crop: aspect-ratio range (width / height, "
                                                       "log-uniform)")
    zoom_out_p: float = option(0.2, "probability of zooming out instead: the crop is larger than the photo "
                                    "(a product far from the camera), the border mirrored or smeared")
    zoom_out: tuple[float, float] = option((1.2, 3.0), "zoom-out crop area as a multiple of the photo's (3 = "
                                                       "the product at 0.58 of the frame's side)")
    rotation: float = option(20.0, "rotation in degrees, uniform in [-rotation, rotation]")
    perspective: float = option(0.08, "corner jitter of the crop as a fraction of its size (camera angle)")
    hflip: bool = option(True, "mirror left-right half the time (off for products whose text must read)")
    vflip: bool = option(False, "flip upside-down half the time")
    brightness: float = option(0.35, "multiplicative brightness, 1 +- brightness")
    contrast: float = option(0.35, "contrast around mid-grey, 1 +- contrast")
    gamma: tuple[float, float] = option((0.7, 1.4), "gamma range (log-uniform)")
    saturation: float = option(0.3, "colour saturation, 1 +- saturation (hue is never shifted)")
    white_balance: float = option(0.08, "per-channel gain 1 +- white_balance (shop lighting colour)")
    blur_p: float = option(0.15, "probability of a Gaussian blur (sigma 0.5 to 1.5 px)")
    noise_p: float = option(0.15, "probability of Gaussian sensor noise")
    noise_sigma: float = option(8.0, "largest standard deviation of that noise, in 0-255 pixel levels")
    jpeg_p: float = option(0.25, "probability of a JPEG re-compression")
    jpeg_quality: tuple[int, int] = option((35, 90), "JPEG quality range of that re-compression")

    @classmethod
    def none(cls) -> "AugmentConfig":
        """Only the resize to the output size: for evaluation-like training or debugging."""
        return cls(scale=(1.0, 1.0), ratio=(1.0, 1.0), zoom_out_p=0.0, rotation=0.0, perspective=0.0,
                   hflip=False, brightness=0.0, contrast=0.0, gamma=(1.0, 1.0), saturation=0.0,
                   white_balance=0.0, blur_p=0.0, noise_p=0.0, jpeg_p=0.0)


def _crop_quad(h, w, cfg: AugmentConfig, rng) -> np.ndarray:
    """Four source points (tl, tr, br, bl) of a random rotated, perspective-jittered crop."""
    area = h * w
    if cfg.zoom_out_p > 0 and rng.random() < cfg.zoom_out_p:  # the photo inside a larger frame
        side = math.sqrt(area * rng.uniform(*cfg.zoom_out))
        cw = ch = side
        cx = rng.uniform(min(w - cw / 2, cw / 2), max(w - cw / 2, cw / 2))
        cy = rng.uniform(min(h - ch / 2, ch / 2), max(h - ch / 2, ch / 2))
        return _jitter(cw, ch, cx, cy, cfg, rng)
    for _ in range(10):
        target = area * rng.uniform(*cfg.scale)
        ratio = math.exp(rng.uniform(math.log(cfg.ratio[0]), math.log(cfg.ratio[1])))
        cw, ch = math.sqrt(target * ratio), math.sqrt(target / ratio)
        if cw <= w and ch <= h:
            break
    else:
        cw = ch = min(h, w)
    cx = rng.uniform(cw / 2, w - cw / 2)
    cy = rng.uniform(ch / 2, h - ch / 2)
    return _jitter(cw, ch, cx, cy, cfg, rng)


def _jitter(cw, ch, cx, cy, cfg: AugmentConfig, rng) -> np.ndarray:
    """The cw x ch crop centred on (cx, cy), perspective-jittered and rotated: four points."""
    quad = np.array([[-cw / 2, -ch / 2], [cw / 2, -ch / 2], [cw / 2, ch / 2], [-cw / 2, ch / 2]])
    if cfg.perspective > 0:
        quad += rng.uniform(-cfg.perspective, cfg.perspective, size=(4, 2)) * [cw, ch]
    if cfg.rotation > 0:
        a = math.radians(rng.uniform(-cfg.rotation, cfg.rotation))
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        quad = quad @ rot.T
    return (quad + [cx, cy]).astype(np.float32)


def geometric(image: np.ndarray, out_size: tuple[int, int], cfg: AugmentConfig, rng) -> np.ndarray:
    """Random resized crop + rotation + perspective + flips -> ``out_size`` (h, w), one warp."""
    h, w = image.shape[:2]
    oh, ow = out_size
    src = _crop_quad(h, w, cfg, rng)
    if cfg.hflip and rng.random() < 0.5:
        src = src[[1, 0, 3, 2]]
    if cfg.vflip and rng.random() < 0.5:
        src = src[[3, 2, 1, 0]]
    dst = np.array([[0, 0], [ow, 0], [ow, oh], [0, oh]], dtype=np.float32)
    m = cv2.getPerspectiveTransform(src, dst)
    # Downscaling by more than 2x through a warp aliases; pre-shrink the source with INTER_AREA.
    scale = min(ow / max(1.0, np.ptp(src[:, 0])), oh / max(1.0, np.ptp(src[:, 1])))
    if scale < 0.5:
        f = scale * 2
        small = cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        m = m @ np.diag([1 / f, 1 / f, 1.0])
        image = small
    border = cv2.BORDER_REFLECT_101
    if cfg.zoom_out_p > 0 and rng.random() < 0.5:  # drawn only where zoom-out exists: older runs replay exactly
        border = cv2.BORDER_REPLICATE
    out = cv2.warpPerspective(image, m, (ow, oh), flags=cv2.INTER_LINEAR, borderMode=border)
    return out.reshape(oh, ow, -1) if image.ndim == 3 else out


def photometric(image: np.ndarray, cfg: AugmentConfig, rng) -> np.ndarray:
    """Lighting, white balance, saturation, blur, noise and JPEG artefacts on a uint8 image."""
    # brightness, contrast and gamma as one lookup table
    b = 1 + rng.uniform(-cfg.brightness, cfg.brightness)
    c = 1 + rng.uniform(-cfg.contrast, cfg.contrast)
    g = math.exp(rng.uniform(math.log(cfg.gamma[0]), math.log(cfg.gamma[1])))
    v = np.arange(256, dtype=np.float32) / 255
    v = np.clip((v * b - 0.5) * c + 0.5, 0, 1) ** g
    img = cv2.LUT(image, (v * 255 + 0.5).astype(np.uint8))
    colour = img.ndim == 3 and img.shape[2] == 3
    if colour and (cfg.white_balance > 0 or cfg.saturation > 0):
        x = img.astype(np.float32)
        if cfg.white_balance > 0:
            x *= 1 + rng.uniform(-cfg.white_balance, cfg.white_balance, size=3).astype(np.float32)
        if cfg.saturation > 0:
            s = 1 + rng.uniform(-cfg.saturation, cfg.saturation)
            gray = x @ np.array([0.114, 0.587, 0.299], np.float32)
            x = gray[..., None] + (x - gray[..., None]) * s
        img = np.clip(x, 0, 255).astype(np.uint8)
    if rng.random() < cfg.blur_p:
        img = cv2.GaussianBlur(img, (0, 0), sigmaX=rng.uniform(0.5, 1.5)).reshape(img.shape)
    if rng.random() < cfg.noise_p:
        noise = rng.normal(0, rng.uniform(1, cfg.noise_sigma), size=img.shape)
        img = np.clip(img + noise, 0, 255).astype(np.uint8)
    if rng.random() < cfg.jpeg_p:
        q = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED).reshape(img.shape)
    return img


def augment(image: np.ndarray, out_size: tuple[int, int], cfg: AugmentConfig, rng) -> np.ndarray:
    """uint8 image -> augmented uint8 image of ``out_size`` (same channels)."""
    return photometric(geometric(image, out_size, cfg, rng), cfg, rng)

"""A synthetic product catalogue drawn with OpenCV, so the quickstart needs no downloads.

Each class is a product type (can, bottle, box, carton, jar, bag, shirt, trousers) with a
class colour scheme and label marks; every image varies colour, label position, background
clutter, lighting gradient, rotation/perspective (angle), scale, blur, noise and JPEG quality.
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

# name -> (shape, body BGR, accent BGR)
PRODUCTS = {
    "cola-can": ("can", (40, 30, 200), (245, 245, 245)),
    "lime-soda-can": ("can", (60, 190, 90), (30, 200, 230)),
    "water-bottle": ("bottle", (220, 170, 80), (250, 240, 230)),
    "juice-bottle": ("bottle", (30, 140, 240), (40, 60, 200)),
    "cereal-box": ("box", (30, 200, 240), (40, 40, 200)),
    "tea-box": ("box", (60, 110, 40), (210, 230, 240)),
    "milk-carton": ("carton", (245, 245, 245), (200, 110, 30)),
    "jam-jar": ("jar", (60, 40, 150), (120, 200, 240)),
    "chips-bag": ("bag", (20, 160, 230), (30, 30, 190)),
    "t-shirt": ("shirt", (180, 80, 40), (240, 240, 240)),
}


def _jitter(colour, rng, amount=25):
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def _background(size, rng):
    base = rng.integers(60, 220, size=3)
    grad = np.linspace(0.7, 1.2, size)[:, None, None] * base[None, None, :]
    img = np.repeat(grad, size, axis=1).astype(np.float32)
    for _ in range(rng.integers(2, 6)):  # shelf edges and neighbouring clutter
        x0, y0 = rng.integers(0, size, 2)
        cv2.rectangle(img, (int(x0), int(y0)), (int(x0 + rng.integers(10, 60)), int(y0 + rng.integers(5, 40))),
                      tuple(float(v) for v in rng.integers(0, 255, 3)), -1)
    return img


def _draw_product(canvas, shape, body, accent, rng):
    s = canvas.shape[0]
    c = s // 2
    w, h = int(s * 0.34), int(s * 0.62)
    x0, y0, x1, y1 = c - w // 2, c - h // 2, c + w // 2, c + h // 2
    if shape == "can":
        cv2.rectangle(canvas, (x0, y0 + 6), (x1, y1 - 6), body, -1)
        cv2.ellipse(canvas, (c, y0 + 6), (w // 2, 6), 0, 0, 360, (190, 190, 190), -1)
        cv2.ellipse(canvas, (c, y1 - 6), (w // 2, 6), 0, 0, 180, body, -1)
        ys = np.linspace(y0 + 18, y1 - 18, 16).astype(int)
        pts = np.stack([np.linspace(x0, x1, 16).astype(int), ys + (6 * np.sin(np.linspace(0, 6, 16))).astype(int)], 1)
        cv2.polylines(canvas, [pts], False, accent, 3)
    elif shape == "bottle":
        cv2.rectangle(canvas, (x0 + 4, y0 + h // 4), (x1 - 4, y1), body, -1)
        cv2.rectangle(canvas, (c - w // 6, y0), (c + w // 6, y0 + h // 4), body, -1)
        cv2.rectangle(canvas, (c - w // 6, y0 - 6), (c + w // 6, y0 + 2), accent, -1)
        cv2.rectangle(canvas, (x0 + 4, c), (x1 - 4, c + h // 6), accent, -1)
    elif shape in ("box", "carton"):
        cv2.rectangle(canvas, (x0 - 6, y0), (x1 + 6, y1), body, -1)
        cv2.rectangle(canvas, (x0, c - 8), (x1, c + 14), accent, -1)
        if shape == "carton":
            cv2.fillPoly(canvas, [np.array([(x0 - 6, y0), (c, y0 - 14), (x1 + 6, y0)])], accent)
        else:
            cv2.circle(canvas, (c, y0 + h // 5), w // 5, accent, -1)
    elif shape == "jar":
        cv2.rectangle(canvas, (x0 - 4, y0 + h // 3), (x1 + 4, y1), body, -1)
        cv2.rectangle(canvas, (x0, y0 + h // 5), (x1, y0 + h // 3), accent, -1)
        cv2.circle(canvas, (c, c + h // 6), w // 4, accent, 2)
    elif shape == "bag":
        pts = np.array([(x0 - 8, y0), (x1 + 8, y0), (x1, y1), (x0, y1)])
        cv2.fillPoly(canvas, [pts], body)
        cv2.ellipse(canvas, (c, c), (w // 2, h // 6), 0, 0, 360, accent, -1)
    elif shape == "shirt":
        pts = np.array([(x0, y0), (c - 6, y0), (c, y0 + 8), (c + 6, y0), (x1, y0), (x1 + w // 2, y0 + h // 4),
                        (x1 + 4, y0 + h // 3), (x1, y0 + h // 4), (x1, y1), (x0, y1), (x0, y0 + h // 4),
                        (x0 - 4, y0 + h // 3), (x0 - w // 2, y0 + h // 4)])
        cv2.fillPoly(canvas, [pts], body)
        cv2.line(canvas, (x0, c), (x1, c), accent, 3)
    # printed label marks ("text" lines) vary per image
    for k in range(int(rng.integers(1, 4))):
        yy = int(y0 + h * rng.uniform(0.35, 0.9))
        cv2.line(canvas, (x0 + 3, yy), (int(x0 + 3 + w * rng.uniform(0.3, 0.8)), yy), (20, 20, 20), 1)


def render(name: str, size: int, rng) -> np.ndarray:
    """One BGR uint8 photo-like image of product ``name``."""
    shape, body, accent = PRODUCTS[name]
    big = size * 2
    canvas = _background(big, rng)
    layer = np.zeros((big, big, 3), np.float32)
    mask = np.zeros((big, big), np.float32)
    _draw_product(layer, shape, _jitter(body, rng), _jitter(accent, rng), rng)
    mask[(layer.sum(axis=2) > 0)] = 1
    # angle + scale + position: one perspective warp of the product layer
    scale, angle = rng.uniform(0.65, 1.25), rng.uniform(-30, 30)
    m = cv2.getRotationMatrix2D((big / 2, big / 2), angle, scale)
    m[:, 2] += rng.uniform(-0.12, 0.12, 2) * big
    src = np.float32([[0, 0], [big, 0], [big, big], [0, big]])
    dst = (cv2.transform(src[None], m)[0] + rng.uniform(-0.05, 0.05, (4, 2)) * big).astype(np.float32)
    p = cv2.getPerspectiveTransform(src, dst)
    layer = cv2.warpPerspective(layer, p, (big, big))
    mask = cv2.warpPerspective(mask, p, (big, big))[..., None]
    img = canvas * (1 - mask) + layer * mask
    # lighting: a directional gradient and a global exposure change
    a = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:big, 0:big] / big - 0.5
    light = rng.uniform(0.55, 1.3) * (1 + rng.uniform(0, 0.5) * (np.cos(a) * xx + np.sin(a) * yy))
    img = img * light[..., None]
    img = cv2.resize(np.clip(img, 0, 255).astype(np.uint8), (size, size), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.4:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.2))
    img = np.clip(img + rng.normal(0, rng.uniform(0, 6), img.shape), 0, 255).astype(np.uint8)
    return img


def make_demo_catalogue(root, per_class: int = 40, size: int = 96, seed: int = 0,
                        classes: list[str] | None = None) -> Path:
    """Write ``root/<class>/<class>_NNN.jpg`` for each product class; returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for name in classes or list(PRODUCTS):
        if name not in PRODUCTS:
            raise ValueError(f"unknown demo product {name!r}; choose from {list(PRODUCTS)}")
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = render(name, size, rng)
            q = int(rng.integers(60, 95))
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
            (folder / f"{name}_{i:03d}.jpg").write_bytes(buf.tobytes())
    return root

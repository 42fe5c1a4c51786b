"""Decoding images from paths, bytes or arrays into validated uint8 OpenCV arrays.

Failures raise :class:`ImageError` naming the source and the problem. The pixel limit is
checked from the file header *before* decoding for JPEG, PNG, BMP and WebP so a hostile
"decompression bomb" never allocates; other formats are checked after decoding.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np

from ._errors import ImageError
from ._preprocess import check_image_array

DEFAULT_MAX_PIXELS = 40_000_000  # ~ a 40 MP photo; configurable per call / per classifier


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, np.ndarray):
        return f"<array {source.shape} {source.dtype}>"
    return f"<{type(source).__name__}>"


def _jpeg_size(data: bytes):
    """(width, height) from the first SOF marker, or None when not found."""
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        i += 2 + length
    return None


def header_size(data: bytes):
    """(width, height) read from the header of a JPEG/PNG/BMP/WebP, else None."""
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg_size(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return abs(w), abs(h)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8X":
            w = 1 + int.from_bytes(data[24:27], "little")
            h = 1 + int.from_bytes(data[27:30], "little")
            return w, h
        if chunk == b"VP8 ":
            w, h = struct.unpack("<HH", data[26:30])
            return w & 0x3FFF, h & 0x3FFF
        if chunk == b"VP8L" and len(data) >= 25:
            b = data[21:25]
            w = 1 + (((b[1] & 0x3F) << 8) | b[0])
            h = 1 + (((b[3] & 0xF) << 10) | (b[2] << 2) | ((b[1] & 0xC0) >> 6))
            return w, h
    return None


def _check_complete(data: bytes, name: str) -> None:
    """Reject truncated JPEG/PNG streams that OpenCV would otherwise decode as partial garbage."""
    if data[:3] == b"\xff\xd8\xff":
        sos = data.rfind(b"\xff\xda")
        if sos < 0 or data.find(b"\xff\xd9", sos) < 0:
            raise ImageError(f"{name}: truncated JPEG (no end-of-image marker after the scan data)")
    elif data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in data[-64:]:
        raise ImageError(f"{name}: truncated PNG (no IEND chunk)")


def decode_image(source, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Return a uint8 image (HxW gray, HxWx3 BGR or HxWx4 BGRA) from a path, bytes or array.

    Raises ImageError for a missing/unreadable file, empty, corrupt, truncated or non-image
    bytes, 16-bit or float data, unsupported channel counts and images over ``max_pixels``.
    """
    name = _describe(source)
    if isinstance(source, np.ndarray):
        check_image_array(source)
        _check_pixels(source.shape[1], source.shape[0], max_pixels, name)
        return source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{name}: no such image file")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageError(f"{name}: cannot read file ({exc.strerror or exc})") from exc
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        raise ImageError(f"{name}: unsupported image source type; pass a path, encoded bytes "
                         "or a uint8 numpy array")
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    size = header_size(data)
    if size is not None:
        _check_pixels(size[0], size[1], max_pixels, name)
    _check_complete(data, name)
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageError(f"{name}: cannot decode image ({exc.err or exc})") from exc
    if image is None:
        raise ImageError(f"{name}: not a decodable image (corrupt data or unsupported format)")
    if image.dtype != np.uint8:
        raise ImageError(f"{name}: {image.dtype} images are not supported "
                         "(16-bit or float data; convert to 8-bit)")
    try:
        check_image_array(image)
    except ImageError as exc:
        raise ImageError(f"{name}: {exc}") from None
    _check_pixels(image.shape[1], image.shape[0], max_pixels, name)
    return image


def _check_pixels(width: int, height: int, max_pixels: int, name: str) -> None:
    if width * height > max_pixels:
        raise ImageError(f"{name}: image is {width}x{height} = {width * height} pixels, over the "
                         f"limit of {max_pixels} (raise max_pixels to allow it)")
    if width < 1 or height < 1:
        raise ImageError(f"{name}: image has no pixels ({width}x{height})")
